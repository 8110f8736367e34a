"""Checks that need a CUDA device (``pytest -m gpu``; bench/gpu_check.sh runs them).

Without one they are skipped: the CPU suite covers the same code paths on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.engine import Predictor, TrainConfig, fit
from app.engine.data import load_image_folder
from app.engine.export import PARITY_TOLERANCE, export_for_job
from tests.helpers import TINY

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def cuda_checkpoint(color_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gpu") / "model.pt"
    result = fit(color_dataset, TrainConfig(**TINY, epochs=2, lr=1e-3, device="cuda"), out)
    assert len(result.history) == 2
    return out


def test_training_on_cuda_uses_bf16_or_fp16_autocast(cuda_checkpoint: Path) -> None:
    ckpt = torch.load(cuda_checkpoint, weights_only=True)
    assert ckpt["compute"]["device"].startswith("cuda")
    assert ckpt["compute"]["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    # Saved from the GPU, loadable anywhere.
    assert all(t.device.type == "cpu" for t in ckpt["model"].values())


def test_prediction_on_cuda_agrees_with_the_cpu(cuda_checkpoint: Path,
                                                color_dataset: Path) -> None:
    images = [p for p, _ in load_image_folder(color_dataset).test]
    cpu = Predictor(cuda_checkpoint, device="cpu", precision="fp32").predict(images)
    gpu = Predictor(cuda_checkpoint, device="cuda", precision="fp32").predict(images)
    for a, b in zip(cpu, gpu, strict=True):
        assert a.label == b.label
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-3)  # TF32 convs
    bf16 = Predictor(cuda_checkpoint, device="cuda").predict(images)
    assert [p.label for p in bf16] == [p.label for p in cpu]


def test_the_onnx_export_on_the_cuda_provider(cuda_checkpoint: Path, color_dataset: Path,
                                              tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    record = export_for_job(cuda_checkpoint, color_dataset, tmp_path / "model.onnx")
    assert record.error is None and record.max_abs_diff is not None
    assert record.max_abs_diff <= PARITY_TOLERANCE
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without the CUDA provider (install onnxruntime-gpu)")
    pred = Predictor(cuda_checkpoint, device="cuda", runtime="onnx",
                     onnx_file=tmp_path / "model.onnx")
    assert pred.onnx is not None and pred.onnx.on_cuda
    images = [p for p, _ in load_image_folder(color_dataset).test]
    eager = Predictor(cuda_checkpoint, device="cpu", precision="fp32").predict(images)
    for a, b in zip(eager, pred.predict(images), strict=True):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-3)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_train_one_job_over_nccl(color_dataset: Path, tmp_path: Path) -> None:
    from app.engine import load_checkpoint
    from worker.protocol import Done, Epoch, Progress
    from worker.runner import TrainingProcess

    proc = TrainingProcess(
        data_dir=color_dataset, config=TrainConfig(**TINY, epochs=2, gpus=2, device="cuda"),
        out=tmp_path / "model.pt", epoch_checkpoint=tmp_path / "last.pt", export_onnx=False,
        processes=2).start()
    events = [e for e in proc.events() if not isinstance(e, Progress)]
    assert proc.returncode == 0 and isinstance(events[-1], Done), events[-1]
    assert [e.metrics.epoch for e in events if isinstance(e, Epoch)] == [1, 2]
    ckpt = load_checkpoint(tmp_path / "model.pt")
    assert ckpt["compute"]["world_size"] == 2 and ckpt["compute"]["device"].startswith("cuda")


def test_a_compiled_training_step_on_cuda_matches_eager(color_dataset: Path,
                                                         tmp_path: Path) -> None:
    # torch.compile on CUDA (inductor, Triton) under the GPU's autocast: the run compiles,
    # learns as the eager run does (within bf16/fp16 tolerance) and saves the plain model.
    from app.engine import load_checkpoint

    runs = {mode: load_checkpoint(fit(color_dataset, TrainConfig(**TINY, epochs=1, lr=1e-3,
                                                                 device="cuda", compile=mode),
                                      tmp_path / f"{mode}.pt").checkpoint)
            for mode in ("off", "on")}
    record = runs["on"]["compute"]["compile"]
    assert record["compiled"] is True and record["failure"] is None, record
    assert runs["on"]["model"].keys() == runs["off"]["model"].keys()
    for key in ("train_loss", "test_loss"):
        assert runs["on"]["metrics"][key] == pytest.approx(runs["off"]["metrics"][key],
                                                           rel=0.05), key
def test_compiled_pytorch_on_cuda_is_checked_then_serves(cuda_checkpoint: Path,
                                                         color_dataset: Path) -> None:
    from prometheus_client import CollectorRegistry

    from app.api.serving import ModelCache, ServingMetrics
    from app.engine.export import write_verification_set

    write_verification_set(cuda_checkpoint, color_dataset)
    models = ModelCache(size=1, device="cuda", precision="auto", max_batch=8, max_delay=0,
                        max_queue=16, metrics=ServingMetrics(CollectorRegistry()),
                        runtime="compiled", tune_seconds=0.5)  # inductor, freezing
    try:
        model = models.get("job", cuda_checkpoint)
        assert model.tuned.wait(600)
        assert model.predictor.runtime == "compiled", model.runtimes
        assert model.runtimes["compiled"]["images_per_second"] > 0
        images = [p for p, _ in load_image_folder(color_dataset).test]
        eager = Predictor(cuda_checkpoint, device="cuda")
        x = torch.stack([eager.load(p) for p in images])
        assert torch.equal(model.forward(x).argmax(1), eager.probabilities(x).argmax(1))
    finally:
        models.close()
