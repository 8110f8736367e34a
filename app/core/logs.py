"""Logging of the hotdog processes: text or one JSON object per line (``LOG_FORMAT``), the
id of the job a line is about on every line logged while a job is worked on, and the id of
the HTTP request on every line the API logs while answering one (``X-Request-ID``).

The worker sets the job with :func:`job_context` around everything it does for a job; a
training process it starts inherits the job through the environment (``HOTDOG_JOB_ID``),
so the engine's lines carry it too, though the engine knows nothing of jobs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any, TextIO

JOB_ID: ContextVar[str | None] = ContextVar("hotdog_job_id", default=None)
JOB_ID_ENV = "HOTDOG_JOB_ID"
REQUEST_ID: ContextVar[str | None] = ContextVar("hotdog_request_id", default=None)
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(job_tag)s: %(message)s"


@contextmanager
def job_context(job_id: str | None) -> Iterator[None]:
    """Lines logged inside (in this thread or task) carry ``job_id``."""
    token = JOB_ID.set(job_id)
    try:
        yield
    finally:
        JOB_ID.reset(token)


@contextmanager
def request_context(request_id: str) -> Iterator[None]:
    """Lines logged inside (in this task, and the threads it hands work to) carry
    ``request_id``."""
    token = REQUEST_ID.set(request_id)
    try:
        yield
    finally:
        REQUEST_ID.reset(token)


def job_env() -> dict[str, str]:
    """Environment for a child process that works on the current job (empty outside one)."""
    job_id = JOB_ID.get()
    return {JOB_ID_ENV: job_id} if job_id else {}


class JobIdFilter(logging.Filter):
    """Sets ``record.job_id``: given with ``extra={"job_id": ...}``, else the current job;
    and ``record.request_id`` alike (the HTTP request being answered)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = JOB_ID.get()
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


class TextFormatter(logging.Formatter):
    """``time LEVEL logger job_id=… request_id=…: message``; each id only when there is one."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        tags = ((name, getattr(record, name, None)) for name in ("job_id", "request_id"))
        record.job_tag = "".join(f" {name}={value}" for name, value in tags if value)
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, job_id
    (when the line is about a job), request_id (when logged answering a request), pid, and
    the traceback of an exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None)
        if job_id:
            out["job_id"] = job_id
        request_id = getattr(record, "request_id", None)
        if request_id:
            out["request_id"] = request_id
        out["pid"] = record.process
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def make_handler(fmt: str, stream: TextIO | None = None) -> logging.Handler:
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(JobIdFilter())
    return handler


def configure_logging(level: int | str = logging.WARNING, fmt: str | None = None,
                      *, stream: TextIO | None = None) -> None:
    """The root logger: one handler to ``stream`` (stderr) in ``fmt`` (default
    ``LOG_FORMAT``), replacing any earlier one. Every logger's lines pass the job filter."""
    if fmt is None:
        from app.core.config import get_settings

        fmt = get_settings().log_format
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(make_handler(fmt, stream))
    root.setLevel(level)


def adopt_job_from_environment() -> str | None:
    """In a training process: work under the job the worker passed down, if any."""
    job_id = os.environ.get(JOB_ID_ENV) or None
    JOB_ID.set(job_id)
    return job_id
