"""How one training run is spread over processes: :class:`SingleProcess`, or
:class:`DataParallel` under ``torchrun`` (DDP; its choices are explained in
:mod:`app.engine.distributed`).

The loop in :mod:`app.engine.train` is the same for both. A strategy decides the device,
what trains (the model or its DDP wrapper), each epoch's loader and batch weights, how the
epoch's totals are reduced over processes, how the validation and test sets are run through
the model, who receives the callback's reports and who writes the files.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

import torch
from torch import nn

from app.engine.callback import BatchProgress, Callback, EpochMetrics, StartInfo
from app.engine.config import TrainConfig
from app.engine.data import CachedImages, Sample, make_loader
from app.engine.device import DevicePlan, plan_device
from app.engine.distributed import (
    Distributed,
    RankInfo,
    device_for_rank,
    epoch_shard,
    eval_loader,
    shard_loader,
)
from app.engine.evaluate import Batches, infer_sharded, run_inference
from app.engine.presets import Preprocessing


@dataclass(frozen=True)
class EpochBatches:
    """One epoch of this process's training batches."""

    loader: Batches
    weights: list[float] | None  # batch i's loss weight (several processes), else None


class Strategy(ABC):
    """What the training loop does differently on one process and on several."""

    plan: DevicePlan  # this process's device
    world_size = 1  # training processes
    writes = True  # this process writes the checkpoints
    local_processes = 1  # processes on this machine, each caching its own copy of the images
    # Sums the epoch's (loss, correct, images) totals over the processes; None: one process.
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None

    def wrap(self, model: nn.Module) -> nn.Module:
        """What trains: ``model`` itself, or a wrapper that shares its gradients."""
        return model

    def reporter(self, callback: Callback) -> Callback:
        """The callback as the loop sees it."""
        return callback

    def eval_share(self, samples: Sequence[Sample]) -> list[Sample]:
        """The images of an evaluated set (validation, test) that this process runs."""
        return list(samples)

    @abstractmethod
    def batches_per_epoch(self, train_ds: CachedImages, batch_size: int) -> int: ...

    @abstractmethod
    def eval_loader(self, ds: CachedImages, batch_size: int) -> Batches: ...

    @abstractmethod
    def epoch_batches(
        self, train_ds: CachedImages, batch_size: int, seed: int, epoch: int,
        sample_weights: torch.Tensor | None = None,
    ) -> EpochBatches:
        """Epoch ``epoch``'s batches: a seeded permutation of the training images, or with
        ``sample_weights`` (``sampler: balanced``) a seeded draw of as many, with
        replacement."""

    @abstractmethod
    def infer(
        self, model: nn.Module, loader: Batches, pre: Preprocessing, samples: Sequence[Sample],
        num_classes: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (CPU, float32) and targets of the whole set ``samples`` in order, ``loader``
        holding this process's share of it (:meth:`eval_share`)."""

    @abstractmethod
    def close(self) -> None:
        """The run is over (finished or cancelled on every process)."""

    def describe(self) -> str:
        """For the log line that starts the run."""
        return ""


def strategy_for(cfg: TrainConfig) -> Strategy:
    """One process, or data parallel under ``torchrun`` with ``WORLD_SIZE`` > 1 (this joins
    the process group)."""
    ranks = RankInfo.from_env()
    device = cfg.device if ranks is None else device_for_rank(cfg.device, ranks.local_rank)
    plan = plan_device(
        device, precision=cfg.precision, workers=cfg.workers, channels_last=cfg.channels_last
    )
    if ranks is None:
        return SingleProcess(plan)
    return DataParallel(Distributed(ranks, plan.device), plan)


def seed_epoch(seed: int, epoch: int) -> torch.Generator:
    """Seed everything random in one epoch from (seed, epoch); returns the shuffle generator.

    Augmentation in the main process draws from torch's global RNG; loader workers are
    seeded by the DataLoader from the returned generator.
    """
    s = (seed * 1_000_003 + epoch) % (2**63)
    torch.manual_seed(s)
    random.seed(s)
    return torch.Generator().manual_seed(s)


def seed_rank_epoch(seed: int, epoch: int, rank: int) -> tuple[torch.Generator, torch.Generator]:
    """:func:`seed_epoch` for one of several processes. Returns the shuffle generator (the
    same on every rank: the ranks share one permutation) and the rank's loader generator;
    augmentation and loader workers are seeded from ``(seed, epoch, rank)``.
    """
    s = (seed * 1_000_003 + epoch) % (2**63)
    r = (s * 1_000_003 + 7919 * (rank + 1)) % (2**63)
    torch.manual_seed(r)
    random.seed(r)
    return torch.Generator().manual_seed(s), torch.Generator().manual_seed(r)


class SingleProcess(Strategy):
    def __init__(self, plan: DevicePlan) -> None:
        self.plan = plan

    def batches_per_epoch(self, train_ds: CachedImages, batch_size: int) -> int:
        return len(make_loader(train_ds, batch_size=batch_size, shuffle=True, workers=0))

    def eval_loader(self, ds: CachedImages, batch_size: int) -> Batches:
        return make_loader(
            ds, batch_size=batch_size, shuffle=False, workers=self.plan.workers,
            pin_memory=self.plan.pin_memory,
        )

    def epoch_batches(
        self, train_ds: CachedImages, batch_size: int, seed: int, epoch: int,
        sample_weights: torch.Tensor | None = None,
    ) -> EpochBatches:
        loader = make_loader(
            train_ds, batch_size=batch_size, shuffle=True, workers=self.plan.workers,
            pin_memory=self.plan.pin_memory, generator=seed_epoch(seed, epoch),
            sample_weights=sample_weights,
        )
        return EpochBatches(loader, None)

    def infer(
        self, model: nn.Module, loader: Batches, pre: Preprocessing, samples: Sequence[Sample],
        num_classes: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return run_inference(model, loader, self.plan, pre)

    def close(self) -> None:
        pass  # nothing was joined


class DataParallel(Strategy):
    """One of several processes: each trains on its piece of every global batch, the
    totals and the validation and test logits are gathered, rank 0 alone reports and
    writes."""

    def __init__(self, ddp: Distributed, plan: DevicePlan) -> None:
        self.ddp, self.plan = ddp, plan
        self.world_size = ddp.world_size
        self.writes = ddp.is_main
        self.local_processes = ddp.info.local_world_size
        self.reduce = ddp.sum
        self.images_after: list[int] = []  # global images done after each batch of the epoch

    def wrap(self, model: nn.Module) -> nn.Module:
        return self.ddp.wrap(model)

    def reporter(self, callback: Callback) -> Callback:
        return _RankCallback(callback, self)

    def eval_share(self, samples: Sequence[Sample]) -> list[Sample]:
        return list(samples[self.ddp.rank :: self.world_size])

    def batches_per_epoch(self, train_ds: CachedImages, batch_size: int) -> int:
        # This also fails early when there are too few images for the processes.
        shard = epoch_shard(len(train_ds), batch_size, self.world_size, self.ddp.rank,
                            torch.Generator().manual_seed(0))
        return len(shard.batches)

    def eval_loader(self, ds: CachedImages, batch_size: int) -> Batches:
        return eval_loader(ds, batch_size=batch_size, workers=self.plan.workers,
                           pin_memory=self.plan.pin_memory)

    def epoch_batches(
        self, train_ds: CachedImages, batch_size: int, seed: int, epoch: int,
        sample_weights: torch.Tensor | None = None,
    ) -> EpochBatches:
        shuffle, loader_seed = seed_rank_epoch(seed, epoch, self.ddp.rank)
        shard = epoch_shard(len(train_ds), batch_size, self.world_size, self.ddp.rank, shuffle,
                            sample_weights)
        self.images_after = list(accumulate(shard.global_sizes))
        loader = shard_loader(
            train_ds, shard.batches, workers=self.plan.workers, pin_memory=self.plan.pin_memory,
            generator=loader_seed,
        )
        return EpochBatches(loader, shard.weights)

    def infer(
        self, model: nn.Module, loader: Batches, pre: Preprocessing, samples: Sequence[Sample],
        num_classes: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return infer_sharded(model, loader, self.plan, pre, self.ddp, samples, num_classes)

    def close(self) -> None:
        self.ddp.close()

    def describe(self) -> str:
        return f", rank {self.ddp.rank} of {self.world_size}"


class _RankCallback(Callback):
    """The callback of one of several processes: reporting on rank 0 only (with the global
    image count), and a stop agreed by all ranks at the same batch."""

    def __init__(self, inner: Callback, strategy: DataParallel) -> None:
        self.inner, self.strategy = inner, strategy
        self.is_main = strategy.ddp.is_main

    def on_start(self, info: StartInfo) -> None:
        if self.is_main:
            self.inner.on_start(info)

    def on_batch(self, progress: BatchProgress) -> None:
        if self.is_main:
            images = self.strategy.images_after[progress.batch - 1]
            self.inner.on_batch(BatchProgress(progress.epoch, progress.epochs, progress.batch,
                                              progress.batches, images))

    def on_epoch(self, metrics: EpochMetrics) -> None:
        if self.is_main:
            self.inner.on_epoch(metrics)

    def on_checkpoint(self, path: Path, epoch: int) -> None:
        if self.is_main:
            self.inner.on_checkpoint(path, epoch)

    def should_stop(self) -> bool:
        return self.strategy.ddp.agree_to_stop(self.inner.should_stop())
