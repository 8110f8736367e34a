"""``/jobs``: submit a fine-tune job, follow it, cancel it, download what it made."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response, status
from fastapi.responses import FileResponse, PlainTextResponse, StreamingResponse
from sqlalchemy.orm import Session

from app.api import logs
from app.api.deps import GUARDED, SessionDep, SettingsDep, StateDep
from app.api.schemas import (
    ERRORS,
    MAX_OFFSET,
    CalibrationOut,
    EpochOut,
    EvaluationOut,
    JobCreate,
    JobOut,
    LabelReviewOut,
    Progress,
    ReviewRequest,
)
from app.api.state import State
from app.core import joblog
from app.core.config import Settings
from app.db.models import EpochMetric, Job, JobStatus
from app.engine import selection
from app.engine.config import INIT_IMAGENET
from app.engine.export import SUFFIXES
from app.engine.metrics import balanced_accuracy, macro_f1
from app.jobs import reviews
from app.jobs import service as jobs
from app.jobs.broker import QueueUnreachable
from app.jobs.queues import queue_for
from app.models import service as models
from app.storage import retention
from app.workers import service as workers

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=GUARDED, responses=ERRORS)
DOWNLOAD: dict[int | str, dict[str, Any]] = {200: {"content": {"application/octet-stream": {}}}}


def _progress(job: Job, epochs_done: list[EpochMetric]) -> Progress:
    """How far the job is (the epoch in progress counted by its fraction) and, from the
    finished epochs' times, how long it has left."""
    if job.status is JobStatus.SUCCEEDED:
        fraction = 1.0
    else:
        within = job.epoch_fraction if job.status is JobStatus.RUNNING else 0.0
        fraction = min(1.0, (job.epoch + within) / job.epochs)
    eta = None
    if job.status is JobStatus.RUNNING and epochs_done:
        per_epoch = sum(m.seconds for m in epochs_done) / len(epochs_done)
        eta = max(0.0, per_epoch * (job.epochs * (1 - fraction)))
    elif job.status is JobStatus.SUCCEEDED:
        eta = 0.0
    return Progress(epoch=job.epoch, epochs=job.epochs, fraction=fraction, eta_seconds=eta)


def _kept(job: Job, epochs_done: list[EpochMetric]) -> EpochMetric | None:
    """The kept model's epoch: recorded when the job succeeded; before that, the epoch it
    would keep now (app.engine.selection, as the training decides it)."""
    if job.selected_epoch is not None:
        return next((m for m in epochs_done if m.epoch == job.selected_epoch), None)
    has_val = any(m.val_loss is not None for m in epochs_done)
    select = job.params.get("select", "auto")
    mode = "best" if select == "best" or (select == "auto" and has_val) else "last"
    return selection.pick(epochs_done, mode, job.params.get("select_metric", "val_loss"))


def job_out(job: Job, metrics: list[EpochMetric], waiting_for: str | None = None) -> JobOut:
    epochs_done = [m for m in metrics if m.epoch <= job.epochs]
    latest = EpochOut.model_validate(epochs_done[-1]) if epochs_done else None
    kept = _kept(job, epochs_done)
    return JobOut(
        id=job.id, kind=job.kind.value, model_id=job.model_id, dataset_id=job.dataset_id,
        status=job.status.value, params=job.params,
        progress=_progress(job, epochs_done), latest_metrics=latest,
        best_metrics=EpochOut.model_validate(kept) if kept is not None else None,
        selected_epoch=job.selected_epoch, note=job.note,
        attempt=job.attempt, max_attempts=job.max_attempts, worker=job.worker,
        cancel_requested=job.cancel_requested, error=job.error, error_kind=job.error_kind,
        exports=job.exports or {}, created_at=job.created_at, started_at=job.started_at,
        finished_at=job.finished_at, heartbeat_at=job.heartbeat_at, waiting_for=waiting_for,
        deleted_at=job.deleted_at, files_removed_at=job.files_removed_at,
    )


class _Waiting:
    """What queued jobs wait for: the queues some live worker takes, read once per request."""

    def __init__(self, session: Session, settings: Settings) -> None:
        self.base = settings.training_queue
        self.live = workers.live_queues(session, seen_seconds=settings.worker_seen_seconds)

    def of(self, job: Job) -> str | None:
        if job.status is not JobStatus.QUEUED:
            return None
        return workers.waiting_for(queue_for(self.base, job.params), self.live)


def _show(session: Session, settings: Settings, job: Job) -> JobOut:
    return job_out(job, jobs.epoch_metrics(session, [job.id])[job.id],
                   _Waiting(session, settings).of(job))


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
def submit_job(session: SessionDep, state: StateDep, body: JobCreate) -> JobOut:
    """Queue a fine-tune job; a worker picks it up. Poll ``GET /jobs/{id}`` for progress."""
    settings = state.settings
    job = jobs.submit(session, dataset_id=body.dataset_id, config=body.train_config(),
                      max_active_jobs=settings.max_active_jobs,
                      max_attempts=settings.max_attempts, review_labels=body.review_labels)
    return queue(session, state, job, queue_anyway=body.queue_anyway,
                 imagenet=job.params["init"] == INIT_IMAGENET)


def queue(session: Session, state: State, job: Job, *, queue_anyway: bool,
          imagenet: bool = False) -> JobOut:
    """Send a new job's row (added, not committed) to its queue, and show it. Without
    ``queue_anyway``, a job that no live worker would take is refused (409) and its row
    rolled back with the request."""
    settings = state.settings
    if not queue_anyway:
        workers.check_can_run(session, queue=queue_for(settings.training_queue, job.params),
                              imagenet=imagenet, seen_seconds=settings.worker_seen_seconds)
    session.commit()  # the worker must find the row before the message
    try:
        state.enqueue(job.id, job.params)
    except QueueUnreachable:
        jobs.fail_unqueued(session, job.id,
                           error="could not be queued: the message broker was unreachable")
        session.commit()  # the 503 that follows must not roll this back
        raise
    return _show(session, settings, job)


@router.get("", response_model=list[JobOut])
def list_jobs(
    session: SessionDep,
    settings: SettingsDep,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    dataset_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    include_deleted: Annotated[bool, Query(description="list deleted jobs too")] = False,
) -> list[JobOut]:
    """Newest first; deleted jobs only with ``include_deleted`` (``GET /jobs/{id}`` shows
    any)."""
    rows = jobs.list_jobs(session, status=status_, dataset_id=dataset_id, limit=limit,
                          offset=offset, include_deleted=include_deleted)
    metrics = jobs.epoch_metrics(session, [j.id for j in rows])
    waiting = _Waiting(session, settings)
    return [job_out(j, metrics[j.id], waiting.of(j)) for j in rows]


@router.get("/{job_id}", response_model=JobOut)
def show_job(session: SessionDep, settings: SettingsDep, job_id: str) -> JobOut:
    return _show(session, settings, jobs.get_job(session, job_id))


@router.get("/{job_id}/metrics", response_model=list[EpochOut])
def job_metrics(session: SessionDep, job_id: str) -> list[EpochOut]:
    """One row per finished epoch."""
    jobs.get_job(session, job_id)
    return [EpochOut.model_validate(m) for m in jobs.epoch_metrics(session, [job_id])[job_id]]


@router.get("/{job_id}/evaluation", response_model=EvaluationOut)
def job_evaluation(session: SessionDep, job_id: str) -> EvaluationOut:
    """The kept model on the test split: accuracy, balanced accuracy, macro F1, confusion
    matrix and per-class precision/recall/F1."""
    ev = jobs.get_evaluation(session, job_id)
    return EvaluationOut(job_id=job_id, accuracy=ev.accuracy, loss=ev.loss, classes=ev.classes,
                         confusion=ev.confusion, per_class=ev.per_class,
                         calibration=(CalibrationOut.model_validate(ev.calibration)
                                      if ev.calibration else None),
                         macro_f1=macro_f1(ev.per_class),
                         balanced_accuracy=balanced_accuracy(ev.per_class))


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(session: SessionDep, settings: SettingsDep, job_id: str) -> JobOut:
    """A queued job ends ``cancelled`` at once; a running one stops at its next batch
    (``cancel_requested`` is true until then). 409 for a job that has ended."""
    return _show(session, settings, jobs.request_cancel(session, job_id))


@router.get("/{job_id}/checkpoint", response_class=FileResponse, responses=DOWNLOAD)
def job_checkpoint(session: SessionDep, job_id: str) -> FileResponse:
    """The final checkpoint (``torch.load(..., weights_only=True)``; ``hotdog predict``)."""
    path = models.model_file(jobs.get_job(session, job_id))
    return FileResponse(path, media_type="application/octet-stream",
                        filename=f"hotdog-{job_id}.pt")


@router.get("/{job_id}/export", response_class=FileResponse, responses=DOWNLOAD)
def job_export(
    session: SessionDep, job_id: str,
    format: Annotated[Literal["onnx", "torchscript"], Query(
        description="onnx: the export the worker verified against PyTorch when the job "
        "succeeded; torchscript: traced now (and kept) for torch.jit.load")] = "onnx",
) -> FileResponse:
    """The trained model for other runtimes. Input: uint8 RGB crops, N×S×S×3, resized and
    centre-cropped as the file's metadata says; outputs: logits and probabilities."""
    path = models.export_file(jobs.get_job(session, job_id), format)
    return FileResponse(path, media_type="application/octet-stream",
                        filename=f"hotdog-{job_id}{SUFFIXES[format]}")


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_job(
    session: SessionDep, state: StateDep, job_id: str,
    files_only: Annotated[bool, Query(description="free the disk (model files, exports, "
                                      "checkpoints) and keep the job listed, with its log")
                          ] = False,
) -> None:
    """Delete a job's files (its folder: checkpoints, exports, log) and hide it from the list;
    its history (GET /jobs/{id}, metrics, evaluation) stays. 409 while it is queued or
    running (cancel it first), the active model, or used by a queued or running job
    (``init: job:<id>``, or an evaluation of it): ``kind`` and ``used_by`` say which."""
    retention.delete_job(session, job_id=job_id, files_only=files_only)
    session.commit()  # the row says so before its files go
    state.models.drop(job_id)
    retention.remove_job_files(state.settings.job_dir(job_id), keep_log=files_only)


LOG_TEXT: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/plain": {"schema": {"type": "string"}}}}}


@router.get("/{job_id}/logs", response_class=Response, responses=LOG_TEXT)
def job_logs(
    session: SessionDep, state: StateDep, job_id: str,
    tail: Annotated[int | None, Query(ge=0, le=100_000, description="only the last N lines")
                    ] = None,
    follow: Annotated[bool, Query(description="keep the answer open and send new lines "
                                  "until the job ends (chunked text/plain)")] = False,
) -> Response:
    """The job's log: its worker's and training process's lines about it (at most
    JOB_LOG_BYTES, the oldest dropped first), as plain text."""
    job = jobs.get_job(session, job_id)
    if job.deleted_at is not None:
        raise jobs.JobConflict(f"job {job_id} was deleted; its log went with its files")
    path = state.settings.job_log(job_id)
    if not follow:
        return PlainTextResponse(joblog.tail(path, tail))
    position = logs.start_position(path, tail)
    state.log_followers.take()

    def ended() -> bool:
        with state.session() as s:
            return jobs.get_job(s, job_id).status.is_terminal

    return StreamingResponse(
        logs.followed(state.log_followers, path, position, ended),
        media_type="text/plain; charset=utf-8",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
@router.post("/{job_id}/review", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
def review_job(session: SessionDep, state: StateDep, job_id: str,
               body: ReviewRequest | None = None) -> JobOut:
    """Queue a job (kind ``review``) that reviews the labels of this succeeded training
    job's training images: likely mislabeled ones and outliers. 409 when the job has not
    succeeded or a review of it is already queued or running. Its result: ``GET
    /jobs/{job_id}/label-review``."""
    settings = state.settings
    job = reviews.submit_review(
        session, model_id=job_id, max_active_jobs=settings.max_active_jobs,
        max_attempts=settings.max_attempts, folds=settings.review_folds,
        max_listed=settings.review_max_listed)
    return queue(session, state, job, queue_anyway=bool(body and body.queue_anyway))


@router.get("/{job_id}/label-review", response_model=LabelReviewOut)
def label_review(session: SessionDep, settings: SettingsDep, job_id: str) -> LabelReviewOut:
    """The newest label review of a training job (or the review job ``job_id``): its
    status, and once it succeeded the likely mislabeled training images (given label,
    suggested label, confidence, rank) and the outliers, each with its id, split, class and
    path as uploaded. 404 when the job has no review."""
    review = reviews.latest_review(session, job_id)
    return LabelReviewOut.model_validate(
        reviews.review_result(review, settings.job_dir(review.id)))
