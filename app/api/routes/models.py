"""``/models``: the succeeded jobs ``/predict`` can use, and which one it uses by default."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import GUARDED, SessionDep, StateDep
from app.api.schemas import ERRORS, ModelOut
from app.db.models import Job
from app.models import service as models

router = APIRouter(prefix="/models", tags=["models"], dependencies=GUARDED, responses=ERRORS)


def model_out(job: Job, active: bool) -> ModelOut:
    ev = job.evaluation
    return ModelOut(id=job.id, dataset_id=job.dataset_id,
                    classes=ev.classes if ev else job.dataset.classes,
                    image_size=int(job.params.get("image_size", 224)),
                    accuracy=ev.accuracy if ev else None, active=active,
                    finished_at=job.finished_at)


@router.get("", response_model=list[ModelOut])
def list_models(session: SessionDep) -> list[ModelOut]:
    """Succeeded jobs, usable by ``/predict``; the active one (the default) comes first."""
    return [model_out(j, i == 0) for i, j in enumerate(models.list_usable(session))]


@router.post("/{job_id}/activate", response_model=ModelOut)
def activate_model(session: SessionDep, state: StateDep, job_id: str) -> ModelOut:
    """Make this job's model the default of ``/predict``."""
    job = models.activate(session, job_id=job_id)
    session.commit()  # before the lookups are forgotten, or one could cache the old default
    state.models.forget_lookups()  # this process sees the change at once
    return model_out(job, True)
