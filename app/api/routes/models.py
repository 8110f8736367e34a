"""``/models``: the succeeded training jobs ``/predict`` can use, which one it uses by default
(changed through the promotion gate, recorded, undone by a rollback), and each model's
evaluations on datasets (evaluate jobs)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from sqlalchemy.orm import Session

from app.api.deps import GUARDED, SessionDep, StateDep, caller
from app.api.routes.jobs import queue
from app.api.schemas import (
    ERRORS,
    MAX_OFFSET,
    ActivateRequest,
    ActivationOut,
    DecisionOut,
    EvaluateRequest,
    JobOut,
    ModelEvaluationOut,
    ModelOut,
)
from app.api.state import State
from app.db.models import Evaluation, Job
from app.jobs import evaluations as evaluate_jobs
from app.models import decision, promotion
from app.models import service as models

router = APIRouter(prefix="/models", tags=["models"], dependencies=GUARDED, responses=ERRORS)


def model_out(job: Job, active: bool, state: State | None = None) -> ModelOut:
    ev = job.evaluation
    loaded = state.models.models.get(job.id) if state is not None else None
    return ModelOut(id=job.id, dataset_id=dataset_of(job),
                    classes=ev.classes if ev else evaluate_jobs.model_classes(job),
                    image_size=int(job.params.get("image_size", 224)),
                    accuracy=ev.accuracy if ev else None,
                    macro_f1=promotion.macro_f1(ev) if ev else None, active=active,
                    finished_at=job.finished_at, decision=_decision(job),
                    serving=loaded.serving() if loaded is not None else None)


def _decision(job: Job) -> DecisionOut | None:
    rule = decision.decision_of(job)
    return None if rule is None else DecisionOut.model_validate(rule.to_dict())


def who(request: Request) -> promotion.Who:
    """Who sends this request: its API key's fingerprint when the service has keys (every
    request then carries one), else ``anonymous``; and the client's address."""
    key = caller(request)
    actor = f"key:{key.fingerprint}" if key else "anonymous"
    return promotion.Who(actor, request.client.host if request.client else None)


def dataset_of(job: Job) -> str:
    """A training or evaluate job's dataset (only predict jobs of uploaded photos have
    none)."""
    if job.dataset_id is None:
        raise ValueError(f"job {job.id} ({job.kind.value}) has no dataset")
    return job.dataset_id


@router.get("", response_model=list[ModelOut])
def list_models(session: SessionDep, state: StateDep) -> list[ModelOut]:
    """Succeeded jobs, usable by ``/predict``; the active one (the default) comes first.
    A model this process has loaded says which runtime serves it and how fast."""
    return [model_out(j, i == 0, state) for i, j in enumerate(models.list_usable(session))]


@router.get("/history", response_model=list[ActivationOut])
def activation_history(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[ActivationOut]:
    """Every change of the active model, newest first: who, when, both models and scores."""
    return [ActivationOut.model_validate(a)
            for a in promotion.history(session, limit=limit, offset=offset)]


@router.post("/rollback", response_model=ActivationOut)
def rollback(session: SessionDep, state: StateDep, request: Request) -> ActivationOut:
    """Activate again the model that the newest activation (not yet undone) replaced; 409
    when there is none."""
    record = promotion.rollback(session, who=who(request))
    out = ActivationOut.model_validate(record)
    _committed(session, state)
    return out


@router.post("/{job_id}/activate", response_model=ModelOut)
def activate_model(
    session: SessionDep, state: StateDep, request: Request, job_id: str,
    force: Annotated[bool, Query(description="activate even when the gate refuses")] = False,
    against: Annotated[str | None, Query(
        min_length=1, max_length=64, description="compare both models on this dataset's "
        "test split (each needs an evaluation on it: POST /models/{id}/evaluate)")] = None,
    body: ActivateRequest | None = None,
) -> ModelOut:
    """Make this job's model the default of ``/predict`` if it scores at least as well as
    the active model on ``PROMOTION_METRIC``, on the test split both were trained on (or on
    ``against``'s); else 409 with both scores, unless ``force``. Recorded in the history.
    A body ``{"threshold": 0.7, "class": "hotdog"}`` sets a two-class model's decision
    threshold (``{"threshold": null}`` clears it; no body keeps it)."""
    settings = state.settings
    promotion.activate(session, job_id=job_id, who=who(request),
                       metric=settings.promotion_metric, force=force, against=against)
    if body is not None and "threshold" in body.model_fields_set:
        decision.set_threshold(session, job_id, body.threshold, body.class_)
    _committed(session, state)
    return model_out(models.summary(session, job_id), True)


def _committed(session: Session, state: State) -> None:
    session.commit()  # before the lookups are forgotten, or one could cache the old default
    state.models.forget_lookups()  # this process sees the change at once
    state.explain.forget_decisions()


@router.post("/{job_id}/evaluate", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
def evaluate_model(session: SessionDep, state: StateDep, job_id: str,
                   body: EvaluateRequest) -> JobOut:
    """Queue a job that scores this model on the test split of ``dataset_id`` (same classes,
    else 422); follow it with ``GET /jobs/{id}``. Its result is listed by
    ``GET /models/{job_id}/evaluations``, and the promotion gate's ``against`` uses it."""
    settings = state.settings
    job = evaluate_jobs.submit_evaluation(
        session, model_id=job_id, dataset_id=body.dataset_id,
        max_active_jobs=settings.max_active_jobs, max_attempts=settings.max_attempts)
    return queue(session, state, job, queue_anyway=body.queue_anyway)


@router.get("/{job_id}/evaluations", response_model=list[ModelEvaluationOut])
def model_evaluations(session: SessionDep, job_id: str) -> list[ModelEvaluationOut]:
    """The model's scores on test splits, newest first: its training's own, and every
    evaluate job's that succeeded."""
    return [_evaluation_out(job_id, job, ev) for job, ev in models.evaluations(session, job_id)]


def _evaluation_out(model_id: str, job: Job, ev: Evaluation) -> ModelEvaluationOut:
    return ModelEvaluationOut(
        model_id=model_id, dataset_id=dataset_of(job), job_id=job.id,
        source="training" if job.id == model_id else "evaluation", accuracy=ev.accuracy,
        macro_f1=promotion.macro_f1(ev), loss=ev.loss, classes=ev.classes,
        confusion=ev.confusion, per_class=ev.per_class, created_at=job.finished_at)
