"""Workers as rows (who is alive, which queues they serve, whether they have the ImageNet
weights) and what the API does with them; and the active-job cap under concurrent
submissions, on both backends."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.api.app import create_app
from app.client import ServiceError
from app.core.config import Settings
from app.db.models import Dataset, Job
from app.db.session import make_engine, upgrade
from app.engine.config import TrainConfig
from app.jobs.service import TooManyActiveJobs, submit
from app.workers import service as workers
from tests.helpers import TINY, embedded, stack_without_weights, upload, zip_tree

SUBMITTERS = 12
CAP = 3


def _dataset(db_url: str) -> str:
    engine = make_engine(db_url)
    with Session(engine) as s:
        s.add(Dataset(id="d" * 32, name="colors", classes=["a", "b"], counts={}, warnings=[],
                      size_bytes=1))
        s.commit()
    engine.dispose()
    return "d" * 32


def test_the_active_job_cap_holds_under_concurrent_submissions(db_url: str) -> None:
    """Many submissions at once, each on its own connection: exactly CAP are stored, the
    rest are refused (a count then an insert let them all through)."""
    dataset_id = _dataset(db_url)
    engine = make_engine(db_url, pool_size=SUBMITTERS, max_overflow=0)
    start = threading.Barrier(SUBMITTERS)
    outcomes: list[str] = []

    def submitter() -> None:
        with Session(engine) as s:
            start.wait()
            try:
                submit(s, dataset_id=dataset_id, config=TrainConfig(**TINY, epochs=1),
                       max_active_jobs=CAP, max_attempts=3)
                s.commit()
                outcomes.append("stored")
            except TooManyActiveJobs:
                s.rollback()
                outcomes.append("refused")

    threads = [threading.Thread(target=submitter) for _ in range(SUBMITTERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with Session(engine) as s:
        stored = s.scalar(select(func.count()).select_from(Job))
    engine.dispose()
    assert sorted(outcomes) == ["refused"] * (SUBMITTERS - CAP) + ["stored"] * CAP
    assert stored == CAP


# ----------------------------------------------------------------- the workers table
def _info(name: str = "host:1", *, gpus: int = 0, has_imagenet: bool = False,
          queues: tuple[str, ...] = ("training.cpu", "training")) -> workers.WorkerInfo:
    return workers.WorkerInfo(name=name, gpus=gpus, queues=list(queues), version="0.1.0",
                              has_imagenet=has_imagenet)


def test_a_worker_announces_itself_and_is_alive_until_unseen_or_stopped(db_url: str) -> None:
    engine = make_engine(db_url)
    start = workers.utcnow()
    with Session(engine) as s:
        workers.announce(s, _info(), now=start)
        s.commit()
        later = start + timedelta(seconds=5)
        workers.announce(s, _info(has_imagenet=True), now=later)  # the same row, renewed
        s.commit()
        (row,) = workers.list_workers(s)
        assert (row.kind, row.gpus, row.queues, row.has_imagenet) == (
            "cpu", 0, ["training.cpu", "training"], True)
        assert (row.started_at, row.last_seen) == (start, later)
        assert workers.is_alive(row, seen_seconds=30, now=later + timedelta(seconds=30))
        assert not workers.is_alive(row, seen_seconds=30, now=later + timedelta(seconds=31))
        workers.withdraw(s, "host:1", now=later)
        s.commit()
        s.expire_all()
        assert not workers.is_alive(workers.list_workers(s)[0], seen_seconds=30, now=later)
        workers.announce(s, _info(), now=later)  # the same name back: alive again
        s.commit()
        s.expire_all()
        assert workers.is_alive(workers.list_workers(s)[0], seen_seconds=30, now=later)
    engine.dispose()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, Settings]]:
    settings = embedded(tmp_path / "data")
    upgrade(settings.db_url)
    with TestClient(create_app(settings)) as c:
        yield c, settings


def _announce(settings: Settings, info: workers.WorkerInfo, *, ago: float = 0) -> None:
    """Write the row a worker process writes (``worker.presence``), as seen ``ago`` s ago."""
    engine = make_engine(settings.db_url)
    with Session(engine) as s:
        workers.announce(s, info, now=workers.utcnow() - timedelta(seconds=ago))
        s.commit()
    engine.dispose()


def test_jobs_no_live_worker_would_take_are_refused_or_say_what_they_wait_for(
        api: tuple[TestClient, Settings], color_dataset: Path) -> None:
    c, settings = api
    ds = upload(c, zip_tree(color_dataset)).json()["id"]
    r = c.post("/jobs", json={"dataset_id": ds, **TINY})
    assert r.status_code == 409, r.text
    assert "no live worker" in r.json()["detail"] and "queue_anyway" in r.json()["detail"]
    assert c.get("/jobs").json() == []  # refused: nothing stored
    job = c.post("/jobs", json={"dataset_id": ds, **TINY, "queue_anyway": True}).json()
    assert job["status"] == "queued" and job["waiting_for"] == "a worker (none is running)"

    # A CPU-only worker: shared and CPU jobs are taken, a GPU job is not.
    _announce(settings, _info())
    assert c.get(f"/jobs/{job['id']}").json()["waiting_for"] is None
    assert c.post("/jobs", json={"dataset_id": ds, **TINY, "device": "cpu"}).status_code == 202
    r = c.post("/jobs", json={"dataset_id": ds, **TINY, "device": "cuda"})
    assert r.status_code == 409 and "a worker with a GPU" in r.json()["detail"], r.text
    gpu = c.post("/jobs", json={"dataset_id": ds, **TINY, "gpus": 2, "queue_anyway": True})
    assert gpu.json()["waiting_for"] == "a worker with a GPU (none is running)"
    listed = {j["id"]: j["waiting_for"] for j in c.get("/jobs").json()}
    assert listed[gpu.json()["id"]] == "a worker with a GPU (none is running)"
    assert listed[job["id"]] is None

    # A GPU worker seen too long ago is no help.
    _announce(settings, _info("gpu-host:2", gpus=1, queues=("training.gpu", "training")),
              ago=settings.worker_seen_seconds + 5)
    assert c.post("/jobs", json={"dataset_id": ds, **TINY, "device": "cuda"}).status_code == 409
    shown = {w["name"]: w for w in c.get("/workers").json()}
    assert {n: (w["kind"], w["alive"]) for n, w in shown.items()} == {
        "host:1": ("cpu", True), "gpu-host:2": ("gpu", False)}


def test_an_imagenet_start_needs_a_live_worker_with_the_weights(
        api: tuple[TestClient, Settings], color_dataset: Path) -> None:
    c, settings = api
    ds = upload(c, zip_tree(color_dataset)).json()["id"]
    _announce(settings, _info())
    r = c.post("/jobs", json={"dataset_id": ds, "init": "imagenet", "epochs": 1})
    assert r.status_code == 409, r.text
    detail = r.json()["detail"]
    assert "ImageNet weights" in detail and "HOTDOG_PRETRAINED_PATH" in detail
    assert "host:1" in detail  # which workers lack them
    assert c.post("/jobs", json={"dataset_id": ds, **TINY}).status_code == 202  # scratch: fine
    assert c.post("/jobs", json={"dataset_id": ds, "init": "imagenet", "epochs": 1,
                                 "queue_anyway": True}).status_code == 202
    _announce(settings, _info("host:2", has_imagenet=True))
    r = c.post("/jobs", json={"dataset_id": ds, "init": "imagenet", "epochs": 1})
    assert r.status_code == 202, r.text


def test_a_real_worker_announces_itself_and_withdraws_when_stopped(
        tmp_path: Path, color_dataset: Path) -> None:
    with stack_without_weights(tmp_path) as stack, stack.client() as c:
        (worker,) = stack.wait_workers(1)
        assert worker["kind"] == "cpu" and worker["gpus"] == 0
        assert worker["queues"] == ["training", "training.cpu"]
        assert worker["has_imagenet"] is False and worker["stopped_at"] is None
        ds = c.upload(color_dataset)["id"]
        with pytest.raises(ServiceError) as refused:
            c.submit(ds, init="imagenet", epochs=1)
        assert refused.value.status == 409 and "HOTDOG_PRETRAINED_PATH" in str(refused.value)
        job = stack.wait(c.submit(ds, **TINY, epochs=1)["id"], {"succeeded", "failed"})
        assert job["status"] == "succeeded" and job["worker"] == worker["name"]
        assert stack.stop("worker") == 0
        (gone,) = c.workers()
        assert gone["alive"] is False and gone["stopped_at"] is not None
        with pytest.raises(ServiceError) as refused:
            c.submit(ds, **TINY, epochs=1)
        assert refused.value.status == 409 and "no live worker" in str(refused.value)
