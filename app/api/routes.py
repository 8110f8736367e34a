"""The v1 endpoints: datasets, jobs, models, predict (health and metrics are in app.py).

Handlers that touch the database or the disk are plain ``def`` (FastAPI runs them in its
thread pool); ``/predict`` is ``async`` and hands decoding and the forward pass to threads.
"""

from __future__ import annotations

import shutil
import uuid
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.api.errors import Conflict, NotFound, TooManyJobs, Unprocessable
from app.api.schemas import (
    ERRORS,
    DatasetOut,
    EpochOut,
    EvaluationOut,
    JobCreate,
    JobOut,
    ModelOut,
    PredictOut,
    Progress,
)
from app.api.serving import LoadedModel
from app.api.state import State, api_key_scheme, get_state
from app.datasets.archive import Limits
from app.datasets.ingest import ingest_zip
from app.db.models import Dataset, EpochMetric, Job, JobStatus
from app.engine.export import SUFFIXES, export_model
from app.jobs.service import create_job, get_job, request_cancel, utcnow

StateDep = Annotated[State, Depends(get_state)]
guarded = [Depends(api_key_scheme)]
ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
MAX_OFFSET = 10**9  # beyond any real list; larger values overflow the databases' integers


def _session(state: State) -> Session:
    return Session(state.engine, expire_on_commit=False)


# ---------------------------------------------------------------------------- datasets
datasets = APIRouter(prefix="/datasets", tags=["datasets"], dependencies=guarded, responses=ERRORS)


def _dataset_out(ds: Dataset) -> DatasetOut:
    return DatasetOut(id=ds.id, name=ds.name, classes=ds.classes, counts=ds.counts,
                      warnings=ds.warnings, size_bytes=ds.size_bytes, created_at=ds.created_at)


def _live_dataset(s: Session, dataset_id: str) -> Dataset:
    ds = s.get(Dataset, dataset_id)
    if ds is None or ds.deleted_at is not None:
        raise NotFound(f"dataset {dataset_id} not found")
    return ds


@datasets.post("", status_code=status.HTTP_201_CREATED,
               response_model=DatasetOut)
def upload_dataset(
    state: StateDep,
    file: Annotated[UploadFile, File(description="zip of train/<class>/… and test/<class>/…")],
    name: Annotated[str | None, Form(max_length=200)] = None,
) -> DatasetOut:
    """Upload an ImageFolder zip. It is validated in full (layout, at least 2 classes, the
    same classes in train and test, every image decodes) before anything is stored."""
    settings = state.settings
    dataset_id = uuid.uuid4().hex
    dest = settings.dataset_dir(dataset_id)
    dest.parent.mkdir(parents=True, exist_ok=True)
    limits = Limits(max_bytes=settings.max_dataset_bytes, max_files=settings.max_dataset_files)
    result = ingest_zip(file.file, dest, limits,
                        workdir=dest.parent / f".incoming-{dataset_id}")
    label = name or Path(file.filename or "dataset").stem or "dataset"
    try:
        with _session(state) as s:
            ds = Dataset(id=dataset_id, name=label[:200], classes=result.classes,
                         counts=result.counts, warnings=result.warnings,
                         size_bytes=result.size_bytes)
            s.add(ds)
            s.commit()
            s.refresh(ds)
            return _dataset_out(ds)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)  # no files without their row
        raise


@datasets.get("", response_model=list[DatasetOut])
def list_datasets(
    state: StateDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[DatasetOut]:
    with _session(state) as s:
        rows = s.scalars(select(Dataset).where(Dataset.deleted_at.is_(None))
                         .order_by(Dataset.created_at.desc(), Dataset.id)
                         .limit(limit).offset(offset)).all()
        return [_dataset_out(d) for d in rows]


@datasets.get("/{dataset_id}", response_model=DatasetOut)
def show_dataset(state: StateDep, dataset_id: str) -> DatasetOut:
    with _session(state) as s:
        return _dataset_out(_live_dataset(s, dataset_id))


@datasets.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(state: StateDep, dataset_id: str) -> None:
    """Delete a dataset's files. Refused (409) while a queued or running job uses it; the
    jobs that used it keep their history, models and checkpoints."""
    with _session(state) as s:
        _live_dataset(s, dataset_id)
        busy = select(Job.id).where(Job.dataset_id == dataset_id, Job.status.in_(ACTIVE))
        done = s.execute(
            update(Dataset)
            .where(Dataset.id == dataset_id, Dataset.deleted_at.is_(None), ~busy.exists())
            .values(deleted_at=utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount
        if not done:
            jobs = s.scalars(busy).all()
            raise Conflict(f"dataset {dataset_id} is used by unfinished job(s) "
                           f"{', '.join(jobs)}; cancel them or wait until they end")
        s.commit()
    path = state.settings.dataset_dir(dataset_id)
    if path.exists():  # rename first: a half-deleted tree never sits under the live name
        trash = path.with_name(f".deleted-{dataset_id}")
        path.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)


# ---------------------------------------------------------------------------- jobs
jobs = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=guarded, responses=ERRORS)


def _job_out(job: Job, metrics: list[EpochMetric]) -> JobOut:
    epochs_done = [m for m in metrics if m.epoch <= job.epochs]
    latest = EpochOut.model_validate(epochs_done[-1]) if epochs_done else None
    best = (EpochOut.model_validate(max(epochs_done, key=lambda m: (m.test_acc, -m.epoch)))
            if epochs_done else None)
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
    return JobOut(
        id=job.id, dataset_id=job.dataset_id, status=job.status.value, params=job.params,
        progress=Progress(epoch=job.epoch, epochs=job.epochs, fraction=fraction,
                          eta_seconds=eta),
        latest_metrics=latest, best_metrics=best, attempt=job.attempt,
        max_attempts=job.max_attempts, worker=job.worker,
        cancel_requested=job.cancel_requested, error=job.error, exports=job.exports or {},
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        heartbeat_at=job.heartbeat_at,
    )


def _metrics_by_job(s: Session, ids: list[str]) -> dict[str, list[EpochMetric]]:
    out: dict[str, list[EpochMetric]] = {i: [] for i in ids}
    if ids:
        for m in s.scalars(select(EpochMetric).where(EpochMetric.job_id.in_(ids))
                           .order_by(EpochMetric.job_id, EpochMetric.epoch)):
            out[m.job_id].append(m)
    return out


def _show(s: Session, job_id: str) -> JobOut:
    job = get_job(s, job_id)
    return _job_out(job, _metrics_by_job(s, [job_id])[job_id])


@jobs.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
def submit_job(state: StateDep, body: JobCreate) -> JobOut:
    """Queue a fine-tune job; a worker picks it up. Poll ``GET /jobs/{id}`` for progress."""
    try:
        config = body.train_config()
    except ValueError as exc:
        raise Unprocessable(str(exc)) from exc
    with _session(state) as s:
        _live_dataset(s, body.dataset_id)
        active = s.scalar(select(func.count()).select_from(Job).where(Job.status.in_(ACTIVE)))
        cap = state.settings.max_active_jobs
        if active is not None and active >= cap:
            raise TooManyJobs(f"{active} jobs are queued or running, the limit "
                              f"(MAX_ACTIVE_JOBS) is {cap}; retry when one has ended")
        if body.init.startswith("job:"):
            source = s.get(Job, body.init[4:])
            if source is None:
                raise Unprocessable(f"init: job {body.init[4:]} not found")
            if source.status is not JobStatus.SUCCEEDED or not source.checkpoint_path:
                raise Unprocessable(f"init: job {source.id} has not succeeded "
                                    f"({source.status.value}); only a finished model can start "
                                    "another job")
        job = create_job(s, dataset_id=body.dataset_id, params=config.to_dict(),
                         epochs=config.epochs, max_attempts=state.settings.max_attempts)
        s.commit()  # the worker must find the row before the message
        job_id = job.id
    try:
        state.enqueue(job_id, config.to_dict())
    except Exception:
        with _session(state) as s:
            s.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED)
                      .values(status=JobStatus.FAILED, finished_at=utcnow(),
                              error="could not be queued: the message broker was unreachable")
                      .execution_options(synchronize_session=False))
            s.commit()
        raise
    with _session(state) as s:
        return _show(s, job_id)


@jobs.get("", response_model=list[JobOut])
def list_jobs(
    state: StateDep,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    dataset_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[JobOut]:
    with _session(state) as s:
        q = select(Job)
        if status_ is not None:
            q = q.where(Job.status == status_)
        if dataset_id is not None:
            q = q.where(Job.dataset_id == dataset_id)
        rows = s.scalars(q.order_by(Job.created_at.desc(), Job.id).limit(limit)
                         .offset(offset)).all()
        metrics = _metrics_by_job(s, [j.id for j in rows])
        return [_job_out(j, metrics[j.id]) for j in rows]


@jobs.get("/{job_id}", response_model=JobOut)
def show_job(state: StateDep, job_id: str) -> JobOut:
    with _session(state) as s:
        return _show(s, job_id)


@jobs.get("/{job_id}/metrics", response_model=list[EpochOut])
def job_metrics(state: StateDep, job_id: str) -> list[EpochOut]:
    """One row per finished epoch."""
    with _session(state) as s:
        get_job(s, job_id)
        return [EpochOut.model_validate(m) for m in _metrics_by_job(s, [job_id])[job_id]]


@jobs.get("/{job_id}/evaluation", response_model=EvaluationOut)
def job_evaluation(state: StateDep, job_id: str) -> EvaluationOut:
    """Confusion matrix and per-class precision/recall/F1 on the test split."""
    with _session(state) as s:
        job = get_job(s, job_id)
        ev = job.evaluation
        if ev is None:
            raise Conflict(f"job {job_id} has no evaluation ({job.status.value}); it is "
                           "written when the job succeeds")
        f1s = [c["f1"] for c in ev.per_class]
        return EvaluationOut(job_id=job_id, accuracy=ev.accuracy, loss=ev.loss,
                             classes=ev.classes, confusion=ev.confusion,
                             per_class=ev.per_class, macro_f1=sum(f1s) / max(1, len(f1s)))


@jobs.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(state: StateDep, job_id: str) -> JobOut:
    """A queued job ends ``cancelled`` at once; a running one stops at its next batch
    (``cancel_requested`` is true until then). 409 for a job that has ended."""
    with _session(state) as s:
        request_cancel(s, job_id)
        s.commit()
        return _show(s, job_id)


def _model_file(job: Job) -> Path:
    """The final checkpoint of ``job``; 409 unless it succeeded and the file is there."""
    if job.status is not JobStatus.SUCCEEDED or not job.checkpoint_path:
        raise Conflict(f"job {job.id} is {job.status.value}; only a succeeded job has a model")
    path = Path(job.checkpoint_path)
    if not path.is_file():
        raise Conflict(f"the checkpoint of job {job.id} is gone from the storage dir ({path})")
    return path


@jobs.get("/{job_id}/checkpoint", response_class=FileResponse,
          responses={200: {"content": {"application/octet-stream": {}}}})
def job_checkpoint(state: StateDep, job_id: str) -> FileResponse:
    """The final checkpoint (``torch.load(..., weights_only=True)``; ``hotdog predict``)."""
    with _session(state) as s:
        path = _model_file(get_job(s, job_id))
    return FileResponse(path, media_type="application/octet-stream",
                        filename=f"hotdog-{job_id}.pt")


@jobs.get("/{job_id}/export", response_class=FileResponse,
          responses={200: {"content": {"application/octet-stream": {}}}})
def job_export(
    state: StateDep, job_id: str,
    format: Annotated[Literal["onnx", "torchscript"], Query(
        description="onnx: the export the worker verified against PyTorch when the job "
        "succeeded; torchscript: traced now (and kept) for torch.jit.load")] = "onnx",
) -> FileResponse:
    """The trained model for other runtimes. Input: uint8 RGB crops, N×S×S×3, resized and
    centre-cropped as the file's metadata says; outputs: logits and probabilities."""
    with _session(state) as s:
        job = get_job(s, job_id)
        checkpoint = _model_file(job)
        record = (job.exports or {}).get(format) or {}
    path = checkpoint.parent / f"{checkpoint.stem}{SUFFIXES[format]}"
    if format == "onnx" and not path.is_file():
        why = (f"it was discarded: {record['error']}" if record.get("error") else
               "the worker did not write one (EXPORT_ONNX off, or the job predates exports)")
        raise Conflict(f"job {job_id} has no ONNX export: {why}. `hotdog export` makes one "
                       "from the checkpoint (GET /jobs/{id}/checkpoint)")
    if not path.is_file():
        export_model(checkpoint, format, path)
    return FileResponse(path, media_type="application/octet-stream",
                        filename=f"hotdog-{job_id}{SUFFIXES[format]}")


# ---------------------------------------------------------------------------- models
models = APIRouter(prefix="/models", tags=["models"], dependencies=guarded, responses=ERRORS)


# Usable models, the active one first: the model activated last, else the newest.
MODELS = (
    select(Job).where(Job.status == JobStatus.SUCCEEDED, Job.checkpoint_path.is_not(None))
    .order_by(Job.activated_at.is_(None), Job.activated_at.desc(), Job.finished_at.desc(),
              Job.id)
)


def active_model(s: Session) -> Job | None:
    return s.scalars(MODELS.limit(1)).first()


def _model_out(job: Job, active: bool) -> ModelOut:
    ev = job.evaluation
    return ModelOut(id=job.id, dataset_id=job.dataset_id,
                    classes=ev.classes if ev else job.dataset.classes,
                    image_size=int(job.params.get("image_size", 224)),
                    accuracy=ev.accuracy if ev else None, active=active,
                    finished_at=job.finished_at)


@models.get("", response_model=list[ModelOut])
def list_models(state: StateDep) -> list[ModelOut]:
    """Succeeded jobs, usable by ``/predict``; the active one (the default) comes first."""
    with _session(state) as s:
        rows = s.scalars(MODELS).all()
        return [_model_out(j, i == 0) for i, j in enumerate(rows)]


@models.post("/{job_id}/activate", response_model=ModelOut)
def activate_model(state: StateDep, job_id: str) -> ModelOut:
    """Make this job's model the default of ``/predict``."""
    with _session(state) as s:
        _model_file(get_job(s, job_id))
        # Strictly later than any earlier activation, even within one clock tick.
        latest = s.scalar(select(func.max(Job.activated_at)))
        now = utcnow()
        if latest is not None:
            now = max(now, latest + _TICK)
        s.execute(update(Job).where(Job.id == job_id).values(activated_at=now)
                  .execution_options(synchronize_session=False))
        s.commit()
    state.models.forget_lookups()  # this process sees the change at once
    with _session(state) as s:
        return _model_out(get_job(s, job_id), True)


_TICK = datetime.resolution * 1000  # 1 ms


# ---------------------------------------------------------------------------- predict
predict = APIRouter(tags=["predict"], dependencies=guarded, responses=ERRORS)


def _lookup_model(state: State, model: str | None) -> tuple[str, Path]:
    """The job id and checkpoint a request's ``model`` (or the default) names."""
    with _session(state) as s:
        job = get_job(s, model) if model else active_model(s)
        if job is None:
            raise Conflict("no trained model yet: train one with POST /jobs first")
        return job.id, _model_file(job)


def _prepare(state: State, model: str | None, files: list[UploadFile]
             ) -> tuple[LoadedModel, list[torch.Tensor]]:
    """Find and load the model, then decode and crop every file for it (one thread hop)."""
    job_id, path = state.models.lookup(model, lambda: _lookup_model(state, model))
    loaded = state.models.get(job_id, path)
    images = []
    for i, f in enumerate(files):
        f.file.seek(0)
        images.append(loaded.predictor.load(f.file, name=f.filename or f"file {i + 1}"))
    return loaded, images


@predict.post("/predict", response_model=PredictOut)
async def predict_images(
    request: Request,
    file: Annotated[list[UploadFile], File(description="one or more images (repeat the field)")],
    model: Annotated[str | None, Form(description="job id; default: the active model")] = None,
) -> dict[str, Any]:
    """Classify photos. Images of concurrent requests share forward passes."""
    state = get_state(request)
    limit = state.settings.predict_max_files
    if len(file) > limit:
        raise Unprocessable(f"{len(file)} files in one request; the limit is {limit}")
    loaded, images = await run_in_threadpool(_prepare, state, model, file)
    rows = await loaded.batcher.submit(images)
    names = [f.filename or f"file {i + 1}" for i, f in enumerate(file)]
    predictions = loaded.predictor.report(torch.stack(rows), names)
    state.models.metrics.images.inc(len(predictions))
    state.models.metrics.predicted(loaded.job_id, [p.label for p in predictions])
    return {"model": loaded.job_id, "runtime": loaded.predictor.runtime,
            "predictions": [p.to_dict() for p in predictions]}

