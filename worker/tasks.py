"""The Celery task of a training job. It only claims the job, runs the training process,
records what it reports and the outcome; :func:`run_job_now` is the same without Celery."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from celery.exceptions import Reject
from celery.signals import worker_ready, worker_shutting_down
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from app.core import joblog
from app.core.config import Settings, get_settings
from app.core.logs import job_context
from app.db.models import ErrorKind, Job, JobKind, JobStatus
from app.db.session import make_engine
from app.engine import TrainConfig
from app.jobs import predictions
from app.jobs.broker import celery_app
from app.jobs.queues import queue_for
from app.jobs.reviews import REVIEW_FILE, submit_review, wants_review
from app.jobs.service import (
    JobConflict,
    JobNotFound,
    claim_job,
    claim_resend,
    finish_job,
    get_job,
    heartbeat,
    record_epoch,
    record_progress,
    release_job,
    requeue_expired,
    source_job_id,
    utcnow,
)
from worker import presence, sweeper
from worker import protocol as ev
from worker.runner import (
    SPARE,
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
    SPARE.close()


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
    try:
        outcome, watcher = _consume_events(engine, settings, claimed, proc)
        return _record_outcome(engine, settings, claimed, outcome, watcher, proc.returncode)
    finally:
        if claimed.predict is not None:
            SPARE.replenish()  # the next predict job's process, started once this one is done


@dataclass(frozen=True)
class Claim:
    """A job this worker holds for one attempt, and what its training needs."""

    job_id: str
    worker: str
    attempt: int
    config: TrainConfig  # a job:<id> start resolved to that job's model file
    dataset_dir: Path
    processes: int  # training processes (see worker.runner.training_processes)
    started_at: datetime  # the job's first start: MAX_JOB_SECONDS counts from it
    evaluate: str | None = None  # an evaluate job: the model file it scores
    # A predict job: what worker.child's predict() needs (model, photos, results; see
    # _predict_spec).
    predict: dict[str, Any] | None = None
    review: dict[str, Any] | None = None  # a review job: what worker.child.review reads


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
        if job.kind is JobKind.PREDICT:  # one process classifies the photos, on any worker
            spec = _predict_spec(s, settings, job)
            return Claim(job_id=job_id, worker=name, attempt=job.attempt, config=config,
                         dataset_dir=Path(spec["photos"]), processes=1,
                         started_at=job.started_at or utcnow(), predict=spec)
        dataset_dir = settings.dataset_dir(job.dataset_id or "")
        if job.kind is JobKind.EVALUATE:  # one process scores the model, on any worker
            return Claim(job_id=job_id, worker=name, attempt=job.attempt, config=config,
                         dataset_dir=dataset_dir, processes=1,
                         started_at=job.started_at or utcnow(),
                         evaluate=_checkpoint_of(s, job.model_id or ""))
        if job.kind is JobKind.REVIEW:  # one process embeds and reviews, on any worker
            return Claim(job_id=job_id, worker=name, attempt=job.attempt, config=config,
                         dataset_dir=dataset_dir, processes=1,
                         started_at=job.started_at or utcnow(),
                         review=_review_spec(s, job, settings))
        source_id = source_job_id(config.init)
        if source_id is not None:
            config = replace(config, init=_checkpoint_of(s, source_id))
        # How to compute, not what: the worker's settings (TRAIN_COMPILE...), not the job's.
        config = replace(config, compile=settings.train_compile,
                         compile_break_even=settings.train_compile_break_even)
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
                     dataset_dir=dataset_dir, processes=processes,
                     started_at=job.started_at or utcnow())


def _predict_spec(s: Session, settings: Settings, job: Job) -> dict[str, Any]:
    """A predict job's model file, photos (its own folder's, or a split of its dataset) and
    where its results go."""
    job_dir = settings.job_dir(job.id)
    from_dataset = job.dataset_id is not None
    return {"model": _checkpoint_of(s, job.model_id or ""), "job_dir": str(job_dir),
            "photos": str(settings.dataset_dir(job.dataset_id) if job.dataset_id is not None
                          else predictions.photos_dir(job_dir)),
            "split": job.params.get("split", "test") if from_dataset else None,
            "results": str(predictions.results_path(job_dir)),
            "summary": str(predictions.summary_path(job_dir)),
            "runtime": str(job.params.get("runtime") or settings.predict_runtime),
            "coverage": bool(job.params.get("coverage", False)),
            "batch_size": int(job.params.get("batch_size") or settings.batch_predict_size)}


def _launch(settings: Settings, claim: Claim) -> TrainingProcess:
    job_dir = settings.job_dir(claim.job_id)
    doing = (f"evaluating {claim.evaluate}" if claim.evaluate else
             "predicting" if claim.predict else
             "reviewing labels" if claim.review else "training")
    job_dir.mkdir(parents=True, exist_ok=True)  # the job's log starts here
    log.info("job %s attempt %d: %s on %s in %d process(es)", claim.job_id, claim.attempt,
             doing, claim.dataset_dir, claim.processes)
    return TrainingProcess(data_dir=claim.dataset_dir, config=claim.config,
                           out=job_dir / "model.pt", epoch_checkpoint=job_dir / "last.pt",
                           export_onnx=settings.export_onnx,
                           export_int8=settings.export_int8, processes=claim.processes,
                           log=settings.job_log(claim.job_id), log_bytes=settings.job_log_bytes,
                           evaluate=Path(claim.evaluate) if claim.evaluate else None,
                           predict=claim.predict, review=claim.review).start()


def _consume_events(engine: Engine, settings: Settings, claim: Claim,
                    proc: TrainingProcess) -> tuple[ev.Outcome | None, _Watcher]:
    """Record the run's epochs and progress while the watcher holds the lease; returns how
    the run ended (None: it died without saying) and the watcher, which says whether it
    stopped the run, and why."""
    watcher = _Watcher(engine, settings, claim, proc)
    watcher.start()
    outcome: ev.Outcome | None = None
    try:
        with Session(engine) as s:
            for event in proc.events():
                watcher.heard(event)
                match event:
                    case ev.Epoch(metrics=metrics):
                        record_epoch(s, claim.job_id, metrics.to_dict())
                        s.commit()
                    case ev.Progress(epoch=epoch, fraction=fraction):
                        record_progress(s, claim.job_id, worker=claim.worker, epoch=epoch,
                                        fraction=fraction)
                        s.commit()
                    case ev.Done() | ev.Cancelled() | ev.Error():
                        outcome = event
                    case ev.Start() | ev.Checkpoint():
                        pass
    finally:
        watcher.stop()
        _remove_partial_files(settings.job_dir(claim.job_id))
    return outcome, watcher


def _remove_partial_files(job_dir: Path) -> None:
    """The temp files of writes a killed training process left half done (checkpoints and
    exports are written to ``.<name>.*.tmp`` and renamed): nobody will finish them."""
    for tmp in job_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _record_outcome(engine: Engine, settings: Settings, claim: Claim,
                    outcome: ev.Outcome | None, watcher: _Watcher, returncode: int | None
                    ) -> str:
    """Write how the attempt ended; the job's status afterwards, or ``INTERRUPTED``."""
    job_id, name = claim.job_id, claim.worker
    with Session(engine) as s:
        match outcome:
            case None if watcher.interrupted:
                released = release_job(s, job_id, worker=name, interrupted=True,
                                       error="its worker shut down; it resumes on the next one")
                s.commit()
                log.info("job %s handed back to the queue: this worker is shutting down", job_id)
                if released is JobStatus.QUEUED:
                    return INTERRUPTED
            case None if watcher.killed_for is ErrorKind.TIMEOUT:
                log.warning("job %s failed: %s", job_id, watcher.reason)
                finish_job(s, job_id, worker=name, status=JobStatus.FAILED,
                           error_kind=ErrorKind.TIMEOUT, error=watcher.reason)
                s.commit()
            case None:  # the training process died or hung: another attempt, or failed
                released = release_job(
                    s, job_id, worker=name, error_kind=watcher.killed_for or ErrorKind.CRASHED,
                    error=watcher.reason or f"training process exited with code {returncode}")
                if released is JobStatus.CANCELLED:  # stopped by force: it did not listen
                    log.info("job %s cancelled (its training process was stopped)", job_id)
                elif released is not None:
                    log.warning("job %s: its training process ended without an outcome (exit "
                                "code %s)%s; the job is %s now", job_id, returncode,
                                f": {watcher.reason}" if watcher.reason else "",
                                released.value)
                s.commit()
                if released is not None:
                    return released.value
            case ev.Done():
                log.info("job %s done: %s", job_id, "evaluated" if claim.evaluate else
                         "predicted" if claim.predict else
                         "reviewed" if claim.review else f"kept epoch {outcome.selected_epoch}")
                # A cancel recorded while it evaluated or exported wins (finish_job refuses
                # to mark a job with a cancel request succeeded).
                # An evaluate job's result is its evaluation, a predict job's its results
                # file, a review job's its label_review.json: the model file is not their own.
                checkpoint = (None if claim.evaluate or claim.predict or claim.review
                              else outcome.checkpoint)
                follow_up = None
                if finish_job(s, job_id, worker=name, status=JobStatus.SUCCEEDED,
                              checkpoint_path=checkpoint,
                              evaluation=(None if claim.predict or claim.review
                                          else outcome.evaluation),
                              exports=outcome.exports,
                              selected_epoch=outcome.selected_epoch, note=outcome.note):
                    # Asked for with the job (review_labels): queued in the same transaction
                    # as the success, so that no crash can lose it.
                    follow_up = _follow_up_review(s, settings, job_id)
                else:
                    finish_job(s, job_id, worker=name, status=JobStatus.CANCELLED,
                               error_kind=ErrorKind.CANCELLED_BY_USER)
                s.commit()
                if follow_up is not None:
                    _send(settings, follow_up)
            case ev.Cancelled():
                log.info("job %s cancelled", job_id)
                finish_job(s, job_id, worker=name, status=JobStatus.CANCELLED,
                           error_kind=ErrorKind.CANCELLED_BY_USER)
                s.commit()
            case ev.Error():
                # Logged before the status is: a reader following the log sees it.
                log.warning("job %s failed (%s): %s", job_id, outcome.kind.value, outcome.text)
                finish_job(s, job_id, worker=name, status=JobStatus.FAILED, error=outcome.text,
                           error_kind=outcome.kind)
                s.commit()
        status = get_job(s, job_id).status
        if claim.predict is not None and status.is_terminal:
            predictions.remove_uploaded_photos(Path(claim.predict["job_dir"]))
        return status.value


def _review_spec(s: Session, job: Job, settings: Settings) -> dict[str, Any]:
    """What a review job's process needs: the model file under review, where it started
    (``imagenet``, ``scratch``, or a ``job:<id>`` start's model file, and that start's name),
    the cross-validation's folds and seed, and where the result goes."""
    params = job.params
    init = str(params.get("init") or "scratch")
    source_id = source_job_id(init)
    return {"model": _checkpoint_of(s, job.model_id or ""),
            "start": _checkpoint_of(s, source_id) if source_id else init, "start_name": init,
            "folds": int(params.get("folds", settings.review_folds)),
            "seed": int(params.get("seed", 0)),
            "max_listed": int(params.get("max_listed", settings.review_max_listed)),
            "out": str(settings.job_dir(job.id) / REVIEW_FILE)}


def _follow_up_review(s: Session, settings: Settings, job_id: str) -> Job | None:
    """The label review a training job submitted with ``review_labels`` asked for, added to
    the session (the caller commits and sends it); None when it asked for none."""
    job = get_job(s, job_id)
    if not wants_review(job):
        return None
    try:
        review = submit_review(s, model_id=job_id, max_active_jobs=None,
                               max_attempts=settings.max_attempts, folds=settings.review_folds,
                               max_listed=settings.review_max_listed)
    except (JobConflict, LookupError) as exc:  # one is already queued; the dataset is gone
        log.warning("job %s: no follow-up label review: %s", job_id, exc)
        return None
    log.info("job %s succeeded; its label review is job %s", job_id, review.id)
    return review


def _send(settings: Settings, job: Job) -> None:
    """Send a committed queued job to its queue. A broker that refuses it now leaves it
    queued: the workers send such jobs again after QUEUED_RESEND_SECONDS."""
    try:
        run_job.apply_async(args=[job.id], queue=queue_for(settings.training_queue, job.params))
    except Exception:
        log.exception("job %s could not be sent now; it will be sent again", job.id)


def _checkpoint_of(s: Session, source_id: str) -> str:
    """The model file a ``job:<id>`` start uses; a missing one fails the job readably."""
    source = s.get(Job, source_id)
    path = source.checkpoint_path if source is not None else None
    # The engine reports a missing or unreadable file as a CheckpointError naming it.
    return path or f"<job {source_id} has no checkpoint>"


SHUTDOWN_POLL_SECONDS = 0.25


class _Watcher(threading.Thread):
    """Watches one attempt's training process: renews the job's lease every heartbeat;
    every ``cancel_poll_seconds`` passes a cancel request on (and kills a process that has
    not stopped by the next look) and kills a process that stalled or ran past
    ``max_job_seconds``; stops it when the worker shuts down."""

    def __init__(self, engine: Engine, settings: Settings, claim: Claim,
                 proc: TrainingProcess) -> None:
        super().__init__(daemon=True, name=f"watch-{claim.job_id}")
        self.engine, self.settings, self.proc = engine, settings, proc
        self.job_id, self.worker = claim.job_id, claim.worker
        self.deadline = claim.started_at + timedelta(seconds=settings.max_job_seconds)
        self.stopped = threading.Event()
        self.interrupted = False
        # Why the watcher killed the process (stalled, timeout), and the job's error then.
        self.killed_for: ErrorKind | None = None
        self.reason: str | None = None
        self.last_heard = time.monotonic()
        self.stall_after = settings.stall_seconds
        self.cancel_sent: float | None = None

    def heard(self, event: ev.Event) -> None:
        """The training process said something: it is alive (called by the event reader)."""
        self.last_heard = time.monotonic()
        if isinstance(event, ev.Epoch):  # a slow job's epochs set how long a silence may last
            self.stall_after = max(self.settings.stall_seconds,
                                   self.settings.stall_epochs * event.metrics.seconds)

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
        next_beat = time.monotonic()
        while not self._wait(self.settings.cancel_poll_seconds):
            beat = time.monotonic() >= next_beat
            try:
                held, cancel = self._poll(beat)
            except Exception:  # a database blip must not kill the job; the lease has slack
                log.exception("heartbeat of job %s failed", self.job_id)
                continue
            if beat:
                next_beat = time.monotonic() + self.settings.heartbeat_seconds
            if not held:
                log.warning("job %s: lease lost, stopping its training", self.job_id)
                self.proc.kill()
            elif cancel:
                self._cancel()
            else:
                self._check_limits()

    def _poll(self, beat: bool) -> tuple[bool, bool]:
        """Renew the lease when ``beat``; whether the job is still this worker's, and
        whether it was asked to cancel."""
        with Session(self.engine) as s:
            held = heartbeat(s, self.job_id, worker=self.worker,
                             lease_seconds=self.settings.job_lease_seconds) if beat else True
            job = get_job(s, self.job_id)
            s.commit()
            return held and job.worker == self.worker, job.cancel_requested

    def _cancel(self) -> None:
        """SIGTERM first (it stops cleanly between batches); a process still running at the
        next look is somewhere it does not listen (loading, evaluating, exporting): killed."""
        if self.cancel_sent is None:
            self.cancel_sent = time.monotonic()
            self.proc.cancel()
        else:
            log.info("job %s: cancelled, its training did not stop; killing it", self.job_id)
            self.proc.kill()

    def _check_limits(self) -> None:
        silent = time.monotonic() - self.last_heard
        if utcnow() >= self.deadline:
            self._kill(ErrorKind.TIMEOUT, f"the job ran longer than MAX_JOB_SECONDS "
                       f"({self.settings.max_job_seconds} s); its training was stopped")
        elif silent >= self.stall_after:
            self._kill(ErrorKind.STALLED, f"the training process said nothing for "
                       f"{silent:.0f} s (STALL_SECONDS, or {self.settings.stall_epochs:g} "
                       "times its last epoch) and was killed as hung")

    def _kill(self, kind: ErrorKind, reason: str) -> None:
        if self.killed_for is None:
            log.warning("job %s: %s", self.job_id, reason)
            self.killed_for, self.reason = kind, reason
        self.proc.kill()


def requeue_lost_jobs(engine: Engine, settings: Settings, serving: Collection[str] = ()
                      ) -> list[str]:
    """Put back the jobs whose worker stopped renewing its lease and enqueue them again;
    and send again the queued jobs of the queues in ``serving`` whose message went unclaimed
    for ``QUEUED_RESEND_SECONDS`` (a broker that restarted may have lost it)."""
    cutoff = utcnow() - timedelta(seconds=settings.queued_resend_seconds)
    with Session(engine) as s:
        ids = requeue_expired(s)
        resend = [j.id for j in claim_resend(s, queued_before=cutoff, serving=serving,
                                             training_queue=settings.training_queue)]
        s.commit()
        params = {job_id: get_job(s, job_id).params for job_id in ids + resend}
    for job_id in ids + resend:
        if job_id in ids:
            log.warning("job %s lost its worker; queued again", job_id,
                        extra={"job_id": job_id})
        else:
            log.warning("job %s still queued %.0f s after its message was sent; sending it "
                        "again", job_id, settings.queued_resend_seconds,
                        extra={"job_id": job_id})
        run_job.apply_async(args=[job_id],
                            queue=queue_for(settings.training_queue, params[job_id]))
    return ids + resend


class Reaper(threading.Thread):
    """Runs in every worker: requeues lost jobs every half lease, so a job whose worker
    died is picked up again within about one lease."""

    def __init__(self, settings: Settings, serving: Collection[str] = ()) -> None:
        super().__init__(daemon=True, name="hotdog-reaper")
        self.settings = settings
        self.serving = list(serving)  # this worker's queues: their unclaimed jobs are resent
        self.stopped = threading.Event()

    def run(self) -> None:
        interval = max(1.0, self.settings.job_lease_seconds / 2)
        engine = make_engine(self.settings.db_url)  # one pool for the worker's lifetime
        try:
            while True:
                try:
                    requeue_lost_jobs(engine, self.settings, self.serving)
                except Exception:
                    log.exception("requeueing lost jobs failed; will retry")
                if self.stopped.wait(interval):
                    return
        finally:
            engine.dispose()


@worker_ready.connect
def _start_reaper(sender: Any = None, **_kwargs: Any) -> None:
    settings = get_settings()
    # Lines about a job (this worker's and its training processes') go to its own log too.
    joblog.install(settings.job_log, settings.job_log_bytes)
    Reaper(settings, presence.consumed_queues(sender) if sender is not None else ()).start()
    presence.start(settings, worker_name(), sender)
    sweeper.start(settings)
    if settings.warm_predict_process:
        SPARE.ensure()
