"""/health and /ready never wait behind work: they answer while the shared thread pool is
full, /ready probes at most once a second, and each probe has a short timeout of its own."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.api.readiness import Readiness
from app.api.state import State
from app.core.config import Settings
from app.db.session import upgrade
from tests.helpers import embedded

HELD_SECONDS = 10
QUICK = 2.0  # a generous bound for an answer that waits for nothing


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = embedded(tmp_path / "data")
    upgrade(s.db_url)
    return s


def _timed(client: TestClient, path: str) -> tuple[int, float]:
    start = time.monotonic()
    status = client.get(path).status_code
    return status, time.monotonic() - start


def test_health_and_ready_answer_while_every_pool_thread_is_busy(settings: Settings) -> None:
    release = threading.Event()
    with TestClient(create_app(settings)) as client:
        limiter = client.portal.call(anyio.to_thread.current_default_thread_limiter)
        busy = int(limiter.total_tokens)
        # As many blocking calls as the pool has threads, as slow sync handlers would be.
        for _ in range(busy):
            client.portal.start_task_soon(anyio.to_thread.run_sync, release.wait,
                                          HELD_SECONDS)
        deadline = time.monotonic() + 10
        while limiter.borrowed_tokens < busy and time.monotonic() < deadline:
            time.sleep(0.01)
        assert limiter.borrowed_tokens == busy
        with ThreadPoolExecutor(1) as pool:
            stuck = pool.submit(client.get, "/datasets")  # a sync handler: it must queue
            try:
                for path in ("/health", "/ready", "/ready"):
                    status, seconds = _timed(client, path)
                    assert status == 200 and seconds < QUICK, (path, status, seconds)
                assert not stuck.done()  # the pool was full all along
            finally:
                release.set()
            assert stuck.result(timeout=HELD_SECONDS).status_code == 200


def test_ready_probes_once_a_second_however_many_ask() -> None:
    calls: list[float] = []

    def slow_probe() -> None:
        calls.append(time.monotonic())
        time.sleep(0.2)

    readiness = Readiness({"database": slow_probe}, cache_seconds=1.0)

    async def burst() -> list[dict[str, str]]:
        return list(await asyncio.gather(*(readiness.checks() for _ in range(50))))

    try:
        assert asyncio.run(burst()) == [{"database": "ok"}] * 50
        assert len(calls) == 1  # one round for the 50 callers
        assert asyncio.run(burst()) == [{"database": "ok"}] * 50
        assert len(calls) == 1  # within the second: the remembered answer
        time.sleep(1.1)
        asyncio.run(readiness.checks())
        assert len(calls) == 2
    finally:
        readiness.close()


def test_a_probe_that_hangs_does_not_hang_ready() -> None:
    stop = threading.Event()
    readiness = Readiness({"broker": lambda: stop.wait(30), "database": lambda: None},
                          round_seconds=0.5)
    try:
        start = time.monotonic()
        checks = asyncio.run(readiness.checks())
        assert time.monotonic() - start < QUICK
        assert checks["broker"].startswith("unreachable") and "0.5 s" in checks["broker"]
    finally:
        stop.set()
        readiness.close()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never says a word (a hung database or broker)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield s.getsockname()[1]


def test_probes_give_up_on_a_silent_database_and_broker(settings: Settings,
                                                        silent_server: int) -> None:
    silent = settings.model_copy(update={
        "database_url": f"postgresql://hotdog:pw@127.0.0.1:{silent_server}/hotdog",
        "broker_url": f"redis://127.0.0.1:{silent_server}/0"})
    state = State.create(silent)
    try:
        for probe in (state.check_database, state.check_broker):
            start = time.monotonic()
            with pytest.raises(Exception):  # noqa: B017 (the driver's own timeout error)
                probe()
            assert time.monotonic() - start < 6, probe
    finally:
        state.close()


def test_ready_names_no_server_paths(settings: Settings) -> None:
    gone = settings.model_copy(update={"broker_url": None})
    with TestClient(create_app(gone)) as client:
        # The file-system broker's folder vanished: the answer says so without the path.
        (settings.broker_folder / "queue").rmdir()
        r = client.get("/ready")
        assert r.status_code == 503, r.text
        assert r.json()["checks"]["broker"].startswith("unreachable")
        assert str(settings.data_dir.resolve()) not in r.text
        assert r.headers["x-request-id"]


def test_ready_works_again_when_the_app_is_started_again(settings: Settings) -> None:
    app = create_app(settings)
    for _ in range(2):  # the second start follows a shutdown that stopped the probe threads
        with TestClient(app) as client:
            assert client.get("/ready").status_code == 200


def test_the_probe_engine_bounds_postgres_statements(settings: Settings, postgres_url: str,
                                                     redis_url: str) -> None:
    real = settings.model_copy(update={"database_url": postgres_url, "broker_url": redis_url})
    state = State.create(real)
    try:
        state.check_database()
        state.check_broker()
        with state.probe_engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "2s"
            with pytest.raises(Exception, match="statement timeout"):
                conn.exec_driver_sql("SELECT pg_sleep(10)")
    finally:
        state.close()
