"""The explanations of one API process (``/predict?explain=true``): their admission against
``EXPLAIN_QUEUE_IMAGES``, the threads that compute them, the fp32 explainers of the models
asked about, and the models' decision thresholds (looked up at most once a second).
Request handling is in :mod:`app.api.explain`."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from sqlalchemy.orm import Session

from app.api.serving import LOOKUP_SECONDS, Overloaded
from app.core.config import Settings
from app.engine.explain import Crop, Explainer, Explanation
from app.engine.images import DecodeBudget
from app.models import decision as decisions
from app.models.decision import Decision


class ExplainBusy(Overloaded):
    """``EXPLAIN_QUEUE_IMAGES`` images are being explained or waiting (503, Retry-After)."""


class TooManyToExplain(ValueError):
    """One request has more images to explain than ``EXPLAIN_QUEUE_IMAGES`` (422)."""


class Explanations:
    """Explanations of one process: admission (event loop only), the threads, and the fp32
    explainers of the models asked about (least recently used dropped)."""

    def __init__(self, settings: Settings) -> None:
        self.max_images = settings.explain_queue_images
        self.threads = settings.explain_threads
        self.device = settings.explain_device
        self.size = settings.explain_models_cached
        self.executor = ThreadPoolExecutor(
            max_workers=settings.explain_workers, thread_name_prefix="explain",
            initializer=partial(_lower_priority, settings.explain_nice))
        self.waiting = 0
        self.explainers: OrderedDict[str, Explainer] = OrderedDict()
        self.lock = threading.Lock()  # the decisions
        self.loading = threading.Lock()  # the explainers
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

    def explainer(self, job_id: str, checkpoint: Path) -> Explainer:
        with self.loading:  # loads are rare and one at a time (decisions have their own lock)
            if job_id in self.explainers:
                self.explainers.move_to_end(job_id)
                return self.explainers[job_id]
            explainer = Explainer(checkpoint, device=self.device)
            self.explainers[job_id] = explainer
            while len(self.explainers) > self.size:
                self.explainers.popitem(last=False)
            return explainer

    def _explain(self, job_id: str, checkpoint: Path, data: bytes, name: str, target: str,
                 crop: Crop, budget: DecodeBudget | None, wait: float | None) -> Explanation:
        return self.explainer(job_id, checkpoint).explain(
            data, target, crop=crop, name=name, budget=budget, wait=wait, threads=self.threads)

    async def explain(self, job_id: str, checkpoint: Path,
                      photos: list[tuple[bytes, str, str]], crop: Crop, *,
                      budget: DecodeBudget | None = None, wait: float | None = None
                      ) -> list[Explanation]:
        """Each (bytes, name, class) photo's explanation, on the explain threads; each
        decode within ``budget``, waiting for it up to ``wait`` seconds."""
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(*(
            loop.run_in_executor(self.executor, partial(
                self._explain, job_id, checkpoint, data, name, target, crop, budget, wait))
            for data, name, target in photos)))

    def decision(self, job_id: str, session: Callable[[], Session]) -> Decision | None:
        """The model's decision threshold, looked up (in a ``session()``) at most once per
        ``LOOKUP_SECONDS`` (activation in this process forgets it at once:
        :meth:`forget_decisions`)."""
        now = time.monotonic()
        with self.lock:
            hit = self.decisions.get(job_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        with session() as s:
            found = decisions.find(s, job_id)
        with self.lock:
            self.decisions[job_id] = (now + LOOKUP_SECONDS, found)
            if len(self.decisions) > 1024:
                self.decisions = {k: v for k, v in self.decisions.items() if v[0] > now}
        return found

    def forget_decisions(self) -> None:
        with self.lock:
            self.decisions.clear()

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _lower_priority(nice: int) -> None:
    """This explain thread yields the CPU to everything else of the process (Linux: nice is
    a per-thread attribute, and the threads torch starts from it inherit it): when plain
    predictions need the cores, explanations wait, instead of slowing them; an idle machine
    still runs explanations at full speed."""
    import os
    from contextlib import suppress

    with suppress(AttributeError, OSError):  # not Linux, or not allowed: normal priority
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
