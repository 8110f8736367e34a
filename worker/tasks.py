"""The Celery task of a training job. It only claims the job, runs the training process,
records what it reports and the outcome; :func:`run_job_now` is the same without Celery."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from celery.exceptions import Reject
from celery.signals import worker_ready, worker_shutting_down
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from app.core.config import Settings, get_settings
from app.core.logs import job_context
from app.db.models import ErrorKind, Job, JobStatus
from app.db.session import make_engine
from app.engine import TrainConfig
from app.jobs.broker import celery_app
from app.jobs.queues import queue_for
from app.jobs.service import (
    JobNotFound,
    claim_job,
    finish_job,
    get_job,
    heartbeat,
    record_epoch,
    record_progress,
    release_job,
    requeue_expired,
    source_job_id,
)
from worker import presence
from worker.protocol import (
    Cancelled,
    Checkpoint,
    Done,
    Epoch,
    Error,
    Outcome,
    Progress,
    Start,
)
from worker.runner import (
    NotEnoughDevices,
    TrainingProcess,
    cuda_device_count,
    training_processes,
)

log = logging.getLogger(__name__)


@celery_app.task(name="hotdog.run_job")
def run_job(job_id: str) -> str:
    status = run_job_now(job_id)
    if status == INTERRUPTED:
        # The message goes back to the queue (acks_late): the next worker resumes the job.
        raise Reject(f"job {job_id}: this worker is shutting down", requeue=True)
    return status


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# Set when this worker process is shutting down (Ctrl-C, SIGTERM, a deploy): a running job
# is stopped, handed back to the queue and resumes from its last epoch on the next worker.
SHUTTING_DOWN = threading.Event()
INTERRUPTED = "interrupted"


@worker_shutting_down.connect
def _on_shutdown(**_kwargs: Any) -> None:
    SHUTTING_DOWN.set()


def run_job_now(job_id: str, *, settings: Settings | None = None) -> str:
    """Run ``job_id`` to its end; returns its final status (or why it was not run), or
    ``INTERRUPTED`` when the worker is shutting down and the job was handed back."""
    if SHUTTING_DOWN.is_set():
        return INTERRUPTED  # a message fetched while stopping: leave the job for the next
    with job_context(job_id):  # every line logged for this job carries its id
        return _run_job(job_id, settings or get_settings())


def _run_job(job_id: str, settings: Settings) -> str:
    engine = make_engine(settings.db_url)
    try:
        while True:
            status = _attempt(engine, settings, job_id, worker_name())
            if status == INTERRUPTED:
                return status
            # A training process that died is retried here, resuming from its last epoch.
            if status != JobStatus.QUEUED.value or SHUTTING_DOWN.is_set():
                return status
    except JobNotFound:
        log.warning("job %s does not exist; message dropped", job_id)
        return "unknown"
    finally:
        engine.dispose()


def _attempt(engine: Engine, settings: Settings, job_id: str, name: str) -> str:
    """One attempt at the job: its status afterwards, or ``INTERRUPTED``."""
    claimed = _claim(engine, settings, job_id, name)
    if isinstance(claimed, str):
        return claimed
    proc = _launch(settings, claimed)
    outcome, interrupted = _consume_events(engine, settings, claimed, proc)
    return _record_outcome(engine, claimed, outcome, interrupted=interrupted,
                           returncode=proc.returncode)


@dataclass(frozen=True)
class Claim:
    """A job this worker holds for one attempt, and what its training needs."""

    job_id: str
    worker: str
    attempt: int
    config: TrainConfig  # a job:<id> start resolved to that job's model file
    dataset_dir: Path
    processes: int  # training processes (see worker.runner.training_processes)


def _claim(engine: Engine, settings: Settings, job_id: str, name: str) -> Claim | str:
    """Take the job for this attempt, or the job's status when there is nothing to run
    (someone else has it, it has ended, or it failed here at once)."""
    with Session(engine) as s:
        job = claim_job(s, job_id, worker=name, lease_seconds=settings.job_lease_seconds)
        s.commit()
        if job is None:
            status = get_job(s, job_id).status.value
            log.info("job %s not claimed (status %s)", job_id, status)
            return status
        config = TrainConfig.from_dict(job.params)
        source_id = source_job_id(config.init)
        if source_id is not None:
            config = replace(config, init=_checkpoint_of(s, source_id))
        try:
            processes = training_processes(config.gpus, cuda_device_count(),
                                           settings.cpu_ddp_processes)
        except NotEnoughDevices as exc:  # no other attempt would do better on this worker
            finish_job(s, job_id, worker=name, status=JobStatus.FAILED, error=str(exc),
                       error_kind=ErrorKind.NOT_ENOUGH_DEVICES)
            s.commit()
            log.warning("job %s failed: %s", job_id, exc)
            return get_job(s, job_id).status.value
        return Claim(job_id=job_id, worker=name, attempt=job.attempt, config=config,
                     dataset_dir=settings.dataset_dir(job.dataset_id), processes=processes)


def _launch(settings: Settings, claim: Claim) -> TrainingProcess:
    job_dir = settings.job_dir(claim.job_id)
    log.info("job %s attempt %d: training on %s in %d process(es)", claim.job_id, claim.attempt,
             claim.dataset_dir, claim.processes)
    return TrainingProcess(data_dir=claim.dataset_dir, config=claim.config,
                           out=job_dir / "model.pt", epoch_checkpoint=job_dir / "last.pt",
                           export_onnx=settings.export_onnx, processes=claim.processes).start()


def _consume_events(engine: Engine, settings: Settings, claim: Claim,
                    proc: TrainingProcess) -> tuple[Outcome | None, bool]:
    """Record the run's epochs and progress while the watcher holds the lease; returns how
    the run ended (None: it died without saying) and whether this worker stopped it to
    shut down."""
    watcher = _Watcher(engine, settings, claim.job_id, claim.worker, proc)
    watcher.start()
    outcome: Outcome | None = None
    try:
        with Session(engine) as s:
            for event in proc.events():
                match event:
                    case Epoch(metrics=metrics):
                        record_epoch(s, claim.job_id, metrics.to_dict())
                        s.commit()
                    case Progress(epoch=epoch, fraction=fraction):
                        record_progress(s, claim.job_id, worker=claim.worker, epoch=epoch,
                                        fraction=fraction)
                        s.commit()
                    case Done() | Cancelled() | Error():
                        outcome = event
                    case Start() | Checkpoint():
                        pass
    finally:
        watcher.stop()
    return outcome, watcher.interrupted


def _record_outcome(engine: Engine, claim: Claim, outcome: Outcome | None, *,
                    interrupted: bool, returncode: int | None) -> str:
    """Write how the attempt ended; the job's status afterwards, or ``INTERRUPTED``."""
    job_id, name = claim.job_id, claim.worker
    with Session(engine) as s:
        match outcome:
            case None if interrupted:
                released = release_job(s, job_id, worker=name, interrupted=True,
                                       error="its worker shut down; it resumes on the next one")
                s.commit()
                log.info("job %s handed back to the queue: this worker is shutting down", job_id)
                if released is JobStatus.QUEUED:
                    return INTERRUPTED
            case None:  # the training process died: another attempt, or crashed
                released = release_job(s, job_id, worker=name, error_kind=ErrorKind.CRASHED,
                                       error=f"training process exited with code {returncode}")
                s.commit()
                if released is not None:
                    return released.value
            case Done():
                finish_job(s, job_id, worker=name, status=JobStatus.SUCCEEDED,
                           checkpoint_path=outcome.checkpoint, evaluation=outcome.evaluation,
                           exports=outcome.exports)
                s.commit()
            case Cancelled():
                finish_job(s, job_id, worker=name, status=JobStatus.CANCELLED,
                           error_kind=ErrorKind.CANCELLED_BY_USER)
                s.commit()
            case Error():
                finish_job(s, job_id, worker=name, status=JobStatus.FAILED, error=outcome.text,
                           error_kind=outcome.kind)
                s.commit()
        return get_job(s, job_id).status.value


def _checkpoint_of(s: Session, source_id: str) -> str:
    """The model file a ``job:<id>`` start uses; a missing one fails the job readably."""
    source = s.get(Job, source_id)
    path = source.checkpoint_path if source is not None else None
    # The engine reports a missing or unreadable file as a CheckpointError naming it.
    return path or f"<job {source_id} has no checkpoint>"


SHUTDOWN_POLL_SECONDS = 0.25


class _Watcher(threading.Thread):
    """Renews the job's lease, passes a cancel request on to the training process, and stops
    that process when the worker shuts down."""

    def __init__(self, engine: Engine, settings: Settings, job_id: str, name: str,
                 proc: TrainingProcess) -> None:
        super().__init__(daemon=True, name=f"watch-{job_id}")
        self.engine, self.settings, self.job_id, self.worker = engine, settings, job_id, name
        self.proc = proc
        self.stopped = threading.Event()
        self.interrupted = False

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=30)

    def _wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when the watch is over (the job ended or the worker
        is shutting down, in which case the training process is stopped)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.stopped.wait(min(left, SHUTDOWN_POLL_SECONDS)):
                return True
            if SHUTTING_DOWN.is_set():
                self.interrupted = True
                self.proc.kill()  # its last epoch checkpoint is intact (atomic writes)
                return True
        return False

    def run(self) -> None:
        with job_context(self.job_id):  # a thread starts without its creator's context
            self._watch()

    def _watch(self) -> None:
        while not self._wait(self.settings.heartbeat_seconds):
            try:
                with Session(self.engine) as s:
                    held = heartbeat(s, self.job_id, worker=self.worker,
                                     lease_seconds=self.settings.job_lease_seconds)
                    cancel = get_job(s, self.job_id).cancel_requested
                    s.commit()
            except Exception:  # a database blip must not kill the job; the lease has slack
                log.exception("heartbeat of job %s failed", self.job_id)
                continue
            if not held:
                log.warning("job %s: lease lost, stopping its training", self.job_id)
                self.proc.kill()
            elif cancel:
                self.proc.cancel()


def requeue_lost_jobs(engine: Engine, settings: Settings) -> list[str]:
    """Put back the jobs whose worker stopped renewing its lease, and enqueue them again."""
    with Session(engine) as s:
        ids = requeue_expired(s)
        s.commit()
        params = {job_id: get_job(s, job_id).params for job_id in ids}
    for job_id in ids:
        log.warning("job %s lost its worker; queued again", job_id, extra={"job_id": job_id})
        run_job.apply_async(args=[job_id],
                            queue=queue_for(settings.training_queue, params[job_id]))
    return ids


class Reaper(threading.Thread):
    """Runs in every worker: requeues lost jobs every half lease, so a job whose worker
    died is picked up again within about one lease."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True, name="hotdog-reaper")
        self.settings = settings
        self.stopped = threading.Event()

    def run(self) -> None:
        interval = max(1.0, self.settings.job_lease_seconds / 2)
        engine = make_engine(self.settings.db_url)  # one pool for the worker's lifetime
        try:
            while True:
                try:
                    requeue_lost_jobs(engine, self.settings)
                except Exception:
                    log.exception("requeueing lost jobs failed; will retry")
                if self.stopped.wait(interval):
                    return
        finally:
            engine.dispose()


@worker_ready.connect
def _start_reaper(sender: Any = None, **_kwargs: Any) -> None:
    Reaper(get_settings()).start()
    presence.start(get_settings(), worker_name(), sender)
