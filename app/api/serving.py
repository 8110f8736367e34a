"""Serving predictions: loaded models (cached) and the batcher that pools the images of
concurrent requests into one forward pass.

The event loop never runs model code. Decoding happens in the request's worker thread; the
forward pass runs on one thread per process (the device's), fed by a :class:`Batcher`
per model: the first image waiting starts a batch, which waits up to ``max_delay`` for
more (never beyond ``max_batch``); while a batch is computing, new images queue up and form
the next one. The queue is bounded: past ``max_queue`` waiting images a request is refused
at once (429) rather than left to time out.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from prometheus_client import CollectorRegistry, Counter, Histogram

from app.engine.predict import Predictor

log = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """More images are waiting than the queue holds."""


class Batcher:
    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        executor: ThreadPoolExecutor,
        *,
        max_batch: int,
        max_delay: float,
        max_queue: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.forward = forward
        self.executor = executor
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.pending: deque[tuple[torch.Tensor, asyncio.Future[torch.Tensor]]] = deque()
        self.task: asyncio.Task[None] | None = None
        self.wakeup: asyncio.Event | None = None

    async def submit(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each image's output row, computed in whichever batches they land in."""
        if len(self.pending) + len(images) > self.max_queue:
            raise Overloaded(
                f"{len(self.pending)} images are waiting for the model; retry shortly"
            )
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in images]
        self.pending.extend(zip(images, futures, strict=True))
        if self.task is None or self.task.done():
            self.wakeup = asyncio.Event()
            self.task = loop.create_task(self._run())
        assert self.wakeup is not None
        self.wakeup.set()
        return list(await asyncio.gather(*futures))

    async def _run(self) -> None:
        assert self.wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self.pending:
                self.wakeup.clear()
                try:
                    await asyncio.wait_for(self.wakeup.wait(), timeout=60)
                except TimeoutError:
                    if not self.pending:  # idle: end; the next submit starts a new task
                        return
                continue
            if len(self.pending) < self.max_batch and self.max_delay > 0:
                await asyncio.sleep(self.max_delay)
            batch = []
            while self.pending and len(batch) < self.max_batch:
                image, fut = self.pending.popleft()
                if not fut.done():  # skip the images of requests that went away
                    batch.append((image, fut))
            if not batch:
                continue
            try:
                x = torch.stack([image for image, _ in batch])
                out = await loop.run_in_executor(self.executor, self.forward, x)
            except Exception as exc:  # one bad batch fails its requests, not the batcher
                log.exception("forward pass of %d images failed", len(batch))
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch))
            for (_, fut), row in zip(batch, out, strict=True):
                if not fut.done():
                    fut.set_result(row)


@dataclass
class LoadedModel:
    job_id: str
    predictor: Predictor
    batcher: Batcher


class ServingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.images = Counter("hotdog_predict_images", "images classified", registry=registry)
        self.batch_size = Histogram(
            "hotdog_predict_batch_size", "images per forward pass", registry=registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )
        self.loads = Counter("hotdog_model_loads", "checkpoints loaded for serving",
                             registry=registry)


class ModelCache:
    """Loaded models by job id, least recently used dropped past ``size``. Thread-safe;
    a model is loaded once even when many requests ask for it at the same time."""

    def __init__(
        self,
        *,
        size: int,
        device: str,
        precision: str,
        max_batch: int,
        max_delay: float,
        max_queue: int,
        metrics: ServingMetrics,
    ) -> None:
        self.size = size
        self.device, self.precision = device, precision
        self.max_batch, self.max_delay, self.max_queue = max_batch, max_delay, max_queue
        self.metrics = metrics
        # One thread runs every forward pass: models on one device take turns, not threads.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        self.models: OrderedDict[str, LoadedModel] = OrderedDict()
        self.lock = threading.Lock()
        self.loading: dict[str, threading.Lock] = {}

    def get(self, job_id: str, checkpoint: Path) -> LoadedModel:
        with self.lock:
            if job_id in self.models:
                self.models.move_to_end(job_id)
                return self.models[job_id]
            job_lock = self.loading.setdefault(job_id, threading.Lock())
        with job_lock:
            with self.lock:
                if job_id in self.models:
                    return self.models[job_id]
            predictor = Predictor(checkpoint, device=self.device, precision=self.precision)
            self.metrics.loads.inc()
            batcher = Batcher(
                predictor.probabilities, self.executor, max_batch=self.max_batch,
                max_delay=self.max_delay, max_queue=self.max_queue,
                on_batch=self.metrics.batch_size.observe,
            )
            model = LoadedModel(job_id, predictor, batcher)
            with self.lock:
                self.models[job_id] = model
                while len(self.models) > self.size:
                    dropped, _ = self.models.popitem(last=False)
                    log.info("model %s unloaded (cache holds %d)", dropped, self.size)
                self.loading.pop(job_id, None)
            log.info("model %s loaded on %s (%s)", job_id, predictor.plan.device,
                     predictor.plan.precision)
            return model

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
