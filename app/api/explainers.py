"""The explanations of one API process (``/predict?explain=true``): their admission against
``EXPLAIN_QUEUE_IMAGES``, the process that computes them (:mod:`app.api.explain_process`),
and the models' decision thresholds (looked up at most once a second). Request handling is
in :mod:`app.api.explain`."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from sqlalchemy.orm import Session

from app.api import explain_process
from app.api.serving import LOOKUP_SECONDS, Overloaded
from app.core.config import Settings
from app.engine.explain import Crop, Explanation
from app.models import decision as decisions
from app.models.decision import Decision

log = logging.getLogger(__name__)


class ExplainBusy(Overloaded):
    """``EXPLAIN_QUEUE_IMAGES`` images are being explained or waiting (503, Retry-After)."""


class TooManyToExplain(ValueError):
    """One request has more images to explain than ``EXPLAIN_QUEUE_IMAGES`` (422)."""


class Explanations:
    """Explanations of one API process: admission (event loop only), and the process that
    computes them (:mod:`app.api.explain_process`: ``EXPLAIN_WORKERS`` processes at nice
    ``EXPLAIN_NICE``, each with ``EXPLAIN_THREADS`` intra-op threads and the fp32 explainers
    of the last ``EXPLAIN_MODELS_CACHED`` models asked about), started by the first
    explanation asked for and started again when one has died."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.max_images = settings.explain_queue_images
        self.waiting = 0
        self.pool: ProcessPoolExecutor | None = None
        self.lock = threading.Lock()  # the decisions
        self.decisions: dict[str, tuple[float, Decision | None]] = {}

    @contextmanager
    def admit(self, images: int) -> Iterator[None]:
        """Count ``images`` against ``EXPLAIN_QUEUE_IMAGES`` while the block runs, or refuse
        them at once."""
        if images > self.max_images:
            raise TooManyToExplain(f"{images} images to explain in one request; the limit is "
                                f"{self.max_images} (EXPLAIN_QUEUE_IMAGES)")
        if self.waiting + images > self.max_images:
            raise ExplainBusy(f"{self.waiting} images are being explained or waiting; retry "
                              "shortly")
        self.waiting += images
        try:
            yield
        finally:
            self.waiting -= images

    def _pool(self) -> ProcessPoolExecutor:
        if self.pool is None:
            s = self.settings
            # spawn: a fork of a process running threads (and maybe CUDA) is not safe.
            self.pool = ProcessPoolExecutor(
                max_workers=s.explain_workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=explain_process.start,
                initargs=(s.explain_nice, s.explain_threads, s.explain_device,
                          s.explain_models_cached, s.decode_budget_bytes))
        return self.pool

    async def explain(self, job_id: str, checkpoint: Path,
                      photos: list[tuple[bytes, str, str]], crop: Crop, *,
                      wait: float | None = None) -> list[Explanation]:
        """Each (bytes, name, class) photo's explanation, in the explanation process; each
        decode there waits for its budget up to ``wait`` seconds. A process that died (killed,
        out of memory) fails the requests it had (503: retry) and is started again."""
        loop = asyncio.get_running_loop()
        pool = self._pool()
        try:
            return list(await asyncio.gather(*(
                loop.run_in_executor(pool, partial(
                    explain_process.explain, job_id, checkpoint, data, name, target, crop, wait))
                for data, name, target in photos)))
        except BrokenProcessPool as exc:
            if self.pool is pool:  # the first request to hear it: the next one starts anew
                self.pool = None
                pool.shutdown(wait=False, cancel_futures=True)
                log.warning("the explanation process died (%s); it is started again", exc)
            raise ExplainBusy("the explanation process stopped (it is started again); retry "
                              "shortly") from exc

    def decision(self, job_id: str, session: Callable[[], Session]) -> Decision | None:
        """The model's decision threshold, looked up (in a ``session()``) at most once per
        ``LOOKUP_SECONDS`` (activation in this process forgets it at once:
        :meth:`forget_decisions`)."""
        now = time.monotonic()
        hit = self.cached_decision(job_id)
        if hit is not None:
            return hit[0]
        with session() as s:
            found = decisions.find(s, job_id)
        with self.lock:
            self.decisions[job_id] = (now + LOOKUP_SECONDS, found)
            if len(self.decisions) > 1024:
                self.decisions = {k: v for k, v in self.decisions.items() if v[0] > now}
        return found

    def cached_decision(self, job_id: str) -> tuple[Decision | None] | None:
        """``(decision,)`` while the last lookup of ``job_id`` is fresh, else None: the
        request path's common case, answered without a database or a thread hop."""
        with self.lock:
            hit = self.decisions.get(job_id)
        return (hit[1],) if hit is not None and hit[0] > time.monotonic() else None

    def forget_decisions(self) -> None:
        with self.lock:
            self.decisions.clear()

    def close(self) -> None:
        """The process ends (explanations under way finish first: each takes a second at
        most); waiting ones are dropped."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
