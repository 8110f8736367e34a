"""Each job's own log: the lines its worker and its training process log about it (they
carry ``job_id``, :mod:`app.core.logs`), appended to ``job.log`` in the job's folder and kept
under ``JOB_LOG_BYTES``: past it, the oldest lines are dropped and the file starts with a
line saying how many bytes were (:data:`TRIMMED`), so a reader that follows the log knows
where it is (:func:`read_from`).

Several processes write one job's log (the worker, the training process, its torchrun
ranks): each line is appended under an exclusive ``flock`` of the job's folder, and the
trim writes the kept tail to a temporary file renamed over the log, so a reader
never sees a half-trimmed file. Writing never raises (a log must not fail a job); a job whose
folder does not exist (not started yet, or deleted) gets no log.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.core.logs import JOB_ID, JobIdFilter, TextFormatter

TRIMMED = "[log trimmed: the first {dropped} bytes were dropped (JOB_LOG_BYTES)]\n"
TRIMMED_PATTERN = re.compile(rb"\[log trimmed: the first (\d+) bytes were dropped[^\n]*\n")
SAFE_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")


def append(path: Path, text: str, max_bytes: int) -> None:
    """Append ``text`` to the log at ``path`` (its folder must exist), trimming it to the
    newest half of ``max_bytes`` once it passes ``max_bytes``."""
    data = text.encode("utf-8", "replace")
    # The lock is the job folder's own (no lock file is left in it).
    lock_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size > max_bytes:
            _trim(path, max_bytes)
    finally:
        os.close(lock_fd)  # releases the lock


def _trim(path: Path, max_bytes: int) -> None:
    """Keep the newest lines, about half of ``max_bytes``, after a line that counts every
    byte dropped so far (with the lock held)."""
    raw = path.read_bytes()
    header = TRIMMED_PATTERN.match(raw)
    dropped_before = int(header.group(1)) if header else 0
    body = raw[header.end():] if header else raw
    keep = body[-max(1, max_bytes // 2):]
    newline = keep.find(b"\n")
    if 0 <= newline < len(keep) - 1:
        keep = keep[newline + 1:]  # start at a whole line
    dropped = dropped_before + len(body) - len(keep)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(TRIMMED.format(dropped=dropped).encode() + keep)
    tmp.replace(path)


@dataclass(frozen=True)
class Chunk:
    """What a reader gets of a log: ``text`` from content position ``start``; ``end`` is
    where to read from next; ``skipped``: bytes dropped by a trim before the reader got them."""

    text: str
    end: int
    skipped: int = 0


def read_from(path: Path, position: int, max_bytes: int | None = None) -> Chunk:
    """The log's content from ``position`` (counted over everything ever written, trimmed
    bytes included), at most ``max_bytes`` of it, ending at a line end when it can."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Chunk("", position)
    header = TRIMMED_PATTERN.match(raw)
    dropped = int(header.group(1)) if header else 0
    body = raw[header.end():] if header else raw
    skipped = max(0, dropped - position)
    start = max(position, dropped)
    data = body[start - dropped:]
    if max_bytes is not None and len(data) > max_bytes:
        cut = data.rfind(b"\n", 0, max_bytes)
        data = data[:cut + 1 if cut >= 0 else max_bytes]
    return Chunk(data.decode("utf-8", "replace"), start + len(data), skipped)


def tail(path: Path, lines: int | None = None) -> str:
    """The log as kept (its trim line included), or its last ``lines`` lines."""
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    if lines is None:
        return text
    parts = text.splitlines(keepends=True)
    return "".join(parts[-lines:]) if lines > 0 else ""


class JobLogHandler(logging.Handler):
    """Appends each record about a job (``job_id``) to that job's log, ``path_for(job_id)``
    (None: the line is not kept), in the text format whatever ``LOG_FORMAT`` says."""

    def __init__(self, path_for: Callable[[str], Path | None], max_bytes: int,
                 level: int = logging.INFO) -> None:
        super().__init__(level)
        self.path_for = path_for
        self.max_bytes = max_bytes
        self.setFormatter(TextFormatter())
        self.addFilter(JobIdFilter())

    def emit(self, record: logging.LogRecord) -> None:
        job_id = getattr(record, "job_id", None) or JOB_ID.get()
        if not isinstance(job_id, str) or not SAFE_ID.fullmatch(job_id):
            return
        try:
            path = self.path_for(job_id)
            if path is None or not path.parent.is_dir():
                return
            append(path, self.format(record) + "\n", self.max_bytes)
        except Exception:
            self.handleError(record)


def install(path_for: Callable[[str], Path | None], max_bytes: int) -> JobLogHandler | None:
    """Keep per-job logs in this process (none when ``max_bytes`` is 0); returns the handler
    added to the root logger (at most one: a second call replaces the first)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, JobLogHandler)]:
        root.removeHandler(old)
    if max_bytes <= 0:
        return None
    handler = JobLogHandler(path_for, max_bytes)
    root.addHandler(handler)
    return handler
