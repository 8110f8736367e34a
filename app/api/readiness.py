"""``/ready``'s probes (the database, the broker), kept off everything handlers wait for.

The probes run on threads of their own, never the shared pool of the sync handlers (a pool
full of slow uploads cannot delay them); each has its own short timeout (``PROBE_SECONDS``);
one round runs at a time, and its answer is reused for ``CACHE_SECONDS``: a burst of
``/ready`` calls costs one round a second. What went wrong is logged with the request id;
the answer names only the kind of error (no server paths or addresses).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

PROBE_SECONDS = 2.0  # each probe's connect, lock and statement timeout
CACHE_SECONDS = 1.0
# A round whose probes overrun their own timeouts is not waited on beyond this.
ROUND_SECONDS = 2 * PROBE_SECONDS
OK = "ok"


class Readiness:
    def __init__(self, probes: dict[str, Callable[[], None]], *,
                 cache_seconds: float = CACHE_SECONDS,
                 round_seconds: float = ROUND_SECONDS) -> None:
        self.probes = probes
        self.cache_seconds = cache_seconds
        self.round_seconds = round_seconds
        self.executor: ThreadPoolExecutor | None = None  # started on first use, after close
        self.result: tuple[float, dict[str, str]] | None = None
        self.round: asyncio.Task[dict[str, str]] | None = None

    async def checks(self) -> dict[str, str]:
        """Each probe's answer: ``ok`` or ``unreachable (...)``."""
        if self.result is not None and time.monotonic() - self.result[0] < self.cache_seconds:
            return self.result[1]
        loop = asyncio.get_running_loop()
        if self.round is None or self.round.done() or self.round.get_loop() is not loop:
            self.round = loop.create_task(self._probe_all())
        try:  # shielded: a caller that gives up leaves the round to the next one
            return await asyncio.wait_for(asyncio.shield(self.round), self.round_seconds)
        except TimeoutError:
            log.warning("readiness probes gave no answer within %g s", self.round_seconds)
            return {name: f"unreachable (no answer within {self.round_seconds:g} s)"
                    for name in self.probes}

    async def _probe_all(self) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=len(self.probes),
                                               thread_name_prefix="ready")
        names = list(self.probes)
        answers = await asyncio.gather(*(
            # in the caller's context: the probe's log lines carry its request id
            loop.run_in_executor(self.executor, contextvars.copy_context().run,
                                 self._probe, name)
            for name in names))
        checks = dict(zip(names, answers, strict=True))
        self.result = (time.monotonic(), checks)
        return checks

    def _probe(self, name: str) -> str:
        try:
            self.probes[name]()
        except Exception as exc:
            log.warning("readiness: %s unreachable: %s", name, exc)
            return f"unreachable ({type(exc).__name__}; the server's log says why)"
        return OK

    def close(self) -> None:
        """Stop the threads and forget the answer (an app started again, as tests do,
        probes anew on new threads)."""
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None
        self.result = self.round = None
