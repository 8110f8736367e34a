"""What DATA_DIR holds (``GET /storage``): bytes by category, the file system's free space,
and the biggest datasets and jobs, each with whether it can be deleted now and why not.

Measured on the disk (a walk of DATA_DIR), not taken from the rows: what it says is what
deleting would free.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import JOB_LOG_NAME, Settings
from app.db.models import Dataset, Job, JobKind, JobStatus
from app.engine.export import SUFFIXES
from app.models import service as models
from app.storage.retention import (
    INCOMING_PREFIX,
    LIVE,
    TRASH_PREFIX,
    files_under,
    live_users,
)

CATEGORIES = ("datasets", "checkpoints", "exports", "logs", "temporary", "database", "other")
EXPORT_SUFFIXES = tuple(SUFFIXES.values())


@dataclass
class Item:
    """One dataset's or job's files."""

    kind: str  # "dataset" or "job"
    id: str
    bytes: int = 0
    by_category: dict[str, int] = field(default_factory=dict)

    def add(self, category: str, size: int) -> None:
        self.bytes += size
        self.by_category[category] = self.by_category.get(category, 0) + size


def job_file_category(name: str) -> str:
    if name == JOB_LOG_NAME:
        return "logs"
    if name.startswith(".") or name.endswith(".tmp"):
        return "temporary"
    if name.endswith(EXPORT_SUFFIXES):  # model.onnx, model.torchscript.pt
        return "exports"
    if name.endswith(".pt"):
        return "checkpoints"
    return "other"


def report(session: Session, settings: Settings, *, limit: int) -> dict[str, Any]:
    """The storage report (see the module's docstring); ``limit`` biggest items."""
    root = settings.data_dir.resolve()
    totals = dict.fromkeys(CATEGORIES, 0)
    items: dict[tuple[str, str], Item] = {}
    for path, size in files_under(root) if root.is_dir() else []:
        rel = path.relative_to(root).parts
        category, item = _classify(rel)
        totals[category] += size
        if item is not None:
            items.setdefault(item, Item(*item)).add(category, size)
    ids = {kind: [i for k, i in items if k == kind] for kind in ("dataset", "job")}
    datasets = {d.id: d for d in session.scalars(
        select(Dataset).where(Dataset.id.in_(ids["dataset"])))} if ids["dataset"] else {}
    jobs = {j.id: j for j in session.scalars(
        select(Job).where(Job.id.in_(ids["job"])))} if ids["job"] else {}
    current = models.active(session)
    users = live_users(session)
    out_items = []
    for it in sorted(items.values(), key=lambda i: (-i.bytes, i.kind, i.id)):
        if it.kind == "dataset":
            ds = datasets.get(it.id)
            if ds is None or ds.deleted_at is not None:
                continue  # a leftover, counted as temporary below
            out_items.append(_dataset_item(session, it, ds))
        else:
            job = jobs.get(it.id)
            if job is None:
                continue
            out_items.append(_job_item(it, job, current.id if current else None, users))
        if len(out_items) >= limit:
            break
    usage = shutil.disk_usage(root) if root.is_dir() else None
    return {
        "free_bytes": usage.free if usage else 0,
        "total_bytes": usage.total if usage else 0,
        "used_bytes": sum(totals.values()),
        "categories": totals,
        "datasets": sum(1 for k, i in items if k == "dataset" and i in datasets
                        and datasets[i].deleted_at is None),
        "jobs_with_files": sum(1 for k, i in items if k == "job" and i in jobs
                               and items[(k, i)].bytes - items[(k, i)].by_category.get(
                                   "logs", 0) > 0),
        "biggest": out_items,
    }


def _classify(rel: tuple[str, ...]) -> tuple[str, tuple[str, str] | None]:
    """A file's category and the item (dataset or job) it belongs to, by its path."""
    top = rel[0]
    if top.startswith("hotdog.db"):
        return "database", None
    if top == "tmp":
        return "temporary", None
    if top == "datasets" and len(rel) >= 3:
        name = rel[1]
        if name.startswith((TRASH_PREFIX, INCOMING_PREFIX)) or rel[-1].endswith(".tmp"):
            return "temporary", None
        return "datasets", ("dataset", name)
    if top == "jobs" and len(rel) >= 3:
        name = rel[1]
        if name.startswith(TRASH_PREFIX):
            return "temporary", None
        return job_file_category(rel[-1]), ("job", name)
    return "other", None


def _dataset_item(session: Session, it: Item, ds: Dataset) -> dict[str, Any]:
    busy = session.scalars(select(Job.id).where(Job.dataset_id == ds.id,
                                                Job.status.in_(LIVE))).all()
    return {"kind": "dataset", "id": ds.id, "name": ds.name, "bytes": it.bytes,
            "by_category": it.by_category, "status": None, "created_at": ds.created_at,
            "protected": (f"used by queued or running job(s) {', '.join(busy)}"
                          if busy else None)}


def _job_item(it: Item, job: Job, active_id: str | None,
              users: dict[str, list[str]]) -> dict[str, Any]:
    protected = None
    if job.status in LIVE:
        protected = f"it is {job.status.value}"
    elif job.id == active_id:
        protected = "it is the active model"
    elif job.id in users:
        protected = f"used by queued or running job(s) {', '.join(users[job.id])}"
    what = ("evaluation" if job.kind is JobKind.EVALUATE else
            "batch prediction" if job.kind is JobKind.PREDICT else
            "label review" if job.kind is JobKind.REVIEW else
            "model" if job.status is JobStatus.SUCCEEDED else "training")
    return {"kind": "job", "id": job.id, "name": f"{what} ({job.status.value})",
            "bytes": it.bytes, "by_category": it.by_category, "status": job.status.value,
            "created_at": job.created_at, "protected": protected,
            "deleted": job.deleted_at is not None,
            "files_removed": job.files_removed_at is not None}
