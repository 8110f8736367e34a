"""``/datasets``: upload an ImageFolder zip, list, show, delete; its report, its images'
thumbnails, and relabelled versions."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

from fastapi import (
    APIRouter,
    Body,
    File,
    Form,
    Query,
    Request,
    Response,
    UploadFile,
    status,
)
from fastapi import (
    Path as PathParam,
)
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session

from app.api.deps import GUARDED, SessionDep, SettingsDep, StateDep
from app.api.schemas import ERRORS, MAX_OFFSET, DatasetOut, RelabelRequest, ReportOut
from app.api.state import State
from app.datasets import service as datasets
from app.datasets import versions
from app.datasets.archive import Limits
from app.datasets.ingest import IngestResult
from app.datasets.report import THUMBNAIL_SIZES, read_report, thumbnail_jpeg
from app.datasets.reporting import needs_taking_up
from app.db.models import Dataset, ReportStatus

router = APIRouter(prefix="/datasets", tags=["datasets"], dependencies=GUARDED,
                   responses=ERRORS)


def dataset_out(ds: Dataset) -> DatasetOut:
    return DatasetOut(id=ds.id, name=ds.name, classes=ds.classes, counts=ds.counts,
                      warnings=ds.warnings, size_bytes=ds.size_bytes, created_at=ds.created_at,
                      report_status=ds.report_status.value, report_error=ds.report_error,
                      parent_id=ds.parent_id, changes=ds.changes)


def _looked_at(state: State, ds: Dataset) -> Dataset:
    """``ds``, its report queued again if nobody computes it (its process died)."""
    if needs_taking_up(ds, stale_seconds=state.settings.report_stale_seconds):
        state.reports.submit(ds.id)
    return ds


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
    out = await run_in_threadpool(_record, session, dest, dataset_id, upload, name,
                                  file.filename)
    state.reports.submit(dataset_id)  # after the commit: the report claims the row
    return out


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
def show_dataset(session: SessionDep, state: StateDep, dataset_id: str) -> DatasetOut:
    return dataset_out(_looked_at(state, datasets.get_live(session, dataset_id)))


@router.get("/{dataset_id}/report", response_model=ReportOut,
            responses={202: {"model": ReportOut,
                             "description": "the report is pending or running"}})
def dataset_report(session: SessionDep, state: StateDep, dataset_id: str,
                   response: Response) -> ReportOut:
    """The dataset's report: exact and near duplicates within each split and across splits
    (leakage), the same photo under two classes, image-level issues, counts. 202 (without
    ``report``) until it is ready."""
    ds = _looked_at(state, datasets.get_live(session, dataset_id))
    if ds.report_status in (ReportStatus.PENDING, ReportStatus.RUNNING):
        response.status_code = status.HTTP_202_ACCEPTED
        return ReportOut(dataset_id=ds.id, status=ds.report_status.value, report=None)
    report = (read_report(state.settings.dataset_dir(ds.id))
              if ds.report_status == ReportStatus.READY else None)
    if ds.report_status == ReportStatus.READY and report is None:
        return ReportOut(dataset_id=ds.id, status="failed",
                         error="the report's file is missing from the dataset's folder",
                         report=None)
    return ReportOut(dataset_id=ds.id, status=ds.report_status.value, error=ds.report_error,
                     report=report)


@router.get("/{dataset_id}/images/{image_id}", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}},
                             "description": "the image, fitted in size x size, as a JPEG"}})
def dataset_image(
    session: SessionDep, state: StateDep, dataset_id: str,
    image_id: Annotated[int, PathParam(ge=0)],
    size: Annotated[int, Query(ge=THUMBNAIL_SIZES[0], le=THUMBNAIL_SIZES[1])] = 128,
) -> Response:
    """A thumbnail of one image (ids as in the report). Datasets never change, so the
    answer may be cached."""
    ds = datasets.get_live(session, dataset_id)
    data = thumbnail_jpeg(state.settings.dataset_dir(ds.id), image_id, size,
                          budget=state.decode_budget,
                          wait=state.settings.predict_decode_wait_seconds)
    return Response(data, media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=86400, immutable"})


@router.post("/{dataset_id}/relabel", response_model=DatasetOut,
             status_code=status.HTTP_201_CREATED)
def relabel_dataset(
    session: SessionDep, state: StateDep, dataset_id: str,
    body: Annotated[RelabelRequest | dict[str, str], Body(
        description='{"changes": {image_id: class | "drop"}, "name": ...}, or the bare '
        "mapping")],
) -> DatasetOut:
    """A new version of the dataset with some images relabelled or dropped; the old one is
    not modified (its jobs keep working). The new version records its parent and the
    changes, and gets its own report."""
    request = body if isinstance(body, RelabelRequest) else RelabelRequest(changes=body, name=None)
    settings = state.settings
    new_id = datasets.new_id()
    with state.uploads.slot():  # a new dataset's files, as an upload's
        ds = versions.relabel(session, parent_id=dataset_id,
                              dest_root=settings.dataset_dir(new_id).parent, new_id=new_id,
                              changes=request.changes, name=request.name,
                              max_changes=settings.relabel_max_changes,
                              min_free_bytes=settings.min_free_disk_bytes)
        with datasets.files_removed_on_error(settings.dataset_dir(new_id)):
            session.commit()
    state.reports.submit(new_id)
    return dataset_out(ds)


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(session: SessionDep, settings: SettingsDep, dataset_id: str) -> None:
    """Delete a dataset's files. Refused (409) while a queued or running job uses it; the
    jobs that used it keep their history, models and checkpoints."""
    datasets.delete(session, dataset_id=dataset_id)
    session.commit()  # the row says deleted before its files go
    datasets.remove_files(settings.dataset_dir(dataset_id))
