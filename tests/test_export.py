"""Exports (ONNX, TorchScript) and the ONNX runtime: same predictions as PyTorch fp32."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from app.engine import Predictor, TrainConfig, fit
from app.engine import export as ex
from app.engine.data import load_image_folder
from app.engine.predict import choose_runtime
from app.engine.presets import Preprocessing, load_eval_image
from tests.helpers import TINY

TOL = ex.PARITY_TOLERANCE


@pytest.fixture(scope="module")
def checkpoint(color_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A small learning rate keeps the probabilities away from 0 and 1, so that agreeing
    # within 1e-4 says something; so does leaving them uncalibrated (a temperature fitted
    # on two validation images sharpens them to the bound). A calibrated export's parity:
    # test_model_selection.py.
    out = tmp_path_factory.mktemp("export") / "model.pt"
    fit(color_dataset, TrainConfig(**TINY, epochs=1, lr=1e-3, val_fraction=0), out)
    return out


def _test_images(color_dataset: Path) -> list[Path]:
    return [p for p, _ in load_image_folder(color_dataset).test]


def _hotdog(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "app.cli", *args, "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_onnx_file_carries_its_contract_and_takes_any_batch(checkpoint: Path,
                                                                tmp_path: Path) -> None:
    out = ex.export_model(checkpoint, "onnx", tmp_path / "m.onnx")
    model = ex.OnnxModel(out)
    assert model.contract["classes"] == ["hotdog", "not-hotdog"]
    pre = Preprocessing.from_dict(model.contract["preprocessing"])
    assert (pre.image_size, pre.resize_size) == (32, 37)
    assert model.contract["input"]["layout"] == "NHWC"
    for n in (1, 5):
        x = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8)
        logits, probs = model.run(x, outputs=("logits", "probabilities"))
        assert logits.shape == probs.shape == (n, 2)
        assert np.allclose(probs.sum(1), 1, atol=1e-6)
    # Each thread count gets its own session; both compute the same thing.
    x = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    assert np.allclose(model.run(x, threads=1)[0], model.run(x, threads=2)[0], atol=1e-6)


def test_onnx_runtime_agrees_with_pytorch_in_predict_and_evaluate(
        checkpoint: Path, color_dataset: Path) -> None:
    images = _test_images(color_dataset)
    eager = Predictor(checkpoint, precision="fp32")
    onnx = Predictor(checkpoint, runtime="onnx")  # no file beside it: exported in memory
    assert (eager.runtime, onnx.runtime, onnx.precision) == ("torch", "onnx", "fp32")
    a, b = eager.predict(images), onnx.predict(images)
    probs = [p.probabilities[c] for p in a for c in eager.classes]
    assert any(0.01 < p < 0.99 for p in probs), "saturated probabilities prove nothing"
    for x, y in zip(a, b, strict=True):
        assert x.label == y.label
        assert x.probabilities == pytest.approx(y.probabilities, abs=TOL)

    ev_a, per_a = eager.evaluate_folder(color_dataset)
    ev_b, per_b = onnx.evaluate_folder(color_dataset)
    assert ev_a.confusion == ev_b.confusion and ev_a.loss == pytest.approx(ev_b.loss, abs=1e-4)
    for x, y in zip(per_a, per_b, strict=True):
        assert x.filename == y.filename and x.label == y.label
        assert x.probabilities == pytest.approx(y.probabilities, abs=TOL)


def test_a_jobs_export_is_verified_on_its_test_images(checkpoint: Path, color_dataset: Path,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    record = ex.export_for_job(checkpoint, color_dataset, out)
    assert record.error is None and record.file == "model.onnx" and out.is_file()
    assert record.images == len(_test_images(color_dataset))
    assert record.max_abs_diff is not None and record.max_abs_diff <= TOL
    # The file beside a checkpoint is what Predictor(runtime="onnx") runs.
    pred = Predictor(checkpoint, runtime="onnx", onnx_file=out)
    assert pred.onnx is not None and pred.onnx.source == str(out)


def test_an_export_that_does_not_match_is_discarded_with_the_reason(
        checkpoint: Path, color_dataset: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "model.onnx"
    monkeypatch.setattr(ex, "PARITY_TOLERANCE", -1.0)  # nothing can match: the check must bite
    record = ex.export_for_job(checkpoint, color_dataset, out)
    assert record.file is None and not out.exists()
    assert record.error and "differ from PyTorch's" in record.error and "discarded" in record.error

    monkeypatch.undo()
    record = ex.export_for_job(tmp_path / "missing.pt", color_dataset, out)
    assert record.error and "missing.pt" in record.error and not out.exists()


def test_torchscript_export_matches_pytorch(checkpoint: Path, color_dataset: Path,
                                            tmp_path: Path) -> None:
    out = ex.export_model(checkpoint, "torchscript", tmp_path / "m.torchscript.pt")
    extra = {"hotdog.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["hotdog.json"])["classes"] == ["hotdog", "not-hotdog"]
    pre = Preprocessing.for_size(32)
    batch = torch.stack([load_eval_image(p, pre).permute(1, 2, 0)
                         for p in _test_images(color_dataset)])
    eager = Predictor(checkpoint, precision="fp32")
    expected = eager.probabilities(batch.permute(0, 3, 1, 2))
    assert torch.allclose(module(batch)[1], expected, atol=TOL)


def test_the_cli_exports_and_both_runtimes_agree(checkpoint: Path, color_dataset: Path,
                                                 tmp_path: Path) -> None:
    out = _hotdog("export", str(checkpoint), "--out", str(tmp_path / "m.onnx"),
                  "--data", str(color_dataset))
    assert out["format"] == "onnx" and out["max_abs_diff"] <= TOL and out["images"] == 8
    ts = _hotdog("export", str(checkpoint), "--format", "torchscript",
                 "--out", str(tmp_path / "m.ts"))
    assert ts["verified_on"] == "random pixels" and ts["max_abs_diff"] <= TOL

    images = [str(p) for p in _test_images(color_dataset)]
    by_runtime = {rt: _hotdog("predict", str(checkpoint), *images, "--runtime", rt,
                              "--precision", "fp32")["predictions"] for rt in ("torch", "onnx")}
    for x, y in zip(by_runtime["torch"], by_runtime["onnx"], strict=True):
        assert x["label"] == y["label"]
        assert x["probabilities"] == pytest.approx(y["probabilities"], abs=TOL)

    evals = {rt: _hotdog("evaluate", str(checkpoint), str(color_dataset), "--per-image",
                         "--runtime", rt, "--precision", "fp32") for rt in ("torch", "onnx")}
    assert evals["torch"]["confusion"] == evals["onnx"]["confusion"]
    for x, y in zip(evals["torch"]["predictions"], evals["onnx"]["predictions"], strict=True):
        assert x["probabilities"] == pytest.approx(y["probabilities"], abs=TOL)


def test_the_runtime_choice(checkpoint: Path, tmp_path: Path) -> None:
    onnx_file = tmp_path / "model.onnx"
    assert choose_runtime("onnx", onnx_file=onnx_file) == "torch"  # no export: PyTorch
    assert choose_runtime("auto", onnx_file=None) == "torch"
    ex.export_model(checkpoint, "onnx", onnx_file)
    assert choose_runtime("onnx", onnx_file=onnx_file) == "onnx"
    assert choose_runtime("torch", onnx_file=onnx_file) == "torch"
    # auto: ONNX Runtime beats eager fp32 on a CPU; eager bf16 (native bf16 CPUs) beats both.
    assert choose_runtime("auto", onnx_file=onnx_file, device="cpu", precision="fp32") == "onnx"
    assert choose_runtime("auto", onnx_file=onnx_file, device="cpu", precision="bf16") == "torch"
    with pytest.raises(ValueError):
        choose_runtime("tensorrt", onnx_file=onnx_file)
