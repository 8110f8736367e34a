"""Every error the API answers, mapped to its status in one place (see ``install``)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from app.api.serving import Overloaded
from app.engine.checkpoint import CheckpointError
from app.engine.data import DatasetError
from app.engine.images import ImageDecodeError
from app.jobs.service import JobConflict, JobNotFound

log = logging.getLogger(__name__)


class NotFound(LookupError):
    pass


class Conflict(RuntimeError):
    pass


class Unprocessable(ValueError):
    pass


class TooManyJobs(RuntimeError):
    """The cap on queued + running jobs is reached: 429, retry later."""


class Unavailable(RuntimeError):
    """A dependency (database, broker) cannot be reached: 503, the request may be retried."""


STATUS: list[tuple[type[BaseException], int]] = [
    (NotFound, 404),
    (JobNotFound, 404),
    (Conflict, 409),
    (JobConflict, 409),
    (Unprocessable, 422),
    (DatasetError, 422),
    (ImageDecodeError, 422),
    (CheckpointError, 409),  # a stored checkpoint that cannot serve: the job's state
    (TooManyJobs, 429),
    (Overloaded, 503),  # shed load; Retry-After tells clients when to try again
    (Unavailable, 503),
]



# Seconds a client should wait: a full predict queue drains in about a second; a job slot
# frees when a job ends, which takes minutes.
RETRY_AFTER = {429: "30", 503: "1"}


def install(app: FastAPI) -> None:
    for exc_type, status in STATUS:
        app.add_exception_handler(exc_type, _handler(status))
    app.add_exception_handler(DBAPIError, _database_handler)
    app.add_exception_handler(Exception, _internal_error)


def _handler(status: int):  # type: ignore[no-untyped-def]
    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        headers = {"Retry-After": RETRY_AFTER[status]} if status in RETRY_AFTER else None
        return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)

    return handle


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


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {"detail": f"internal error ({type(exc).__name__}); this is a bug, please report it"},
        status_code=500,
    )
