"""``/workers``: the workers on record, whether each is alive and what it can run."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import GUARDED, SessionDep, StateDep
from app.api.schemas import ERRORS, WorkerOut
from app.workers import service as workers

router = APIRouter(prefix="/workers", tags=["workers"], dependencies=GUARDED, responses=ERRORS)


@router.get("", response_model=list[WorkerOut])
def list_workers(session: SessionDep, state: StateDep) -> list[WorkerOut]:
    """Every worker that announced itself, most recently seen first: its kind, GPUs,
    queues, version, whether it has the ImageNet weights, and whether it is alive (seen
    within ``WORKER_SEEN_SECONDS`` and not shut down)."""
    seen = state.settings.worker_seen_seconds
    now = workers.utcnow()
    return [WorkerOut(name=w.name, kind="gpu" if w.kind == "gpu" else "cpu", gpus=w.gpus,
                      queues=w.queues, version=w.version, has_imagenet=w.has_imagenet,
                      started_at=w.started_at, last_seen=w.last_seen, stopped_at=w.stopped_at,
                      alive=workers.is_alive(w, seen_seconds=seen, now=now))
            for w in workers.list_workers(session)]
