"""The batcher of /predict: concurrent requests share forward passes, within bounds."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from app.api.serving import Batcher, Overloaded
from tests.helpers import wait_for_async


class Recorder:
    """A forward pass that records its batch sizes; the first one sets ``started`` and waits
    for ``release``, so that the requests sent meanwhile have to queue up."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.sizes: list[int] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.fail_on = fail_on

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.sizes:
            self.started.set()
            self.release.wait(10)
        self.sizes.append(len(x))
        if self.fail_on is not None and len(self.sizes) == self.fail_on:
            raise RuntimeError("device lost")
        return x.float().sum(dim=(1, 2, 3), keepdim=False).unsqueeze(1) * 2


def image(v: int) -> torch.Tensor:
    return torch.full((3, 2, 2), v, dtype=torch.uint8)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def queued(batcher: Batcher, images: int) -> None:
    """Until ``images`` wait in the batcher's queue (the tasks sending them have run)."""
    await wait_for_async(lambda: len(batcher.pending) == images, timeout=10,
                         what=f"{images} queued images")


async def computing(rec: Recorder) -> None:
    """Until the first batch is in the forward pass (and holds the only forward thread)."""
    await wait_for_async(rec.started.is_set, timeout=10, what="the first batch")


def test_queued_requests_share_batches_and_get_their_own_rows() -> None:
    rec = Recorder()
    pool = ThreadPoolExecutor(1)
    batcher = Batcher(rec, pool, max_batch=4, max_delay=0.001, max_queue=100)

    async def main() -> list[list[torch.Tensor]]:
        first = asyncio.create_task(batcher.submit([image(1)]))
        await computing(rec)
        rest = [asyncio.create_task(batcher.submit([image(v), image(v)])) for v in range(2, 7)]
        await queued(batcher, 10)
        rec.release.set()
        return [await first, *[await t for t in rest]]

    results = run(main())
    assert rec.sizes[0] == 1 and sum(rec.sizes) == 11
    assert max(rec.sizes[1:]) == 4 and len(rec.sizes) == 4  # 10 queued images: 4 + 4 + 2
    for v, rows in zip(range(1, 7), results, strict=True):
        assert [float(r) for r in rows] == [v * 12 * 2] * len(rows)
    pool.shutdown()


def test_a_full_queue_refuses_at_once() -> None:
    rec = Recorder()
    pool = ThreadPoolExecutor(1)
    batcher = Batcher(rec, pool, max_batch=2, max_delay=0, max_queue=3)

    async def main() -> None:
        first = asyncio.create_task(batcher.submit([image(1)]))
        await computing(rec)
        waiting = asyncio.create_task(batcher.submit([image(2), image(3), image(4)]))
        await queued(batcher, 3)
        with pytest.raises(Overloaded, match="retry"):
            await batcher.submit([image(5)])
        rec.release.set()
        await first
        assert len(await waiting) == 3

    run(main())
    pool.shutdown()


def test_a_failed_batch_fails_its_requests_only() -> None:
    rec = Recorder(fail_on=1)
    rec.release.set()
    pool = ThreadPoolExecutor(1)
    batcher = Batcher(rec, pool, max_batch=8, max_delay=0, max_queue=100)

    async def main() -> None:
        with pytest.raises(RuntimeError, match="device lost"):
            await batcher.submit([image(1)])
        rows = await batcher.submit([image(2)])  # the batcher goes on
        assert float(rows[0]) == 2 * 12 * 2

    run(main())
    pool.shutdown()


def test_requests_that_went_away_are_not_computed() -> None:
    rec = Recorder()
    pool = ThreadPoolExecutor(1)
    batcher = Batcher(rec, pool, max_batch=8, max_delay=0, max_queue=100)

    async def main() -> None:
        first = asyncio.create_task(batcher.submit([image(1)]))
        await computing(rec)
        gone = asyncio.create_task(batcher.submit([image(2), image(2)]))
        kept = asyncio.create_task(batcher.submit([image(3)]))
        await queued(batcher, 3)
        gone.cancel()  # the client disconnected
        rec.release.set()
        await first
        assert float((await kept)[0]) == 3 * 12 * 2

    run(main())
    assert rec.sizes == [1, 1]
    pool.shutdown()


def test_forward_threads_give_a_lone_pass_every_thread() -> None:
    from app.api.serving import ForwardThreads

    lanes = ForwardThreads(lanes=2, threads=4)
    seen: list[int] = []
    started, release = threading.Event(), threading.Event()

    def first(x: torch.Tensor, *, threads: int) -> torch.Tensor:
        seen.append(threads)
        started.set()
        release.wait(10)
        return x

    def second(x: torch.Tensor, *, threads: int) -> torch.Tensor:
        seen.append(threads)
        return x

    a = lanes.executor.submit(lanes.run, first, torch.zeros(1))
    started.wait(10)
    b = lanes.executor.submit(lanes.run, second, torch.zeros(1))
    b.result(10)
    release.set()
    a.result(10)
    c = lanes.executor.submit(lanes.run, second, torch.zeros(1))
    c.result(10)
    lanes.shutdown()
    assert seen == [4, 2, 4]  # alone: all 4; overlapping: 4 // 2 lanes; alone again: 4


def test_a_lone_request_is_decoded_and_computed_in_one_hop_to_a_forward_thread() -> None:
    rec = Recorder()
    threads: list[str] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        threads.append(threading.current_thread().name)
        return rec(x)

    pool = ThreadPoolExecutor(2, thread_name_prefix="forward")
    batcher = Batcher(forward, pool, max_batch=4, max_delay=0, max_queue=100, lanes=2)

    def decode() -> list[torch.Tensor]:
        threads.append(threading.current_thread().name)
        return [image(5)]

    async def main() -> None:
        with batcher.admit(1):
            assert batcher.alone(1)
            alone = asyncio.create_task(batcher.run_alone(decode))
            await computing(rec)
        # While it computes, nothing else is alone: another request is batched.
        with batcher.admit(1):
            assert not batcher.alone(1)
        with batcher.admit(2):
            assert not batcher.alone(2)
        queued_one = asyncio.create_task(batcher.submit([image(7)]))
        rec.release.set()
        assert [float(r) for r in await alone] == [5 * 12 * 2]
        assert [float(r) for r in await queued_one] == [7 * 12 * 2]
        # Once done (the lane is handed back after its rows), the next lone request takes
        # the short way again.
        await wait_for_async(lambda: batcher.computing == 0, timeout=10, what="lanes free")
        with batcher.admit(1):
            assert batcher.alone(1)
            assert [float(r) for r in await batcher.run_alone(decode)] == [5 * 12 * 2]

    run(main())
    # Decoded and computed on the same forward thread, not the event loop's.
    assert threads[0] == threads[1] and threads[0].startswith("forward")
    assert batcher.computing == 0 and rec.sizes == [1, 1, 1]
    pool.shutdown()
