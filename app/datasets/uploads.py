"""Dataset uploads in progress: how many at once, and the threads that ingest them.

Each upload holds a spooled body and an extraction on the storage's disk and keeps threads
busy decoding its images, so a server takes a bounded number at once and refuses one more
straight away (before its body is read) instead of queueing it. Ingestion runs on an
executor of its own, so uploads never take the threads that other requests need.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class UploadsBusy(RuntimeError):
    """As many uploads as the server takes at once are in progress."""


class Uploads:
    def __init__(self, size: int) -> None:
        self.size = size
        self._free = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None  # made on first use, again after close

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Held for one upload, from its first byte to its stored dataset. Raises
        UploadsBusy at once when none is free."""
        if not self._free.acquire(blocking=False):
            raise UploadsBusy(f"{self.size} upload(s) are in progress, as many as this server "
                              "takes at once; retry shortly")
        try:
            yield
        finally:
            self._free.release()

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on the uploads' own threads."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.size,
                                                thread_name_prefix="upload")
            future = self._pool.submit(fn, *args, **kwargs)
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        """Wait for the uploads in progress; a later one starts the threads anew (an app
        can be started again after it stopped, as tests do)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
