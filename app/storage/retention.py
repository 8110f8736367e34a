"""Deleting a job's files, and the sweep that keeps DATA_DIR from growing forever.

- :func:`delete_job`: ``DELETE /jobs/{id}``. Refused while the job is queued or running
  (cancel it first), while it is the active model, or while a queued or running job starts
  from it (``init: job:<id>``) or evaluates it (``model_id``), naming which. It marks the
  row (``deleted_at``, or ``files_removed_at`` with ``files_only``); the caller commits, then
  removes the files with :func:`remove_job_files`.
- :func:`sweep`: what a worker runs every ``SWEEP_SECONDS``: with ``KEEP_MODELS`` = N, the
  model files of succeeded jobs older than the N newest go (not the active model, not a
  model a live job uses); finished jobs lose their intermediate files (``last.pt``,
  ``best.pt``, spec files); files that a crash left behind go: of deleted jobs and
  datasets, temporary files older than ``STALE_TEMP_SECONDS``.

The checks and the marks run under the job submissions' lock and the activations' lock (in
that order, as everywhere), so a job submitted, or a model activated, at the same moment
either sees the mark (and is refused) or is seen by the check. Two workers sweeping at once
are safe: rows are marked by guarded updates under those locks, and every removal tolerates
a file that someone else removed first.

Functions that take a session never commit; :func:`sweep` takes an engine and commits its
marks before it removes files (a crash in between leaves files the next sweep removes).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, Engine, select, update
from sqlalchemy.orm import Session

from app.core.config import JOB_LOG_NAME, Settings
from app.db.models import Dataset, Job, JobKind, JobStatus
from app.db.session import lock_for_writing
from app.jobs import service as jobs
from app.models import promotion
from app.models import service as models

log = logging.getLogger(__name__)

LIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
# What a finished job keeps no use for: the per-epoch checkpoints a resumed attempt would
# start from, and the training process's spec.
INTERMEDIATE = ("last.pt", "best.pt")
INTERMEDIATE_GLOBS = (".spec-*.json",)
# The per-job log outlives the job's model files (files_only, retention).
KEPT_WITH_LOG = frozenset({JOB_LOG_NAME})
TRASH_PREFIX = ".deleted-"
INCOMING_PREFIX = ".incoming-"


class JobBusy(RuntimeError):
    """The job is queued or running: cancel it first (409)."""


class ModelInUse(RuntimeError):
    """The job's model is the active one, or a queued or running job uses it (409);
    ``kind``: ``active_model`` or ``model_in_use``; ``used_by`` names those jobs."""

    def __init__(self, message: str, kind: str, used_by: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.kind = kind
        self.extra = {"used_by": list(used_by)}


def lock(session: Session) -> None:
    """The locks that submissions and activations take, in that order (the order every
    taker of both follows, so none waits for the other in a circle)."""
    lock_for_writing(session, jobs.SUBMISSION_LOCK_KEY)
    lock_for_writing(session, promotion.ACTIVATION_LOCK_KEY)


def live_users(session: Session) -> dict[str, list[str]]:
    """Model (job) id -> the queued or running jobs that use it: training jobs that start
    from it (``init: job:<id>``), and evaluate, predict and review jobs that use it
    (``model_id``)."""
    users: dict[str, list[str]] = {}
    for job in session.scalars(select(Job).where(Job.status.in_(LIVE))
                               .order_by(Job.created_at, Job.id)):
        if job.kind is not JobKind.TRAIN:  # evaluate, predict, review: their model
            used = job.model_id
        else:
            used = jobs.source_job_id(str(job.params.get("init", "")))
        if used:
            users.setdefault(used, []).append(job.id)
    return users


def check_deletable(job: Job, *, active_id: str | None, users: dict[str, list[str]]
                    ) -> None:
    """:class:`JobBusy` or :class:`ModelInUse` when ``job``'s files must stay."""
    if job.status in LIVE:
        raise JobBusy(f"job {job.id} is {job.status.value}: cancel it first (POST "
                      f"/jobs/{job.id}/cancel), then delete it once it has ended")
    if job.id in users:
        ids = users[job.id]
        raise ModelInUse(f"the model of job {job.id} is used by queued or running job(s) "
                         f"{', '.join(ids)} (as their init job:{job.id}, or the model they "
                         "evaluate): cancel them or wait until they end", "model_in_use", ids)
    if job.id == active_id:
        raise ModelInUse(f"job {job.id} is the active model (the default of /predict): "
                         "activate another model first", "active_model", [job.id])


def delete_job(session: Session, *, job_id: str, files_only: bool = False,
               now: datetime | None = None) -> Job:
    """Mark ``job_id`` deleted (or, with ``files_only``, its files removed) unless its files
    must stay (see :func:`check_deletable`). The caller commits, then calls
    :func:`remove_job_files`. A job already deleted is :class:`jobs.JobConflict`."""
    lock(session)
    job = jobs.get_job(session, job_id)
    if job.deleted_at is not None:
        raise jobs.JobConflict(f"job {job_id} was already deleted")
    current = models.active(session)
    check_deletable(job, active_id=current.id if current else None,
                    users=live_users(session))
    now = now or jobs.utcnow()
    values: dict[str, Any] = {} if job.files_removed_at is not None else {
        "files_removed_at": now}
    if not files_only:
        values["deleted_at"] = now
    if values:
        session.execute(update(Job).where(Job.id == job_id).values(**values)
                        .execution_options(synchronize_session=False))
        session.expire_all()
    return jobs.get_job(session, job_id)


# ---------------------------------------------------------------------------- files
def _unlink(path: Path) -> int:
    """Remove a file or a tree; its bytes (0 when someone removed it first)."""
    try:
        if path.is_dir() and not path.is_symlink():
            size = tree_bytes(path)
            shutil.rmtree(path, ignore_errors=True)
            return size
        size = path.lstat().st_size
        path.unlink()
        return size
    except FileNotFoundError:
        return 0


def files_under(root: Path) -> list[tuple[Path, int]]:
    """Every file under ``root`` with its size (links not followed; what vanishes meanwhile
    is skipped)."""
    out = []
    stack = [root]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for e in entries:
                    try:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(Path(e.path))
                        else:
                            out.append((Path(e.path), e.stat(follow_symlinks=False).st_size))
                    except FileNotFoundError:
                        continue
        except (FileNotFoundError, NotADirectoryError):
            continue
    return out


def tree_bytes(path: Path) -> int:
    """The bytes of the files under ``path`` (what removing it frees), links not followed."""
    return sum(size for _, size in files_under(path))


def remove_tree(path: Path) -> int:
    """Remove a folder: renamed first (a half-removed tree never sits under the live name),
    then deleted. Safe when another process removes it at the same time."""
    trash = path.with_name(f"{TRASH_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        path.rename(trash)
    except FileNotFoundError:
        return 0
    return _unlink(trash)


def remove_job_files(job_dir: Path, *, keep_log: bool) -> int:
    """A job's files: all of them (its folder), or all but its log (``keep_log``). Returns
    the bytes freed."""
    if not keep_log:
        return remove_tree(job_dir)
    try:
        entries = list(job_dir.iterdir())
    except FileNotFoundError:
        return 0
    return sum(_unlink(p) for p in entries if p.name not in KEPT_WITH_LOG)


def _remove_intermediate(job_dir: Path) -> int:
    paths = [job_dir / n for n in INTERMEDIATE]
    for pattern in INTERMEDIATE_GLOBS:
        paths.extend(job_dir.glob(pattern))
    return sum(_unlink(p) for p in paths)


def _untouched_for(path: Path, seconds: float, now: float) -> bool:
    """Whether nothing under ``path`` was modified within ``seconds`` (a writer at work
    touches what it writes)."""
    cutoff = now - seconds
    try:
        if path.lstat().st_mtime > cutoff:
            return False
        if not path.is_dir() or path.is_symlink():
            return True
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                if os.lstat(os.path.join(root, name)).st_mtime > cutoff:
                    return False
    except FileNotFoundError:
        return False
    return True


def _stale(paths: Iterable[Path], seconds: float, now: float) -> int:
    return sum(_unlink(p) for p in paths if _untouched_for(p, seconds, now))


# ---------------------------------------------------------------------------- the sweep
@dataclass
class SweepReport:
    """What one sweep did: jobs whose model files KEEP_MODELS removed, and bytes freed."""

    retired: list[str] = field(default_factory=list)
    freed_bytes: int = 0

    def add(self, what: str, freed: int, job_id: str | None = None) -> None:
        """Count and log one removal (a job's lines carry its id, so they reach its log)."""
        self.freed_bytes += freed
        log.info("sweep: %s (%d bytes)", what, freed,
                 extra={"job_id": job_id} if job_id else None)


def retire_old_models(session: Session, *, keep: int, now: datetime | None = None
                      ) -> list[str]:
    """Mark the files of succeeded models beyond the ``keep`` newest removed, but not the
    active model nor one a live job uses. Returns the marked ids (the caller commits, then
    removes their files)."""
    lock(session)
    current = models.active(session)
    kept = set(live_users(session))
    if current is not None:
        kept.add(current.id)
    candidates = session.scalars(
        select(Job.id).where(Job.kind == JobKind.TRAIN, Job.status == JobStatus.SUCCEEDED,
                             Job.deleted_at.is_(None), Job.files_removed_at.is_(None))
        .order_by(Job.finished_at.desc(), Job.id)).all()
    now = now or jobs.utcnow()
    retired = []
    for job_id in candidates[keep:]:
        if job_id in kept:
            continue
        stmt = (update(Job).where(Job.id == job_id, Job.files_removed_at.is_(None),
                                  Job.deleted_at.is_(None))
                .values(files_removed_at=now).execution_options(synchronize_session=False))
        if cast(CursorResult[Any], session.execute(stmt)).rowcount == 1:
            retired.append(job_id)
    return retired


def sweep(engine: Engine, settings: Settings, *, now: float | None = None) -> SweepReport:
    """One pass over DATA_DIR (see the module's docstring)."""
    now = time.time() if now is None else now
    report = SweepReport()
    if settings.keep_models is not None:
        with Session(engine) as s:
            retired = retire_old_models(s, keep=settings.keep_models)
            s.commit()
        report.retired = retired
        for job_id in retired:
            log.info("job %s: model files removed (KEEP_MODELS=%d)", job_id,
                     settings.keep_models, extra={"job_id": job_id})
    _sweep_jobs(engine, settings, report, now)
    _sweep_datasets(engine, settings, report, now)
    tmp = settings.data_dir / "tmp"
    if tmp.is_dir():
        stale = [p for p in tmp.iterdir() if _untouched_for(p, settings.stale_temp_seconds, now)]
        for p in stale:
            report.add(f"stale upload spool {p.name}", _unlink(p))
    return report


_Row = TypeVar("_Row", Job, Dataset)


def _rows(engine: Engine, table: type[_Row], ids: list[str]) -> dict[str, _Row]:
    """The rows of ``table`` with these ids, by id (looked up 500 at a time)."""
    out: dict[str, _Row] = {}
    with Session(engine) as s:
        for start in range(0, len(ids), 500):
            out.update((r.id, r) for r in s.scalars(select(table).where(
                table.id.in_(ids[start:start + 500]))))
    return out


def _jobs(engine: Engine, ids: list[str]) -> dict[str, Job]:
    return _rows(engine, Job, ids)


def _datasets(engine: Engine, ids: list[str]) -> dict[str, Dataset]:
    return _rows(engine, Dataset, ids)


def _sweep_jobs(engine: Engine, settings: Settings, report: SweepReport, now: float) -> None:
    root = settings.data_dir / "jobs"
    if not root.is_dir():
        return
    entries = sorted(root.iterdir())
    trash = [p for p in entries if p.name.startswith(TRASH_PREFIX)]
    for p in trash:
        if _untouched_for(p, settings.stale_temp_seconds, now):
            report.add(f"leftover {p.name}", _unlink(p))
    dirs = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
    rows = _jobs(engine, [p.name for p in dirs])
    for job_dir in dirs:
        job = rows.get(job_dir.name)
        if job is None or job.status in LIVE:
            continue  # not ours to judge; a live job's worker cleans up after itself
        if job.deleted_at is not None:
            report.add(f"files of deleted job {job.id}",
                       remove_job_files(job_dir, keep_log=False), job.id)
            continue
        if job.files_removed_at is not None:
            freed = remove_job_files(job_dir, keep_log=True)
        else:
            freed = _remove_intermediate(job_dir)
        freed += _stale(job_dir.glob(".*.tmp"), settings.stale_temp_seconds, now)
        if freed:
            report.add(f"job {job.id}: files it no longer needs removed", freed, job.id)


def _sweep_datasets(engine: Engine, settings: Settings, report: SweepReport,
                    now: float) -> None:
    root = settings.data_dir / "datasets"
    if not root.is_dir():
        return
    entries = sorted(root.iterdir())
    for p in entries:
        if p.name.startswith((TRASH_PREFIX, INCOMING_PREFIX)) and _untouched_for(
                p, settings.stale_temp_seconds, now):
            report.add(f"leftover {p.name}", _unlink(p))
    dirs = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
    rows = _datasets(engine, [p.name for p in dirs])
    for ds_dir in dirs:
        ds = rows.get(ds_dir.name)
        if ds is not None and ds.deleted_at is not None:
            report.add(f"files of deleted dataset {ds.id}", remove_tree(ds_dir))
        elif ds is not None:
            freed = _stale(ds_dir.glob(".*.tmp"), settings.stale_temp_seconds, now)
            if freed:
                report.add(f"dataset {ds.id}: stale temporary files", freed)
