"""Where and how a run computes: CUDA with bf16 autocast when present; on a CPU, bf16
autocast where it measures faster than fp32, else fp32."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class DevicePlan:
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype, None for full fp32
    channels_last: bool
    pin_memory: bool
    workers: int

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def precision(self) -> str:
        return PRECISION_NAMES[self.amp_dtype]

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.amp_dtype is None:
            yield
        else:
            with torch.autocast(self.device.type, dtype=self.amp_dtype):
                yield


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PRECISION_NAMES: dict[torch.dtype | None, str] = {
    None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"
}


# bf16 autocast is chosen on a CPU only where it measures at least this much faster than
# fp32 (it changes the numbers a run produces, so it must clearly pay). Native bf16
# instructions alone don't make it pay: on a 2-core Intel Xeon with AVX512-BF16 and no AMX,
# ResNet-18 ran at 0.68x fp32's speed in bf16 (inference and training alike), where one
# with AMX ran about 2x.
BF16_MIN_SPEEDUP = 1.2


def cpu_supports_bf16() -> bool:
    # Without native bf16 instructions CPU autocast is ~10x slower than fp32.
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool((probe and probe()) or (amx and amx()))


@functools.cache
def cpu_bf16_speedup() -> float:
    """fp32 time / bf16-autocast time on this CPU, once per process (about 0.2 s): the best
    of 4 alternating runs of two of ResNet-18's 3x3 convolutions (64 channels, 56x56, batch
    8, channels-last), where it spends most of its time. On the machines measured this
    separated clearly: 0.54-0.70 where ResNet-18 ran at 0.68x in bf16, about 2 with AMX."""
    net = nn.Sequential(
        nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1, bias=False),
    ).eval().to(memory_format=torch.channels_last)
    x = torch.randn(8, 64, 56, 56, generator=torch.Generator().manual_seed(0))
    x = x.to(memory_format=torch.channels_last)
    best = {False: float("inf"), True: float("inf")}
    with torch.inference_mode():
        for _ in range(4):
            for bf16 in (False, True):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    start = time.perf_counter()
                    net(x)
                    best[bf16] = min(best[bf16], time.perf_counter() - start)
    speedup = best[False] / best[True]
    log.info("bf16 autocast measured %.2fx fp32's speed on this CPU (chosen from %.2fx)",
             speedup, BF16_MIN_SPEEDUP)
    return speedup


def cpu_bf16_pays() -> bool:
    """Whether ``precision=auto`` takes bf16 on this CPU: native bf16 instructions, and a
    measured speed-up of at least :data:`BF16_MIN_SPEEDUP` (no measurement without them)."""
    return cpu_supports_bf16() and cpu_bf16_speedup() >= BF16_MIN_SPEEDUP


def plan_device(
    requested: str = "auto",
    *,
    precision: str = "auto",
    workers: int | None = None,
    channels_last: bool = True,
    cuda_available: bool | None = None,
    cuda_bf16: bool | None = None,
    cpu_bf16: bool | None = None,
    cpu_count: int | None = None,
) -> DevicePlan:
    """Choose device, precision and loader settings. The keyword flags exist for tests.

    ``precision="auto"`` is bf16 autocast on CUDA with bf16 and on a CPU where it pays
    (:func:`cpu_bf16_pays`: native instructions and measured faster), fp16 autocast on older
    GPUs, else fp32. The choice changes the numbers a run produces, so it is recorded in
    the checkpoint.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if requested == "auto":
        requested = "cuda" if cuda_available else "cpu"
    device = torch.device(requested)
    cpus = cpu_count or os.cpu_count() or 1
    if device.type == "cuda":
        if not cuda_available:
            raise ValueError("device 'cuda' requested but CUDA is not available on this machine")
        if cuda_bf16 is None:
            cuda_bf16 = torch.cuda.is_bf16_supported()
        amp: torch.dtype | None = torch.bfloat16 if cuda_bf16 else torch.float16
        default_workers = min(8, max(1, cpus - 1))
        pin = True
    elif device.type == "cpu":
        if cpu_bf16 is None:
            cpu_bf16 = precision == "auto" and cpu_bf16_pays()
        amp = torch.bfloat16 if cpu_bf16 else None
        # On a small CPU the model uses every core; loader processes would only steal them.
        default_workers = 0 if cpus <= 4 else min(4, cpus // 4)
        pin = False
    else:
        raise ValueError(f"unsupported device {requested!r}: use 'auto', 'cpu' or 'cuda[:N]'")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on CPU")
    if precision != "auto":
        amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return DevicePlan(
        device=device,
        amp_dtype=amp,
        channels_last=channels_last,
        pin_memory=pin,
        workers=default_workers if workers is None else workers,
    )
