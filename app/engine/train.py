"""The fine-tuning loop: ``fit`` runs a whole job, ``train_one_epoch``/``run_inference`` are
its parts. It knows nothing of HTTP, queues or databases: it reports through a
:class:`Callback`, which can also ask it to stop between batches.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from app.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from app.engine.config import INIT_IMAGENET, INIT_SCRATCH, TrainConfig
from app.engine.data import (
    CachedImages,
    available_memory_bytes,
    eval_dataset,
    load_image_folder,
    make_loader,
    train_dataset,
)
from app.engine.device import DevicePlan, plan_device
from app.engine.distributed import (
    Distributed,
    RankInfo,
    device_for_rank,
    epoch_shard,
    eval_loader,
    shard_loader,
)
from app.engine.metrics import Evaluation, evaluation_from
from app.engine.model import backbone_parameters, build_model, head_parameters
from app.engine.presets import Preprocessing, normalize_batch

log = logging.getLogger(__name__)


class TrainingCancelled(Exception):
    """The callback asked the run to stop."""


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
        pass

    def on_checkpoint(self, path: Path, epoch: int) -> None:
        pass

    def should_stop(self) -> bool:
        return False


@dataclass
class TrainResult:
    checkpoint: Path
    classes: list[str]
    config: TrainConfig
    history: list[EpochMetrics] = field(default_factory=list)
    evaluation: Evaluation | None = None

    @property
    def test_acc(self) -> float:
        return self.history[-1].test_acc if self.history else float("nan")


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD with the backbone at ``lr`` and the new head at ``lr * head_lr_mult``."""
    assert cfg.lr is not None and cfg.head_lr_mult is not None, "resolve the config first"
    return torch.optim.SGD(
        [
            {"params": backbone_parameters(model), "lr": cfg.lr, "name": "backbone"},
            {"params": head_parameters(model), "lr": cfg.lr * cfg.head_lr_mult, "name": "head"},
        ],
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )


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


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    plan: DevicePlan,
    pre: Preprocessing,
    *,
    epoch: int,
    epochs: int,
    batches: int,
    callback: Callback,
    scaler: torch.amp.GradScaler | None = None,
    weights: Sequence[float] | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[float, float, int, float]:
    """One pass over ``loader``. Returns (mean loss, accuracy, images, seconds).

    Several processes: ``weights[i]`` scales batch i's loss for the backward pass (this
    rank's share of the global batch, see :mod:`app.engine.distributed`), and ``reduce``
    sums the (loss, correct, images) totals over the ranks.
    """
    model.train()
    device = plan.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    start = time.perf_counter()
    for i, (images, targets) in enumerate(loader):
        if callback.should_stop():
            raise TrainingCancelled(f"cancelled in epoch {epoch}, batch {i}")
        x = normalize_batch(
            images, pre.mean, pre.std, device=device, channels_last=plan.channels_last
        )
        y = targets.to(device, non_blocking=True)
        with plan.autocast():
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        objective = loss if weights is None else loss * weights[i]
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:  # fp16 autocast: scale the loss so small gradients survive
            scaler.scale(objective).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            objective.backward()
            optimizer.step()
        # Accumulate on the device: no per-batch host sync.
        loss_sum += loss.detach().float() * y.numel()
        correct += (logits.detach().argmax(1) == y).sum()
        seen += y.numel()
        callback.on_batch(BatchProgress(epoch, epochs, i + 1, batches, seen))
    if plan.is_cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if reduce is not None:
        local = torch.stack([loss_sum.double(), correct.double(),
                             torch.tensor(float(seen), dtype=torch.float64, device=device)])
        total_loss, total_correct, total_seen = reduce(local).tolist()
        seen = int(total_seen)
        if seen == 0:
            return float("nan"), float("nan"), 0, seconds
        return total_loss / seen, total_correct / seen, seen, seconds
    if seen == 0:
        return float("nan"), float("nan"), 0, seconds
    return loss_sum.item() / seen, correct.item() / seen, seen, seconds


@torch.inference_mode()
def run_inference(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    plan: DevicePlan,
    pre: Preprocessing,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and targets for every sample of ``loader``, in order."""
    model.eval()
    all_logits, all_targets = [], []
    for images, targets in loader:
        x = normalize_batch(
            images, pre.mean, pre.std, device=plan.device, channels_last=plan.channels_last
        )
        with plan.autocast():
            logits = model(x)
        all_logits.append(logits.float().cpu())
        all_targets.append(torch.as_tensor(targets))
    if not all_logits:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(all_logits), torch.cat(all_targets)


def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    plan: DevicePlan,
    pre: Preprocessing,
    classes: list[str],
) -> Evaluation:
    logits, targets = run_inference(model, loader, plan, pre)
    return evaluation_from_logits(classes, logits, targets)


def evaluation_from_logits(
    classes: list[str], logits: torch.Tensor, targets: torch.Tensor
) -> Evaluation:
    loss = F.cross_entropy(logits, targets).item() if len(targets) else float("nan")
    return evaluation_from(classes, targets, logits.argmax(1), loss)


def _source_state(cfg: TrainConfig) -> tuple[str, dict[str, torch.Tensor] | None]:
    if cfg.init in (INIT_IMAGENET, INIT_SCRATCH):
        return cfg.init, None
    try:
        return "checkpoint", load_checkpoint(cfg.init)["model"]
    except CheckpointError as exc:
        raise ValueError(
            f"init must be 'imagenet', 'scratch' or a hotdog checkpoint path: {exc}"
        ) from exc


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def fit(
    data_dir: str | Path,
    config: TrainConfig,
    out: str | Path,
    *,
    callback: Callback | None = None,
    resume_from: str | Path | None = None,
    epoch_checkpoint: str | Path | None = None,
) -> TrainResult:
    """Fine-tune on ``data_dir`` (train/ and test/ ImageFolders) and write the checkpoint
    ``out``. ``epoch_checkpoint`` is rewritten after every epoch; passing such a file as
    ``resume_from`` continues the run up to ``config.epochs`` exactly as if it had never
    stopped (on CPU, same seed).

    Under ``torchrun`` with ``WORLD_SIZE`` > 1 every process calls this: data-parallel
    training (DDP; NCCL on CUDA, gloo on CPU), rank 0 writing the checkpoints and reporting
    (see :mod:`app.engine.distributed`). Resuming with the same number of processes replays
    exactly; with another number it continues from the same state.
    """
    cfg = config.resolved()
    cb = callback or Callback()
    out = Path(out)
    ranks = RankInfo.from_env()
    plan = plan_device(
        cfg.device if ranks is None else device_for_rank(cfg.device, ranks.local_rank),
        precision=cfg.precision, workers=cfg.workers, channels_last=cfg.channels_last,
    )
    if ranks is None:
        return _fit(data_dir, cfg, cb, out, plan, None, resume_from, epoch_checkpoint)
    ddp = Distributed(ranks, plan.device)
    try:
        result = _fit(data_dir, cfg, _RankCallback(cb, ddp), out, plan, ddp, resume_from,
                      epoch_checkpoint)
    except TrainingCancelled:
        ddp.close()  # every rank stopped at the same batch
        raise
    # Any other error leaves the group as it is: the other ranks may be inside a collective
    # that a goodbye would wait on; this process exits and torchrun stops the others.
    ddp.close()
    return result


class _RankCallback(Callback):
    """The callback of one of several processes: reporting on rank 0 only (with the global
    image count), and a stop agreed by all ranks at the same batch."""

    def __init__(self, inner: Callback, ddp: Distributed) -> None:
        self.inner, self.ddp = inner, ddp
        self.images_after: list[int] = []  # global images done after each batch of the epoch

    def epoch_sizes(self, sizes: Sequence[int]) -> None:
        self.images_after = [sum(sizes[: i + 1]) for i in range(len(sizes))]

    def on_start(self, info: StartInfo) -> None:
        if self.ddp.is_main:
            self.inner.on_start(info)

    def on_batch(self, progress: BatchProgress) -> None:
        if self.ddp.is_main:
            images = self.images_after[progress.batch - 1]
            self.inner.on_batch(BatchProgress(progress.epoch, progress.epochs, progress.batch,
                                              progress.batches, images))

    def on_epoch(self, metrics: EpochMetrics) -> None:
        if self.ddp.is_main:
            self.inner.on_epoch(metrics)

    def on_checkpoint(self, path: Path, epoch: int) -> None:
        if self.ddp.is_main:
            self.inner.on_checkpoint(path, epoch)

    def should_stop(self) -> bool:
        return self.ddp.agree_to_stop(self.inner.should_stop())


def _fit(
    data_dir: str | Path,
    cfg: TrainConfig,
    cb: Callback,
    out: Path,
    plan: DevicePlan,
    ddp: Distributed | None,
    resume_from: str | Path | None,
    epoch_checkpoint: str | Path | None,
) -> TrainResult:
    world = 1 if ddp is None else ddp.world_size
    writes = ddp is None or ddp.is_main  # rank 0 alone writes files
    if plan.is_cuda:
        torch.backends.cudnn.benchmark = True
    splits = load_image_folder(data_dir)
    classes = splits.classes
    pre = Preprocessing.for_size(cfg.image_size)

    resume: dict[str, Any] | None = None
    if resume_from is not None:
        resume = load_checkpoint(resume_from)
        if resume["classes"] != classes:
            raise ValueError(
                f"cannot resume: checkpoint classes {resume['classes']} differ from the "
                f"dataset's {classes}"
            )
        if Preprocessing.from_dict(resume["preprocessing"]) != pre:
            raise ValueError("cannot resume: the checkpoint was trained at another image_size")
        if resume["epoch"] > cfg.epochs:
            raise ValueError(f"cannot resume: checkpoint is at epoch {resume['epoch']} > epochs")

    # Load weights first: a missing ImageNet file fails before any image is decoded.
    torch.manual_seed(cfg.seed)
    if resume is None:
        init, source = _source_state(cfg)
        model = build_model(len(classes), init, source_state=source)
    else:
        model = build_model(len(classes), INIT_SCRATCH)
        model.load_state_dict(resume["model"])
    model.to(plan.device)
    if plan.channels_last:
        model.to(memory_format=torch.channels_last)
    net = model if ddp is None else ddp.wrap(model)  # what trains; ``model`` is what is saved
    optimizer = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda") if plan.amp_dtype == torch.float16 else None
    start_epoch = 0
    history: list[EpochMetrics] = []
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        # load_state_dict also restores the old lr/momentum/decay; the config given now wins.
        for group, fresh in zip(optimizer.param_groups, make_optimizer(model, cfg).param_groups,
                                strict=True):
            group.update({k: fresh[k] for k in ("lr", "momentum", "weight_decay")})
        start_epoch = int(resume["epoch"])
        history = [EpochMetrics(**m) for m in resume.get("history", [])][:start_epoch]

    train_ds = train_dataset(splits.train, cfg.image_size)
    # Several processes: each evaluates test images rank, rank + N, ... (see _evaluate).
    test_ds = eval_dataset(splits.test if ddp is None else splits.test[ddp.rank::world], pre)
    # Every process of this machine caches the whole train set: share the memory budget.
    share = 1 if ddp is None else ddp.info.local_world_size
    cached_bytes, decode_seconds = _fill_caches(cfg, train_ds, test_ds, share)
    batch_size = min(cfg.batch_size, len(train_ds))
    if ddp is None:
        test_loader = make_loader(
            test_ds, batch_size=cfg.batch_size, shuffle=False, workers=plan.workers,
            pin_memory=plan.pin_memory,
        )
        probe_loader = make_loader(train_ds, batch_size=batch_size, shuffle=True, workers=0)
        batches = len(probe_loader)
    else:
        test_loader = eval_loader(test_ds, batch_size=cfg.batch_size, workers=plan.workers,
                                  pin_memory=plan.pin_memory)
        # This also fails early when there are too few images for the processes.
        batches = len(epoch_shard(len(train_ds), batch_size, world, ddp.rank,
                                  torch.Generator().manual_seed(0)).batches)
    cb.on_start(
        StartInfo(
            classes=classes, train_count=len(train_ds), test_count=len(splits.test),
            device=str(plan.device), precision=plan.precision, start_epoch=start_epoch,
            epochs=cfg.epochs, batches_per_epoch=batches, config=cfg,
            cached_bytes=cached_bytes, decode_seconds=decode_seconds, world_size=world,
        )
    )
    log.info(
        "training %s on %d images (%d classes), testing on %d, %s %s, epochs %d..%d%s",
        cfg.init, len(train_ds), len(classes), len(splits.test), plan.device, plan.precision,
        start_epoch + 1, cfg.epochs, "" if ddp is None else f", rank {ddp.rank} of {world}",
    )

    evaluation: Evaluation | None = None
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        epoch_start = time.perf_counter()
        weights: list[float] | None = None
        if ddp is None:
            train_loader = make_loader(
                train_ds, batch_size=batch_size, shuffle=True, workers=plan.workers,
                pin_memory=plan.pin_memory, generator=seed_epoch(cfg.seed, epoch),
            )
        else:
            shuffle, loader_seed = seed_rank_epoch(cfg.seed, epoch, ddp.rank)
            shard = epoch_shard(len(train_ds), batch_size, world, ddp.rank, shuffle)
            assert isinstance(cb, _RankCallback)
            cb.epoch_sizes(shard.global_sizes)
            weights = shard.weights
            train_loader = shard_loader(
                train_ds, shard.batches, workers=plan.workers, pin_memory=plan.pin_memory,
                generator=loader_seed,
            )
        train_loss, train_acc, seen, train_seconds = train_one_epoch(
            net, train_loader, optimizer, plan, pre,
            epoch=epoch, epochs=cfg.epochs, batches=batches, callback=cb, scaler=scaler,
            weights=weights, reduce=None if ddp is None else ddp.sum,
        )
        evaluation = _evaluate(model, test_loader, plan, pre, classes, ddp, splits.test)
        metrics = EpochMetrics(
            epoch=epoch, epochs=cfg.epochs,
            train_loss=train_loss, train_acc=train_acc,
            test_loss=evaluation.loss, test_acc=evaluation.accuracy,
            images_per_s=seen / train_seconds if train_seconds > 0 else 0.0,
            seconds=time.perf_counter() - epoch_start,
        )
        history.append(metrics)
        log.info(
            "epoch %d/%d train loss %.4f acc %.3f, test loss %.4f acc %.3f, %.1f img/s",
            epoch, cfg.epochs, train_loss, train_acc, metrics.test_loss, metrics.test_acc,
            metrics.images_per_s,
        )
        if epoch_checkpoint is not None and writes:
            payload = _payload(plan, model, optimizer, cfg, classes, pre, epoch, history, None,
                               world)
            save_checkpoint(payload, epoch_checkpoint)
            cb.on_checkpoint(Path(epoch_checkpoint), epoch)
        cb.on_epoch(metrics)

    if evaluation is None:  # resumed a run that had already finished its epochs
        evaluation = _evaluate(model, test_loader, plan, pre, classes, ddp, splits.test)
    if writes:
        save_checkpoint(
            _payload(plan, model, optimizer, cfg, classes, pre, cfg.epochs, history, evaluation,
                     world),
            out,
        )
    return TrainResult(
        checkpoint=out, classes=classes, config=cfg, history=history, evaluation=evaluation
    )


def _evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    plan: DevicePlan,
    pre: Preprocessing,
    classes: list[str],
    ddp: Distributed | None,
    test_samples: Sequence[tuple[Path, int]],
) -> Evaluation:
    """One process: :func:`evaluate`. Several: every rank first takes rank 0's buffers
    (BatchNorm statistics), so all hold the model rank 0 saves, evaluates its shard
    (images rank::N), and the logits are gathered back into dataset order: the evaluation is
    that of the whole test set, identical on every rank."""
    if ddp is None:
        return evaluate(model, loader, plan, pre, classes)
    ddp.sync_buffers(model)
    logits, _ = run_inference(model, loader, plan, pre)
    full = ddp.gather_rows(logits, len(test_samples), len(classes))
    targets = torch.tensor([label for _, label in test_samples], dtype=torch.long)
    return evaluation_from_logits(classes, full, targets)


def _fill_caches(
    cfg: TrainConfig, train_ds: CachedImages, test_ds: CachedImages, share: int = 1
) -> tuple[int, float]:
    budget = cfg.cache_bytes if cfg.cache_bytes is not None else available_memory_bytes() // 4
    budget //= share  # processes on one machine each cache their own copy
    start = time.perf_counter()
    used = test_ds.fill(budget)
    used += train_ds.fill(budget - used)
    seconds = time.perf_counter() - start
    log.info("decoded %.1f MB of images in %.1fs", used / 1e6, seconds)
    return used, seconds


def _payload(
    plan: DevicePlan,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    classes: list[str],
    pre: Preprocessing,
    epoch: int,
    history: list[EpochMetrics],
    evaluation: Evaluation | None,
    world_size: int = 1,
) -> dict[str, Any]:
    return {
        "model": _cpu_state(model),
        "classes": list(classes),
        "preprocessing": pre.to_dict(),
        "params": cfg.to_dict(),
        "compute": {"device": str(plan.device), "precision": plan.precision,
                    "world_size": world_size},
        "epoch": epoch,
        "optimizer": optimizer.state_dict(),
        "seed": cfg.seed,
        "history": [m.to_dict() for m in history],
        "metrics": history[-1].to_dict() if history else None,
        "evaluation": evaluation.to_dict() if evaluation is not None else None,
        "complete": evaluation is not None,
    }
