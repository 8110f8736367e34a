"""Faults of the servers the service depends on, with real processes: Postgres going away
and coming back (through a proxy this test cuts), and Redis restarted mid-job (a private
redis-server this test owns)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from app.db.session import downgrade
from tests.helpers import INTERRUPTED_EPOCHS, TINY, free_port, running_stack, status_of, wait_for


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
        assert self.listener is not None
        with contextlib.suppress(OSError):  # wakes the accept() blocked in the other thread
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
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
            upstream = socket.create_connection(self.target)
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
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()


class PrivateRedis:
    """A redis-server of this test's own on a free port, that it may kill and start again."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir",
             str(self.folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _redis_up(self.port), timeout=30, what="redis-server")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    redis = PrivateRedis(tmp_path)
    redis.start()
    try:
        yield redis
    finally:
        redis.kill()


def _redis_up(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def test_postgres_down_gives_503_and_the_api_recovers_by_itself(
        postgres_url: str, tmp_path: Path) -> None:
    real = make_url(postgres_url)
    proxy = Proxy((real.host or "127.0.0.1", real.port or 5432))
    db_url = real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        with running_stack(tmp_path, db_url=db_url, worker=False) as stack:
            assert status_of(stack.url + "/jobs") == 200
            proxy.cut()
            wait_for(lambda: status_of(stack.url + "/ready") == 503, timeout=30,
                     what="/ready to say 503")
            r = httpx.get(stack.url + "/jobs", timeout=30)
            assert r.status_code == 503 and "database" in r.json()["detail"]
            assert r.headers["retry-after"]
            proxy.restore()
            wait_for(lambda: status_of(stack.url + "/ready") == 200, timeout=30,
                     what="/ready to recover")
            assert status_of(stack.url + "/jobs") == 200
            assert stack.procs["api"].poll() is None
    finally:
        proxy.cut()
        downgrade(postgres_url, "base")


def test_redis_restarted_mid_job(postgres_url: str, private_redis: PrivateRedis,
                                 tmp_path: Path, color_dataset: Path) -> None:
    broker = f"redis://127.0.0.1:{private_redis.port}/0"
    try:
        with running_stack(tmp_path, db_url=postgres_url, broker=broker) as stack, \
                stack.client() as c:
            ds = c.upload(color_dataset)["id"]
            job_id = c.submit(ds, **TINY, epochs=INTERRUPTED_EPOCHS)["id"]
            stack.wait(job_id, {"running"}, until=lambda j: j["progress"]["epoch"] >= 2)
            private_redis.kill()  # Redis dies mid-job, losing every message it held
            wait_for(lambda: status_of(stack.url + "/ready") == 503, timeout=30,
                     what="/ready 503")
            private_redis.start()
            # The job the worker was running still ends right: the database holds its state.
            job = stack.wait(job_id, {"succeeded", "failed", "cancelled"})
            assert job["status"] == "succeeded", job
            assert [m["epoch"] for m in c.metrics(job_id)] == list(range(1, INTERRUPTED_EPOCHS + 1))
            # And the worker reconnected: a new job runs to the end.
            wait_for(lambda: status_of(stack.url + "/ready") == 200, timeout=30,
                     what="/ready 200")
            second = c.submit(ds, **TINY, epochs=1)["id"]
            assert stack.wait(second, {"succeeded", "failed"}, timeout=180)["status"] == (
                "succeeded")
    finally:
        downgrade(postgres_url, "base")
