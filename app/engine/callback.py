"""What the training loop reports, and the :class:`Callback` that receives it (the worker, the
command line and the benchmarks implement one); the callback can also ask the loop to stop
between batches."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.engine.config import TrainConfig


@dataclass(frozen=True)
class StartInfo:
    classes: list[str]
    train_count: int
    test_count: int
    device: str
    precision: str
    start_epoch: int
    epochs: int
    batches_per_epoch: int
    config: TrainConfig
    cached_bytes: int  # decoded images held in memory
    decode_seconds: float  # the one-time decode that filled the cache
    world_size: int = 1  # training processes (torchrun); 1 for the plain single process
    # A resumed run's epochs done before it (its checkpoint's history), so that a reporter
    # can record any whose report was lost when the previous run was killed.
    history: tuple[EpochMetrics, ...] = ()
    val_count: int = 0  # validation images (0: no validation split)
    val_source: str | None = None  # "folder" (the dataset's val/), "carved" (from train)


@dataclass(frozen=True)
class BatchProgress:
    epoch: int
    epochs: int
    batch: int  # batches done in this epoch
    batches: int
    images: int  # images done in this epoch


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    epochs: int
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    images_per_s: float  # training images per second of the training pass, loading included
    seconds: float  # the whole epoch: training pass and evaluation
    # On the validation split (None without one): what selection and early stopping read.
    val_loss: float | None = None
    val_acc: float | None = None
    val_macro_f1: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Callback:
    """Override what you need; every hook is optional.

    Under ``torchrun`` with several processes, the reporting hooks are called on rank 0
    only; ``should_stop`` is asked on every rank and any rank's True stops them all.
    """

    def on_start(self, info: StartInfo) -> None:
        pass

    def on_batch(self, progress: BatchProgress) -> None:
        pass

    def on_epoch(self, metrics: EpochMetrics) -> None:
        """Epoch ``metrics.epoch`` is done; called before its checkpoint is written, so a
        run killed at any moment has reported every epoch its checkpoint holds."""

    def on_checkpoint(self, path: Path, epoch: int) -> None:
        pass

    def should_stop(self) -> bool:
        return False
