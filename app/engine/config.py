"""The one configuration object of a fine-tuning run."""

from __future__ import annotations

import re
from dataclasses import Field, asdict, dataclass, field, fields, replace
from typing import Any

from app.engine.selection import SELECT_CHOICES, SELECT_METRICS

INIT_IMAGENET = "imagenet"
INIT_SCRATCH = "scratch"
# The choices of the fields below, here rather than beside the code that acts on them, so
# that a run's configuration (the command line's options, the API's schema) imports no torch.
DEFAULT_IMAGE_SIZE = 224
LR_SCHEDULES = ("constant", "cosine", "step")
CLASS_WEIGHTS = ("none", "balanced")
SAMPLERS = ("shuffle", "balanced")
COMPILE_CHOICES = ("auto", "on", "off")

# Defaults reproduce d2l's run (d2l.ai, "Fine-Tuning", PyTorch): batch 128, lr 5e-5 for the
# backbone and 10x for the new head, weight decay 1e-3, plain SGD (no momentum), 5 epochs.
# d2l's PyTorch loop *sums* the per-image loss over the batch (``l.sum().backward()``), so
# its gradients are 128x those of the mean loss we use; the same steps on a mean loss need
# lr = 5e-5 * 128 = 0.0064. Its scratch baseline used 5e-4 (0.064 on a mean loss) with one
# parameter group. Weight decay is added to the gradient unscaled in both cases, so ours
# decays 128x faster per step than d2l's; over the 80 steps of the reference run the
# weights shrink by at most 1 - (1 - 0.0064 * 1e-3)**80 ≈ 0.05%, which changes nothing.
PRETRAINED_LR = 0.0064
SCRATCH_LR = 0.064
PRETRAINED_HEAD_LR_MULT = 10.0
# From scratch the head is no more random than the rest: 10x diverges (d2l's comparison).
SCRATCH_HEAD_LR_MULT = 1.0
MAX_GPUS = 64  # the most GPUs (training processes) one job may ask for


SURFACES = frozenset({"api", "cli"})


@dataclass(frozen=True)
class Param:
    """How a :class:`TrainConfig` field is offered to users: its help text, its range or
    choices, and where it appears. The API's request model (``POST /jobs``), the ``hotdog
    train`` / ``submit`` options, the OpenAPI schema and the web page's form are all made
    from these, so a parameter is added (or its range changed) here alone.

    ``surfaces``: ``api`` (``POST /jobs`` and ``hotdog submit``), ``cli`` (``hotdog train``).
    ``optional``: ``None`` is a valid value meaning "the default for this init"."""

    help: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] | None = None
    pattern: str | None = None  # a full-match regular expression, for strings
    surfaces: frozenset[str] = SURFACES
    optional: bool = False

    def problem(self, name: str, value: Any) -> str | None:
        """Why ``value`` is out of this parameter's range, or None when it is fine."""
        if value is None:
            return None if self.optional else f"{name} is required"
        if self.choices is not None and value not in self.choices:
            return f"{name} must be one of {', '.join(self.choices)}, got {value!r}"
        if self.pattern is not None and not re.fullmatch(self.pattern, str(value)):
            return f"{name} must match {self.pattern}, got {value!r}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if (isinstance(value, int) and self.ge is not None and self.le is not None
                    and not self.ge <= value <= self.le):
                return f"{name} must be in {self.ge:g}..{self.le:g}, got {value}"
            lo = (f"[{self.ge:g}" if self.ge is not None
                  else f"({self.gt:g}" if self.gt is not None else "(-inf")
            hi = (f"{self.le:g}]" if self.le is not None
                  else f"{self.lt:g})" if self.lt is not None else "inf)")
            if ((self.ge is not None and value < self.ge)
                    or (self.gt is not None and value <= self.gt)
                    or (self.le is not None and value > self.le)
                    or (self.lt is not None and value >= self.lt)):
                return f"{name} must be in {lo}, {hi}, got {value:g}"
        return None


def _param(default: Any, help: str, **kwargs: Any) -> Any:
    return field(default=default, metadata={"param": Param(help, **kwargs)})


def params(surface: str | None = None) -> list[tuple[Field[Any], Param]]:
    """The user-facing fields of :class:`TrainConfig` in declaration order (those offered on
    ``surface`` when given), each with its :class:`Param`."""
    return [(f, f.metadata["param"]) for f in fields(TrainConfig)
            if "param" in f.metadata
            and (surface is None or surface in f.metadata["param"].surfaces)]


@dataclass(frozen=True)
class TrainConfig:
    """What one fine-tune does. ``None`` means "the recipe's default for this init".

    ``init`` is ``"imagenet"``, ``"scratch"`` or the path of an earlier hotdog checkpoint
    (its backbone is reused, its head replaced); the service also takes ``job:<id>`` and
    resolves it to that job's checkpoint before the engine sees it.
    """

    init: str = _param(
        INIT_IMAGENET, "where the backbone starts: 'imagenet' (pretrained), 'scratch', or an "
        "earlier model ('job:<id>' in the service, a checkpoint path for `hotdog train`)")
    epochs: int = _param(5, "passes over the training images", ge=1, le=1000)
    batch_size: int = _param(128, "images per optimiser step (the global batch over all GPUs)",
                             ge=1, le=4096)
    lr: float | None = _param(
        None, f"backbone learning rate (default by init: {PRETRAINED_LR:g} pretrained, "
        f"{SCRATCH_LR:g} from scratch)", gt=0, le=10, optional=True)
    head_lr_mult: float | None = _param(
        None, f"the new head's lr = lr x this (default by init: {PRETRAINED_HEAD_LR_MULT:g} "
        f"pretrained, {SCRATCH_HEAD_LR_MULT:g} from scratch)", gt=0, le=1000, optional=True)
    weight_decay: float = _param(1e-3, "SGD weight decay", ge=0, le=1)
    momentum: float = _param(0.0, "SGD momentum (d2l uses none)", ge=0, lt=1)
    lr_schedule: str = _param(
        "constant", "learning-rate schedule over the epochs: constant (d2l), cosine "
        "(annealed to 0), step (x lr_gamma every lr_step_size epochs)", choices=LR_SCHEDULES)
    warmup_epochs: int = _param(
        0, "epochs of linear warmup before the schedule (epoch k of W at k/(W+1) of lr); "
        "fewer than epochs", ge=0, le=999)
    lr_step_size: int = _param(
        0, "step schedule: epochs between rate drops; 0: a third of the epochs after warmup",
        ge=0, le=1000)
    lr_gamma: float = _param(0.1, "step schedule: the factor of each drop", gt=0, le=1)
    # Imbalanced classes (counts from the training images).
    class_weights: str = _param(
        "none", "balanced: weight each image's loss by n / (classes x its class's count)",
        choices=CLASS_WEIGHTS)
    sampler: str = _param(
        "shuffle", "shuffle: each image once per epoch; balanced: draw images with "
        "replacement, each class about equally often (seeded)", choices=SAMPLERS)
    image_size: int = _param(DEFAULT_IMAGE_SIZE, "side of the square crops the model sees "
                             "(d2l: 224)", ge=16, le=1024)
    seed: int = _param(0, "seed of the head's initialisation, the shuffling, the "
                       "augmentation and the validation split", ge=0, le=2**31 - 1)
    # Model selection reads a validation split, never the test split.
    val_fraction: float = _param(
        0.1, "share of each class's training images held out for validation (stratified, "
        "seeded, at least one per class) when the dataset has no val/ folder; 0: none "
        "(the last epoch is kept, probabilities are not calibrated)", ge=0, le=0.5)
    select: str = _param(
        "auto", "which epoch's model the job keeps: best (by select_metric on the validation "
        "split), last, or auto (best when there is a validation split, else last)",
        choices=SELECT_CHOICES)
    select_metric: str = _param(
        "val_loss", "what 'best' means, on the validation split (never the test split)",
        choices=SELECT_METRICS)
    early_stopping_patience: int = _param(
        0, "end the job (succeeded) after this many epochs without a better select_metric; "
        "0: off. Needs a validation split", ge=0, le=1000)
    # How to compute. Device and precision change the numbers a little (fp32 vs bf16), the
    # rest only the speed; the precision actually used is recorded in the checkpoint.
    device: str = _param(
        "auto", "auto (a GPU if the machine has one), cpu, cuda or cuda:N; in the service, "
        "cuda: only a worker with a GPU takes the job, cpu: only a CPU-only worker",
        pattern=r"auto|cpu|cuda(:[0-9]+)?")
    precision: str = _param(
        "auto", "auto: bf16 autocast on a GPU with bf16 and on a CPU where it measures "
        "faster than fp32, else fp32 (fp16 on older GPUs)",
        choices=("auto", "fp32", "bf16", "fp16"))
    workers: int | None = _param(
        None, "data loader processes (default: 0 on small CPUs, more on CUDA)",
        ge=0, le=64, optional=True, surfaces=frozenset({"cli"}))
    compile: str = _param(
        "auto", "torch.compile the training step: auto (when the job's training work exceeds "
        "the break-even of its compile time; see app/engine/compiled.py), on, off",
        choices=COMPILE_CHOICES, surfaces=frozenset({"cli"}))
    # auto's break-even, in images at 224 px; None: the default for the device type.
    compile_break_even: int | None = None
    cache_bytes: int | None = None  # decoded-image cache budget; None: a quarter of free RAM
    channels_last: bool = True
    # GPUs the job trains on, one process each (DDP under torchrun); 0: every GPU of the
    # worker that runs it. Read by whoever launches the training (the worker); ``fit`` itself
    # trains with the processes it is started in (see app.engine.distributed).
    gpus: int = _param(
        1, "GPUs to train on, one process each (DDP); 0: all of the worker's. batch_size "
        "stays the global batch. A worker with fewer GPUs fails the job at once; a worker "
        "without GPUs runs 0 or 1 as one CPU process", ge=0, le=MAX_GPUS,
        surfaces=frozenset({"api"}))

    @property
    def is_scratch(self) -> bool:
        return self.init == INIT_SCRATCH

    def resolved(self) -> TrainConfig:
        """Fill the init-dependent defaults (lr, head multiplier) and validate."""
        lr = self.lr if self.lr is not None else (SCRATCH_LR if self.is_scratch else PRETRAINED_LR)
        mult = self.head_lr_mult
        if mult is None:
            mult = SCRATCH_HEAD_LR_MULT if self.is_scratch else PRETRAINED_HEAD_LR_MULT
        cfg = replace(self, lr=lr, head_lr_mult=mult)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        problems = [p.problem(f.name, getattr(self, f.name)) for f, p in params()]
        if not self.init:
            problems.append("init must be 'imagenet', 'scratch' or a checkpoint path")
        if self.warmup_epochs >= self.epochs:
            problems.append(f"warmup_epochs must be fewer than epochs ({self.epochs}), got "
                            f"{self.warmup_epochs}")
        found = [p for p in problems if p]
        if found:
            raise ValueError("; ".join(found))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
