"""``/datasets``: upload an ImageFolder zip, list, show, delete."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session

from app.api.deps import GUARDED, SessionDep, SettingsDep, StateDep
from app.api.schemas import ERRORS, MAX_OFFSET, DatasetOut
from app.datasets import service as datasets
from app.datasets.archive import Limits
from app.datasets.ingest import IngestResult
from app.db.models import Dataset

router = APIRouter(prefix="/datasets", tags=["datasets"], dependencies=GUARDED,
                   responses=ERRORS)


def dataset_out(ds: Dataset) -> DatasetOut:
    return DatasetOut(id=ds.id, name=ds.name, classes=ds.classes, counts=ds.counts,
                      warnings=ds.warnings, size_bytes=ds.size_bytes, created_at=ds.created_at)


class UploadRoute(APIRoute):
    """Takes one of the server's upload slots before the body is read (``UploadsBusy``, 503,
    when none is free: a refused upload costs no disk) and holds it until the dataset is
    stored or refused."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def admitted(request: Request) -> Response:
            with request.app.state.hotdog.uploads.slot():
                return await handle(request)

        return admitted


async def upload_dataset(
    session: SessionDep, state: StateDep,
    file: Annotated[UploadFile, File(description="zip of train/<class>/… and test/<class>/…")],
    name: Annotated[str | None, Form(max_length=200)] = None,
) -> DatasetOut:
    """Upload an ImageFolder zip. It is validated in full (layout, at least 2 classes, the
    same classes in train and test, every image decodes) before anything is stored."""
    settings = state.settings
    dataset_id = datasets.new_id()
    dest = settings.dataset_dir(dataset_id)
    limits = Limits(max_bytes=settings.max_dataset_bytes, max_files=settings.max_dataset_files,
                    min_free_bytes=settings.min_free_disk_bytes,
                    max_classes=settings.max_classes)
    upload = await state.uploads.run(datasets.ingest, file.file, dest=dest, limits=limits)
    return await run_in_threadpool(_record, session, dest, dataset_id, upload, name,
                                   file.filename)


def _record(session: Session, dest: Path, dataset_id: str, upload: IngestResult,
            name: str | None, filename: str | None) -> DatasetOut:
    """The stored upload's row, committed (files whose row failed to commit are removed)."""
    with datasets.files_removed_on_error(dest):
        ds = datasets.create(session, dataset_id=dataset_id, upload=upload, name=name,
                             filename=filename)
        session.commit()
    return dataset_out(ds)


router.add_api_route(
    "", upload_dataset, methods=["POST"], status_code=status.HTTP_201_CREATED,
    response_model=DatasetOut, route_class_override=UploadRoute)


@router.get("", response_model=list[DatasetOut])
def list_datasets(
    session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[DatasetOut]:
    return [dataset_out(d) for d in datasets.list_live(session, limit=limit, offset=offset)]


@router.get("/{dataset_id}", response_model=DatasetOut)
def show_dataset(session: SessionDep, dataset_id: str) -> DatasetOut:
    return dataset_out(datasets.get_live(session, dataset_id))


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(session: SessionDep, settings: SettingsDep, dataset_id: str) -> None:
    """Delete a dataset's files. Refused (409) while a queued or running job uses it; the
    jobs that used it keep their history, models and checkpoints."""
    datasets.delete(session, dataset_id=dataset_id)
    session.commit()  # the row says deleted before its files go
    datasets.remove_files(settings.dataset_dir(dataset_id))
