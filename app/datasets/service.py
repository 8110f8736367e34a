"""The dataset service: a stored upload becomes a row, datasets are listed, looked up and
deleted (refused while an unfinished job uses one).

Functions take a session and never commit: the request commits. Files live under
``Settings.dataset_dir(id)``; upload ingestion writes them, :func:`remove_files` removes them
once a deletion is committed.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from app.datasets.archive import Limits
from app.datasets.ingest import IngestResult, ingest_zip
from app.db.models import Dataset, Job, JobStatus

NAME_LENGTH = 200  # the column's width
UNFINISHED = [s for s in JobStatus if not s.is_terminal]


class DatasetNotFound(LookupError):
    """No such dataset, or it was deleted."""


class DatasetBusy(RuntimeError):
    """An unfinished (queued or running) job uses the dataset."""


def new_id() -> str:
    return uuid.uuid4().hex


def ingest(source: BinaryIO, *, dest: Path, limits: Limits) -> IngestResult:
    """Validate an uploaded zip in full and store it at ``dest``; nothing is left behind
    when it is refused (``DatasetError``)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    return ingest_zip(source, dest, limits, workdir=dest.parent / f".incoming-{dest.name}")


@contextmanager
def files_removed_on_error(path: Path) -> Iterator[None]:
    """Remove ``path`` when the block fails: no stored files without their committed row."""
    try:
        yield
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


def create(session: Session, *, dataset_id: str, upload: IngestResult, name: str | None,
           filename: str | None) -> Dataset:
    """The row of a stored upload; named ``name``, else after the uploaded file."""
    label = name or Path(filename or "dataset").stem or "dataset"
    dataset = Dataset(id=dataset_id, name=label[:NAME_LENGTH], classes=upload.classes,
                      counts=upload.counts, warnings=upload.warnings,
                      size_bytes=upload.size_bytes)
    session.add(dataset)
    session.flush()
    session.refresh(dataset)
    return dataset


def list_live(session: Session, *, limit: int, offset: int) -> Sequence[Dataset]:
    """Datasets not deleted, newest first."""
    return session.scalars(select(Dataset).where(Dataset.deleted_at.is_(None))
                           .order_by(Dataset.created_at.desc(), Dataset.id)
                           .limit(limit).offset(offset)).all()


def get_live(session: Session, dataset_id: str) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or dataset.deleted_at is not None:
        raise DatasetNotFound(f"dataset {dataset_id} not found")
    return dataset


def delete(session: Session, *, dataset_id: str) -> None:
    """Mark the dataset deleted unless an unfinished job uses it (checked in the same
    statement, so a job submitted meanwhile cannot slip in); remove its files with
    :func:`remove_files` after the commit. Jobs that used it keep their history."""
    get_live(session, dataset_id)
    busy = select(Job.id).where(Job.dataset_id == dataset_id, Job.status.in_(UNFINISHED))
    done = cast(CursorResult[Any], session.execute(
        update(Dataset)
        .where(Dataset.id == dataset_id, Dataset.deleted_at.is_(None), ~busy.exists())
        .values(deleted_at=datetime.now(timezone.utc))
        .execution_options(synchronize_session=False)
    )).rowcount
    if not done:
        jobs = session.scalars(busy).all()
        raise DatasetBusy(f"dataset {dataset_id} is used by unfinished job(s) "
                          f"{', '.join(jobs)}; cancel them or wait until they end")


def remove_files(path: Path) -> None:
    # Rename first: a half-deleted tree never sits under the live name. The worker's sweep
    # may remove the same folder at the same time (a leftover of a crash): whoever renames
    # it first deletes it.
    trash = path.with_name(f".deleted-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        path.rename(trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)
