"""Predict jobs: a batch of photos classified by a trained model, on a worker.

A predict job is a job like any other (``jobs.kind = predict``): queued, claimed, leased,
cancelled, retried and limited as a training job is, and it counts against
``MAX_ACTIVE_JOBS``. ``jobs.model_id`` names the model (the active one at submission when
none is named: it is recorded, so a later activation does not change the job). Its photos
are either an uploaded zip's, extracted into the job's own folder (``photos/``; then
``jobs.dataset_id`` is NULL), or one split of a stored dataset. Its progress is photos done
of ``params.photos`` (one "epoch": ``epoch_fraction`` is done / total); its result is the job
folder's ``results.jsonl`` (one row per photo, in path order) and ``summary.json``, both
written under a temporary name and renamed.

Functions take a session and never commit, as :mod:`app.jobs.service`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.datasets import service as datasets
from app.datasets.archive import Limits, extract_zip
from app.db.models import Job, JobKind, JobStatus
from app.engine.batch import photos_in
from app.jobs.evaluations import model_classes
from app.jobs.service import (
    InvalidParams,
    JobConflict,
    JobNotFound,
    _serialize_submissions,
    check_capacity,
    create_job,
    get_job,
)

PHOTOS = "photos"  # an upload's photos, in the job's folder
RESULTS = "results.jsonl"
SUMMARY = "summary.json"
SPLITS = ("train", "val", "test")


def photos_dir(job_dir: Path) -> Path:
    return job_dir / PHOTOS


def results_path(job_dir: Path) -> Path:
    return job_dir / RESULTS


def summary_path(job_dir: Path) -> Path:
    return job_dir / SUMMARY


def store_upload(source: BinaryIO, job_dir: Path, limits: Limits) -> tuple[int, list[str]]:
    """Extract an uploaded zip of photos (any folder layout) into ``job_dir/photos``, under
    the dataset uploads' checks and ``limits``, and count its photos; returns that and the
    files that are not images by their name. Nothing is left behind when it is refused. The
    photos are not decoded here: one that does not decode gets its error in the results."""
    job_dir.mkdir(parents=True)
    try:
        work = job_dir / ".incoming"
        extract_zip(source, work, limits)
        photos, others = photos_in(work)
        os.replace(work, photos_dir(job_dir))
    except BaseException:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise
    return len(photos), others


def remove_uploaded_photos(job_dir: Path) -> None:
    """A predict job that has ended needs its uploaded photos no more (its results stay)."""
    shutil.rmtree(photos_dir(job_dir), ignore_errors=True)


def _model(session: Session, model_id: str) -> Job:
    model = get_job(session, model_id)
    if (problem := model.model_problem()) is not None:
        raise JobConflict(f"{problem}: nothing to predict with")
    return model


def _check_count(photos: int, max_photos: int, what: str) -> None:
    if photos == 0:
        raise InvalidParams(f"{what} has no photos (files named .jpg, .jpeg, .png, .gif, "
                            ".bmp, .tif(f) or .webp)")
    if photos > max_photos:
        raise InvalidParams(f"{what} has {photos} photos; a batch job takes at most "
                            f"{max_photos} (BATCH_MAX_PHOTOS): split it into several jobs")


def _params(model: Job, *, source: str, photos: int, batch_size: int, runtime: str,
            coverage: bool, extra: dict[str, Any]) -> dict[str, Any]:
    """What a predict job records: its model, what it reads, how many photos, whether each
    row also gets its crop coverage (a Grad-CAM pass per photo), and how it runs. ``device``
    and ``gpus`` route it as its model's training was routed (a model trained on a GPU
    worker predicts on one); one process predicts."""
    trained = model.params
    return {"model": model.id, "source": source, "photos": photos, "batch_size": batch_size,
            "image_size": int(trained.get("image_size", 224)),
            "device": str(trained.get("device") or "auto"),
            "precision": str(trained.get("precision") or "auto"), "runtime": runtime,
            "coverage": coverage, "gpus": 1, **extra}


def submit_upload(
    session: Session, *, job_id: str, model_id: str, photos: int, ignored: Sequence[str],
    batch_size: int, runtime: str, max_photos: int, max_active_jobs: int, max_attempts: int,
    coverage: bool = False,
) -> Job:
    """Store a queued job for the ``photos`` images that an upload put in the folder of job
    ``job_id`` (``ignored``: its files that are not images). The caller commits, then sends
    the job to its queue."""
    model = _model(session, model_id)
    _check_count(photos, max_photos, "the zip")
    _serialize_submissions(session)
    check_capacity(session, max_active_jobs)
    params = _params(model, source="upload", photos=photos, batch_size=batch_size,
                     runtime=runtime, coverage=coverage, extra={"ignored": len(ignored),
                                             "ignored_examples": list(ignored[:5])})
    return create_job(session, job_id=job_id, dataset_id=None, params=params, epochs=1,
                      max_attempts=max_attempts, kind=JobKind.PREDICT, model_id=model.id)


def submit_dataset(
    session: Session, *, dataset_id: str, split: str, model_id: str, batch_size: int,
    runtime: str, max_photos: int, max_active_jobs: int, max_attempts: int,
    coverage: bool = False,
) -> Job:
    """Store a queued job that classifies the images of one split of a stored dataset
    (any classes: the dataset's labels are not used). The caller commits and queues it."""
    model = _model(session, model_id)
    _serialize_submissions(session)
    dataset = datasets.get_live(session, dataset_id)
    if split not in dataset.counts:
        raise InvalidParams(f"dataset {dataset_id} has no {split!r} split; it has "
                            f"{', '.join(sorted(dataset.counts))}")
    photos = sum(int(n) for n in dataset.counts[split].values())
    _check_count(photos, max_photos, f"the {split} split of dataset {dataset_id}")
    check_capacity(session, max_active_jobs)
    params = _params(model, source="dataset", photos=photos, batch_size=batch_size,
                     runtime=runtime, coverage=coverage, extra={"split": split})
    return create_job(session, dataset_id=dataset_id, params=params, epochs=1,
                      max_attempts=max_attempts, kind=JobKind.PREDICT, model_id=model.id)


def get_prediction(session: Session, job_id: str) -> Job:
    """The predict job ``job_id`` (:class:`JobNotFound` for any other id)."""
    job = session.get(Job, job_id)
    if job is None or job.kind is not JobKind.PREDICT:
        raise JobNotFound(f"prediction job {job_id} not found")
    return job


def list_predictions(session: Session, *, limit: int, offset: int) -> Sequence[Job]:
    """Newest first."""
    return session.scalars(select(Job).where(Job.kind == JobKind.PREDICT)
                           .order_by(Job.created_at.desc(), Job.id)
                           .limit(limit).offset(offset)).all()


def photos_done(job: Job) -> int:
    """Photos classified so far (all of them once it succeeded)."""
    total = int(job.params.get("photos", 0))
    if job.status is JobStatus.SUCCEEDED:
        return total
    if job.status is not JobStatus.RUNNING:
        return 0
    return min(total, round(job.epoch_fraction * total))


def classes_of(session: Session, job: Job) -> list[str]:
    """The classes the job's model predicts, in index order (the CSV's columns)."""
    model = session.get(Job, job.model_id) if job.model_id else None
    return model_classes(model) if model is not None else []


def results_file(job: Job, job_dir: Path) -> Path:
    """The finished job's results (:class:`JobConflict`, 409, until it has succeeded)."""
    if job.status is not JobStatus.SUCCEEDED:
        why = f": {job.error}" if job.error else ""
        raise JobConflict(f"prediction job {job.id} is {job.status.value}{why}; its results "
                          "are there once it has succeeded")
    path = results_path(job_dir)
    if not path.is_file():
        raise JobConflict(f"the results of prediction job {job.id} are gone from the "
                          "storage dir")
    return path


def summary(job: Job, job_dir: Path) -> dict[str, Any] | None:
    """``{"photos", "predicted", "failed", "labels": {label: n}}`` of a finished job."""
    if job.status is not JobStatus.SUCCEEDED:
        return None
    try:
        data = json.loads(summary_path(job_dir).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
