"""Evaluate jobs: a trained model scored on the test split of a dataset, by a worker.

An evaluate job is a job like any other (``jobs.kind = evaluate``): it is queued, claimed,
leased, cancelled and limited as a training job is, counts against ``MAX_ACTIVE_JOBS``, and
its result is its evaluation row (accuracy, loss, confusion, per class). ``jobs.model_id``
names the model; ``jobs.dataset_id`` the dataset it is scored on. The promotion gate reads
these results (``app.models.service``).

Functions take a session and never commit, as :mod:`app.jobs.service`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.datasets import service as datasets
from app.db.models import Job, JobKind
from app.jobs.service import (
    InvalidParams,
    JobConflict,
    _serialize_submissions,
    check_capacity,
    create_job,
    get_job,
)

# Images per forward pass: evaluation keeps no gradients, so a batch this size fits anywhere
# the model trained.
EVALUATION_BATCH = 64


def model_classes(model: Job) -> list[str]:
    """The classes a trained model predicts, in index order (its dataset's, sorted)."""
    if model.evaluation is not None:
        return list(model.evaluation.classes)
    return list(model.dataset.classes) if model.dataset is not None else []


def submit_evaluation(
    session: Session, *, model_id: str, dataset_id: str, max_active_jobs: int,
    max_attempts: int,
) -> Job:
    """Check and store a queued job that scores ``model_id``'s model on ``dataset_id``'s test
    split: the model exists and succeeded (409 otherwise), the dataset exists, both have the
    same classes in the same order (422 otherwise), and the cap on active jobs allows it.
    The caller commits, then sends the job to its queue."""
    _serialize_submissions(session)  # first: a deletion of the model waits, or refuses this
    model = get_job(session, model_id)
    if (problem := model.model_problem()) is not None:
        raise JobConflict(f"{problem}: nothing to evaluate")
    dataset = datasets.get_live(session, dataset_id)
    classes = model_classes(model)
    if classes != list(dataset.classes):
        raise InvalidParams(
            f"the model of job {model_id} predicts {classes}, dataset {dataset_id} has "
            f"{list(dataset.classes)}: a model is evaluated on a dataset with the same "
            "classes")
    check_capacity(session, max_active_jobs)
    return create_job(session, dataset_id=dataset_id, params=_params(model), epochs=1,
                      max_attempts=max_attempts, kind=JobKind.EVALUATE, model_id=model_id)


def _params(model: Job) -> dict[str, Any]:
    """What an evaluate job records as its parameters. ``device`` and ``gpus`` route it as
    the model's training was routed (a model trained on a GPU worker is evaluated on one);
    one process evaluates, whatever ``gpus`` the training had."""
    trained = model.params
    return {"model": model.id, "batch_size": EVALUATION_BATCH,
            "image_size": int(trained.get("image_size", 224)),
            "device": str(trained.get("device") or "auto"),
            "precision": str(trained.get("precision") or "auto"), "gpus": 1}
