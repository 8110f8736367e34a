"""Faults of the servers the service depends on, with real processes: Postgres going away
and coming back (through a proxy this test cuts), and Redis restarted mid-job (a private
redis-server this test owns)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from app.db.session import downgrade, upgrade
from tests.common import TINY
from tests.test_service import Stack, free_port


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


def wait_for(predicate, timeout: float = 60, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def status_of(url: str) -> int:
    try:
        return httpx.get(url, timeout=10).status_code
    except httpx.TransportError:
        return 0


def stack_env(tmp: Path, db_url: str, broker: str) -> dict[str, str]:
    return {**os.environ, "DATA_DIR": str(tmp / "data"), "DATABASE_URL": db_url,
            "BROKER_URL": broker, "HEARTBEAT_SECONDS": "0.3", "JOB_LEASE_SECONDS": "5",
            "TRAINING_QUEUE": f"training-{uuid.uuid4().hex[:8]}", "PREDICT_DEVICE": "cpu"}


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[int, list[subprocess.Popen[bytes]]]]:
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        procs.append(subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
             "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(lambda: _redis_up(port), 30, "redis-server")

    start()
    try:
        yield port, procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


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
    upgrade(db_url)
    port = free_port()
    stack = Stack(f"http://127.0.0.1:{port}", stack_env(tmp_path, db_url, ""), tmp_path)
    stack.start("api", "serve", "--port", str(port))
    try:
        wait_for(lambda: status_of(stack.url + "/ready") == 200, 60, "the API")
        assert status_of(stack.url + "/jobs") == 200
        proxy.cut()
        wait_for(lambda: status_of(stack.url + "/ready") == 503, 30, "/ready to say 503")
        r = httpx.get(stack.url + "/jobs", timeout=30)
        assert r.status_code == 503 and "database" in r.json()["detail"]
        assert r.headers["retry-after"]
        proxy.restore()
        wait_for(lambda: status_of(stack.url + "/ready") == 200, 30, "/ready to recover")
        assert status_of(stack.url + "/jobs") == 200
        assert stack.procs["api"].poll() is None
    finally:
        for name in list(stack.procs):
            stack.stop(name)
        proxy.cut()
        downgrade(postgres_url, "base")


def test_redis_restarted_mid_job(postgres_url: str, private_redis: tuple[int, list],
                                 tmp_path: Path, color_dataset: Path) -> None:
    redis_port, redis_procs = private_redis
    upgrade(postgres_url)
    port = free_port()
    stack = Stack(f"http://127.0.0.1:{port}",
                  stack_env(tmp_path, postgres_url, f"redis://127.0.0.1:{redis_port}/0"),
                  tmp_path)
    stack.start("api", "serve", "--port", str(port))
    stack.start("worker", "worker")
    try:
        wait_for(lambda: status_of(stack.url + "/ready") == 200, 60, "the API")
        with stack.client() as c:
            ds = c.upload(color_dataset)["id"]
            job_id = c.submit(ds, **TINY, epochs=25)["id"]
            stack.wait(job_id, {"running"}, until=lambda j: j["progress"]["epoch"] >= 2)
            redis_procs[-1].kill()  # Redis dies mid-job, losing every message it held
            redis_procs[-1].wait()
            time.sleep(1)
            wait_for(lambda: status_of(stack.url + "/ready") == 503, 30, "/ready 503")
            redis_procs.append(subprocess.Popen(
                [shutil.which("redis-server") or "redis-server", "--port", str(redis_port),
                 "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(tmp_path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_for(lambda: _redis_up(redis_port), 30, "redis-server again")
            # The job the worker was running still ends right: the database holds its state.
            job = stack.wait(job_id, {"succeeded", "failed", "cancelled"})
            assert job["status"] == "succeeded", job
            assert [m["epoch"] for m in c.metrics(job_id)] == list(range(1, 26))
            # And the worker reconnected: a new job runs to the end.
            wait_for(lambda: status_of(stack.url + "/ready") == 200, 30, "/ready 200")
            second = c.submit(ds, **TINY, epochs=1)["id"]
            assert stack.wait(second, {"succeeded", "failed"}, timeout=180)["status"] == (
                "succeeded")
    finally:
        for name in list(stack.procs):
            stack.stop(name)
        downgrade(postgres_url, "base")
