"""Promotion: which model ``/predict`` serves by default changes only through here, gated and
recorded.

- **The gate.** A candidate replaces the active model only if it scores at least as well on
  the gate's metric (``PROMOTION_METRIC``: macro F1 or accuracy) on the test split of one
  dataset: the dataset both were trained on, or a named one (``against``) on which both have
  been evaluated (evaluate jobs, :mod:`app.jobs.evaluations`). Otherwise it is refused with
  both scores, unless forced. Models trained on different datasets are not compared without
  ``against``: their test splits differ, so their scores say nothing about each other.
- **The first activation** (no model activated yet: the newest serves by default) passes
  without the gate: nobody has chosen a model yet. It is recorded with the comparison when
  one can be made.
- **History.** Every change is a row of ``activations`` (who, when, both models, both
  scores, forced or not); ``jobs.activated_at`` stays the pointer that says which model is
  active (see :mod:`app.models.service`).
- **Rollback** undoes the newest activation not yet undone: its previous model is activated
  again (not gated: it served before), so rollbacks in a row walk back through the history.

Functions take a session and never commit: the request commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, load_only

from app.datasets import service as datasets
from app.db.models import (
    Activation,
    ActivationAction,
    Dataset,
    Evaluation,
    Job,
    JobKind,
    JobStatus,
)
from app.db.session import lock_for_writing
from app.models.service import active, get, model_file, point_at

METRICS = ("macro_f1", "accuracy")
# Any number, the same for every API process, other than the job submissions' lock key.
ACTIVATION_LOCK_KEY = 0x686F74646F6761  # "hotdoga"


class NotComparable(RuntimeError):
    """The gate cannot compare the two models (409; ``kind`` says why: ``against_required``
    for models of different datasets, ``evaluation_missing`` for a score not computed yet)."""

    def __init__(self, message: str, kind: str, comparison: Comparison) -> None:
        super().__init__(message)
        self.kind = kind
        self.extra = {"comparison": comparison.to_dict()}


class PromotionRefused(RuntimeError):
    """The candidate scores lower than the active model (409, with both scores)."""

    kind = "promotion_refused"

    def __init__(self, message: str, comparison: Comparison) -> None:
        super().__init__(message)
        self.extra = {"comparison": comparison.to_dict()}


class NothingToRollBack(RuntimeError):
    """No activation is left to undo (409)."""


@dataclass(frozen=True)
class Comparison:
    """Two models scored on one dataset's test split (``None``: not available)."""

    metric: str
    dataset_id: str | None
    candidate_id: str
    active_id: str
    candidate: float | None = None
    active: float | None = None

    @property
    def passes(self) -> bool:
        return (self.candidate is not None and self.active is not None
                and self.candidate >= self.active)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        return (f"{self.metric} {_fmt(self.candidate)} (job {self.candidate_id}) vs "
                f"{_fmt(self.active)} (active job {self.active_id}) on the test split of "
                f"dataset {self.dataset_id}")


def _fmt(score: float | None) -> str:
    return "n/a" if score is None else f"{score:.4f}"


# --------------------------------------------------------------------------- scores

def macro_f1(evaluation: Evaluation) -> float:
    """The mean of the per-class F1 scores; a stored ``macro_f1`` where evaluations carry one."""
    stored = getattr(evaluation, "macro_f1", None)
    if isinstance(stored, float):
        return stored
    f1s = [float(c["f1"]) for c in evaluation.per_class]
    return sum(f1s) / len(f1s) if f1s else 0.0


def score(evaluation: Evaluation, metric: str) -> float:
    if metric not in METRICS:
        raise ValueError(f"the promotion metric must be one of {', '.join(METRICS)}, "
                         f"not {metric!r}")
    return macro_f1(evaluation) if metric == "macro_f1" else float(evaluation.accuracy)


# An evaluation's figures, without its C x C confusion matrix.
SCORES = load_only(Evaluation.accuracy, Evaluation.per_class, Evaluation.classes)


def evaluation_on(session: Session, model: Job, dataset_id: str) -> Evaluation | None:
    """``model`` scored on ``dataset_id``'s test split: its training's own evaluation when
    it was trained on that dataset, else the newest evaluate job's result; None if neither."""
    if model.dataset_id == dataset_id:
        own = session.scalar(select(Evaluation).where(Evaluation.job_id == model.id)
                             .options(SCORES))
        if own is not None:
            return own
    return session.scalar(
        select(Evaluation).join(Job, Job.id == Evaluation.job_id)
        .where(Job.kind == JobKind.EVALUATE, Job.model_id == model.id,
               Job.dataset_id == dataset_id, Job.status == JobStatus.SUCCEEDED)
        .order_by(Job.finished_at.desc(), Job.id).limit(1).options(SCORES))


def compare(session: Session, candidate: Job, current: Job, *, metric: str,
            against: str | None) -> tuple[Comparison, Exception | None]:
    """The two models' scores, and why the gate refuses (None: it passes)."""
    dataset_id = against or (candidate.dataset_id if candidate.dataset_id == current.dataset_id
                             else None)
    base = Comparison(metric, dataset_id, candidate.id, current.id)
    if dataset_id is None:
        return base, NotComparable(
            f"job {candidate.id} was trained on dataset {candidate.dataset_id}, the active "
            f"model (job {current.id}) on dataset {current.dataset_id}: their test splits "
            "differ. Compare them on one dataset with ?against=<dataset_id> (after POST "
            "/models/{id}/evaluate of each on it), or activate with force=true",
            "against_required", base)
    if against is not None and session.get(Dataset, against) is None:
        raise datasets.DatasetNotFound(f"dataset {against} not found")
    evaluations = [evaluation_on(session, m, dataset_id) for m in (candidate, current)]
    scores = [None if e is None else score(e, metric) for e in evaluations]
    comparison = Comparison(metric, dataset_id, candidate.id, current.id, *scores)
    missing = [m.id for m, e in zip((candidate, current), evaluations, strict=True) if e is None]
    if missing:
        runs = "; ".join(f"POST /models/{m}/evaluate with {{\"dataset_id\": \"{dataset_id}\"}}"
                         for m in missing)
        return comparison, NotComparable(
            f"no evaluation on dataset {dataset_id} of job {' and job '.join(missing)}: run "
            f"{runs} (hotdog evaluate-model), then activate again", "evaluation_missing",
            comparison)
    if not comparison.passes:
        return comparison, PromotionRefused(
            f"job {candidate.id} scores lower than the active model: {comparison.text()}; "
            "activate with force=true to use it anyway", comparison)
    return comparison, None


# --------------------------------------------------------------------------- changes

@dataclass(frozen=True)
class Who:
    """Who asked for a change: ``key:<fingerprint>`` or ``anonymous``, and from where."""

    actor: str
    client: str | None = None


def activate(session: Session, *, job_id: str, who: Who, metric: str, force: bool = False,
             against: str | None = None) -> Activation | None:
    """Make ``job_id``'s model the default of ``/predict`` if the gate allows it (or
    ``force``), and record it. None when it already is the activated model (nothing
    changes). Raises :class:`PromotionRefused` or :class:`NotComparable` (409) otherwise."""
    candidate = _usable_model(session, job_id)
    lock_for_writing(session, ACTIVATION_LOCK_KEY)
    current = active(session)
    if current is not None and current.id == candidate.id and current.activated_at is not None:
        return None
    first = session.scalar(select(Job.id).where(Job.activated_at.is_not(None)).limit(1)) is None
    previous = current if current is not None and current.id != candidate.id else None
    comparison, refusal = (None, None) if previous is None else compare(
        session, candidate, previous, metric=metric, against=against)
    if refusal is not None and not (force or first):
        raise refusal
    note = ("the first activation: not gated" if first and previous is not None
            else "it was the default model already" if previous is None
            else f"forced: {refusal}" if refusal is not None
            else f"passed the gate: {comparison.text() if comparison else ''}")
    record = Activation(
        action=ActivationAction.ACTIVATE, model_id=candidate.id,
        previous_id=previous.id if previous else None,
        metric=metric if comparison else None,
        dataset_id=comparison.dataset_id if comparison else None,
        model_score=comparison.candidate if comparison else None,
        previous_score=comparison.active if comparison else None,
        forced=refusal is not None and not first, actor=who.actor, client=who.client,
        note=note)
    return _record(session, record)


def rollback(session: Session, *, who: Who) -> Activation:
    """Undo the newest activation not yet undone: its previous model becomes the active one
    again. :class:`NothingToRollBack` when there is none (or it replaced no model)."""
    lock_for_writing(session, ACTIVATION_LOCK_KEY)
    undone = select(Activation.undoes_id).where(Activation.undoes_id.is_not(None))
    last = session.scalar(
        select(Activation).where(Activation.action == ActivationAction.ACTIVATE,
                                 Activation.id.not_in(undone))
        .order_by(Activation.id.desc()).limit(1))
    if last is None or last.previous_id is None:
        raise NothingToRollBack(
            "nothing to roll back to: no activation is left to undo" if last is None else
            f"nothing to roll back to: the activation of job {last.model_id} replaced no "
            "earlier choice (it was the default model already)")
    target = _usable_model(session, last.previous_id)
    current = active(session)
    return _record(session, Activation(
        action=ActivationAction.ROLLBACK, model_id=target.id,
        previous_id=current.id if current is not None else None, undoes_id=last.id,
        forced=False, actor=who.actor, client=who.client,
        note=f"undid activation {last.id} (job {last.model_id})"))


def history(session: Session, *, limit: int, offset: int = 0) -> Sequence[Activation]:
    """The changes of the active model, newest first."""
    return session.scalars(select(Activation).order_by(Activation.id.desc()).limit(limit)
                           .offset(offset)).all()


def _usable_model(session: Session, job_id: str) -> Job:
    """A training job whose model can serve (:class:`ModelUnavailable` otherwise)."""
    job = get(session, job_id)
    model_file(job)
    return job


def _record(session: Session, record: Activation) -> Activation:
    point_at(session, record.model_id)
    session.add(record)
    session.flush()
    return record
