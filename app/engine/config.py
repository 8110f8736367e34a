"""The one configuration object of a fine-tuning run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from app.engine.presets import DEFAULT_IMAGE_SIZE

INIT_IMAGENET = "imagenet"
INIT_SCRATCH = "scratch"

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
# From scratch the head is no more random than the rest: 10x diverges (see DESIGN.md).
SCRATCH_HEAD_LR_MULT = 1.0
MAX_GPUS = 64  # the most GPUs (training processes) one job may ask for


@dataclass(frozen=True)
class TrainConfig:
    """What one fine-tune does. ``None`` means "the recipe's default for this init".

    ``init`` is ``"imagenet"``, ``"scratch"`` or the path of an earlier hotdog checkpoint
    (its backbone is reused, its head replaced).
    """

    init: str = INIT_IMAGENET
    epochs: int = 5
    batch_size: int = 128
    lr: float | None = None
    head_lr_mult: float | None = None
    weight_decay: float = 1e-3
    momentum: float = 0.0
    image_size: int = DEFAULT_IMAGE_SIZE
    seed: int = 0
    # How to compute. Device and precision change the numbers a little (fp32 vs bf16), the
    # rest only the speed; the precision actually used is recorded in the checkpoint.
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (see device.plan_device)
    workers: int | None = None  # DataLoader worker processes; None: 0 on CPU, several on CUDA
    cache_bytes: int | None = None  # decoded-image cache budget; None: a quarter of free RAM
    channels_last: bool = True
    # GPUs the job trains on, one process each (DDP under torchrun); 0: every GPU of the
    # worker that runs it. Read by whoever launches the training (the worker); ``fit`` itself
    # trains with the processes it is started in (see app.engine.distributed).
    gpus: int = 1

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
        problems = []
        if not self.init:
            problems.append("init must be 'imagenet', 'scratch' or a checkpoint path")
        if not 1 <= self.epochs <= 1000:
            problems.append(f"epochs must be in 1..1000, got {self.epochs}")
        if not 1 <= self.batch_size <= 4096:
            problems.append(f"batch_size must be in 1..4096, got {self.batch_size}")
        if self.lr is not None and not 0 < self.lr <= 10:
            problems.append(f"lr must be in (0, 10], got {self.lr}")
        if self.head_lr_mult is not None and not 0 < self.head_lr_mult <= 1000:
            problems.append(f"head_lr_mult must be in (0, 1000], got {self.head_lr_mult}")
        if not 0 <= self.weight_decay <= 1:
            problems.append(f"weight_decay must be in [0, 1], got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            problems.append(f"momentum must be in [0, 1), got {self.momentum}")
        if not 16 <= self.image_size <= 1024:
            problems.append(f"image_size must be in 16..1024, got {self.image_size}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            problems.append(f"precision must be auto, fp32, bf16 or fp16, got {self.precision}")
        if self.workers is not None and not 0 <= self.workers <= 64:
            problems.append(f"workers must be in 0..64, got {self.workers}")
        if not 0 <= self.gpus <= MAX_GPUS:
            problems.append(f"gpus must be in 0..{MAX_GPUS} (0: all of the worker's), "
                            f"got {self.gpus}")
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
