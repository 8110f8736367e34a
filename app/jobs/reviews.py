"""Label review jobs: which training images of a model's dataset are probably mislabeled,
and which are outliers (:mod:`app.engine.review`), computed on a worker.

A review job is a job like the evaluate jobs (``jobs.kind = review``): queued, claimed,
leased, cancelled, limited and retried as any job; ``jobs.model_id`` is the training job
reviewed and ``jobs.dataset_id`` its dataset. It is created by ``POST /jobs/{id}/review``,
or, for a job submitted with ``review_labels: true``, by the worker in the same transaction
that records the training's success (a follow-up: the cap on active jobs, which guards new
submissions, does not refuse it). Its result is the file ``label_review.json`` in the review
job's folder (written to a temporary name and renamed by the process that computes it).

Functions take a session and never commit, as :mod:`app.jobs.service`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.datasets import service as datasets
from app.db.models import Job, JobKind, JobStatus
from app.jobs.service import (
    ACTIVE,
    JobConflict,
    _serialize_submissions,
    check_capacity,
    create_job,
    get_job,
)

REVIEW_FILE = "label_review.json"
# Images per forward pass: no gradients are kept, so this fits wherever the model trained.
REVIEW_BATCH = 64


class ReviewNotFound(LookupError):
    """The job has no label review (none was asked for)."""


def submit_review(
    session: Session, *, model_id: str, max_active_jobs: int | None, max_attempts: int,
    folds: int, max_listed: int,
) -> Job:
    """Check and store a queued job that reviews the labels of ``model_id``'s training
    images: the job exists (404), is a succeeded training job (409 otherwise) and has no
    review queued or running (409), its dataset is still there, and the cap on active jobs
    allows it (``max_active_jobs`` None: a follow-up, not capped). The caller commits, then
    sends the job to its queue."""
    model = get_job(session, model_id)
    if (problem := model.model_problem()) is not None:
        raise JobConflict(f"{problem}: its labels cannot be reviewed")
    if model.dataset_id is None:  # a training job always has one
        raise JobConflict(f"job {model_id} has no dataset to review")
    if max_active_jobs is not None:
        _serialize_submissions(session)
    running = session.scalars(select(Job.id).where(
        Job.kind == JobKind.REVIEW, Job.model_id == model_id, Job.status.in_(ACTIVE))).first()
    if running is not None:
        raise JobConflict(f"a label review of job {model_id} is already queued or running "
                          f"(job {running})")
    datasets.get_live(session, model.dataset_id)
    if max_active_jobs is not None:
        check_capacity(session, max_active_jobs)
    return create_job(session, dataset_id=model.dataset_id,
                      params=_params(model, folds=folds, max_listed=max_listed), epochs=1,
                      max_attempts=max_attempts, kind=JobKind.REVIEW, model_id=model_id)


def _params(model: Job, *, folds: int, max_listed: int) -> dict[str, Any]:
    """A review job's parameters: the model's ``init`` (its starting backbone, which the
    review prefers), image size, device and precision (routed as its training was), the
    folds and the seed of the cross-validation."""
    trained = model.params
    return {"model": model.id, "init": str(trained.get("init") or "scratch"),
            "batch_size": REVIEW_BATCH, "image_size": int(trained.get("image_size", 224)),
            "device": str(trained.get("device") or "auto"),
            "precision": str(trained.get("precision") or "auto"), "gpus": 1,
            "seed": int(trained.get("seed", 0)), "folds": folds, "max_listed": max_listed}


def wants_review(job: Job) -> bool:
    """Whether the training job was submitted with ``review_labels: true``."""
    return job.kind is JobKind.TRAIN and bool(job.params.get("review_labels"))


def latest_review(session: Session, job_id: str) -> Job:
    """The review job ``job_id`` names: itself when it is a review job, else the newest
    review of that training job. :class:`ReviewNotFound` when it has none."""
    job = get_job(session, job_id)
    if job.kind is JobKind.REVIEW:
        return job
    review = session.scalars(select(Job).where(Job.kind == JobKind.REVIEW,
                                               Job.model_id == job_id)
                             .order_by(Job.created_at.desc(), Job.id.desc())).first()
    if review is None:
        raise ReviewNotFound(f"job {job_id} has no label review; start one with POST "
                             f"/jobs/{job_id}/review (hotdog review {job_id})")
    return review


def review_result(review: Job, job_dir: Path) -> dict[str, Any]:
    """The label review as ``GET /jobs/{id}/label-review`` answers it: the review job's
    status, and once it succeeded, its backbone, issues and outliers."""
    out: dict[str, Any] = {"job_id": review.id, "dataset_id": review.dataset_id,
                           "status": review.status.value, "backbone": "", "issues": [],
                           "outliers": []}
    if review.status is not JobStatus.SUCCEEDED:
        return out
    try:
        stored = json.loads((job_dir / REVIEW_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise JobConflict(f"the result of label review {review.id} is gone or unreadable "
                          f"from the storage dir ({type(exc).__name__}); start another") from exc
    for key in ("backbone", "issues", "outliers"):
        out[key] = stored[key]
    return out
