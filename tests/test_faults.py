"""Faults of the servers the service depends on, with real processes: Postgres going away
and coming back (through a proxy this test cuts), and Redis restarted mid-job (a private
redis-server this test owns)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from app.db.session import downgrade
from tests.helpers import INTERRUPTED_EPOCHS, TINY, running_stack, status_of, wait_for
from tests.servers import PrivateRedis, Proxy


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    redis = PrivateRedis(tmp_path)
    redis.start()  # fails naming the package to install where redis-server is missing
    try:
        yield redis
    finally:
        redis.kill()


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
