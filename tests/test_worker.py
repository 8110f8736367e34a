"""A real Celery worker process runs jobs end to end: on Postgres + Redis, and on the
embedded default (SQLite + the file-system broker). No eager mode anywhere."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.db.models import Dataset, EpochMetric, ErrorKind, Job, JobStatus
from app.db.session import make_engine, upgrade
from app.engine import TrainConfig, load_checkpoint
from app.jobs.broker import make_celery
from app.jobs.service import claim_job, create_job, get_job, request_cancel
from tests.helpers import TINY, wait_for, write_color_dataset
from worker.child import FAULT_ENV
from worker.runner import TrainingProcess
from worker.tasks import run_job_now


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
        db_url = request.getfixturevalue("postgres_url")
        broker = request.getfixturevalue("redis_url")
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": db_url,
           "BROKER_URL": broker, "HEARTBEAT_SECONDS": "0.3", "JOB_LEASE_SECONDS": "3"}
    # A queue of this test's own, so leftovers in a shared Redis never reach this worker.
    queue = f"training-{uuid.uuid4().hex[:8]}"
    env["TRAINING_QUEUE"] = queue
    marker = request.node.get_closest_marker("worker_env")
    env.update(marker.kwargs if marker else {})
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


@pytest.mark.worker_env(TRAIN_COMPILE="off")
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
        # The kept epoch (chosen on the validation split) is recorded with the job.
        assert job.selected_epoch == ckpt["selected_epoch"] and job.selected_epoch in (1, 2)
        assert all(m.val_loss is not None for m in job.metrics)
        # How to compute comes from the worker's settings (TRAIN_COMPILE), not the job.
        assert ckpt["compute"]["compile"]["mode"] == "off"


@pytest.mark.worker_env(QUEUED_RESEND_SECONDS="1")
def test_a_queued_job_whose_message_was_lost_is_sent_again(service: Service,
                                                           color_dataset: Path) -> None:
    """A broker restarted without persistence loses the messages of queued jobs (found by
    bench/chaos.py on Redis): the worker's reaper sends a job again once it has gone
    unclaimed for QUEUED_RESEND_SECONDS."""
    ds = service.add_dataset(color_dataset)
    job_id = service.submit(ds, enqueue=False, epochs=1)  # as if its message were lost
    assert service.wait(job_id, {JobStatus.SUCCEEDED}) is JobStatus.SUCCEEDED
    with Session(service.engine) as s:
        job = get_job(s, job_id)
        assert job.attempt == 1 and job.sent_at is not None


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

    def add_job(self, data: Path, max_attempts: int = 3, **params: object) -> str:
        dataset_id = uuid.uuid4().hex
        shutil.copytree(data, self.settings.dataset_dir(dataset_id))
        config = TrainConfig(**{**TINY, **params})  # type: ignore[arg-type]
        with Session(self.engine) as s:
            s.add(Dataset(id=dataset_id, name="colors", classes=["hotdog", "not-hotdog"],
                          counts={}, warnings=[], size_bytes=0))
            job = create_job(s, dataset_id=dataset_id, params=config.to_dict(),
                             epochs=config.epochs, max_attempts=max_attempts)
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
    monkeypatch.setenv(FAULT_ENV, "kill-after-checkpoint:2")
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
    first = local.training_process(job_id, env={FAULT_ENV: "kill-after-checkpoint:2"}).start()
    list(first.events())  # read, and lost
    assert first.returncode == -signal.SIGKILL
    assert load_checkpoint(job_dir / "last.pt")["epoch"] == 2
    assert run_job_now(job_id, settings=local.settings) == JobStatus.SUCCEEDED.value
    assert local.recorded_epochs(job_id) == [1, 2, 3]



def test_a_job_keeps_its_best_epoch_and_stops_early_across_a_kill(
        local: Local, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Patience 1: the run stops at the first epoch whose validation loss is no better than
    the best so far, and keeps the best (on one CPU this run's losses went 19.1, 0.36,
    6.29, on another they stopped at epoch 4: the trajectory is the CPU's, so the test
    reads it from the job's own rows). Killed after epoch 2's checkpoint, the retry
    resumes with what it had found and ends as the rows say it must."""
    data = write_color_dataset(tmp_path / "moving", train=12, test=6)
    job_id = local.add_job(data, epochs=6, early_stopping_patience=1, batch_size=2, lr=0.01,
                           precision="fp32", seed=1, val_fraction=0.25)
    monkeypatch.setenv(FAULT_ENV, "kill-after-checkpoint:2")
    assert run_job_now(job_id, settings=local.settings) == JobStatus.SUCCEEDED.value
    job = _job(local, job_id)
    with Session(local.engine) as s:
        rows = sorted(get_job(s, job_id).metrics, key=lambda m: m.epoch)
        evaluation = get_job(s, job_id).evaluation
        losses = [m.val_loss for m in rows]
        assert [m.epoch for m in rows] == list(range(1, len(rows) + 1))  # each once
        best = 1 + losses.index(min(losses))  # the first best
        stopped = len(rows)
        assert 2 < stopped < 6, losses  # stopped early, after the kill
        assert stopped == best + 1  # patience 1
        assert evaluation is not None and evaluation.accuracy == rows[best - 1].test_acc
    assert job.attempt == 2 and job.epoch == stopped and job.selected_epoch == best
    assert job.note is not None and f"stopped early after epoch {stopped} of 6" in job.note
    ckpt = load_checkpoint(job.checkpoint_path or "")
    assert ckpt["selected_epoch"] == best and ckpt["temperature"] is not None
    with Session(local.engine) as s:
        evaluation = get_job(s, job_id).evaluation
        assert evaluation.calibration is not None and evaluation.calibration["calibrated"]


def _tuned(local: Local, **settings: object) -> Local:
    return Local(local.settings.model_copy(update=settings), local.engine)


def _job(local: Local, job_id: str) -> Job:
    with Session(local.engine) as s:
        job = get_job(s, job_id)
        s.expunge(job)
        return job


def test_a_hung_training_process_is_killed_and_the_job_resumes(
        local: Local, color_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It hangs after epoch 1, deaf to SIGTERM, while the worker's lease stays fresh: the
    watchdog kills it, the attempt is spent, and the next one resumes after epoch 1.
    (STALL_SECONDS well above the second attempt's silent start on a loaded machine.)"""
    local = _tuned(local, stall_seconds=15, stall_epochs=0)
    job_id = local.add_job(color_dataset, epochs=2, max_attempts=2)
    monkeypatch.setenv(FAULT_ENV, "hang-after-checkpoint:1")
    assert run_job_now(job_id, settings=local.settings) == JobStatus.SUCCEEDED.value
    assert _job(local, job_id).attempt == 2
    assert local.recorded_epochs(job_id) == [1, 2]


def test_a_job_that_hangs_on_its_last_attempt_fails_stalled(
        local: Local, color_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(However short its silence lasts: this one fails the same, hung or slow to start.)"""
    local = _tuned(local, stall_seconds=2, stall_epochs=0)
    job_id = local.add_job(color_dataset, epochs=2, max_attempts=1)
    monkeypatch.setenv(FAULT_ENV, "hang-after-checkpoint:1")
    assert run_job_now(job_id, settings=local.settings) == JobStatus.FAILED.value
    job = _job(local, job_id)
    assert job.error_kind == ErrorKind.STALLED and "hung" in (job.error or "")
    assert job.attempt == 1 and job.lease_expires_at is None


def test_a_job_past_max_job_seconds_fails_as_timeout(local: Local, color_dataset: Path) -> None:
    local = _tuned(local, max_job_seconds=3)
    job_id = local.add_job(color_dataset, epochs=500)
    assert run_job_now(job_id, settings=local.settings) == JobStatus.FAILED.value
    job = _job(local, job_id)
    assert job.error_kind == ErrorKind.TIMEOUT and "MAX_JOB_SECONDS" in (job.error or "")
    assert job.attempt == 1 and job.epoch < 500
    assert not list(local.settings.job_dir(job_id).glob(".*.tmp"))  # no half-written file


def _cancel_when(local: Local, job_id: str, ready: Callable[[Job], bool],
                 then: Callable[[], None] = lambda: None) -> str:
    """Runs the job in a thread, cancels it once ``ready(job)``, then calls ``then``;
    returns the job's final status."""
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(run_job_now, job_id, settings=local.settings)
        wait_for(lambda: run.done() or ready(_job(local, job_id)), timeout=180,
                 what=f"job {job_id} to be ready for its cancel")
        with Session(local.engine) as s:
            request_cancel(s, job_id)
            s.commit()
        then()
        # far less than a heartbeat: the cancel does not wait for one
        return run.result(timeout=60)


def test_a_cancel_stops_training_without_waiting_for_a_heartbeat(
        local: Local, color_dataset: Path) -> None:
    local = _tuned(local, heartbeat_seconds=600, job_lease_seconds=1200,
                   cancel_poll_seconds=0.2)
    job_id = local.add_job(color_dataset, epochs=500)
    status = _cancel_when(local, job_id, lambda job: job.epoch >= 1)
    assert status == JobStatus.CANCELLED.value
    assert _job(local, job_id).error_kind == ErrorKind.CANCELLED_BY_USER


def test_a_cancel_reaches_a_process_that_does_not_listen(
        local: Local, color_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hung after epoch 1 (as in a long evaluation, or loading): SIGTERM is not heard, so
    the worker kills it."""
    local = _tuned(local, cancel_poll_seconds=0.2)
    job_id = local.add_job(color_dataset, epochs=3)
    monkeypatch.setenv(FAULT_ENV, "hang-after-checkpoint:1")
    status = _cancel_when(local, job_id, lambda job: job.epoch >= 1)
    assert status == JobStatus.CANCELLED.value


def test_a_cancel_during_the_final_evaluation_or_export_still_cancels(
        local: Local, color_dataset: Path, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """The training holds after its last epoch until the cancel is recorded, then goes on
    to export and report success: the job still ends cancelled."""
    go_on = tmp_path / "go-on"
    monkeypatch.setenv(FAULT_ENV, f"wait-after-training:{go_on}")
    local = _tuned(local, cancel_poll_seconds=0.2)
    job_id = local.add_job(color_dataset, epochs=1)
    status = _cancel_when(local, job_id, lambda job: job.epoch == 1, then=go_on.touch)
    assert status == JobStatus.CANCELLED.value
    with Session(local.engine) as s:
        job = get_job(s, job_id)
        assert job.error_kind == ErrorKind.CANCELLED_BY_USER and job.evaluation is None
