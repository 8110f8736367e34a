"""A real Celery worker process runs jobs end to end: on Postgres + Redis, and on the
embedded default (SQLite + the file-system broker). No eager mode anywhere."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.db.models import Dataset, EpochMetric, ErrorKind, JobStatus
from app.db.session import make_engine, upgrade
from app.engine import TrainConfig, load_checkpoint
from app.jobs.broker import make_celery
from app.jobs.service import claim_job, create_job, get_job, request_cancel
from tests.helpers import TINY, wait_for
from worker.child import KILL_AFTER_CHECKPOINT_ENV
from worker.runner import TrainingProcess
from worker.tasks import run_job_now

REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"


@dataclass
class Service:
    settings: Settings
    engine: Engine
    worker: subprocess.Popen[bytes]
    log: Path

    def add_dataset(self, source: Path) -> str:
        dataset_id = uuid.uuid4().hex
        shutil.copytree(source, self.settings.dataset_dir(dataset_id))
        with Session(self.engine) as s:
            s.add(Dataset(id=dataset_id, name="colors", classes=["hotdog", "not-hotdog"],
                          counts={}, warnings=[], size_bytes=0))
            s.commit()
        return dataset_id

    def submit(self, dataset_id: str, *, enqueue: bool = True, **params: object) -> str:
        config = TrainConfig(**{**TINY, **params})  # type: ignore[arg-type]
        with Session(self.engine) as s:
            job = create_job(s, dataset_id=dataset_id, params=config.to_dict(),
                             epochs=config.epochs)
            s.commit()  # commit before enqueueing: the worker must find the row
            job_id = job.id
        if enqueue:
            make_celery(self.settings).send_task("hotdog.run_job", args=[job_id])
        return job_id

    def wait(self, job_id: str, statuses: set[JobStatus], timeout: float = 240) -> JobStatus:
        def reached() -> JobStatus | None:
            with Session(self.engine) as s:
                status = get_job(s, job_id).status
            assert self.worker.poll() is None, self.log.read_text()[-3000:]
            return status if status in statuses else None

        return wait_for(reached, timeout=timeout, interval=0.3, what=lambda: (
            f"job {job_id} to reach {statuses}; worker log:\n" + self.log.read_text()[-3000:]))


@pytest.fixture(params=["postgres+redis", "embedded"])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Service]:
    if request.param == "embedded":
        db_url, broker = f"sqlite:///{tmp_path / 'data' / 'hotdog.db'}", ""
    else:
        db_url, broker = request.getfixturevalue("postgres_url"), REDIS_URL
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": db_url,
           "BROKER_URL": broker, "HEARTBEAT_SECONDS": "0.3", "JOB_LEASE_SECONDS": "3"}
    # A queue of this test's own, so leftovers in a shared Redis never reach this worker.
    queue = f"training-{uuid.uuid4().hex[:8]}"
    env["TRAINING_QUEUE"] = queue
    settings = Settings(data_dir=tmp_path / "data", database_url=db_url,
                        broker_url=broker or None, heartbeat_seconds=0.3, job_lease_seconds=3,
                        training_queue=queue)
    upgrade(db_url)
    log = tmp_path / "worker.log"
    with open(log, "wb") as fh:
        worker = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--name", f"{queue}@%h"],
            env=env, stdout=fh, stderr=subprocess.STDOUT,
        )
    engine = make_engine(db_url)
    try:
        yield Service(settings, engine, worker, log)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        engine.dispose()
        if request.param != "embedded":
            from app.db.session import downgrade

            downgrade(db_url, "base")


def test_job_runs_to_success_on_a_real_worker(service: Service, color_dataset: Path) -> None:
    job_id = service.submit(service.add_dataset(color_dataset), epochs=2)
    assert service.wait(job_id, {JobStatus.SUCCEEDED, JobStatus.FAILED}) is JobStatus.SUCCEEDED
    with Session(service.engine) as s:
        job = get_job(s, job_id)
        assert job.epoch == 2 and job.attempt == 1 and job.error is None
        assert job.error_kind is None
        rows = s.scalar(select(func.count()).select_from(EpochMetric)
                        .where(EpochMetric.job_id == job_id))
        assert rows == 2
        assert job.evaluation is not None and sum(map(sum, job.evaluation.confusion)) == 8
        ckpt = load_checkpoint(job.checkpoint_path or "")
        assert ckpt["evaluation"]["confusion"] == job.evaluation.confusion


def test_cancel_a_running_job(service: Service, color_dataset: Path) -> None:
    job_id = service.submit(service.add_dataset(color_dataset), epochs=500)
    service.wait(job_id, {JobStatus.RUNNING})
    with Session(service.engine) as s:
        request_cancel(s, job_id)
        s.commit()
    assert service.wait(job_id, {JobStatus.CANCELLED, JobStatus.SUCCEEDED, JobStatus.FAILED},
                        timeout=120) is JobStatus.CANCELLED
    with Session(service.engine) as s:
        assert get_job(s, job_id).error_kind == ErrorKind.CANCELLED_BY_USER


def test_bad_job_fails_with_a_readable_error(service: Service, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    job_id = service.submit(service.add_dataset(empty), epochs=1)
    assert service.wait(job_id, {JobStatus.SUCCEEDED, JobStatus.FAILED}) is JobStatus.FAILED
    with Session(service.engine) as s:
        job = get_job(s, job_id)
        assert "DatasetError" in (job.error or "") and job.error_kind == ErrorKind.BAD_DATASET


def test_a_job_without_imagenet_weights_fails_as_weights_missing(
        no_imagenet: Path, service: Service, color_dataset: Path) -> None:
    """``no_imagenet`` comes first: the worker starts with its empty weights cache."""
    job_id = service.submit(service.add_dataset(color_dataset), epochs=1, init="imagenet")
    assert service.wait(job_id, {JobStatus.SUCCEEDED, JobStatus.FAILED}) is JobStatus.FAILED
    with Session(service.engine) as s:
        job = get_job(s, job_id)
        assert job.error_kind == ErrorKind.WEIGHTS_MISSING and job.attempt == 1
        assert (job.error or "").startswith("PretrainedWeightsMissing: ")


def test_a_job_whose_worker_died_is_requeued_and_finished(service: Service,
                                                          color_dataset: Path) -> None:
    job_id = service.submit(service.add_dataset(color_dataset), epochs=1, enqueue=False)
    with Session(service.engine) as s:  # a worker took it, then vanished without a trace
        assert claim_job(s, job_id, worker="dead-host:1", lease_seconds=1)
        s.commit()
    assert service.wait(job_id, {JobStatus.SUCCEEDED, JobStatus.FAILED}) is JobStatus.SUCCEEDED
    with Session(service.engine) as s:
        job = get_job(s, job_id)
        assert job.attempt == 2 and job.worker != "dead-host:1"


# ------------------------------------------------- a job run in this process (run_job_now)

@dataclass
class Local:
    """The embedded database and data folder of a test; jobs run by ``run_job_now`` here,
    each in its real training process."""

    settings: Settings
    engine: Engine

    def add_job(self, data: Path, **params: object) -> str:
        dataset_id = uuid.uuid4().hex
        shutil.copytree(data, self.settings.dataset_dir(dataset_id))
        config = TrainConfig(**{**TINY, **params})  # type: ignore[arg-type]
        with Session(self.engine) as s:
            s.add(Dataset(id=dataset_id, name="colors", classes=["hotdog", "not-hotdog"],
                          counts={}, warnings=[], size_bytes=0))
            job = create_job(s, dataset_id=dataset_id, params=config.to_dict(),
                             epochs=config.epochs)
            s.commit()
            return job.id

    def training_process(self, job_id: str, env: dict[str, str]) -> TrainingProcess:
        """The job's training process as its worker would start it."""
        with Session(self.engine) as s:
            job = get_job(s, job_id)
            job_dir = self.settings.job_dir(job_id)
            return TrainingProcess(
                data_dir=self.settings.dataset_dir(job.dataset_id),
                config=TrainConfig.from_dict(job.params), out=job_dir / "model.pt",
                epoch_checkpoint=job_dir / "last.pt", export_onnx=False, env=env)

    def recorded_epochs(self, job_id: str) -> list[int]:
        with Session(self.engine) as s:
            return list(s.scalars(select(EpochMetric.epoch).where(EpochMetric.job_id == job_id)
                                  .order_by(EpochMetric.epoch)))


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Local]:
    settings = Settings(data_dir=tmp_path / "data", database_url=None, broker_url=None,
                        heartbeat_seconds=0.3, job_lease_seconds=5, export_onnx=False)
    settings.data_dir.mkdir()
    upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    try:
        yield Local(settings, engine)
    finally:
        engine.dispose()


def test_a_kill_right_after_an_epoch_checkpoint_loses_no_epoch(
        local: Local, color_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The training process is SIGKILLed just after writing epoch 2's checkpoint (the worker
    retries it, resuming after epoch 2): epoch 2 was reported before, so it is recorded."""
    job_id = local.add_job(color_dataset, epochs=3)
    monkeypatch.setenv(KILL_AFTER_CHECKPOINT_ENV, "2")
    assert run_job_now(job_id, settings=local.settings) == JobStatus.SUCCEEDED.value
    with Session(local.engine) as s:
        job = get_job(s, job_id)
        assert job.attempt == 2 and job.epoch == 3  # the kill spent an attempt
    assert local.recorded_epochs(job_id) == [1, 2, 3]


def test_epochs_whose_report_was_lost_are_recorded_on_resume(
        local: Local, color_dataset: Path) -> None:
    """A worker killed outright loses the events still in the pipe: here a first run's
    events are never recorded at all; the resumed run fills every epoch of its checkpoint."""
    job_id = local.add_job(color_dataset, epochs=3)
    job_dir = local.settings.job_dir(job_id)
    first = local.training_process(job_id, env={KILL_AFTER_CHECKPOINT_ENV: "2"}).start()
    list(first.events())  # read, and lost
    assert first.returncode == -signal.SIGKILL
    assert load_checkpoint(job_dir / "last.pt")["epoch"] == 2
    assert run_job_now(job_id, settings=local.settings) == JobStatus.SUCCEEDED.value
    assert local.recorded_epochs(job_id) == [1, 2, 3]

