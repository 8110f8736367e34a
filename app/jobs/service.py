"""The job state machine, in one place: every status change goes through these functions.

``queued → running → succeeded | failed | cancelled``; a running job whose worker stopped
heartbeating goes back to ``queued`` (and resumes from its last checkpoint) until it has
used ``max_attempts``, then ends ``failed`` with the reason.

Each change is one guarded ``UPDATE ... WHERE status = ...``, so two workers (or a Celery
message delivered twice) can never both claim a job, and a worker that lost its lease can
no longer write its outcome. Functions take a session and never commit: the caller (the
request or the task) commits right after.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, cast

from sqlalchemy import CursorResult, Executable, func, select, update
from sqlalchemy.orm import Session

from app.datasets import service as datasets
from app.db.models import Dataset, EpochMetric, ErrorKind, Evaluation, Job, JobKind, JobStatus
from app.db.session import lock_for_writing
from app.engine.config import TrainConfig
from app.jobs.queues import queue_for

DEFAULT_MAX_ATTEMPTS = 3
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED}
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class JobNotFound(LookupError):
    pass


class JobConflict(ValueError):
    """The job is not in a state that allows this (e.g. cancelling a finished job)."""


JOB_INIT_PREFIX = "job:"
JOB_INIT_PATTERN = r"imagenet|scratch|job:[0-9a-f]{32}"


def source_job_id(init: str) -> str | None:
    """The job a ``job:<id>`` start names, or None for ``imagenet`` and ``scratch``: the one
    place the ``job:<id>`` syntax is read."""
    return init[len(JOB_INIT_PREFIX):] if init.startswith(JOB_INIT_PREFIX) else None


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def create_job(
    session: Session,
    *,
    dataset_id: str | None,
    params: dict[str, Any],
    epochs: int,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    kind: JobKind = JobKind.TRAIN,
    model_id: str | None = None,
    job_id: str | None = None,
) -> Job:
    """``job_id``: an id chosen beforehand (a predict job's photos are stored under it
    before its row is written); else a new one."""
    job = Job(
        id=job_id or uuid.uuid4().hex, dataset_id=dataset_id, status=JobStatus.QUEUED,
        params=params, epochs=epochs, epoch=0, attempt=0, max_attempts=max_attempts,
        cancel_requested=False, kind=kind, model_id=model_id,
    )
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(f"job {job_id} not found")
    return job


def _rowcount(session: Session, stmt: Executable) -> int:
    """Rows an UPDATE changed (what the guarded transitions check)."""
    return cast(CursorResult[Any], session.execute(stmt)).rowcount


def _transition(
    session: Session,
    job_id: str,
    *,
    to: JobStatus,
    where: list[Any],
    values: dict[str, Any],
) -> bool:
    allowed_from = [s for s, targets in TRANSITIONS.items() if to in targets]
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status.in_(allowed_from), *where)
        .values(status=to, **values)
        .execution_options(synchronize_session=False)
    )
    changed = _rowcount(session, stmt) == 1
    if changed:
        session.expire_all()
    return changed


def claim_job(
    session: Session, job_id: str, *, worker: str, lease_seconds: float, now: datetime | None = None
) -> Job | None:
    """Take a queued job for ``worker``. ``None`` when someone else has it, it has ended,
    or it was cancelled (then it is marked so). A job past its attempts ends ``failed``
    (``crashed``: its training died every time)."""
    now = now or utcnow()
    job = get_job(session, job_id)
    if job.status is JobStatus.QUEUED and job.cancel_requested:
        _transition(session, job_id, to=JobStatus.CANCELLED, where=[],
                    values={"finished_at": now,
                            "error_kind": ErrorKind.CANCELLED_BY_USER.value})
        return None
    if job.status is JobStatus.QUEUED and job.attempt >= job.max_attempts:
        _transition(session, job_id, to=JobStatus.FAILED, where=[Job.status == JobStatus.QUEUED],
                    values={"finished_at": now, "error_kind": ErrorKind.CRASHED.value,
                            "error": job.error or f"gave up after {job.attempt} attempts"})
        return None
    claimed = _transition(
        session, job_id, to=JobStatus.RUNNING,
        where=[Job.status == JobStatus.QUEUED, Job.attempt < Job.max_attempts,
               Job.cancel_requested.is_(False)],
        values={"worker": worker, "attempt": Job.attempt + 1, "heartbeat_at": now,
                "lease_expires_at": now + timedelta(seconds=lease_seconds),
                "started_at": now if job.started_at is None else job.started_at},
    )
    return get_job(session, job_id) if claimed else None


def heartbeat(
    session: Session, job_id: str, *, worker: str, lease_seconds: float,
    now: datetime | None = None,
) -> bool:
    """Extend ``worker``'s lease. False when the job is no longer this worker's to run."""
    now = now or utcnow()
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.worker == worker)
        .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    return _rowcount(session, stmt) == 1


def record_epoch(session: Session, job_id: str, metrics: dict[str, Any]) -> bool:
    """Store one finished epoch. Idempotent: an epoch already recorded (a resumed run
    replaying it) is left alone. Returns whether a row was added."""
    epoch = int(metrics["epoch"])
    exists = session.scalar(
        select(EpochMetric.id).where(EpochMetric.job_id == job_id, EpochMetric.epoch == epoch)
    )
    if exists is not None:
        return False
    fields = ("train_loss", "train_acc", "test_loss", "test_acc", "images_per_s", "seconds")
    optional = ("val_loss", "val_acc", "val_macro_f1")  # None without a validation split
    session.add(EpochMetric(
        job_id=job_id, epoch=epoch, **{k: float(metrics[k]) for k in fields},
        **{k: None if metrics.get(k) is None else float(metrics[k]) for k in optional}))
    session.execute(
        update(Job).where(Job.id == job_id, Job.epoch < epoch).values(epoch=epoch,
                                                                        epoch_fraction=0.0)
        .execution_options(synchronize_session=False)
    )
    session.flush()
    return True


def record_progress(session: Session, job_id: str, *, worker: str, epoch: int,
                    fraction: float) -> None:
    """How far epoch ``epoch`` (1-based) is; ignored once that epoch is recorded."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.worker == worker,
               Job.epoch == epoch - 1)
        .values(epoch_fraction=min(1.0, max(0.0, float(fraction))))
        .execution_options(synchronize_session=False)
    )


def finish_job(
    session: Session,
    job_id: str,
    *,
    worker: str,
    status: JobStatus,
    error: str | None = None,
    error_kind: ErrorKind | None = None,
    checkpoint_path: str | None = None,
    evaluation: dict[str, Any] | None = None,
    exports: dict[str, Any] | None = None,
    selected_epoch: int | None = None,
    note: str | None = None,
    now: datetime | None = None,
) -> bool:
    """End a running job held by ``worker``. False if the worker had lost it meanwhile, or
    for ``succeeded`` when a cancel was recorded first: a cancel the API accepted always
    wins, so the caller ends the job ``cancelled`` instead.
    ``error_kind``: why it did not succeed (required then, and only then).
    ``selected_epoch``: the epoch whose model the checkpoint holds; ``note``: e.g. that it
    stopped early."""
    if not status.is_terminal:
        raise ValueError(f"{status.value} is not a final status")
    if (status is JobStatus.SUCCEEDED) != (error_kind is None):
        raise ValueError(f"a {status.value} job takes "
                         + ("no error_kind" if error_kind else "an error_kind"))
    not_cancelled = [Job.cancel_requested.is_(False)] if status is JobStatus.SUCCEEDED else []
    done = _transition(
        session, job_id, to=status,
        where=[Job.status == JobStatus.RUNNING, Job.worker == worker, *not_cancelled],
        values={"finished_at": now or utcnow(), "error": error,
                "error_kind": error_kind.value if error_kind else None,
                "checkpoint_path": checkpoint_path, "lease_expires_at": None,
                "selected_epoch": selected_epoch, "note": note,
                **({"exports": exports} if exports else {})},
    )
    if done and evaluation is not None:
        session.add(Evaluation(
            job_id=job_id, accuracy=float(evaluation["accuracy"]), loss=float(evaluation["loss"]),
            classes=list(evaluation["classes"]), confusion=evaluation["confusion"],
            per_class=evaluation["per_class"], calibration=evaluation.get("calibration"),
        ))
        session.flush()
    return done


def release_job(
    session: Session, job_id: str, *, worker: str, error: str,
    error_kind: ErrorKind = ErrorKind.CRASHED, interrupted: bool = False,
    now: datetime | None = None,
) -> JobStatus | None:
    """The training of ``worker``'s running job died: back to ``queued`` for another attempt
    (it resumes from its last epoch), or ``failed`` with ``error_kind`` once out of attempts.
    ``interrupted``: the worker is shutting down on purpose, so the attempt is handed back,
    not used up. ``None`` if the worker no longer held the job."""
    job = get_job(session, job_id)
    guard = [Job.status == JobStatus.RUNNING, Job.worker == worker]
    values: dict[str, Any]
    if job.cancel_requested:
        to = JobStatus.CANCELLED
        values = {"finished_at": now or utcnow(),
                  "error_kind": ErrorKind.CANCELLED_BY_USER.value}
    elif interrupted:
        to, values = JobStatus.QUEUED, {"worker": None, "error": error,
                                        "attempt": Job.attempt - 1}
    elif job.attempt >= job.max_attempts:
        to = JobStatus.FAILED
        values = {"finished_at": now or utcnow(), "error_kind": error_kind.value,
                  "error": f"{error}; gave up after {job.attempt} attempts"}
    else:
        to, values = JobStatus.QUEUED, {"worker": None, "error": error}
    if not _transition(session, job_id, to=to, where=guard,
                       values={"lease_expires_at": None, **values}):
        return None
    return to


def request_cancel(session: Session, job_id: str, *, now: datetime | None = None) -> Job:
    """A queued job ends ``cancelled`` at once; a running one is flagged for its worker,
    which then ends it ``cancelled`` whatever it was doing (even its final evaluation or
    export). :class:`JobConflict` when it ended first: a cancel is never accepted and lost."""
    job = get_job(session, job_id)
    if job.status.is_terminal:
        raise JobConflict(f"job {job_id} has already ended ({job.status.value})")
    if job.status is JobStatus.QUEUED and _transition(
        session, job_id, to=JobStatus.CANCELLED, where=[Job.status == JobStatus.QUEUED],
        values={"finished_at": now or utcnow(), "cancel_requested": True,
                "error_kind": ErrorKind.CANCELLED_BY_USER.value},
    ):
        return get_job(session, job_id)
    flagged = _rowcount(session, update(Job).where(Job.id == job_id, Job.status.in_(ACTIVE))
                        .values(cancel_requested=True)
                        .execution_options(synchronize_session=False))
    session.expire_all()
    job = get_job(session, job_id)
    if not flagged:  # it ended between the read above and this write
        raise JobConflict(f"job {job_id} has already ended ({job.status.value})")
    return job


def requeue_expired(session: Session, *, now: datetime | None = None) -> list[str]:
    """Running jobs whose lease ran out (their worker died): back to ``queued`` for another
    attempt, or ``failed`` (``crashed``) once out of attempts. Returns the ids to enqueue
    again."""
    now = now or utcnow()
    expired = session.scalars(
        select(Job).where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
    ).all()
    requeued = []
    for job in expired:
        lost = job.lease_expires_at
        guard = [Job.status == JobStatus.RUNNING, Job.lease_expires_at == lost]
        reason = f"worker {job.worker} stopped responding (attempt {job.attempt})"
        if job.cancel_requested:
            _transition(session, job.id, to=JobStatus.CANCELLED, where=guard,
                        values={"finished_at": now, "lease_expires_at": None,
                                "error_kind": ErrorKind.CANCELLED_BY_USER.value})
        elif job.attempt >= job.max_attempts:
            _transition(session, job.id, to=JobStatus.FAILED, where=guard,
                        values={"finished_at": now, "lease_expires_at": None,
                                "error_kind": ErrorKind.CRASHED.value,
                                "error": f"{reason}; gave up after {job.attempt} attempts"})
        elif _transition(session, job.id, to=JobStatus.QUEUED, where=guard,
                         values={"worker": None, "lease_expires_at": None, "error": reason,
                                 "sent_at": now}):
            requeued.append(job.id)
    return requeued


def claim_resend(session: Session, *, queued_before: datetime, training_queue: str,
                 serving: Collection[str], now: datetime | None = None) -> list[Job]:
    """Queued jobs whose message was last sent before ``queued_before`` and that nobody has
    claimed since: a broker restarted without persistence (Redis, by default) loses its
    messages, and nothing else would ever send them again. Each is marked sent ``now`` by a
    guarded update, so of several workers looking at once one sends it; the caller sends
    the returned jobs. Only jobs routed to a queue in ``serving`` (the caller's) are taken.
    A duplicate message is harmless: only one claim of a job succeeds."""
    now = now or utcnow()
    last_sent = func.coalesce(Job.sent_at, Job.created_at)
    due = session.scalars(select(Job).where(Job.status == JobStatus.QUEUED,
                                            last_sent < queued_before)).all()
    won = []
    for job in due:
        if queue_for(training_queue, job.params) not in serving:
            continue
        same = Job.sent_at.is_(None) if job.sent_at is None else Job.sent_at == job.sent_at
        stmt = (update(Job).where(Job.id == job.id, Job.status == JobStatus.QUEUED, same)
                .values(sent_at=now).execution_options(synchronize_session=False))
        if _rowcount(session, stmt) == 1:
            won.append(job)
    return won


# ---------------------------------------------------------------------------- submission
ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)


class TooManyActiveJobs(RuntimeError):
    """The cap on queued + running jobs is reached (429: retry when one has ended)."""


class InvalidParams(ValueError):
    """The job's parameters are out of range, or its ``init`` names no usable model."""


def submit(
    session: Session, *, dataset_id: str, config: TrainConfig, max_active_jobs: int,
    max_attempts: int, review_labels: bool = False,
) -> Job:
    """Check and store a new queued job: its parameters are in range (the init-dependent
    defaults filled in), the dataset exists, fewer than ``max_active_jobs`` jobs are queued
    or running, and a ``job:<id>`` start names a succeeded job. The caller commits, then
    sends the job to its queue (the worker must find the row before the message).
    ``review_labels``: when it succeeds, its worker queues a label review of it
    (:mod:`app.jobs.reviews`); recorded in its parameters."""
    try:
        config = config.resolved()
    except ValueError as exc:
        raise InvalidParams(str(exc)) from exc
    _serialize_submissions(session)
    _check_split(config, datasets.get_live(session, dataset_id))
    check_capacity(session, max_active_jobs)
    _check_init(session, config.init)
    params = {**config.to_dict(), **({"review_labels": True} if review_labels else {})}
    return create_job(session, dataset_id=dataset_id, params=params,
                      epochs=config.epochs, max_attempts=max_attempts)


def check_capacity(session: Session, max_active_jobs: int) -> None:
    """:class:`TooManyActiveJobs` when ``max_active_jobs`` jobs (of any kind) are queued or
    running. Under :func:`_serialize_submissions`, so that the count stays true until the
    new job's row is committed."""
    active = session.scalar(select(func.count()).select_from(Job).where(Job.status.in_(ACTIVE)))
    if active is not None and active >= max_active_jobs:
        raise TooManyActiveJobs(f"{active} jobs are queued or running, the limit "
                                f"(MAX_ACTIVE_JOBS) is {max_active_jobs}; retry when one has "
                                "ended")


# Any number, the same for every API process: the key of Postgres's submission lock.
SUBMISSION_LOCK_KEY = 0x686F74646F67  # "hotdog"


def _serialize_submissions(session: Session) -> None:
    """Make the cap's count-then-insert atomic: one submission at a time holds this until
    its transaction ends, so a second one counts after the first one's row is committed."""
    lock_for_writing(session, SUBMISSION_LOCK_KEY)


def _check_split(config: TrainConfig, dataset: Dataset) -> None:
    """Refuse what the dataset's validation split cannot give: a held-out share of a class
    that has a single training image; selection or early stopping without any split."""
    if "val" in dataset.counts:
        return  # the dataset's own val/ folder
    if config.val_fraction <= 0:
        wants = [what for what, asked in (("select 'best'", config.select == "best"),
                                          ("early_stopping_patience",
                                           config.early_stopping_patience > 0)) if asked]
        if wants:
            raise InvalidParams(f"{' and '.join(wants)} need(s) a validation split: the "
                                "dataset has no val/ folder and val_fraction is 0")
        return
    single = [c for c, n in dataset.counts.get("train", {}).items() if n < 2]
    if single:
        raise InvalidParams(
            f"val_fraction: class(es) {', '.join(single)} have a single training image, too "
            "few to hold one out for validation; set val_fraction 0 or upload a val/ folder")


def _check_init(session: Session, init: str) -> None:
    source_id = source_job_id(init)
    if source_id is None:
        return
    source = session.get(Job, source_id)
    if source is None:
        raise InvalidParams(f"init: job {source_id} not found")
    if (problem := source.model_problem()) is not None:
        raise InvalidParams(f"init: {problem}: it cannot start another job")


def fail_unqueued(session: Session, job_id: str, *, error: str) -> bool:
    """A queued job whose message the broker refused ends ``failed`` (``queue_unreachable``)
    rather than waiting for a message that never comes."""
    return _transition(session, job_id, to=JobStatus.FAILED, where=[Job.status == JobStatus.QUEUED],
                       values={"finished_at": utcnow(), "error": error,
                               "error_kind": ErrorKind.QUEUE_UNREACHABLE.value})


# ---------------------------------------------------------------------------- reading
def list_jobs(
    session: Session, *, status: JobStatus | None, dataset_id: str | None, limit: int,
    offset: int, include_deleted: bool = False,
) -> Sequence[Job]:
    """Newest first, optionally only those with ``status`` or on ``dataset_id``; deleted
    jobs only with ``include_deleted``."""
    q = select(Job) if include_deleted else select(Job).where(Job.deleted_at.is_(None))
    if status is not None:
        q = q.where(Job.status == status)
    if dataset_id is not None:
        q = q.where(Job.dataset_id == dataset_id)
    return session.scalars(q.order_by(Job.created_at.desc(), Job.id).limit(limit)
                           .offset(offset)).all()


def epoch_metrics(session: Session, job_ids: list[str]) -> dict[str, list[EpochMetric]]:
    """Each job's finished epochs in order (one query for all of them)."""
    out: dict[str, list[EpochMetric]] = {i: [] for i in job_ids}
    if job_ids:
        for m in session.scalars(select(EpochMetric).where(EpochMetric.job_id.in_(job_ids))
                                 .order_by(EpochMetric.job_id, EpochMetric.epoch)):
            out[m.job_id].append(m)
    return out


def get_evaluation(session: Session, job_id: str) -> Evaluation:
    job = get_job(session, job_id)
    if job.evaluation is None:
        raise JobConflict(f"job {job_id} has no evaluation ({job.status.value}); it is "
                          "written when the job succeeds")
    return job.evaluation
