"""Data-parallel training over several processes (``torchrun``): one process per GPU with
NCCL, or N CPU processes with gloo (tests, development).

:func:`~app.engine.train.fit` uses it (through :class:`~app.engine.strategy.DataParallel`)
when it runs under ``torchrun`` with ``WORLD_SIZE`` > 1; with one process none of this is
used. The choices, in one place:

- Global batch: the job's ``batch_size`` is the batch of one optimiser step across all
  processes. Each epoch's permutation (the same on every rank, from ``(seed, epoch)``; with
  the balanced sampler, a weighted draw with replacement from the same generator) is
  cut into global batches of ``batch_size``; each is split into N near-equal contiguous
  pieces, piece r going to rank r. Each rank's mean loss is weighted by
  ``piece * N / global batch`` so that DDP's average of the gradients is exactly the
  gradient of the mean loss over the global batch, as on one device. The steps per epoch
  and the recipe's learning rate therefore do not change with N. A last global batch
  too small to give every rank two images (BatchNorm) is dropped.
- BatchNorm statistics are per rank (no SyncBatchNorm: a collective per layer per batch);
  rank 0's running statistics are broadcast to every rank before each evaluation, so every
  rank holds exactly the model that rank 0 saves.
- Metrics: the train loss/correct/count sums are all-reduced once per epoch; evaluation is
  sharded (test image i on rank i % N) and the logits are all-gathered back into dataset
  order, so the evaluation is the same computation as on one process.
- Stop: every batch, each rank's wish to stop (its callback's ``should_stop``) is
  all-reduced (max) over a gloo group, so all ranks raise ``TrainingCancelled`` at the same
  batch. A rank that dies makes ``torchrun`` tear the others down; a collective that waits
  longer than ``COLLECTIVE_TIMEOUT`` fails.
- Rank 0 alone writes checkpoints and receives the callback's reporting hooks.
- Randomness: the shuffle comes from ``(seed, epoch)``; augmentation and loader workers
  from ``(seed, epoch, rank)``. A run resumed with the same N replays exactly.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

log = logging.getLogger(__name__)

COLLECTIVE_TIMEOUT = timedelta(minutes=15)


@dataclass(frozen=True)
class RankInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @classmethod
    def from_env(cls) -> RankInfo | None:
        """The ``torchrun`` environment, or None for a single process (the default)."""
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return None
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        return cls(rank, world, local_rank, local_world)


def device_for_rank(requested: str, local_rank: int, cuda_available: bool | None = None) -> str:
    """The device of one rank: ``cuda:LOCAL_RANK`` where CUDA is used, else ``cpu``."""
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if requested == "auto":
        requested = "cuda" if cuda_available else "cpu"
    if requested == "cpu":
        return "cpu"
    if requested == "cuda":
        return f"cuda:{local_rank}"
    raise ValueError(
        f"device {requested!r} with several processes: use 'auto', 'cpu' or 'cuda' "
        "(each process takes the GPU of its LOCAL_RANK)"
    )


class Distributed:
    """The process group of one data-parallel run and the few collectives the loop needs."""

    def __init__(self, info: RankInfo, device: torch.device) -> None:
        self.info = info
        self.device = device
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
        # Stop flags are CPU tensors: over gloo they never wait on the GPU stream.
        self.control = _gloo_group() if backend != "gloo" else None
        log.info("rank %d of %d on %s (%s)", info.rank, info.world_size, device, backend)

    @property
    def rank(self) -> int:
        return self.info.rank

    @property
    def world_size(self) -> int:
        return self.info.world_size

    @property
    def is_main(self) -> bool:
        return self.info.rank == 0

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def wrap(self, model: nn.Module) -> nn.Module:
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def agree_to_stop(self, wish: bool) -> bool:
        """True on every rank when any rank wants to stop."""
        flag = torch.tensor([1 if wish else 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.control)
        return bool(flag.item())

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        out = values.to(self.device, dtype=torch.float64).clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.cpu()

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's BatchNorm running statistics (and every other buffer) on every rank."""
        for buf in model.buffers():
            dist.broadcast(buf, src=0)

    def gather_rows(self, local: torch.Tensor, total: int, columns: int) -> torch.Tensor:
        """Rows ``r::world`` of a ``(total, columns)`` tensor come from rank r; returns the
        whole tensor, in order, on every rank (CPU, float32)."""
        world = self.world_size
        longest = -(-total // world)
        padded = torch.zeros(longest, columns, dtype=torch.float32, device=self.device)
        if len(local):
            padded[: len(local)] = local.to(self.device, dtype=torch.float32)
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        out = torch.empty(total, columns, dtype=torch.float32)
        for r, part in enumerate(parts):
            count = len(range(r, total, world))
            out[r::world] = part[:count].cpu()
        return out


def _gloo_group() -> dist.ProcessGroup:
    group = dist.new_group(backend="gloo")
    # new_group returns a marker instead of a group to a process outside it; all are inside.
    assert isinstance(group, dist.ProcessGroup)
    return group


def global_batches(order: torch.Tensor, batch_size: int, world_size: int) -> list[torch.Tensor]:
    """The epoch's order cut into global batches; a last one too small to give every rank
    two images is dropped (BatchNorm cannot train on one)."""
    batches = list(torch.split(order, batch_size))
    if batches and len(batches[-1]) < 2 * world_size:
        batches.pop()
    return batches


def rank_piece(batch: torch.Tensor, world_size: int, rank: int) -> torch.Tensor:
    return torch.tensor_split(batch, world_size)[rank]


class ListBatches(Sampler[list[int]]):
    def __init__(self, batches: Sequence[list[int]]) -> None:
        self.batches = list(batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


@dataclass(frozen=True)
class EpochShard:
    """One rank's part of one epoch: its batches, each batch's loss weight, and the global
    batch sizes (for progress reporting)."""

    batches: list[list[int]]
    weights: list[float]
    global_sizes: list[int]


def epoch_shard(
    n: int, batch_size: int, world_size: int, rank: int, shuffle: torch.Generator,
    sample_weights: torch.Tensor | None = None,
) -> EpochShard:
    """This rank's part of an epoch: a permutation of the ``n`` images (the same on every
    rank), or with ``sample_weights`` a draw of ``n`` with replacement (the balanced
    sampler, as torch's WeightedRandomSampler draws it), cut into global batches."""
    if n < 2 * world_size:
        raise ValueError(
            f"{world_size} training processes need at least {2 * world_size} training "
            f"images, the dataset has {n}"
        )
    order = (torch.randperm(n, generator=shuffle) if sample_weights is None
             else torch.multinomial(sample_weights, n, replacement=True, generator=shuffle))
    batches, weights, sizes = [], [], []
    for gb in global_batches(order, batch_size, world_size):
        piece = rank_piece(gb, world_size, rank)
        batches.append(piece.tolist())
        weights.append(len(piece) * world_size / len(gb))
        sizes.append(len(gb))
    return EpochShard(batches, weights, sizes)


def ignore_sigterm(_worker_id: int) -> None:
    """DataLoader worker init: torchrun forwards SIGTERM to each rank's whole process group,
    and a loader worker dies of it (torch's handler), which would turn an orderly stop into
    a crash. The rank itself handles the signal; its workers end with it. The worker starts
    with SIGTERM blocked (see :class:`_SigtermProofLoader`): ignoring it discards one that
    came meanwhile."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


class _SigtermProofLoader(DataLoader[tuple[torch.Tensor, int]]):
    """Starts its worker processes with SIGTERM blocked, until ``ignore_sigterm`` ignores it;
    a SIGTERM to this process meanwhile is delivered when the workers are started."""

    def __iter__(self) -> Any:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            return super().__iter__()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def shard_loader(
    ds: Dataset[tuple[torch.Tensor, int]],
    batches: Sequence[list[int]],
    *,
    workers: int,
    pin_memory: bool,
    generator: torch.Generator,
) -> DataLoader[tuple[torch.Tensor, int]]:
    return _SigtermProofLoader(
        ds, batch_sampler=ListBatches(batches), num_workers=workers, pin_memory=pin_memory,
        generator=generator, worker_init_fn=ignore_sigterm if workers else None,
    )


def eval_loader(
    ds: Dataset[tuple[torch.Tensor, int]], *, batch_size: int, workers: int, pin_memory: bool
) -> DataLoader[tuple[torch.Tensor, int]]:
    """This rank's test shard in order (``make_loader(shuffle=False)``, SIGTERM-proof)."""
    return _SigtermProofLoader(
        ds, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin_memory,
        worker_init_fn=ignore_sigterm if workers else None,
    )
