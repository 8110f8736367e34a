"""The learning-rate schedule of a run, from ``torch.optim.lr_scheduler``: ``constant`` (the
d2l recipe), ``cosine`` (annealed to 0 over the epochs after warmup) or ``step`` (times
``lr_gamma`` every ``lr_step_size`` epochs), after ``warmup_epochs`` of linear warmup
(epoch k of W at ``k / (W + 1)`` of the rate). Both parameter groups (backbone and head)
follow it, so the head keeps its multiple of the backbone's rate.

It steps once per epoch, as torchvision's classification reference does: the checkpoint
is per epoch too, and its state (``state_dict``) goes in every checkpoint, so a resumed run
continues the schedule exactly. A run resumed with another schedule (other ``epochs``,
``lr`` or schedule parameters, e.g. ``hotdog train --resume-from`` with more epochs) replays
the new schedule up to its epoch instead: the rate it then trains at is the new schedule's.
"""

from __future__ import annotations

import warnings

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    SequentialLR,
    StepLR,
)

from app.engine.config import LR_SCHEDULES


def step_size(epochs: int, warmup: int, every: int) -> int:
    """Epochs between the step schedule's drops: ``every``, or (0) a third of the epochs
    after warmup."""
    return every if every > 0 else max(1, (epochs - warmup) // 3)


def make_scheduler(optimizer: Optimizer, *, schedule: str, epochs: int, warmup: int,
                   every: int = 0, gamma: float = 0.1) -> LRScheduler:
    """The schedule over ``epochs``, from the optimiser's rates (which it then sets to the
    first epoch's)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SequentialLR's notices about its own set-up
        main: LRScheduler
        if schedule == "cosine":
            main = CosineAnnealingLR(optimizer, T_max=max(1, epochs - warmup))
        elif schedule == "step":
            main = StepLR(optimizer, step_size=step_size(epochs, warmup, every), gamma=gamma)
        elif schedule == "constant":
            main = ConstantLR(optimizer, factor=1.0, total_iters=0)
        else:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}")
        if warmup <= 0:
            return main
        ramp = LinearLR(optimizer, start_factor=1 / (warmup + 1), end_factor=1.0,
                        total_iters=warmup)
        return SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def advance(scheduler: LRScheduler) -> None:
    """One epoch done."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "step() before optimizer.step()": an epoch may be empty
        scheduler.step()
