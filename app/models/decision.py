"""A two-class model's decision threshold: set at activation, applied by ``/predict``.

The rule names its class explicitly: the answer is ``decision_class`` when that class's
probability is at least the threshold, the model's other class otherwise. Without a rule the
most probable class is the answer. Functions take a session and never commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.db.models import Job
from app.models import service as models


class InvalidDecision(ValueError):
    """A threshold that cannot apply to this model (422)."""


@dataclass(frozen=True)
class Decision:
    threshold: float
    positive: str  # the class the threshold is on
    other: str

    def label(self, probabilities: dict[str, float]) -> str:
        return self.positive if probabilities[self.positive] >= self.threshold else self.other

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "class": self.positive}


def classes_of(job: Job) -> list[str]:
    if job.evaluation is not None:
        return list(job.evaluation.classes)
    # a model is a training job, which always has a dataset (predict jobs of uploads do not)
    return list(job.dataset.classes) if job.dataset is not None else []


def set_threshold(session: Session, job_id: str, threshold: float | None,
                  positive: str | None) -> None:
    """Store ``job_id``'s rule (``threshold`` None clears it). ``positive`` defaults to the
    model's first class (in index order)."""
    job = models.get(session, job_id)
    if threshold is None:
        job.decision_threshold = job.decision_class = None
        return
    classes = classes_of(job)
    if len(classes) != 2:
        raise InvalidDecision(f"a decision threshold needs a two-class model; model {job_id} "
                              f"has {len(classes)} classes")
    if not 0.0 < threshold < 1.0:
        raise InvalidDecision(f"threshold must be between 0 and 1 (exclusive), not {threshold}")
    positive = classes[0] if positive is None else positive
    if positive not in classes:
        raise InvalidDecision(f"unknown class {positive!r}; the model's classes are "
                              f"{', '.join(classes)}")
    job.decision_threshold, job.decision_class = threshold, positive


def decision_of(job: Job) -> Decision | None:
    if job.decision_threshold is None or job.decision_class is None:
        return None
    other = [c for c in classes_of(job) if c != job.decision_class]
    return Decision(job.decision_threshold, job.decision_class, other[0])


def find(session: Session, job_id: str) -> Decision | None:
    return decision_of(models.get(session, job_id))
