"""The servers the tests (and ``bench/chaos.py``) depend on: PostgreSQL and Redis found where
the environment says, else on their default local ports, else started here, on free ports in
a folder of their own, and removed afterwards. Also the faults' tools: a TCP proxy that can
cut a connection, and a redis-server that can be killed and started again.

The service's modules are imported only where needed (the test session resolves its servers
before anything else), and the chaos harness uses the same pieces."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# Set (to 1) to ignore the default local servers and start throwaway ones (what a machine
# without them does); DATABASE_URL / REDIS_URL still win.
OWN_SERVERS_ENV = "HOTDOG_TEST_OWN_SERVERS"

POSTGRES_MISSING = (
    "the tests need PostgreSQL: none answers at {url}, and its server binaries (initdb, "
    "pg_ctl under /usr/lib/postgresql/*/bin) are not installed to start one. Install the "
    "Debian package: apt-get install -y postgresql (or set DATABASE_URL to a server)")
REDIS_MISSING = (
    "the tests need Redis: none answers at {url}, and redis-server is not on PATH to start "
    "one. Install the Debian package: apt-get install -y redis-server (or set REDIS_URL to "
    "a server)")


class ServerMissing(RuntimeError):
    """Neither a running server nor the binaries to start one (the message says which
    package to install)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: object, *, timeout: float, what: str) -> None:
    """Poll ``check()`` until it is truthy; fail after ``timeout`` seconds saying ``what``."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def tcp_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def redis_answers(port: int, host: str = "127.0.0.1") -> bool:
    """A Redis server answers PING on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def postgres_answers(url: str) -> bool:
    """The server of ``url`` accepts a login (not only a TCP connection: a port that some
    other program holds, or a server still starting, does not count)."""
    import psycopg

    conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        with psycopg.connect(conninfo, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


# ---------------------------------------------------------------------------- Redis

class PrivateRedis:
    """A redis-server of its own on a free port, in ``folder``, that may be killed and
    started again (same port); no persistence."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerMissing(REDIS_MISSING.format(url=self.url))
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: redis_answers(self.port), timeout=30, what="redis-server")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


# ---------------------------------------------------------------------------- PostgreSQL

def postgres_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin folder holding initdb and pg_ctl (Debian's
    layout), else the folder of an initdb on PATH; None when there is none."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name)
                   if Path(p).parent.parent.name.isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class ThrowawayPostgres:
    """A PostgreSQL cluster of its own in a temporary folder, on a free port, with a
    ``postgres`` superuser that needs no password; :meth:`remove` stops it and deletes
    the folder. PostgreSQL refuses to run as root: run as root, the cluster belongs to
    the ``postgres`` system user."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="hotdog-postgres-"))
        self.owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        if self.owner is not None:
            os.chown(self.folder, self.owner.pw_uid, self.owner.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self.owner is not None else []
        proc = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")

    def start(self) -> ThrowawayPostgres:
        data = self.folder / "data"
        self._run(str(self.bin_dir / "initdb"), "-D", str(data), "-U", "postgres",
                  "--auth=trust", "--encoding=UTF8", "--no-sync")
        # fsync off: a test database need not survive a power cut, and it is much faster.
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=200")
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(data), "-o", options,
                  "-l", str(self.folder / "postgres.log"), "-w", "-t", "60", "start")
        wait_until(lambda: postgres_answers(self.url), timeout=60, what="the throwaway postgres")
        return self

    def remove(self) -> None:
        data = self.folder / "data"
        if (data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run(str(self.bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                          "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)


# ------------------------------------------------------------------ resolving the servers

def _has_postgres_user() -> bool:
    """Run as root, the cluster runs as the ``postgres`` user (Debian's package makes it)."""
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return False
    return shutil.which("runuser") is not None


def _own_servers() -> bool:
    return os.environ.get(OWN_SERVERS_ENV, "") not in ("", "0", "false")


@contextmanager
def postgres_server(configured: str | None = None) -> Iterator[str]:
    """The URL of a PostgreSQL server whose ``postgres`` role may create databases:
    ``configured`` (DATABASE_URL) when given, else the default local server if it answers,
    else a throwaway one for as long as the block runs."""
    if configured:
        yield configured
        return
    if not _own_servers() and postgres_answers(DEFAULT_POSTGRES_URL):
        yield DEFAULT_POSTGRES_URL
        return
    bin_dir = postgres_bin_dir()
    if bin_dir is None or (os.geteuid() == 0 and not _has_postgres_user()):
        raise ServerMissing(POSTGRES_MISSING.format(url=DEFAULT_POSTGRES_URL))
    server = ThrowawayPostgres(bin_dir)
    try:
        yield server.start().url
    finally:
        server.remove()


@contextmanager
def redis_server(configured: str | None = None) -> Iterator[str]:
    """The URL of a Redis server: ``configured`` (REDIS_URL), else the default local one if
    it answers, else a throwaway one for as long as the block runs."""
    if configured:
        yield configured
        return
    host, port = _host_port(DEFAULT_REDIS_URL, 6379)
    if not _own_servers() and redis_answers(port, host):
        yield DEFAULT_REDIS_URL
        return
    if shutil.which("redis-server") is None:
        raise ServerMissing(REDIS_MISSING.format(url=DEFAULT_REDIS_URL))
    folder = Path(tempfile.mkdtemp(prefix="hotdog-redis-"))
    redis = PrivateRedis(folder)
    try:
        redis.start()
        yield redis.url
    finally:
        redis.kill()
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def postgres_database(server: str) -> Iterator[str]:
    """A database of its own on the PostgreSQL ``server`` (a URL whose role may create
    databases), dropped at the end."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from app.db.session import make_engine, normalize_url

    name = f"hotdog_test_{uuid.uuid4().hex[:12]}"
    admin = make_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(normalize_url(server)).set(database=name).render_as_string(
            hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# ---------------------------------------------------------------------------- the proxy

class Proxy:
    """A TCP forwarder to ``target``; ``cut()`` drops every connection and refuses new
    ones (the server is "down"), ``restore()`` listens again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        if self.listener is None:
            return
        with contextlib.suppress(OSError):  # wakes the accept() blocked in the other thread
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.listener = None
        with self.lock:
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self.sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # shutdown() first: it sends the FIN and wakes the other direction's thread,
            # blocked in recv() on these sockets. close() alone would leave that recv
            # holding the socket open, so the server would never hear that its client went
            # (a Postgres session kept idle in its transaction, with its locks).
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()
