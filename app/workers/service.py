"""Workers as rows: each worker says what it is every few seconds (``worker.presence``);
the API reads that to refuse jobs that no live worker would take, and to say what a queued
job is waiting for.

A worker is *alive* while it has been seen within ``WORKER_SEEN_SECONDS`` and has not shut
down. A job's *route* is the broker queue it goes to (``app.jobs.queues``): a live worker
serves it when that queue is one of the worker's queues.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from torchvision.models import ResNet18_Weights

from app.db.models import ErrorKind, Worker
from app.engine.model import PRETRAINED_ENV, imagenet_weights_cache_path

# Rows of workers not seen for this long are removed when another worker starts (each
# process start is a new row: names are host:pid).
FORGET_AFTER = timedelta(days=7)


class NoLiveWorker(RuntimeError):
    """No live worker takes the job's queue (409: start one, or pass ``queue_anyway``)."""

    kind = "no_live_worker"  # the answer's ``kind``, for clients to branch on


class WeightsUnavailable(RuntimeError):
    """An ``imagenet`` start, and no live worker for its queue has the weights (409)."""

    kind = ErrorKind.WEIGHTS_MISSING.value


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker says about itself."""

    name: str
    gpus: int
    queues: list[str]
    version: str
    has_imagenet: bool

    @property
    def kind(self) -> str:
        return "gpu" if self.gpus > 0 else "cpu"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _upsert(session: Session, values: dict[str, Any], *, keep: set[str]) -> None:
    """Insert the row, or update every column but ``keep`` on the one with that name: one
    statement on Postgres and SQLite, so two heartbeats never collide."""
    changed = {k: v for k, v in values.items() if k not in keep and k != "name"}
    stmt: postgresql.Insert | sqlite.Insert
    if session.get_bind().dialect.name == "postgresql":
        stmt = postgresql.insert(Worker).values(**values)
        stmt = stmt.on_conflict_do_update(index_elements=[Worker.name], set_=changed)
    else:
        stmt = sqlite.insert(Worker).values(**values)
        stmt = stmt.on_conflict_do_update(index_elements=[Worker.name], set_=changed)
    session.execute(stmt)


def announce(session: Session, info: WorkerInfo, *, now: datetime | None = None) -> None:
    """Record that the worker is alive now, and what it is (started_at: its first call)."""
    now = now or utcnow()
    _upsert(session, {"name": info.name, "kind": info.kind, "gpus": info.gpus,
                      "queues": list(info.queues), "version": info.version,
                      "has_imagenet": info.has_imagenet, "started_at": now,
                      "last_seen": now, "stopped_at": None}, keep={"started_at"})


def withdraw(session: Session, name: str, *, now: datetime | None = None) -> None:
    """The worker shut down: it is no longer alive, whatever its last heartbeat."""
    session.execute(update(Worker).where(Worker.name == name)
                    .values(stopped_at=now or utcnow())
                    .execution_options(synchronize_session=False))


def forget_old(session: Session, *, now: datetime | None = None) -> None:
    """Remove the rows of workers long gone."""
    cutoff = (now or utcnow()) - FORGET_AFTER
    session.query(Worker).filter(Worker.last_seen < cutoff).delete(synchronize_session=False)


def is_alive(worker: Worker, *, seen_seconds: float, now: datetime | None = None) -> bool:
    now = now or utcnow()
    return worker.stopped_at is None and (now - worker.last_seen).total_seconds() <= seen_seconds


def list_workers(session: Session) -> Sequence[Worker]:
    """Every worker on record, the most recently seen first."""
    return session.scalars(select(Worker).order_by(Worker.last_seen.desc(), Worker.name)).all()


def live_workers(session: Session, *, seen_seconds: float,
                 now: datetime | None = None) -> list[Worker]:
    now = now or utcnow()
    return [w for w in list_workers(session) if is_alive(w, seen_seconds=seen_seconds, now=now)]


def serving(workers: Sequence[Worker], queue: str) -> list[Worker]:
    """Those of ``workers`` that take jobs from ``queue``."""
    return [w for w in workers if queue in (w.queues or [])]


def wanted(queue: str) -> str:
    """The worker a job on ``queue`` needs, in words (for ``waiting_for`` and errors)."""
    if queue.endswith(".gpu"):
        return "a worker with a GPU"
    if queue.endswith(".cpu"):
        return "a CPU-only worker"
    return "a worker"


def check_can_run(session: Session, *, queue: str, imagenet: bool, seen_seconds: float) -> None:
    """Raise unless a live worker takes ``queue`` and, for an ``imagenet`` start, one of
    them has the ImageNet weights."""
    takers = serving(live_workers(session, seen_seconds=seen_seconds), queue)
    if not takers:
        raise NoLiveWorker(
            f"no live worker takes this job: it needs {wanted(queue)} (queue {queue}), and none "
            f"has been seen in the last {seen_seconds:g} s. Start one (`hotdog worker`), or "
            "send queue_anyway: true to queue the job until one starts")
    if imagenet and not any(w.has_imagenet for w in takers):
        raise WeightsUnavailable(
            f"no live worker for this job (queue {queue}: "
            f"{', '.join(w.name for w in takers)}) has the ImageNet weights for ResNet-18. "
            f"Copy {imagenet_weights_cache_path().name} (from "
            f"{ResNet18_Weights.IMAGENET1K_V1.url}) into the worker's torchvision cache "
            f"($TORCH_HOME/hub/checkpoints/), or set {PRETRAINED_ENV}=/path/to/resnet18.pth "
            "in the worker's environment and restart it; or start from 'scratch' or a job:<id>"
            ", or send queue_anyway: true")


def waiting_for(queue: str, live_queues: set[str]) -> str | None:
    """What a queued job on ``queue`` waits for, when no live worker takes that queue."""
    return None if queue in live_queues else f"{wanted(queue)} (none is running)"


def live_queues(session: Session, *, seen_seconds: float) -> set[str]:
    return {q for w in live_workers(session, seen_seconds=seen_seconds) for q in w.queues or []}


def imagenet_weights_file() -> str:
    """The file a worker would load the ImageNet weights from: ``HOTDOG_PRETRAINED_PATH``,
    else torchvision's cache (the engine's own lookup, ``app.engine.model``)."""
    return os.environ.get(PRETRAINED_ENV) or str(imagenet_weights_cache_path())


def has_imagenet_weights() -> bool:
    """Whether the weights file is there and readable (not loaded: that takes seconds)."""
    path = imagenet_weights_file()
    return os.path.isfile(path) and os.access(path, os.R_OK)
