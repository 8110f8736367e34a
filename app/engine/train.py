"""The fine-tuning loop: ``fit`` runs a whole job, ``train_one_epoch`` is one pass over the
training set. The loop is the same on one process and on several (a
:class:`~app.engine.strategy.Strategy` says what differs). It knows nothing of HTTP, queues
or databases: it reports through a :class:`~app.engine.callback.Callback`, which can also ask
it to stop between batches.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from app.engine import selection
from app.engine.calibrate import calibration_report, fit_temperature
from app.engine.callback import (
    BatchProgress,
    Callback,
    EpochMetrics,
    StartInfo,
)
from app.engine.checkpoint import load_checkpoint, save_checkpoint
from app.engine.compiled import CompileDecision, CompiledStep, decide
from app.engine.config import INIT_IMAGENET, INIT_SCRATCH, TrainConfig
from app.engine.data import (
    CachedImages,
    ImageFolderSplits,
    Sample,
    available_memory_bytes,
    eval_dataset,
    load_image_folder,
    train_dataset,
)
from app.engine.device import DevicePlan
from app.engine.errors import CheckpointError, TrainingCancelled
from app.engine.evaluate import Batches, evaluation_from_logits
from app.engine.imbalance import balanced_class_weights, balanced_sample_weights
from app.engine.metrics import Evaluation
from app.engine.model import backbone_parameters, build_model, head_parameters
from app.engine.presets import Preprocessing, normalize_batch
from app.engine.schedule import advance, make_scheduler
from app.engine.split import ValidationSplit, validation_split
from app.engine.strategy import Strategy, strategy_for

log = logging.getLogger(__name__)

NO_SPLIT: dict[str, Any] = {"source": None, "images": []}  # what a run without a split records


class TrainingDiverged(ValueError):
    """The losses are no longer numbers (the weights blew up): a job that cannot succeed as
    asked. Raised at the end of the epoch where it happened; a lower ``lr`` is the remedy."""


@dataclass
class TrainResult:
    checkpoint: Path
    classes: list[str]
    config: TrainConfig
    history: list[EpochMetrics] = field(default_factory=list)
    evaluation: Evaluation | None = None  # of the kept model, on test
    selected_epoch: int | None = None  # the epoch whose model the checkpoint holds
    note: str | None = None  # e.g. why the run stopped before its last epoch
    temperature: float | None = None  # fitted on the validation split; None without one

    @property
    def selected(self) -> EpochMetrics | None:
        return next((m for m in self.history if m.epoch == self.selected_epoch), None)

    @property
    def test_acc(self) -> float:
        """The kept model's test accuracy."""
        kept = self.selected
        return kept.test_acc if kept is not None else float("nan")


@dataclass
class _Best:
    """The best epoch so far by the validation split; its model (a CPU copy) when the run
    keeps the best one."""

    epoch: int
    score: float
    state: dict[str, torch.Tensor] | None


def best_beside(epoch_checkpoint: Path) -> Path:
    """Where the best epoch's model is kept, beside the epoch checkpoint: ``last.pt`` ->
    ``best.pt``, ``model.last.pt`` -> ``model.best.pt``, ``x.pt`` -> ``x.best.pt``."""
    name = epoch_checkpoint.name
    if name.endswith("last.pt"):
        return epoch_checkpoint.with_name(name[: -len("last.pt")] + "best.pt")
    return epoch_checkpoint.with_name(epoch_checkpoint.stem + ".best.pt")


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


def image_loss(logits: torch.Tensor, targets: torch.Tensor,
               class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy averaged over the batch's images; with ``class_weights`` each image's
    term is weighted by its class's weight, still divided by the image count (not by the
    weights' sum, as ``CrossEntropyLoss(weight=...)`` does): then several processes'
    shares of a global batch add up exactly as for the unweighted loss, and balanced
    weights (mean 1 over the training images) keep the loss's scale."""
    if class_weights is None:
        return F.cross_entropy(logits, targets)
    return F.cross_entropy(logits, targets, weight=class_weights, reduction="none").mean()


def forward_backward(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, plan: DevicePlan, *,
    scaler: torch.amp.GradScaler | None = None, scale: float | None = None,
    class_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch's forward pass (under the plan's autocast) and backward pass, the gradients
    left in the parameters; returns (loss, logits). ``scale``: the batch's loss weight
    (several processes). The training step of :func:`train_one_epoch` and of the benchmark's
    compile measurement."""
    with plan.autocast():
        logits = net(x)
        loss = image_loss(logits, y, class_weights)
    objective = loss if scale is None else loss * scale
    if scaler is not None:  # fp16 autocast: scale the loss so small gradients survive
        torch.autograd.backward(scaler.scale(objective))
    else:
        torch.autograd.backward(objective)
    return loss, logits


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
    class_weights: torch.Tensor | None = None,
    compiled: CompiledStep | None = None,
) -> tuple[float, float, int, float]:
    """One pass over ``loader``. Returns (mean loss, accuracy, images, seconds).

    Several processes: ``weights[i]`` scales batch i's loss for the backward pass (this
    rank's share of the global batch, see :mod:`app.engine.distributed`), and ``reduce``
    sums the (loss, correct, images) totals over the ranks. ``class_weights``: see
    :func:`image_loss`. ``compiled``: the steps go through it (``model`` is then the module
    it compiled; see :mod:`app.engine.compiled`).
    """
    if class_weights is not None:
        class_weights = class_weights.to(plan.device)
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
        optimizer.zero_grad(set_to_none=True)
        scale = None if weights is None else weights[i]

        def step(net: nn.Module, x: torch.Tensor = x, y: torch.Tensor = y,
                 scale: float | None = scale) -> tuple[torch.Tensor, torch.Tensor]:
            return forward_backward(net, x, y, plan, scaler=scaler, scale=scale,
                                    class_weights=class_weights)

        loss, logits = step(model) if compiled is None else compiled.run(y.numel(), step)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
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


def fit(
    data_dir: str | Path,
    config: TrainConfig,
    out: str | Path,
    *,
    callback: Callback | None = None,
    resume_from: str | Path | None = None,
    epoch_checkpoint: str | Path | None = None,
) -> TrainResult:
    """Fine-tune on ``data_dir`` (train/, test/ and optionally val/ ImageFolders) and write
    the checkpoint ``out``, which holds the kept epoch's model (``config.select``).
    ``epoch_checkpoint`` is rewritten after every epoch (and the best epoch's model is kept
    beside it, :func:`best_beside`); passing such a file as ``resume_from`` continues the
    run up to ``config.epochs`` exactly as if it had never stopped (on CPU, same seed).

    Under ``torchrun`` with ``WORLD_SIZE`` > 1 every process calls this: data-parallel
    training (DDP; NCCL on CUDA, gloo on CPU), rank 0 writing the checkpoints and reporting
    (see :mod:`app.engine.distributed`). Resuming with the same number of processes replays
    exactly; with another number it continues from the same state.
    """
    cfg = config.resolved()
    strategy = strategy_for(cfg)
    try:
        run = _Run.prepare(data_dir, cfg, strategy, callback or Callback(), resume_from)
        result = run.train(Path(out), None if epoch_checkpoint is None else Path(epoch_checkpoint))
    except TrainingCancelled:
        strategy.close()  # every rank stopped at the same batch
        raise
    # Any other error leaves the group as it is: the other ranks may be inside a collective
    # that a goodbye would wait on; this process exits and torchrun stops the others.
    strategy.close()
    return result


@dataclass(frozen=True)
class EvalSet:
    """A set evaluated after every epoch (validation, test): all of its images, and the
    loader of this process's share of them."""

    samples: list[Sample]
    loader: Batches


@dataclass
class _Run:
    """One run, set up: the model (``net`` is what trains: the model or its DDP wrapper),
    its optimiser, the data, and the epochs done so far."""

    cfg: TrainConfig
    strategy: Strategy
    callback: Callback  # as the strategy wraps it
    classes: list[str]
    pre: Preprocessing
    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.SGD
    scheduler: LRScheduler  # stepped once per epoch
    scaler: torch.amp.GradScaler | None
    history: list[EpochMetrics]
    start_epoch: int
    train_ds: CachedImages
    batch_size: int
    batches: int  # per epoch
    test: EvalSet  # reported every epoch, never used to choose anything
    val: EvalSet | None  # what chooses (the epoch, the temperature); None without a split
    split: ValidationSplit
    root: Path  # the dataset's, which the recorded split's paths are relative to
    select: str  # "best" or "last" (config.select resolved for this split)
    class_weights: torch.Tensor | None  # class_weights: balanced
    sample_weights: torch.Tensor | None  # sampler: balanced
    best: _Best | None  # by the validation split (None without one, or before any epoch)
    compile: CompileDecision
    compiled: CompiledStep | None  # the compiled training step, when the run compiles
    note: str | None = None

    @classmethod
    def prepare(
        cls, data_dir: str | Path, cfg: TrainConfig, strategy: Strategy, callback: Callback,
        resume_from: str | Path | None,
    ) -> _Run:
        """Everything up to the first epoch; the callback's ``on_start`` included."""
        plan = strategy.plan
        if plan.is_cuda:
            torch.backends.cudnn.benchmark = True
        splits = load_image_folder(data_dir)
        pre = Preprocessing.for_size(cfg.image_size)
        resume = None if resume_from is None else _resume_state(resume_from, splits.classes,
                                                                 pre, cfg)
        split, select = _choosing(cfg, splits, resume)
        # Load weights first: a missing ImageNet file fails before any image is decoded.
        model = _initial_model(cfg, len(splits.classes), resume, plan)
        net = strategy.wrap(model)
        optimizer = make_optimizer(model, cfg)
        scaler = torch.amp.GradScaler("cuda") if plan.amp_dtype == torch.float16 else None
        start_epoch, history = 0, list[EpochMetrics]()
        best = None
        if resume is not None:
            start_epoch, history, scheduler = _restore(optimizer, model, cfg, resume)
            best = _restore_best(resume, Path(resume_from or ""), model, select)
        else:
            scheduler = make_schedule(optimizer, cfg)
        class_weights, sample_weights = _imbalance(cfg, split, len(splits.classes))

        train_ds = train_dataset(split.train, cfg.image_size)
        test_ds = eval_dataset(strategy.eval_share(splits.test), pre)
        val_ds = eval_dataset(strategy.eval_share(split.val), pre)
        cached_bytes, decode_seconds = _fill_caches(cfg, train_ds, [val_ds, test_ds],
                                                    strategy.local_processes)
        batch_size = min(cfg.batch_size, len(train_ds))
        decision = decide(cfg.compile, device_type=plan.device.type,
                          world_size=strategy.world_size, epochs_left=cfg.epochs - start_epoch,
                          train_images=len(train_ds), image_size=cfg.image_size,
                          break_even=cfg.compile_break_even)
        log.info("torch.compile: %s", decision.reason)
        val = (EvalSet(split.val, strategy.eval_loader(val_ds, cfg.batch_size))
               if split.exists else None)
        run = cls(
            cfg=cfg, strategy=strategy, callback=strategy.reporter(callback),
            classes=splits.classes, pre=pre, model=model, net=net, optimizer=optimizer,
            scheduler=scheduler, scaler=scaler, history=history, start_epoch=start_epoch,
            train_ds=train_ds,
            batch_size=batch_size, batches=strategy.batches_per_epoch(train_ds, batch_size),
            test=EvalSet(splits.test, strategy.eval_loader(test_ds, cfg.batch_size)),
            val=val, split=split, root=splits.root, select=select, best=best,
            class_weights=class_weights, sample_weights=sample_weights,
            compile=decision, compiled=CompiledStep(net, model) if decision.compiled else None,
        )
        run.announce(cached_bytes, decode_seconds)
        return run

    def announce(self, cached_bytes: int, decode_seconds: float) -> None:
        cfg, plan, strategy = self.cfg, self.strategy.plan, self.strategy
        train_count, test_count = len(self.train_ds), len(self.test.samples)
        val_count = len(self.split.val)
        self.callback.on_start(StartInfo(
            classes=self.classes, train_count=train_count, test_count=test_count,
            device=str(plan.device), precision=plan.precision, start_epoch=self.start_epoch,
            epochs=cfg.epochs, batches_per_epoch=self.batches, config=cfg,
            cached_bytes=cached_bytes, decode_seconds=decode_seconds,
            world_size=strategy.world_size, history=tuple(self.history),
            val_count=val_count, val_source=self.split.source,
        ))
        log.info(
            "training %s on %d images (%d classes), validating on %d (%s), testing on %d, "
            "%s %s, epochs %d..%d%s",
            cfg.init, train_count, len(self.classes), val_count, self.split.source or "none",
            test_count, plan.device, plan.precision, self.start_epoch + 1, cfg.epochs,
            strategy.describe(),
        )

    def train(self, out: Path, epoch_checkpoint: Path | None) -> TrainResult:
        """The remaining epochs (or fewer: early stopping), then the final checkpoint
        ``out`` of the kept model (by the writing process)."""
        writes = epoch_checkpoint is not None and self.strategy.writes
        best_file = None if epoch_checkpoint is None else best_beside(epoch_checkpoint)
        if writes and self.start_epoch and self.best is not None:
            self.save_best(best_file)  # resumed: the best so far, beside this run's files
        for epoch in range(self.start_epoch + 1, self.cfg.epochs + 1):
            if self.stops_early(epoch - 1):
                break
            metrics = self.epoch(epoch)
            advance(self.scheduler)
            self.history.append(metrics)
            improved = self.track(metrics)
            # Reported before the checkpoint is written: a run killed between the two then
            # repeats the epoch (and reports it again) instead of resuming past an epoch it
            # never reported.
            self.callback.on_epoch(metrics)
            if writes:
                assert epoch_checkpoint is not None
                # last.pt first: it names the best epoch, whose model is its own until
                # best.pt is rewritten (see _restore_best).
                save_checkpoint(self.payload(epoch, None), epoch_checkpoint)
                if improved:
                    self.save_best(best_file)
                self.callback.on_checkpoint(epoch_checkpoint, epoch)
        return self.finish(out)

    def track(self, metrics: EpochMetrics) -> bool:
        """Note ``metrics.epoch`` if it is the best so far on the validation split (with a
        copy of its model when the run keeps the best); whether it is."""
        metric = self.cfg.select_metric
        value = selection.score(metrics, metric)
        if not selection.improves(value, None if self.best is None else self.best.score,
                                  metric):
            return False
        assert value is not None
        state = _snapshot(self.model) if self.select == "best" else None
        self.best = _Best(metrics.epoch, value, state)
        return True

    def stops_early(self, done: int) -> bool:
        """Whether ``early_stopping_patience`` epochs have passed, after ``done`` epochs,
        without a better validation score (the reason goes in :attr:`note`)."""
        patience = self.cfg.early_stopping_patience
        best_epoch = self.best.epoch if self.best is not None else 0
        if not patience or done >= self.cfg.epochs or done - best_epoch < patience:
            return False
        self.note = (f"stopped early after epoch {done} of {self.cfg.epochs}: "
                     f"{self.cfg.select_metric} on the validation split did not improve for "
                     f"{patience} epoch(s) (best: epoch {best_epoch or '-'})")
        log.info("%s", self.note)
        return True

    def finish(self, out: Path) -> TrainResult:
        """Put the kept epoch's model in place, fit its temperature on the validation
        split, evaluate it on test (calibration included), write ``out``."""
        done = self.history[-1].epoch if self.history else self.start_epoch
        kept = done
        if self.select == "best" and self.best is not None and self.best.state is not None:
            kept = self.best.epoch
            if kept != done:
                self.model.load_state_dict(self.best.state)
        temperature = None if self.val is None else fit_temperature(*self.logits(self.val))
        logits, targets = self.logits(self.test)
        calibration = calibration_report(logits, targets, temperature, len(self.split.val))
        evaluation = replace(evaluation_from_logits(self.classes, logits, targets),
                             calibration=calibration)
        log.info("kept epoch %d; temperature %s, test ECE %.4f before, %.4f after", kept,
                 _fmt(temperature, ".4f"), calibration["ece_before"], calibration["ece_after"])
        if self.strategy.writes:
            save_checkpoint({**self.payload(done, evaluation), "selected_epoch": kept,
                             "select": {"mode": self.select, "metric": self.cfg.select_metric},
                             "metrics": _metrics_of(self.history, kept), "note": self.note,
                             "temperature": temperature}, out)
        return TrainResult(checkpoint=out, classes=self.classes, config=self.cfg,
                           history=self.history, evaluation=evaluation, selected_epoch=kept,
                           note=self.note, temperature=temperature)

    def save_best(self, path: Path | None) -> None:
        """The best epoch's model, as a checkpoint ``hotdog predict`` can read (no optimiser
        state: last.pt is what a run resumes from)."""
        if path is None or self.best is None or self.best.state is None:
            return
        best = self.best
        save_checkpoint({**self.payload(best.epoch, None), "model": best.state,
                         "optimizer": None, "metrics": _metrics_of(self.history, best.epoch),
                         "selected_epoch": best.epoch}, path)

    def epoch(self, epoch: int) -> EpochMetrics:
        """One training pass and the evaluations (validation, test) after it."""
        cfg, strategy = self.cfg, self.strategy
        start = time.perf_counter()
        batches = strategy.epoch_batches(self.train_ds, self.batch_size, cfg.seed, epoch,
                                         self.sample_weights)
        train_loss, train_acc, seen, train_seconds = train_one_epoch(
            self.net, batches.loader, self.optimizer, strategy.plan, self.pre,
            epoch=epoch, epochs=cfg.epochs, batches=self.batches, callback=self.callback,
            scaler=self.scaler, weights=batches.weights, reduce=strategy.reduce,
            class_weights=self.class_weights, compiled=self.compiled,
        )
        evaluation = self.evaluate(self.test)
        val = self.evaluate(self.val) if self.val is not None else None
        metrics = EpochMetrics(
            epoch=epoch, epochs=cfg.epochs,
            train_loss=train_loss, train_acc=train_acc,
            test_loss=evaluation.loss, test_acc=evaluation.accuracy,
            images_per_s=seen / train_seconds if train_seconds > 0 else 0.0,
            seconds=time.perf_counter() - start,
            val_loss=val.loss if val else None, val_acc=val.accuracy if val else None,
            val_macro_f1=val.macro_f1 if val else None,
        )
        _check_finite(metrics, self.optimizer.param_groups[0]["lr"])
        log.info(
            "epoch %d/%d lr %.3g, train loss %.4f acc %.3f, val loss %s acc %s, test loss "
            "%.4f acc %.3f, %.1f img/s", epoch, cfg.epochs, self.optimizer.param_groups[0]["lr"],
            train_loss, train_acc, _fmt(metrics.val_loss, ".4f"), _fmt(metrics.val_acc, ".3f"),
            metrics.test_loss, metrics.test_acc, metrics.images_per_s,
        )
        return metrics

    def logits(self, on: EvalSet) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's logits and the targets of every image of ``on``, in order."""
        return self.strategy.infer(self.model, on.loader, self.pre, on.samples,
                                   len(self.classes))

    def evaluate(self, on: EvalSet) -> Evaluation:
        return evaluation_from_logits(self.classes, *self.logits(on))

    def compile_record(self) -> dict[str, Any]:
        """The compile decision, and for a compiled run how its first step went; ``compiled``
        false once a compile failure sent the run back to eager steps."""
        record = self.compile.to_dict()
        if self.compiled is not None:
            record.update(self.compiled.record(), compiled=self.compiled.active)
        return record

    def payload(self, epoch: int, evaluation: Evaluation | None) -> dict[str, Any]:
        """The checkpoint: complete (``evaluation`` given) or one to resume from."""
        plan, cfg, history = self.strategy.plan, self.cfg, self.history
        return {
            "model": _cpu_state(self.model),
            "classes": list(self.classes),
            "preprocessing": self.pre.to_dict(),
            "params": cfg.to_dict(),
            "compute": {"device": str(plan.device), "precision": plan.precision,
                        "world_size": self.strategy.world_size,
                        "compile": self.compile_record()},
            "epoch": epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "seed": cfg.seed,
            "history": [m.to_dict() for m in history],
            "metrics": history[-1].to_dict() if history else None,
            "evaluation": evaluation.to_dict() if evaluation is not None else None,
            "complete": evaluation is not None,
            "split": self.split.to_dict(self.root),
            "best": None if self.best is None else {"epoch": self.best.epoch,
                                                    "score": self.best.score},
        }


def _resume_state(
    path: str | Path, classes: list[str], pre: Preprocessing, cfg: TrainConfig
) -> dict[str, Any]:
    """The checkpoint to resume from, refused when it belongs to another run."""
    resume = load_checkpoint(path)
    if resume["classes"] != classes:
        raise ValueError(
            f"cannot resume: checkpoint classes {resume['classes']} differ from the "
            f"dataset's {classes}"
        )
    if Preprocessing.from_dict(resume["preprocessing"]) != pre:
        raise ValueError("cannot resume: the checkpoint was trained at another image_size")
    if resume["epoch"] > cfg.epochs:
        raise ValueError(f"cannot resume: checkpoint is at epoch {resume['epoch']} > epochs")
    return resume


def _restore_best(resume: dict[str, Any], path: Path, model: nn.Module,
                  select: str) -> _Best | None:
    """The best epoch a resumed run had found. Its model: the resumed model itself when
    that epoch is the checkpoint's own (or the checkpoint is a final one, which holds the
    kept model), else the best file beside the checkpoint."""
    record = resume.get("best")
    if not record:
        return None
    epoch, score = int(record["epoch"]), float(record["score"])
    if select != "best":
        return _Best(epoch, score, None)
    if resume.get("complete") or epoch == int(resume["epoch"]):
        return _Best(epoch, score, _snapshot(model))
    beside = best_beside(path)
    held = load_checkpoint(beside)
    if int(held["epoch"]) != epoch:
        raise CheckpointError(f"cannot resume: {beside.name} holds epoch {held['epoch']}, "
                              f"the run's best is epoch {epoch}")
    return _Best(epoch, score, held["model"])


def _initial_model(
    cfg: TrainConfig, num_classes: int, resume: dict[str, Any] | None, plan: DevicePlan
) -> nn.Module:
    """The model on its device: from ``resume``, else as ``cfg.init`` says."""
    torch.manual_seed(cfg.seed)
    if resume is None:
        init, source = _source_state(cfg)
        model = build_model(num_classes, init, source_state=source)
    else:
        model = build_model(num_classes, INIT_SCRATCH)
        model.load_state_dict(resume["model"])
    model.to(plan.device)
    if plan.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


# The parameters a run's learning-rate schedule is made of.
SCHEDULE_PARAMS = ("lr", "head_lr_mult", "epochs", "lr_schedule", "warmup_epochs",
                   "lr_step_size", "lr_gamma")


def make_schedule(optimizer: torch.optim.SGD, cfg: TrainConfig) -> LRScheduler:
    return make_scheduler(optimizer, schedule=cfg.lr_schedule, epochs=cfg.epochs,
                          warmup=cfg.warmup_epochs, every=cfg.lr_step_size, gamma=cfg.lr_gamma)


def _restore(
    optimizer: torch.optim.SGD, model: nn.Module, cfg: TrainConfig, resume: dict[str, Any]
) -> tuple[int, list[EpochMetrics], LRScheduler]:
    """The optimiser and schedule state of ``resume``; returns its epoch, its history and
    the schedule. A run resumed with the schedule it had continues it from the checkpoint;
    one given another (more epochs, another lr or schedule: the config given now wins)
    replays the new one up to its epoch."""
    fresh = make_optimizer(model, cfg).param_groups
    optimizer.load_state_dict(resume["optimizer"])
    for group, new in zip(optimizer.param_groups, fresh, strict=True):
        group.update({k: new[k] for k in ("momentum", "weight_decay")})
    start_epoch = int(resume["epoch"])
    history = [EpochMetrics(**m) for m in resume.get("history", [])][:start_epoch]
    saved, before = resume.get("scheduler"), resume.get("params") or {}
    if saved is not None and all(before.get(k) == getattr(cfg, k) for k in SCHEDULE_PARAMS):
        scheduler = make_schedule(optimizer, cfg)  # sets the rates: the checkpoint's win
        for group, was in zip(optimizer.param_groups, resume["optimizer"]["param_groups"],
                              strict=True):
            group["lr"] = was["lr"]
        scheduler.load_state_dict(saved)
        return start_epoch, history, scheduler
    for group, new in zip(optimizer.param_groups, fresh, strict=True):
        group["lr"] = new["lr"]
        group.pop("initial_lr", None)
    scheduler = make_schedule(optimizer, cfg)
    for _ in range(start_epoch):
        advance(scheduler)
    return start_epoch, history, scheduler


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


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's state on the CPU (``_cpu_state`` shares a CPU model's memory)."""
    return {k: v.detach().to("cpu", copy=True).contiguous()
            for k, v in model.state_dict().items()}


def _metrics_of(history: list[EpochMetrics], epoch: int) -> dict[str, Any] | None:
    return next((m.to_dict() for m in history if m.epoch == epoch), None)


def _choosing(cfg: TrainConfig, splits: ImageFolderSplits, resume: dict[str, Any] | None
              ) -> tuple[ValidationSplit, str]:
    """The run's validation split (a resumed run keeps the one it recorded; one from before
    splits were recorded had none) and what it keeps: ``best`` or ``last``."""
    split = validation_split(splits, cfg.val_fraction, cfg.seed,
                             None if resume is None else resume.get("split", NO_SPLIT))
    if cfg.early_stopping_patience and not split.exists:
        raise ValueError("early_stopping_patience needs a validation split: give the "
                         "dataset a val/ folder or set val_fraction above 0")
    return split, selection.resolve(cfg.select, split.exists)


def _imbalance(cfg: TrainConfig, split: ValidationSplit, num_classes: int
               ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The loss's class weights (``class_weights``) and the sampler's image weights
    (``sampler``), from the training images; None where the config asks for neither."""
    return (
        balanced_class_weights(split.train, num_classes)
        if cfg.class_weights == "balanced" else None,
        balanced_sample_weights(split.train, num_classes) if cfg.sampler == "balanced" else None,
    )


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _fill_caches(
    cfg: TrainConfig, train_ds: CachedImages, eval_sets: list[CachedImages], share: int = 1
) -> tuple[int, float]:
    budget = cfg.cache_bytes if cfg.cache_bytes is not None else available_memory_bytes() // 4
    budget //= share  # processes on one machine each cache their own copy
    start = time.perf_counter()
    used = 0
    for ds in eval_sets:  # evaluated every epoch, untransformed: first in the cache
        used += ds.fill(budget - used)
    used += train_ds.fill(budget - used)
    seconds = time.perf_counter() - start
    log.info("decoded %.1f MB of images in %.1fs", used / 1e6, seconds)
    return used, seconds


def _check_finite(metrics: EpochMetrics, lr: float) -> None:
    """:class:`TrainingDiverged` when a loss of the epoch is not finite (nan or inf)."""
    losses = {"train": metrics.train_loss, "validation": metrics.val_loss,
              "test": metrics.test_loss}
    bad = [f"{name} loss {value}" for name, value in losses.items()
           if value is not None and not math.isfinite(value)]
    if bad:
        raise TrainingDiverged(
            f"training diverged at epoch {metrics.epoch}: {', '.join(bad)} (the weights blew "
            f"up); train again with a lower lr than {lr:g}, or a larger batch_size")
