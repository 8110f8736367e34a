"""The model service: a model is a succeeded training job's checkpoint. Which models are
usable, which one ``/predict`` uses by default (the one activated last, else the newest), the
pointer that activating one moves (:mod:`app.models.promotion` gates and records that), a
model's evaluations, and the files a model is served or downloaded from.

Functions take a session and never commit: the request commits.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, selectinload

from app.db.models import Dataset, Evaluation, Job, JobKind, JobStatus
from app.engine.export import SUFFIXES, export_model

log = logging.getLogger(__name__)

# Activations are ordered strictly, even two within one clock tick.
ACTIVATION_TICK = datetime.resolution * 1000  # 1 ms

# Usable models, the active one first: the model activated last, else the newest.
USABLE = (
    select(Job).where(Job.kind == JobKind.TRAIN, Job.status == JobStatus.SUCCEEDED,
                      Job.checkpoint_path.is_not(None), Job.deleted_at.is_(None),
                      Job.files_removed_at.is_(None))
    .order_by(Job.activated_at.is_(None), Job.activated_at.desc(), Job.finished_at.desc(),
              Job.id)
)

# What a model's summary reads besides the job: its evaluation's accuracy, per-class figures
# (for the macro F1) and classes (not the C x C confusion matrix), else its dataset's classes.
SUMMARY = (selectinload(Job.evaluation).load_only(Evaluation.accuracy, Evaluation.per_class,
                                                  Evaluation.classes),
           selectinload(Job.dataset).load_only(Dataset.classes))


class ModelNotFound(LookupError):
    """No job has this id."""


class NoModelYet(RuntimeError):
    """No job has succeeded yet, so there is no default model."""


class ModelUnavailable(RuntimeError):
    """The job has no usable model (it has not succeeded, its file is gone, or the export
    asked for was not written)."""


def get(session: Session, job_id: str) -> Job:
    """The job whose model ``job_id`` names (usable or not: see :func:`model_file`)."""
    job = session.get(Job, job_id)
    if job is None:
        raise ModelNotFound(f"job {job_id} not found")
    return job


def list_usable(session: Session) -> Sequence[Job]:
    """Succeeded jobs with a checkpoint, the active one first, with what their summaries
    need (:data:`SUMMARY`)."""
    return session.scalars(USABLE.options(*SUMMARY)).all()


def active(session: Session) -> Job | None:
    return session.scalars(USABLE.limit(1)).first()


def model_file(job: Job) -> Path:
    """The final checkpoint of ``job``, when it is a training job that succeeded and the
    file is there."""
    if (problem := job.model_problem()) is not None:
        raise ModelUnavailable(problem)
    assert job.checkpoint_path is not None  # model_problem() says so otherwise
    path = Path(job.checkpoint_path)
    if not path.is_file():
        log.warning("the checkpoint of job %s is missing: %s", job.id, path)
        raise ModelUnavailable(f"the checkpoint of job {job.id} is gone from the storage dir")
    return path


def find(session: Session, model: str | None) -> tuple[str, Path]:
    """The job id and checkpoint that a ``/predict`` request's ``model`` names (None: the
    active model)."""
    job = get(session, model) if model else active(session)
    if job is None:
        raise NoModelYet("no trained model yet: train one with POST /jobs first")
    return job.id, model_file(job)


def point_at(session: Session, job_id: str) -> None:
    """Make this job's model the default of ``/predict`` (the pointer only: activations go
    through :func:`app.models.promotion.activate`, which gates and records them)."""
    latest = session.scalar(select(func.max(Job.activated_at)))
    now = datetime.now(timezone.utc)
    if latest is not None:
        now = max(now, latest + ACTIVATION_TICK)
    session.execute(update(Job).where(Job.id == job_id).values(activated_at=now)
                    .execution_options(synchronize_session=False))
    session.expire_all()


def summary(session: Session, job_id: str) -> Job:
    """The model with what its summary needs (:data:`SUMMARY`)."""
    return session.scalars(select(Job).where(Job.id == job_id).options(*SUMMARY)).one()


def evaluations(session: Session, job_id: str) -> list[tuple[Job, Evaluation]]:
    """The model's evaluations, newest first, each with the job that made it: the
    training's own (on its dataset's test split) and its evaluate jobs' results."""
    model = get(session, job_id)
    rows = session.execute(
        select(Job, Evaluation).join(Evaluation, Evaluation.job_id == Job.id)
        .where((Job.id == model.id) | ((Job.kind == JobKind.EVALUATE)
                                       & (Job.model_id == model.id)
                                       & (Job.status == JobStatus.SUCCEEDED)))
        .order_by(Job.finished_at.desc(), Job.id)).all()
    return [(job, evaluation) for job, evaluation in rows]


def export_file(job: Job, format: str) -> Path:
    """The model in ``format`` (``onnx``: the export the worker verified when the job
    succeeded; ``torchscript``: traced on first use and kept beside the checkpoint)."""
    checkpoint = model_file(job)
    path = checkpoint.parent / f"{checkpoint.stem}{SUFFIXES[format]}"
    if format == "onnx" and not path.is_file():
        record = (job.exports or {}).get(format) or {}
        why = (f"it was discarded: {record['error']}" if record.get("error") else
               "the worker did not write one (EXPORT_ONNX off, or the job predates exports)")
        raise ModelUnavailable(f"job {job.id} has no ONNX export: {why}. `hotdog export` makes "
                               "one from the checkpoint (GET /jobs/{id}/checkpoint)")
    if not path.is_file():
        export_model(checkpoint, format, path)
    return path
