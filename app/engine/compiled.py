"""Whether a run's training step is compiled (``torch.compile``, inductor), and the compiled
step itself.

Compiling costs a fixed time up front (tracing, code generation, a C++/Triton build) and
then saves a share of every step. It pays only on jobs long enough for the savings to
exceed that cost, so ``compile: auto`` (the default; ``TRAIN_COMPILE`` in the service)
decides per job, before the first epoch, with one rule:

    compile  when  epochs_left x train_images x (image_size / 224)^2  >  break-even

The left side is the job's training work in images at 224 px (a step's time grows with the
pixels, the compile time hardly does). The break-even is where the saved time equals the
compile time, ``compile_s / (1/eager_img_s - 1/compiled_img_s)`` in images at 224 px, as
``bench/train_throughput.py`` measures it on a machine (its last lines print it);
:data:`BREAK_EVEN_IMAGES` holds a figure for each device type (estimates so far: see its
comment and the README, "Speed"); ``compile_break_even`` (``TRAIN_COMPILE_BREAK_EVEN``)
sets the figure a machine measured. Runs of
several CPU processes (DDP over gloo, a development mode) are never compiled by ``auto``.
``on`` compiles every run, ``off`` none. The decision and its reason go in the checkpoint's
``compute`` record.

What is compiled is the module that trains (the model, or its DDP wrapper), for one batch
size: the first one the run sees, i.e. the epoch's full batches. A batch of another size
(an epoch's last, smaller one) runs the same module eagerly, which shares the parameters:
no second compile. Validation and test run eagerly. The checkpoint holds the plain model's
state dict (no ``_orig_mod.`` prefixes): a compiled run's files resume and serve exactly as
an eager run's.

A compile failure never fails the job: the first compiled step is guarded, and if it
raises, the model's state (parameters, BatchNorm statistics) is put back as it was before
that step, its gradients cleared, the failure logged and recorded, and the run continues
eagerly from that same batch. (Under DDP, a failure inside the first backward pass, after
some gradient buckets were all-reduced, may leave the reducer unable to go on; untested.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar, cast

import torch
from torch import nn

from app.engine.config import COMPILE_CHOICES

log = logging.getLogger(__name__)

REFERENCE_SIZE = 224  # the break-even is counted in images of this side
# Break-even in images at 224 px, by device type (README, "Speed"). Estimates: no CPU measured
# so far shows a gain (bench/train_throughput.py, 112 px, bf16: an idle 2-core Intel Xeon with
# AMX, compiled/eager 0.98 per round [0.93-1.07] after a 62 s compile; an AMD EPYC under ~90%
# contention, 0.88). The CPU figure is a job of ~45 minutes on 2 cores, where a compile that
# does not pay costs ~2% and one that pays 1.1x saves minutes. CUDA: compile time of the same
# order, steps ~50x faster, so the break-even in images is larger.
# TRAIN_COMPILE_BREAK_EVEN sets the figure a machine measured.
BREAK_EVEN_IMAGES: dict[str, int] = {"cpu": 100_000, "cuda": 500_000}

T = TypeVar("T")


@dataclass(frozen=True)
class CompileDecision:
    """Whether the run compiles its training step, and why (recorded in ``compute``)."""

    mode: str  # auto | on | off, as asked
    compiled: bool
    reason: str
    work_images: int | None = None  # epochs left x train images, in images at 224 px
    break_even_images: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def training_work(epochs_left: int, train_images: int, image_size: int) -> int:
    """The run's training work left, in images at :data:`REFERENCE_SIZE` px."""
    return round(max(0, epochs_left) * train_images * (image_size / REFERENCE_SIZE) ** 2)


def decide(
    mode: str, *, device_type: str, world_size: int, epochs_left: int, train_images: int,
    image_size: int, break_even: int | None = None,
) -> CompileDecision:
    """The rule of this module's docstring. ``break_even`` (images at 224 px) overrides
    :data:`BREAK_EVEN_IMAGES` for the device type."""
    if mode not in COMPILE_CHOICES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_CHOICES)}, got {mode!r}")
    if mode == "off":
        return CompileDecision(mode, False, "compile off")
    if mode == "on":
        return CompileDecision(mode, True, "compile on")
    work = training_work(epochs_left, train_images, image_size)
    if device_type == "cpu" and world_size > 1:
        return CompileDecision(mode, False, "auto: several CPU processes (a development "
                               "mode) are not compiled", work, None)
    limit = break_even if break_even is not None else BREAK_EVEN_IMAGES.get(device_type)
    if limit is None:
        return CompileDecision(mode, False, f"auto: no break-even known for {device_type}",
                               work, None)
    if work > limit:
        return CompileDecision(mode, True, f"auto: {work} images of work at 224 px exceed the "
                               f"break-even of {limit} on {device_type}", work, limit)
    return CompileDecision(mode, False, f"auto: {work} images of work at 224 px do not exceed "
                           f"the break-even of {limit} on {device_type}", work, limit)


class CompiledStep:
    """Runs training steps through a compiled copy of ``net`` for one batch size, eagerly
    for other sizes or after a compile failure (see the module docstring).

    ``state`` is the module whose state a failed first step puts back (the model ``net``
    wraps, or ``net`` itself). ``backend``: the ``torch.compile`` backend (default inductor;
    tests pass one of their own)."""

    def __init__(self, net: nn.Module, state: nn.Module, *,
                 backend: str | Callable[..., Any] = "inductor") -> None:
        self.eager = net
        self.state = state
        # An OptimizedModule: it shares ``net``'s parameters and buffers.
        self.compiled = cast(nn.Module, torch.compile(net, backend=backend))
        self.batch_size: int | None = None
        self.verified = False
        self.failure: str | None = None
        self.first_step_seconds: float | None = None  # compile + one step
        self.compiled_steps = 0
        self.eager_steps = 0

    @property
    def active(self) -> bool:
        """Whether steps still go through the compiled module (no failure so far)."""
        return self.failure is None

    def run(self, batch_size: int, step: Callable[[nn.Module], T]) -> T:
        """``step(module)`` (forward and backward of one batch), through the compiled module
        when ``batch_size`` is the one it is compiled for."""
        if self.failure is not None:
            self.eager_steps += 1
            return step(self.eager)
        if self.batch_size is None:
            self.batch_size = batch_size
        if batch_size != self.batch_size:
            self.eager_steps += 1
            return step(self.eager)
        if self.verified:
            self.compiled_steps += 1
            return step(self.compiled)
        saved = {k: v.detach().clone() for k, v in self.state.state_dict().items()}
        start = time.perf_counter()
        try:
            out = step(self.compiled)
        except Exception as exc:  # any failure of tracing, code generation or the build
            self.failure = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("torch.compile failed on the first training step; training goes on "
                        "eagerly from the same batch (%s)", self.failure)
            self.state.load_state_dict(saved)
            for p in self.state.parameters():
                p.grad = None
            self.eager_steps += 1
            return step(self.eager)
        self.first_step_seconds = time.perf_counter() - start
        self.verified = True
        self.compiled_steps += 1
        log.info("training step compiled for batches of %d in %.1fs (first step included)",
                 batch_size, self.first_step_seconds)
        return out

    def record(self) -> dict[str, Any]:
        """What the checkpoint's ``compute.compile`` adds to the decision."""
        return {"batch_size": self.batch_size, "first_step_seconds": self.first_step_seconds,
                "failure": self.failure}
