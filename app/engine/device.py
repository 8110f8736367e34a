"""Where and how a run computes: CUDA with bf16 autocast when present, else CPU fp32."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch


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


def cpu_supports_bf16() -> bool:
    # Without native bf16 instructions CPU autocast is ~10x slower than fp32.
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool((probe and probe()) or (amx and amx()))


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

    ``precision="auto"`` is bf16 autocast where the hardware runs it natively (CUDA with
    bf16, CPUs with AVX512-BF16/AMX), fp16 autocast on older GPUs, else fp32. The choice
    changes the numbers a run produces, so it is recorded in the checkpoint.
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
            cpu_bf16 = cpu_supports_bf16()
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
