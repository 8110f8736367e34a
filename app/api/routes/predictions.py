"""``/predictions``: batch prediction jobs. Thousands of photos go to a worker in one job
(one upload, or a dataset split already stored), not through ``/predict`` one request at a
time; the results are streamed back as CSV or JSON lines once the job has succeeded."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from app.api.deps import GUARDED, SessionDep, SettingsDep, StateDep
from app.api.errors import Unprocessable
from app.api.routes.jobs import queue
from app.api.schemas import (
    ERRORS,
    MAX_OFFSET,
    BatchSummaryOut,
    PredictionJobOut,
    PredictionsFromDataset,
)
from app.api.state import State
from app.core.config import Settings
from app.datasets.archive import Limits
from app.datasets.service import files_removed_on_error
from app.db.models import Job, JobStatus
from app.engine.batch import csv_lines, read_rows
from app.jobs import predictions
from app.jobs import service as jobs
from app.jobs.queues import queue_for
from app.models import service as models
from app.workers import service as workers

router = APIRouter(prefix="/predictions", tags=["predictions"], dependencies=GUARDED,
                   responses=ERRORS)

MEDIA = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}
_BOOL = TypeAdapter(bool)  # pydantic's yes/no, as FastAPI parses /predict's form fields


def prediction_out(job: Job, settings: Settings, waiting_for: str | None = None
                   ) -> PredictionJobOut:
    params = job.params
    total = int(params.get("photos", 0))
    done = predictions.photos_done(job)
    summary = predictions.summary(job, settings.job_dir(job.id))
    return PredictionJobOut(
        id=job.id, status=job.status.value, model_id=job.model_id or params.get("model", ""),
        source=params.get("source", "upload"), dataset_id=job.dataset_id,
        split=params.get("split"), coverage=bool(params.get("coverage")), photos=total,
        done=done,
        fraction=done / total if total else 0.0, ignored=int(params.get("ignored", 0)),
        summary=BatchSummaryOut.model_validate(summary) if summary else None,
        results=(f"/predictions/{job.id}/results" if job.status is JobStatus.SUCCEEDED
                 else None),
        attempt=job.attempt, cancel_requested=job.cancel_requested, error=job.error,
        error_kind=job.error_kind, created_at=job.created_at, started_at=job.started_at,
        finished_at=job.finished_at, waiting_for=waiting_for)


def _waiting(session: Session, settings: Settings, job: Job,
             live: set[str] | None = None) -> str | None:
    if job.status is not JobStatus.QUEUED:
        return None
    if live is None:
        live = workers.live_queues(session, seen_seconds=settings.worker_seen_seconds)
    return workers.waiting_for(queue_for(settings.training_queue, job.params), live)


def _queued(session: Session, state: State, job: Job, queue_anyway: bool) -> PredictionJobOut:
    """Send the new job's row to its queue (a job that no live worker would take is refused,
    409, unless ``queue_anyway``) and show it."""
    queue(session, state, job, queue_anyway=queue_anyway)
    return prediction_out(job, state.settings, _waiting(session, state.settings, job))


def _runtime(state: State, model_id: str) -> str:
    """The runtime a batch job of ``model_id`` uses: the one serving it in /predict when this
    API has it loaded (so that both give the same probabilities), else PREDICT_RUNTIME (the
    worker then takes auto's choice before measurement; ``compiled`` runs eagerly there)."""
    loaded = state.models.models.get(model_id)
    return loaded.predictor.runtime if loaded is not None else state.settings.predict_runtime


def _from_dataset(state: State, body: PredictionsFromDataset) -> PredictionJobOut:
    settings = state.settings
    with state.session() as session:
        model_id, _ = models.find(session, body.model)
        job = predictions.submit_dataset(
            session, dataset_id=body.dataset_id, split=body.split, model_id=model_id,
            batch_size=settings.batch_predict_size, runtime=_runtime(state, model_id),
            max_photos=settings.batch_max_photos, max_active_jobs=settings.max_active_jobs,
            max_attempts=settings.max_attempts, coverage=body.coverage)
        return _queued(session, state, job, body.queue_anyway)


def _model_of(state: State, model: str | None) -> str:
    with state.session() as session:
        return models.find(session, model)[0]


def _from_upload(state: State, job_id: str, model_id: str, photos: int, ignored: list[str],
                 queue_anyway: bool, coverage: bool) -> PredictionJobOut:
    settings = state.settings
    with state.session() as session, files_removed_on_error(settings.job_dir(job_id)):
        job = predictions.submit_upload(
            session, job_id=job_id, model_id=model_id, photos=photos, ignored=ignored,
            batch_size=settings.batch_predict_size, runtime=_runtime(state, model_id),
            max_photos=settings.batch_max_photos, max_active_jobs=settings.max_active_jobs,
            max_attempts=settings.max_attempts, coverage=coverage)
        return _queued(session, state, job, queue_anyway)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


async def _upload(request: Request, state: State) -> PredictionJobOut:
    settings = state.settings
    with state.uploads.slot():  # 503 while MAX_CONCURRENT_UPLOADS uploads are in progress
        async with request.form(max_files=1, max_fields=8) as form:
            file = form.get("file")
            if not isinstance(file, UploadFile):
                raise Unprocessable("multipart field 'file' is required: a zip of photos")
            model = _text(form.get("model"))
            queue_anyway = _flag(form.get("queue_anyway"), "queue_anyway")
            coverage = _flag(form.get("coverage"), "coverage")
            model_id = await run_in_threadpool(_model_of, state, model)
            job_id = uuid.uuid4().hex
            limits = Limits(max_bytes=settings.max_dataset_bytes,
                            max_files=settings.max_dataset_files,
                            min_free_bytes=settings.min_free_disk_bytes)
            photos, ignored = await state.uploads.run(
                predictions.store_upload, file.file, settings.job_dir(job_id), limits)
    return await run_in_threadpool(_from_upload, state, job_id, model_id, photos, ignored,
                                   queue_anyway, coverage)


def _flag(value: Any, name: str) -> bool:
    """A form field's yes/no (absent or empty: no); a value that is neither is a 422 rather
    than a silent no."""
    if value is None or value == "":
        return False
    try:
        return _BOOL.validate_python(value)
    except ValidationError:
        raise Unprocessable(f"form field {name!r} must be true or false, not {str(value)!r}"
                            ) from None


SUBMIT_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary",
                     "description": "a zip of photos, any folder layout"},
            "model": {"type": "string", "description": "job id; default: the active model"},
            "queue_anyway": {"type": "boolean"},
            "coverage": {"type": "boolean", "description": "also give each photo its "
                         "crop_coverage (a Grad-CAM heatmap per photo: several times "
                         "slower)"}}}},
    "application/json": {"schema": {"$ref": "#/components/schemas/PredictionsFromDataset"}},
}}}


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=PredictionJobOut,
             openapi_extra=SUBMIT_BODY)
async def submit_predictions(request: Request, state: StateDep) -> PredictionJobOut:
    """Queue a batch prediction job: multipart ``file`` (a zip of photos, any folder layout,
    checked as dataset uploads are) or JSON ``{dataset_id, split}``; optional ``model``.
    Follow it with ``GET /predictions/{id}``."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        return await _upload(request, state)
    if kind == "application/json":
        raw = await request.body()  # at most JSON_BODY_LIMIT (app.api.bodies.StrictJson)
        try:
            body = PredictionsFromDataset.model_validate_json(raw)
        except ValidationError as exc:
            # A body that is no JSON is not echoed back (its bytes need not be text), as
            # FastAPI does for the JSON bodies it parses itself.
            raise RequestValidationError([
                {**e, "input": {}} if isinstance(e.get("input"), bytes) else e
                for e in exc.errors(include_url=False)]) from None
        return await run_in_threadpool(_from_dataset, state, body)
    raise Unprocessable("send multipart/form-data with a zip of photos in 'file', or JSON "
                        '{"dataset_id": ..., "split": "test"}')


@router.get("", response_model=list[PredictionJobOut])
def list_predictions(
    session: SessionDep, settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[PredictionJobOut]:
    """Batch prediction jobs, newest first."""
    rows = predictions.list_predictions(session, limit=limit, offset=offset)
    live = workers.live_queues(session, seen_seconds=settings.worker_seen_seconds)
    return [prediction_out(j, settings, _waiting(session, settings, j, live)) for j in rows]


@router.get("/{job_id}", response_model=PredictionJobOut)
def show_prediction(session: SessionDep, settings: SettingsDep, job_id: str
                    ) -> PredictionJobOut:
    """Status and progress: photos done of the total; once succeeded, a summary."""
    job = predictions.get_prediction(session, job_id)
    return prediction_out(job, settings, _waiting(session, settings, job))


@router.post("/{job_id}/cancel", response_model=PredictionJobOut)
def cancel_prediction(session: SessionDep, settings: SettingsDep, job_id: str
                      ) -> PredictionJobOut:
    """A queued job ends ``cancelled`` at once; a running one stops before its next batch of
    photos. 409 for a job that has ended."""
    predictions.get_prediction(session, job_id)
    job = jobs.request_cancel(session, job_id)
    if job.status is JobStatus.CANCELLED:  # it was queued: no worker will read its photos
        session.commit()
        predictions.remove_uploaded_photos(settings.job_dir(job_id))
    return prediction_out(job, settings)


RESULTS_DOC: dict[int | str, dict[str, Any]] = {200: {"content": {
    MEDIA["csv"]: {}, MEDIA["jsonl"]: {}},
    "description": "one row per photo, in path order: filename (its path in the zip), "
    "label, the probability of every class, crop_coverage when the job was asked for it, "
    "and error (why a photo that did not decode has no label)"}}


@router.get("/{job_id}/results", response_class=StreamingResponse, responses=RESULTS_DOC)
def prediction_results(
    session: SessionDep, settings: SettingsDep, job_id: str,
    format: Annotated[Literal["csv", "jsonl"], Query(
        description="csv: filename, label, p_<class>..., [crop_coverage,] error; jsonl: one "
        "JSON object per photo ({filename, label, probabilities, error[, crop_coverage]})"
    )] = "csv",
    limit: Annotated[int | None, Query(ge=1, le=MAX_OFFSET,
                                       description="only the first rows (a preview)")] = None,
) -> StreamingResponse:
    """The results of a succeeded job, streamed (409 until then)."""
    job = predictions.get_prediction(session, job_id)
    path = predictions.results_file(job, settings.job_dir(job_id))
    body: Iterator[str] | Iterator[bytes]
    if format == "csv":
        rows = itertools.islice(read_rows(path), limit)
        body = _joined(csv_lines(rows, predictions.classes_of(session, job),
                                 coverage=bool(job.params.get("coverage"))))
    elif limit is not None:
        body = _joined(itertools.islice(_lines(path), limit))
    else:
        body = _chunks(path)
    return StreamingResponse(body, media_type=MEDIA[format], headers={
        "Content-Disposition": f'attachment; filename="predictions-{job_id}.{format}"'})


def _joined(lines: Iterator[str], size: int = 1 << 16) -> Iterator[str]:
    """Lines in pieces of about ``size`` characters (a sync body is sent from a thread,
    one hop per piece: not one per photo)."""
    piece: list[str] = []
    length = 0
    for line in lines:
        piece.append(line)
        length += len(line)
        if length >= size:
            yield "".join(piece)
            piece, length = [], 0
    if piece:
        yield "".join(piece)


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as fh:
        yield from fh


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 16):
            yield chunk
