"""The job state machine on SQLite and Postgres: claims, leases, attempts, cancel, metrics."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from app.db.models import Dataset, EpochMetric, ErrorKind, JobStatus
from app.db.session import make_engine, upgrade
from app.jobs.service import (
    JobConflict,
    JobNotFound,
    claim_job,
    create_job,
    finish_job,
    get_job,
    heartbeat,
    record_epoch,
    release_job,
    request_cancel,
    requeue_expired,
    utcnow,
)

LEASE = 60.0


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    upgrade(db_url)
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


def _new_job(engine: Engine, *, max_attempts: int = 3) -> str:
    with Session(engine) as s:
        ds = Dataset(id=uuid.uuid4().hex, name="d", classes=["a", "b"], counts={}, warnings=[],
                     size_bytes=1)
        s.add(ds)
        s.flush()
        job = create_job(s, dataset_id=ds.id, params={"epochs": 2}, epochs=2,
                         max_attempts=max_attempts)
        s.commit()
        return job.id


def _metrics(epoch: int) -> dict[str, float]:
    return {"epoch": epoch, "train_loss": 1.0 / epoch, "train_acc": 0.5, "test_loss": 0.9,
            "test_acc": 0.6, "images_per_s": 30.0, "seconds": 2.0}


def test_a_job_is_claimed_once(engine: Engine) -> None:
    job_id = _new_job(engine)
    with Session(engine) as s1, Session(engine) as s2:
        first = claim_job(s1, job_id, worker="w1", lease_seconds=LEASE)
        s1.commit()
        second = claim_job(s2, job_id, worker="w2", lease_seconds=LEASE)  # redelivered message
        s2.commit()
        assert first is not None and first.status is JobStatus.RUNNING and first.attempt == 1
        assert first.worker == "w1" and first.started_at is not None
        assert second is None


def test_run_to_success_records_metrics_once(engine: Engine) -> None:
    job_id = _new_job(engine)
    with Session(engine) as s:
        claim_job(s, job_id, worker="w1", lease_seconds=LEASE)
        assert record_epoch(s, job_id, _metrics(1))
        assert not record_epoch(s, job_id, _metrics(1))  # replayed after a resume: ignored
        assert record_epoch(s, job_id, _metrics(2))
        evaluation = {"accuracy": 0.6, "loss": 0.9, "classes": ["a", "b"],
                      "confusion": [[1, 1], [0, 2]], "per_class": []}
        assert finish_job(s, job_id, worker="w1", status=JobStatus.SUCCEEDED,
                          checkpoint_path="/x.pt", evaluation=evaluation)
        s.commit()
        job = get_job(s, job_id)
        assert job.status is JobStatus.SUCCEEDED and job.epoch == 2 and job.finished_at
        assert job.error_kind is None
        assert job.lease_expires_at is None and job.checkpoint_path == "/x.pt"
        assert [m.epoch for m in job.metrics] == [1, 2]
        assert job.evaluation is not None and job.evaluation.confusion == [[1, 1], [0, 2]]
        count = s.scalar(select(func.count()).select_from(EpochMetric))
        assert count == 2
        # Nothing moves a finished job.
        assert claim_job(s, job_id, worker="w2", lease_seconds=LEASE) is None
        with pytest.raises(JobConflict, match="already ended"):
            request_cancel(s, job_id)


def test_validation_metrics_are_recorded_and_null_without_a_split(engine: Engine) -> None:
    job_id = _new_job(engine)
    with Session(engine) as s:
        claim_job(s, job_id, worker="w1", lease_seconds=LEASE)
        record_epoch(s, job_id, {**_metrics(1), "val_loss": 0.7, "val_acc": 0.8,
                                 "val_macro_f1": 0.75})
        record_epoch(s, job_id, {**_metrics(2), "val_loss": None, "val_acc": None,
                                 "val_macro_f1": None})
        s.commit()
        rows = get_job(s, job_id).metrics
        assert [(m.val_loss, m.val_acc, m.val_macro_f1) for m in rows] == [
            (0.7, 0.8, 0.75), (None, None, None)]


def test_a_worker_that_lost_its_lease_cannot_write_the_outcome(engine: Engine) -> None:
    job_id = _new_job(engine)
    start = utcnow()
    with Session(engine) as s:
        claim_job(s, job_id, worker="w1", lease_seconds=LEASE, now=start)
        s.commit()
        later = start + timedelta(seconds=LEASE + 1)
        assert requeue_expired(s, now=later) == [job_id]
        s.commit()
        job = get_job(s, job_id)
        assert job.status is JobStatus.QUEUED and job.worker is None
        assert "stopped responding" in (job.error or "")
        assert not heartbeat(s, job_id, worker="w1", lease_seconds=LEASE)
        assert not finish_job(s, job_id, worker="w1", status=JobStatus.SUCCEEDED)
        again = claim_job(s, job_id, worker="w2", lease_seconds=LEASE, now=later)
        s.commit()
        assert again is not None and again.attempt == 2 and again.worker == "w2"


def test_heartbeat_keeps_the_lease_alive(engine: Engine) -> None:
    job_id = _new_job(engine)
    start = utcnow()
    with Session(engine) as s:
        claim_job(s, job_id, worker="w1", lease_seconds=LEASE, now=start)
        assert heartbeat(s, job_id, worker="w1", lease_seconds=LEASE,
                         now=start + timedelta(seconds=50))
        s.commit()
        assert requeue_expired(s, now=start + timedelta(seconds=LEASE + 1)) == []
        assert get_job(s, job_id).status is JobStatus.RUNNING


def test_attempts_are_capped_then_failed_with_the_reason(engine: Engine) -> None:
    job_id = _new_job(engine, max_attempts=2)
    now = utcnow()
    with Session(engine) as s:
        for attempt in (1, 2):
            assert claim_job(s, job_id, worker=f"w{attempt}", lease_seconds=LEASE, now=now)
            now += timedelta(seconds=LEASE + 1)
            requeue_expired(s, now=now)
            s.commit()
        job = get_job(s, job_id)
        assert job.status is JobStatus.FAILED
        assert "gave up after 2 attempts" in (job.error or "")
        assert job.error_kind == ErrorKind.CRASHED


def test_a_training_process_that_dies_every_attempt_ends_crashed(engine: Engine) -> None:
    job_id = _new_job(engine, max_attempts=2)
    with Session(engine) as s:
        for attempt in (1, 2):
            assert claim_job(s, job_id, worker="w1", lease_seconds=LEASE)
            released = release_job(s, job_id, worker="w1", error_kind=ErrorKind.CRASHED,
                                   error="training process exited with code -9")
            s.commit()
            job = get_job(s, job_id)
            if attempt == 1:  # another attempt follows; nothing has ended yet
                assert released is JobStatus.QUEUED and job.error_kind is None
        assert released is JobStatus.FAILED and job.error_kind == ErrorKind.CRASHED
        assert job.error == "training process exited with code -9; gave up after 2 attempts"


def test_a_failure_records_its_kind_and_only_a_failure_has_one(engine: Engine) -> None:
    job_id = _new_job(engine)
    with Session(engine) as s:
        claim_job(s, job_id, worker="w1", lease_seconds=LEASE)
        with pytest.raises(ValueError, match="takes an error_kind"):
            finish_job(s, job_id, worker="w1", status=JobStatus.FAILED, error="x")
        with pytest.raises(ValueError, match="takes no error_kind"):
            finish_job(s, job_id, worker="w1", status=JobStatus.SUCCEEDED,
                       error_kind=ErrorKind.CRASHED)
        assert finish_job(s, job_id, worker="w1", status=JobStatus.FAILED,
                          error="PretrainedWeightsMissing: no weights",
                          error_kind=ErrorKind.WEIGHTS_MISSING)
        s.commit()
        job = get_job(s, job_id)
        assert job.error_kind == ErrorKind.WEIGHTS_MISSING
        assert job.error == "PretrainedWeightsMissing: no weights"


def test_cancel_queued_and_running_jobs(engine: Engine) -> None:
    queued, running = _new_job(engine), _new_job(engine)
    with Session(engine) as s:
        assert request_cancel(s, queued).status is JobStatus.CANCELLED
        assert get_job(s, queued).error_kind == ErrorKind.CANCELLED_BY_USER
        claim_job(s, running, worker="w1", lease_seconds=LEASE)
        flagged = request_cancel(s, running)
        assert flagged.status is JobStatus.RUNNING and flagged.cancel_requested
        assert flagged.error_kind is None
        assert finish_job(s, running, worker="w1", status=JobStatus.CANCELLED,
                          error_kind=ErrorKind.CANCELLED_BY_USER)
        s.commit()
        assert get_job(s, running).status is JobStatus.CANCELLED
        assert get_job(s, running).error_kind == ErrorKind.CANCELLED_BY_USER
        assert claim_job(s, queued, worker="w2", lease_seconds=LEASE) is None


def test_a_cancelled_job_whose_training_died_ends_cancelled_by_user(engine: Engine) -> None:
    job_id = _new_job(engine)
    with Session(engine) as s:
        claim_job(s, job_id, worker="w1", lease_seconds=LEASE)
        request_cancel(s, job_id)
        assert release_job(s, job_id, worker="w1", error="training process exited with code 1",
                           error_kind=ErrorKind.CRASHED) is JobStatus.CANCELLED
        s.commit()
        assert get_job(s, job_id).error_kind == ErrorKind.CANCELLED_BY_USER


def test_unknown_job(engine: Engine) -> None:
    with Session(engine) as s, pytest.raises(JobNotFound):
        get_job(s, "nope")


def test_a_recorded_cancel_wins_over_a_late_success(engine: Engine) -> None:
    """The cancel came while the training was in its final evaluation or export: the job
    ends cancelled though its training finished."""
    job_id = _new_job(engine)
    with Session(engine) as s:
        claim_job(s, job_id, worker="w1", lease_seconds=LEASE)
        request_cancel(s, job_id)
        assert not finish_job(s, job_id, worker="w1", status=JobStatus.SUCCEEDED,
                              checkpoint_path="/x.pt")
        assert finish_job(s, job_id, worker="w1", status=JobStatus.CANCELLED,
                          error_kind=ErrorKind.CANCELLED_BY_USER)
        s.commit()
        job = get_job(s, job_id)
        assert job.status is JobStatus.CANCELLED and job.checkpoint_path is None


def test_a_cancel_of_a_job_that_ended_meanwhile_is_refused(engine: Engine) -> None:
    """The API read the job running, then it succeeded before the cancel was written: the
    cancel is refused (409), not accepted and then lost."""
    job_id = _new_job(engine)
    with Session(engine) as api, Session(engine) as worker:
        claim_job(worker, job_id, worker="w1", lease_seconds=LEASE)
        worker.commit()
        seen = get_job(api, job_id)  # held: the API's session still takes it as running
        assert seen.status is JobStatus.RUNNING
        assert finish_job(worker, job_id, worker="w1", status=JobStatus.SUCCEEDED)
        worker.commit()
        with pytest.raises(JobConflict, match="already ended"):
            request_cancel(api, job_id)
        api.rollback()
        assert not get_job(api, job_id).cancel_requested
