"""Serving predictions: loaded models (cached) and the batcher that pools the images of
concurrent requests into one forward pass.

The event loop never runs model code. Decoding happens on the decode threads (``State``);
forward passes run on the forward threads (``ForwardThreads``, one per lane), fed by a
:class:`Batcher` per model: the first image waiting starts a batch, which waits up to
``max_delay`` for more (never beyond ``max_batch``); while a batch is computing, new images
queue up and form the next one, which the forward thread takes itself when it is done
(``Batcher._lane``), without waiting for the event loop. A lone one-photo request (nothing
else decoding, waiting or computing) is decoded and computed on one forward thread, in one
hop (``Batcher.run_alone``). The queue is bounded: past ``max_queue`` waiting images a
request is refused at once (503 with Retry-After) rather than left to time out. Images being
decoded count too: a request is admitted (``Batcher.admit``) before its images are decoded,
so a flood is refused before it costs any decoding.

Which runtime computes a model's forward passes is decided by measurement
(:meth:`ModelCache.tune`): a model starts on the runtime :func:`choose_runtime` picks without
measuring (so its first requests never wait), then, on a thread of its own, every runtime
the model has (``PREDICT_RUNTIME=auto``; else the one asked for) is built, checked where it
was not verified by the worker (compiled PyTorch, against eager on the job's verification
set), timed on a short batched run (twice, in two passes, keeping each one's better
figure), and the fastest is swapped in. A runtime that fails to
build, compile or check is recorded with the reason and never serves.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from prometheus_client import CollectorRegistry, Counter, Histogram

from app.core.procs import name_thread
from app.engine.export import load_verification_set
from app.engine.predict import (
    Predictor,
    available_runtimes,
    check_against,
    choose_runtime,
    images_per_second,
    runtime_file,
)

log = logging.getLogger(__name__)

LOOKUP_SECONDS = 1.0
# Passes a forward thread computes one after another for a model while its images keep
# waiting, before it goes back to the executor (see Batcher._lane).
CHAINED_PASSES = 8


class Overloaded(RuntimeError):
    """More images are waiting (to be decoded, or for the model) than the queue holds (503
    with Retry-After)."""


class Intake:
    """What /predict holds across the process: the bytes of the requests being received or
    answered (as declared; the request limit when not declared), and the images being
    decoded. A request that arrives while either is at its limit is refused before its body
    is parsed: under a flood, refusing costs neither memory nor the event loop's time.
    Used on the event loop only."""

    def __init__(self, *, max_bytes: int, max_images: int) -> None:
        self.max_bytes = max_bytes
        self.max_images = max_images
        self.bytes = 0
        self.decoding = 0

    def refusal(self, declared: int) -> str | None:
        """Why a request of ``declared`` bytes arriving now is refused, or None."""
        if self.decoding >= self.max_images:
            return f"{self.decoding} images are waiting to be decoded; retry shortly"
        if self.bytes and self.bytes + declared > self.max_bytes:
            return (f"{self.bytes} bytes of /predict requests are being received or answered; "
                    "retry shortly")
        return None

    @contextmanager
    def receive(self, declared: int) -> Iterator[None]:
        self.bytes += declared
        try:
            yield
        finally:
            self.bytes -= declared

    @contextmanager
    def decode(self, images: int) -> Iterator[None]:
        self.decoding += images
        try:
            yield
        finally:
            self.decoding -= images


class Batcher:
    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        executor: ThreadPoolExecutor,
        *,
        max_batch: int,
        max_delay: float,
        max_queue: int,
        lanes: int = 1,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.forward = forward
        self.executor = executor
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.max_queue = max_queue
        self.lanes = lanes  # batches computed at the same time (one per forward thread)
        self.on_batch = on_batch
        self.pending: deque[tuple[torch.Tensor, asyncio.Future[torch.Tensor]]] = deque()
        self.decoding = 0  # images of admitted requests not submitted yet (see admit)
        self.computing = 0  # forward passes under way (batches, and lone requests' own)
        self.take_lock = threading.Lock()
        self.task: asyncio.Task[None] | None = None
        self.wakeup: asyncio.Event | None = None
        self.free: asyncio.Semaphore | None = None
        self.last_batch = 1

    @contextmanager
    def admit(self, images: int) -> Iterator[None]:
        """Count ``images`` against the queue while the block decodes them, or refuse them
        at once (Overloaded) when those being decoded plus those waiting for the model would
        pass ``max_queue``. Submit them after the block: they stay within the bound."""
        self._check(images)
        self.decoding += images
        try:
            yield
        finally:
            self.decoding -= images

    def alone(self, images: int) -> bool:
        """Whether an admitted request of ``images`` is all the model has to do now: no
        other image being decoded or waiting, no forward pass under way."""
        return not self.pending and self.decoding == images and not self.computing

    async def run_alone(self, decode: Callable[[], list[torch.Tensor]]) -> list[torch.Tensor]:
        """A lone request's images (see :meth:`alone`): decoded by ``decode`` and computed
        on one forward thread, in one hop from the event loop. The batched path takes two
        (to a decode thread, back, then to a forward thread) and a turn of the batching
        task: a quarter of a millisecond or more of thread wake-ups on a request that
        nothing else would have shared a batch with."""
        self.computing += 1
        loop = asyncio.get_running_loop()
        try:
            out, seconds = await loop.run_in_executor(self.executor, self._decode_forward,
                                                      decode)
        finally:
            self.computing -= 1
        self.last_batch = len(out)
        if self.on_batch is not None:
            self.on_batch(len(out), seconds)
        return list(out)

    def _decode_forward(self, decode: Callable[[], list[torch.Tensor]]
                        ) -> tuple[torch.Tensor, float]:
        images = decode()
        started = time.perf_counter()
        return self._stack_forward(images), time.perf_counter() - started

    def _check(self, images: int) -> None:
        waiting = len(self.pending) + self.decoding
        if waiting + images > self.max_queue:
            raise Overloaded(f"{waiting} images are waiting to be decoded or for the model; "
                             "retry shortly")

    async def submit(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each image's output row, computed in whichever batches they land in."""
        self._check(len(images))
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in images]
        self.pending.extend(zip(images, futures, strict=True))
        if self.task is None or self.task.done():
            self.wakeup = asyncio.Event()
            self.free = asyncio.Semaphore(self.lanes)
            self.task = loop.create_task(self._run())
        assert self.wakeup is not None
        self.wakeup.set()
        return list(await asyncio.gather(*futures))

    async def _run(self) -> None:
        assert self.wakeup is not None and self.free is not None
        while True:
            if not self.pending:
                self.wakeup.clear()
                try:
                    await asyncio.wait_for(self.wakeup.wait(), timeout=60)
                except TimeoutError:
                    if not self.pending and not self.free.locked():
                        return  # idle: end; the next submit starts a new task
                continue
            await self.free.acquire()  # a forward thread is free
            # Under concurrent traffic (the last batch was shared) wait a moment for more
            # images; a lone request never waits.
            if self.last_batch > 1 and len(self.pending) < self.max_batch and self.max_delay:
                await asyncio.sleep(self.max_delay)
            batch = self._take()
            if not batch:
                self.free.release()
                continue
            self.last_batch = len(batch)
            self.computing += 1
            asyncio.get_running_loop().create_task(self._compute(batch))

    def _stack_forward(self, images: list[torch.Tensor]) -> torch.Tensor:
        # Stacked on the forward thread: no torch work, and no OpenMP team, on the event loop.
        if all(i.dim() == 3 and i.stride(0) == 1 for i in images):  # (3,S,S) views of HWC
            x = torch.stack([i.permute(1, 2, 0) for i in images]).permute(0, 3, 1, 2)
        else:
            x = torch.stack(images)
        return self.forward(x)

    async def _compute(self, batch: list[tuple[torch.Tensor, asyncio.Future[torch.Tensor]]]
                       ) -> None:
        assert self.free is not None
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.executor, self._lane, batch, loop)
        finally:
            self.free.release()
            self.computing -= 1

    def _lane(self, batch: list[tuple[torch.Tensor, asyncio.Future[torch.Tensor]]],
              loop: asyncio.AbstractEventLoop) -> None:
        """On a forward thread: compute ``batch``, hand its rows to the event loop, and go on
        with the images waiting by then (up to ``CHAINED_PASSES`` passes) without a round
        trip through the loop between passes. Under load the loop is busy with requests
        and answers; a lane that waited for it to dispatch each batch sat idle for part of
        every pass (the service used 1.85 of 2 cores at concurrency 16). The bound keeps a busy
        model from holding the forward threads that other models' batches wait for."""
        for passes in range(1, CHAINED_PASSES + 1):
            started = time.perf_counter()
            try:
                out: torch.Tensor | Exception = self._stack_forward(
                    [image for image, _ in batch])
            except Exception as exc:  # one bad batch fails its requests, not the batcher
                log.exception("forward pass of %d images failed", len(batch))
                out = exc
            loop.call_soon_threadsafe(self._deliver, batch, out,
                                      time.perf_counter() - started)
            if passes == CHAINED_PASSES:
                return
            batch = self._take()
            if not batch:
                return
            self.last_batch = len(batch)

    def _take(self) -> list[tuple[torch.Tensor, asyncio.Future[torch.Tensor]]]:
        """Up to ``max_batch`` waiting images, skipping those of requests that went away;
        called by the batching task and by forward threads (``_lane``), hence the lock."""
        batch: list[tuple[torch.Tensor, asyncio.Future[torch.Tensor]]] = []
        with self.take_lock:
            while self.pending and len(batch) < self.max_batch:
                image, fut = self.pending.popleft()
                if not fut.done():
                    batch.append((image, fut))
        return batch

    def _deliver(self, batch: list[tuple[torch.Tensor, asyncio.Future[torch.Tensor]]],
                 out: torch.Tensor | Exception, seconds: float) -> None:
        """On the event loop: each image's row (or the pass's failure) to its request."""
        if isinstance(out, Exception):
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(out)
            return
        if self.on_batch is not None:
            self.on_batch(len(batch), seconds)
        for (_, fut), row in zip(batch, out, strict=True):
            if not fut.done():
                fut.set_result(row)


class ForwardThreads:
    """The threads that run forward passes: ``lanes`` of them, so that on a CPU several
    batches compute at once. A pass that runs alone gets every intra-op thread (lowest
    latency); passes that overlap get ``threads // lanes`` each, so no OpenMP team waits at
    a barrier for a core that another lane holds. (Intra-op thread counts are per thread
    in PyTorch's OpenMP backend.)"""

    def __init__(self, lanes: int, threads: int) -> None:
        self.lanes = max(1, lanes)
        self.threads = max(1, threads)
        self.shared = max(1, self.threads // self.lanes)
        self.executor = ThreadPoolExecutor(max_workers=self.lanes, thread_name_prefix="forward",
                                           initializer=name_thread, initargs=("forward",))
        self.lock = threading.Lock()
        self.busy = 0

    def run(self, fn: Callable[..., torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``fn(x, threads=n)``: ``n`` intra-op threads for this pass (the runtime applies
        it: torch per calling thread, ONNX Runtime by choosing a session)."""
        with self.lock:
            self.busy += 1
            alone = self.busy == 1
        try:
            return fn(x, threads=self.threads if alone else self.shared)
        finally:
            with self.lock:
                self.busy -= 1

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class TooManyLoads(Overloaded):
    """More checkpoints asked for in a second than ``MODEL_LOADS_PER_SECOND`` (503 with
    Retry-After)."""


@dataclass(eq=False)
class LoadedModel:
    job_id: str
    # The runtime serving now; :meth:`ModelCache.tune` swaps in the fastest verified one.
    # Every runtime of a model decodes and reports alike (same checkpoint, preprocessing and
    # classes), so a request may use one for decoding and another for its forward pass.
    predictor: Predictor
    batcher: Batcher = field(init=False)
    # Requests using it now (``ModelCache.held``): an evicted model's metric series go when
    # the last of them is done, and are never re-created after that.
    users: int = 0
    evicted: bool = False
    forgotten: bool = False
    # By runtime: {"images_per_second", "precision"} once measured, {"error"} when it could
    # not be built, compiled or checked.
    runtimes: dict[str, dict[str, Any]] = field(default_factory=dict)
    tuned: threading.Event = field(default_factory=threading.Event)

    def forward(self, x: torch.Tensor, *, threads: int | None = None) -> torch.Tensor:
        return self.predictor.probabilities(x, threads=threads)

    @property
    def images_per_second(self) -> float | None:
        """The serving runtime's measured batched speed (None until measured)."""
        return self.runtimes.get(self.predictor.runtime, {}).get("images_per_second")

    def serving(self) -> dict[str, Any]:
        """What ``GET /models`` says about it: the runtime serving, its speed, every
        runtime's measurement or failure, and whether measuring is still under way."""
        return {"runtime": self.predictor.runtime, "precision": self.predictor.precision,
                "images_per_second": self.images_per_second,
                "runtimes": {k: dict(v) for k, v in self.runtimes.items()},
                "measuring": not self.tuned.is_set()}


class ServingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.images = Counter("hotdog_predict_images", "images classified", registry=registry)
        self.batch_size = Histogram(
            "hotdog_predict_batch_size", "images per forward pass", registry=registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )
        self.forward_seconds = Counter(
            "hotdog_predict_forward_seconds", "time spent in forward passes", registry=registry)
        self.loads = Counter("hotdog_model_loads", "checkpoints loaded for serving",
                             registry=registry)
        # Labels stay bounded: a model's class names, for the models held in the cache (a
        # model's series are removed once it is unloaded and no request uses it).
        self.predictions = Counter(
            "hotdog_predictions", "images classified, by model (job id) and predicted label",
            ["model", "label"], registry=registry)

    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.forward_seconds.inc(seconds)

    def predicted(self, model: str, labels: list[str]) -> None:
        for label in set(labels):
            self.predictions.labels(model, label).inc(labels.count(label))

    def forget(self, model: str, classes: list[str]) -> None:
        from contextlib import suppress

        for label in classes:
            with suppress(KeyError):  # a class it never predicted has no series
                self.predictions.remove(model, label)


class ModelCache:
    """Loaded models by job id, least recently used dropped past ``size``. Thread-safe;
    a model is loaded once even when many requests ask for it at the same time, and at most
    ``loads_per_second`` checkpoints are loaded in any second (0: no limit): requests that
    rotate over more models than the cache holds are refused, not served by a load each."""

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
        lanes: int = 1,
        threads: int | None = None,
        runtime: str = "auto",
        loads_per_second: int = 0,
        tune_seconds: float = 1.0,
        compile: bool = True,
        compile_backend: str = "inductor",
    ) -> None:
        self.size = size
        self.tune_seconds = tune_seconds
        self.compile, self.compile_backend = compile, compile_backend
        # Runtimes are built, compiled and timed here, one model at a time, off the request
        # path (the forward threads keep serving meanwhile).
        self.tuner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="runtime-tuner")
        self.loads_per_second = loads_per_second
        self.recent_loads: deque[float] = deque()  # when the loads of the last second began
        self.runtime = runtime
        self.forward_threads = ForwardThreads(lanes, threads or torch.get_num_threads())
        self.lanes = self.forward_threads.lanes
        self.device, self.precision = device, precision
        self.max_batch, self.max_delay, self.max_queue = max_batch, max_delay, max_queue
        self.metrics = metrics
        self.models: OrderedDict[str, LoadedModel] = OrderedDict()
        self.lock = threading.Lock()
        self.loading: dict[str, threading.Lock] = {}
        self.lookups: dict[str | None, tuple[float, tuple[str, Path]]] = {}

    def lookup(self, model: str | None, find: Callable[[], tuple[str, Path]]
               ) -> tuple[str, Path]:
        """``find()`` (a database lookup) for ``model``, remembered for ``LOOKUP_SECONDS``:
        under load the active model is looked up about once a second, not per request.
        Another process's activation is seen within that time."""
        now = time.monotonic()
        with self.lock:
            hit = self.lookups.get(model)
        if hit is not None and hit[0] > now:
            return hit[1]
        found = find()
        with self.lock:
            self.lookups[model] = (now + LOOKUP_SECONDS, found)
            if len(self.lookups) > 1024:
                self.lookups = {k: v for k, v in self.lookups.items() if v[0] > now}
        return found

    def cached(self, model: str | None) -> LoadedModel | None:
        """The loaded model ``model`` names when both the lookup and the model are cached:
        no database, no thread hop (the request path's common case); else None."""
        now = time.monotonic()
        with self.lock:
            hit = self.lookups.get(model)
            if hit is None or hit[0] <= now:
                return None
            loaded = self.models.get(hit[1][0])
            if loaded is not None:
                self.models.move_to_end(loaded.job_id)
            return loaded

    def forget_lookups(self) -> None:
        with self.lock:
            self.lookups.clear()

    def drop(self, job_id: str) -> None:
        """Unload ``job_id``'s model (its files were deleted): the next request for it finds
        out in the database that it is gone."""
        with self.lock:
            self.lookups.clear()
            model = self.models.pop(job_id, None)
            if model is not None:
                model.evicted = True
                if not model.users:
                    self._forget(model)

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
                self._admit_load(job_id)
            runtime = choose_runtime(
                self.runtime, onnx_file=runtime_file(checkpoint, self.runtime)
                if self.runtime not in ("auto", "torch", "compiled")
                else checkpoint.with_suffix(".onnx"), device=self.device,
                precision=self.precision)
            predictor = self._build(checkpoint, runtime)
            self.metrics.loads.inc()
            model = LoadedModel(job_id, predictor)
            model.batcher = Batcher(
                partial(self.forward_threads.run, model.forward),
                self.forward_threads.executor, max_batch=self.max_batch,
                max_delay=self.max_delay, max_queue=self.max_queue, lanes=self.lanes,
                on_batch=self.metrics.batch,
            )
            with self.lock:
                self.models[job_id] = model
                while len(self.models) > self.size:
                    dropped, gone = self.models.popitem(last=False)
                    gone.evicted = True
                    if not gone.users:
                        self._forget(gone)
                    log.info("model %s unloaded (cache holds %d)", dropped, self.size)
                self.loading.pop(job_id, None)
            log.info("model %s loaded on %s (%s, %s)", job_id, predictor.plan.device,
                     predictor.runtime, predictor.precision)
            self.tuner.submit(self.tune, model, checkpoint)
            return model

    def _build(self, checkpoint: Path, runtime: str) -> Predictor:
        file = runtime_file(checkpoint, runtime)
        if file is not None and not file.is_file():
            raise ValueError(f"the model has no verified {runtime} file (the worker did not "
                             "write one, or discarded it: see the job's exports)")
        return Predictor(checkpoint, device=self.device, precision=self.precision,
                         runtime=runtime, threads=self.forward_threads.threads,
                         compile_backend=self.compile_backend)

    def candidates(self, checkpoint: Path, serving: str) -> list[str]:
        """The runtimes to measure for a model: all it has under ``auto`` (compiled last:
        the slowest to build), else the one asked for (and the one serving meanwhile)."""
        if self.runtime == "auto":
            found = [rt for rt in available_runtimes(checkpoint)
                     if rt != "compiled" or self.compile]
        else:
            found = [serving, self.runtime]
        return sorted(dict.fromkeys(found), key=lambda rt: (rt != serving, rt == "compiled"))

    def tune(self, model: LoadedModel, checkpoint: Path) -> None:
        """Build, check and time each candidate runtime of ``model``, and serve with the
        fastest (``auto``) or the one asked for, once it is ready. Never raises: a runtime
        that fails is recorded with its reason, and the one serving stays."""
        try:
            self._tune(model, checkpoint)
        except Exception:  # a bug here must not leave the model unusable
            log.exception("measuring the runtimes of model %s failed", model.job_id)
        finally:
            model.tuned.set()

    def _tune(self, model: LoadedModel, checkpoint: Path) -> None:
        first = model.predictor
        size = first.preprocessing.image_size
        verification = load_verification_set(checkpoint)
        if verification is not None and len(verification[0]):
            crops = verification[0].permute(0, 3, 1, 2)  # NCHW views of NHWC, as served
            batch = crops[torch.arange(self.max_batch) % len(crops)]
        else:
            batch = torch.randint(0, 256, (self.max_batch, 3, size, size), dtype=torch.uint8,
                                  generator=torch.Generator().manual_seed(0))
        built: dict[str, Predictor] = {}
        for rt in self.candidates(checkpoint, first.runtime):
            if model.evicted:
                return
            try:
                predictor = first if rt == first.runtime else self._build(checkpoint, rt)
                record: dict[str, Any] = {}
                if rt == "compiled":
                    if verification is None or not len(verification[0]):
                        raise ValueError("the job has no verification set to check the "
                                         "compiled model on (written by workers since "
                                         "EXPORT_ONNX exports; retrain to get one)")
                    record["compile_seconds"] = round(predictor.warm_up(), 1)
                    eager = built.get("torch") or (first if first.runtime == "torch"
                                                   else self._build(checkpoint, "torch"))
                    record["max_abs_diff"] = check_against(
                        predictor, eager, verification[0].permute(0, 3, 1, 2))
                speed = images_per_second(predictor, batch, seconds=self.tune_seconds,
                                          threads=self.forward_threads.threads)
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
                log.warning("model %s: runtime %s not used: %s", model.job_id, rt, reason)
                model.runtimes = {**model.runtimes, rt: {"error": reason}}
                continue
            built[rt] = predictor
            model.runtimes = {**model.runtimes, rt: {
                "images_per_second": round(speed, 1), "precision": predictor.precision,
                **record}}
            self._choose(model, built)
        if len(built) > 1:
            # A second pass over all of them, keeping each one's better figure: the machine's
            # speed drifts within a minute (other processes, a compile just finished), and
            # one timing each would compare runtimes measured under different conditions.
            for rt, predictor in built.items():
                if model.evicted:
                    return
                speed = images_per_second(predictor, batch, seconds=self.tune_seconds,
                                          threads=self.forward_threads.threads)
                best = max(speed, model.runtimes[rt]["images_per_second"])
                model.runtimes = {**model.runtimes,
                                  rt: {**model.runtimes[rt], "images_per_second": round(best, 1)}}
            self._choose(model, built)

    def _choose(self, model: LoadedModel, built: dict[str, Predictor]) -> None:
        if self.runtime == "auto":
            best = max(built, key=lambda rt: model.runtimes[rt]["images_per_second"])
        elif self.runtime in built:
            best = self.runtime
        else:
            return
        if model.predictor is not built[best]:
            log.info("model %s now served by %s (%.1f images/s measured)", model.job_id,
                     best, model.runtimes[best]["images_per_second"])
            model.predictor = built[best]

    def _admit_load(self, job_id: str) -> None:
        """Count a load about to begin, or refuse it (with ``self.lock`` held)."""
        if not self.loads_per_second:
            return
        now = time.monotonic()
        while self.recent_loads and now - self.recent_loads[0] >= 1.0:
            self.recent_loads.popleft()
        if len(self.recent_loads) >= self.loads_per_second:
            raise TooManyLoads(
                f"model {job_id} is not loaded, and {len(self.recent_loads)} models were "
                "loaded in the last second, the limit (MODEL_LOADS_PER_SECOND); retry shortly")
        self.recent_loads.append(now)

    @contextmanager
    def held(self, model: LoadedModel) -> Iterator[LoadedModel]:
        """``model`` in use by a request: its metric series stay while any request holds it,
        evicted or not."""
        with self.lock:
            model.users += 1
        try:
            yield model
        finally:
            with self.lock:
                model.users -= 1
                if model.evicted and not model.users:
                    self._forget(model)

    def predicted(self, model: LoadedModel, labels: list[str]) -> None:
        """Count ``labels`` under ``model``'s series, unless they were removed already (a
        request that got the model just before it was evicted)."""
        with self.lock:
            if not model.forgotten:
                self.metrics.predicted(model.job_id, labels)

    def _forget(self, model: LoadedModel) -> None:
        """Remove an evicted, unused model's series (with ``self.lock`` held); kept while the
        same job is loaded again (its series are the same)."""
        if model.forgotten:
            return
        model.forgotten = True
        if model.job_id not in self.models:
            self.metrics.forget(model.job_id, model.predictor.classes)

    def close(self) -> None:
        self.tuner.shutdown(wait=False, cancel_futures=True)
        self.forward_threads.shutdown()
