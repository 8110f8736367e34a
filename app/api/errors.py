"""Every error the API answers, mapped to its status in one place (see ``install``)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.requests import ClientDisconnect

from app.api.bodies import client_gone
from app.api.explainers import TooManyToExplain
from app.api.logs import LogFollowersBusy
from app.api.redact import public_message
from app.api.serving import Overloaded
from app.core.logs import REQUEST_ID
from app.datasets.archive import StorageFull
from app.datasets.report import ImageNotFound
from app.datasets.service import DatasetBusy, DatasetNotFound
from app.datasets.uploads import UploadsBusy
from app.datasets.versions import InvalidChanges
from app.engine.errors import CheckpointError, DatasetError, ImageDecodeError
from app.engine.images import DecodeBusy
from app.jobs.broker import QueueUnreachable
from app.jobs.reviews import ReviewNotFound
from app.jobs.service import InvalidParams, JobConflict, JobNotFound, TooManyActiveJobs
from app.models.decision import InvalidDecision
from app.models.promotion import NotComparable, NothingToRollBack, PromotionRefused
from app.models.service import ModelNotFound, ModelUnavailable, NoModelYet
from app.storage.retention import JobBusy, ModelInUse
from app.workers.service import NoLiveWorker, WeightsUnavailable

log = logging.getLogger(__name__)


class Unprocessable(ValueError):
    """A request the schema cannot describe fully is refused (e.g. too many files)."""


class UnsupportedMediaType(ValueError):
    """A request body of a content type the endpoint does not take (415)."""


# Each domain's errors, by status. The domains raise them; only this table knows HTTP.
STATUS: list[tuple[type[Exception], int]] = [
    (DatasetNotFound, 404),
    (ImageNotFound, 404),
    (JobNotFound, 404),
    (ModelNotFound, 404),
    (ReviewNotFound, 404),
    (DatasetBusy, 409),
    (JobBusy, 409),  # queued or running: cancel it first
    (ModelInUse, 409),  # the active model, or a live job's start or model (used_by)
    (JobConflict, 409),
    (ModelUnavailable, 409),
    (NoModelYet, 409),
    (PromotionRefused, 409),  # with both scores (ErrorOut.comparison)
    (NotComparable, 409),
    (NothingToRollBack, 409),
    (NoLiveWorker, 409),
    (WeightsUnavailable, 409),
    (CheckpointError, 409),  # a stored checkpoint that cannot serve: the job's state
    (Unprocessable, 422),
    (InvalidParams, 422),
    (InvalidChanges, 422),  # a relabel naming unknown images/classes, or emptying a class
    (InvalidDecision, 422),  # a threshold the model cannot take (POST /models/{id}/activate)
    (TooManyToExplain, 422),  # more images in one request than EXPLAIN_QUEUE_IMAGES
    (DatasetError, 422),
    (ImageDecodeError, 422),
    (UnsupportedMediaType, 415),
    (TooManyActiveJobs, 429),
    (LogFollowersBusy, 503),  # LOG_FOLLOWERS streams are open
    (Overloaded, 503),  # shed load; Retry-After tells clients when to try again
    (DecodeBusy, 503),
    (QueueUnreachable, 503),
    (UploadsBusy, 503),  # MAX_CONCURRENT_UPLOADS in progress
    (StorageFull, 507),  # the upload would eat into MIN_FREE_DISK_BYTES
]


# Seconds a client should wait: a full predict queue (or decode budget) drains in about a
# second; a job slot frees when a job ends, which takes minutes.
RETRY_AFTER = {429: "30", 503: "1"}


def install(app: FastAPI) -> None:
    for exc_type, status in STATUS:
        app.add_exception_handler(exc_type, _handler(status))
    app.add_exception_handler(DBAPIError, _database_handler)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _internal_error)


def _handler(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        headers = {"Retry-After": RETRY_AFTER[status]} if status in RETRY_AFTER else None
        body: dict[str, object] = {"detail": _public(request, status, str(exc))}
        kind = getattr(exc, "kind", None)  # a refusal clients branch on (ErrorOut.kind)
        if isinstance(kind, str):
            body["kind"] = kind
        extra = getattr(exc, "extra", None)  # what a refusal adds, e.g. the gate's scores
        if isinstance(extra, dict):
            body.update(extra)
        return JSONResponse(body, status_code=status, headers=headers)

    return handle


def _public(request: Request, status: int, message: str) -> str:
    """``message`` without server paths; the full one is logged (with the request id)."""
    shown = public_message(message, request.app.state.hotdog.settings.data_dir)
    if shown != message:
        log.info("%s %s answered %d: %s", request.method, request.url.path, status, message)
    return shown


async def _database_handler(request: Request, exc: Exception) -> JSONResponse:
    """A lost or refused database connection is 503 (retry shortly); any other database
    error is a bug and stays a 500."""
    assert isinstance(exc, DBAPIError)
    if exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError)):
        log.warning("database unreachable on %s %s: %s", request.method, request.url.path,
                    exc.orig)
        return JSONResponse({"detail": "the database cannot be reached; retry shortly"},
                            status_code=503, headers={"Retry-After": RETRY_AFTER[503]})
    return await _internal_error(request, exc)


async def _client_gone(request: Request, exc: Exception) -> Response:
    return client_gone(request.method, request.url.path)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {"detail": f"internal error ({type(exc).__name__}, request id {REQUEST_ID.get()}); "
                   "this is a bug, please report it"},
        status_code=500,
    )
