from __future__ import annotations

import pytest
import torch

from app.engine import device
from app.engine.device import plan_device


def test_cpu_without_bf16_runs_fp32_channels_last() -> None:
    plan = plan_device("auto", cuda_available=False, cpu_bf16=False, cpu_count=2)
    assert plan.device == torch.device("cpu")
    assert plan.amp_dtype is None and plan.channels_last and not plan.pin_memory
    assert plan.workers == 0  # a 2-core CPU needs both cores for the model


def test_cpu_with_native_bf16_uses_autocast() -> None:
    plan = plan_device("cpu", cuda_available=False, cpu_bf16=True, cpu_count=32)
    assert plan.amp_dtype == torch.bfloat16 and plan.workers > 0


def test_cpu_bf16_is_measured_and_taken_only_where_it_pays(
        monkeypatch: pytest.MonkeyPatch) -> None:
    speedup = device.cpu_bf16_speedup()  # the real probe, on this CPU
    assert 0.01 < speedup < 100
    assert device.cpu_bf16_pays() == (
        device.cpu_supports_bf16() and speedup >= device.BF16_MIN_SPEEDUP)
    assert (plan_device("cpu", cuda_available=False).amp_dtype == torch.bfloat16) == (
        device.cpu_bf16_pays())

    # The decision, on CPUs unlike this one: native instructions and measured faster.
    measured: list[float] = []

    def fake(value: float) -> None:
        measured.clear()

        def speedup() -> float:
            measured.append(value)
            return value

        monkeypatch.setattr(device, "cpu_bf16_speedup", speedup)

    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: True)
    fake(0.68)  # AVX512-BF16 without AMX, as measured on one Intel Xeon
    assert plan_device("cpu", cuda_available=False).amp_dtype is None and measured == [0.68]
    fake(2.0)  # with AMX
    assert plan_device("cpu", cuda_available=False).amp_dtype == torch.bfloat16
    fake(2.0)  # an explicit precision is not measured
    assert plan_device("cpu", precision="fp32", cuda_available=False).amp_dtype is None
    assert measured == []
    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: False)
    assert plan_device("cpu", cuda_available=False).amp_dtype is None and measured == []


def test_cuda_is_chosen_when_present_with_bf16_and_pinned_memory() -> None:
    plan = plan_device("auto", cuda_available=True, cuda_bf16=True, cpu_count=16)
    assert plan.device.type == "cuda" and plan.is_cuda
    assert plan.amp_dtype == torch.bfloat16 and plan.pin_memory and plan.channels_last
    assert 1 <= plan.workers <= 8


def test_cuda_without_bf16_falls_back_to_fp16() -> None:
    plan = plan_device("cuda:1", cuda_available=True, cuda_bf16=False, cpu_count=4)
    assert plan.device == torch.device("cuda:1") and plan.amp_dtype == torch.float16


def test_explicit_workers_and_memory_format_win() -> None:
    plan = plan_device("cpu", workers=3, channels_last=False, cuda_available=False, cpu_bf16=False)
    assert plan.workers == 3 and not plan.channels_last


def test_cuda_requested_but_absent_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        plan_device("cuda", cuda_available=False)


def test_unknown_device_is_refused() -> None:
    with pytest.raises((ValueError, RuntimeError)):
        plan_device("tpu", cuda_available=False)


def test_autocast_context_is_a_no_op_in_fp32() -> None:
    plan = plan_device("cpu", cuda_available=False, cpu_bf16=False)
    with plan.autocast():
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32


def test_precision_can_be_forced() -> None:
    plan = plan_device("cpu", precision="fp32", cuda_available=False, cpu_bf16=True)
    assert plan.amp_dtype is None and plan.precision == "fp32"
    plan = plan_device("cpu", precision="bf16", cuda_available=False, cpu_bf16=False)
    assert plan.amp_dtype == torch.bfloat16 and plan.precision == "bf16"
    plan = plan_device("cuda", precision="fp16", cuda_available=True, cuda_bf16=True)
    assert plan.amp_dtype == torch.float16


def test_fp16_on_cpu_and_unknown_precision_are_refused() -> None:
    with pytest.raises(ValueError, match="fp16"):
        plan_device("cpu", precision="fp16", cuda_available=False)
    with pytest.raises(ValueError, match="precision"):
        plan_device("cpu", precision="fp8", cuda_available=False)
