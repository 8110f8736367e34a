"""``GET /jobs/{id}/logs``: a job's own log (:mod:`app.core.joblog`) as plain text, its last
lines, or followed while the job runs: chunked ``text/plain`` that ends when the job ends.

A follower polls the file (it is appended by other processes, the worker and the training
process, possibly on another machine sharing DATA_DIR) and the job's status; at most
``LOG_FOLLOWERS`` at once per API process (503 with Retry-After beyond).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from fastapi.concurrency import run_in_threadpool

from app.core import joblog

POLL_SECONDS = 0.5  # how often a follower looks for new lines
STATUS_SECONDS = 1.0  # and whether the job has ended
CHUNK_BYTES = 64 << 10  # the most one write to the client carries


class LogFollowersBusy(RuntimeError):
    """LOG_FOLLOWERS logs are being followed already (503: retry shortly)."""


class Followers:
    """The count of open follow streams, bounded: a slot is taken before the answer starts
    (so that a refusal is a 503, not a broken stream) and given back when the stream ends
    or its client goes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.lock = threading.Lock()

    def take(self) -> None:
        with self.lock:
            if self.open >= self.limit:
                raise LogFollowersBusy(f"{self.open} job logs are being followed, the limit "
                                       "(LOG_FOLLOWERS); retry shortly, or read without follow")
            self.open += 1

    def release(self) -> None:
        with self.lock:
            self.open -= 1


def start_position(path: Path, tail: int | None) -> int:
    """Where a follower starts: the beginning of what is kept, or of its last ``tail``
    lines."""
    whole = joblog.read_from(path, 0)
    first = whole.end - len(whole.text.encode("utf-8", "replace"))
    if tail is None:
        return first
    lines = whole.text.splitlines(keepends=True)
    kept = "".join(lines[-tail:]) if tail > 0 else ""
    return whole.end - len(kept.encode("utf-8", "replace"))


async def follow(path: Path, position: int, ended: Callable[[], bool]) -> AsyncIterator[str]:
    """The log from ``position`` on, as it grows, until ``ended()`` (the job has ended; run
    on a thread) and what its last lines said has been read."""
    next_check = 0.0
    ending = False
    while True:
        chunk = await run_in_threadpool(joblog.read_from, path, position, CHUNK_BYTES)
        if chunk.skipped:
            yield f"[{chunk.skipped} bytes of the log were dropped before they were sent]\n"
        position = chunk.end
        if chunk.text:
            yield chunk.text
            continue
        if ending:
            return
        if time.monotonic() >= next_check:
            next_check = time.monotonic() + STATUS_SECONDS
            if await run_in_threadpool(ended):
                ending = True  # one more look: lines written as it ended
        await asyncio.sleep(POLL_SECONDS)


async def followed(followers: Followers, path: Path, position: int,
                   ended: Callable[[], bool]) -> AsyncIterator[str]:
    """:func:`follow` in a slot the caller took (``followers.take()``), given back when the
    stream ends or the client goes."""
    try:
        async for text in follow(path, position, ended):
            yield text
    finally:
        followers.release()
