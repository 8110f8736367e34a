"""The benchmarks stay runnable: bench/gpu_check.sh --quick runs the GPU check's every step
on the CPU (the gpu tests, then a seconds-long run of both benchmarks). No timing asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_end_to_end_quick(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PY": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--quick"],
                          capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    report = (tmp_path / "gpu_check.txt").read_text()
    assert proc.returncode == 0, report + proc.stderr
    assert "== 1. tests marked gpu" in report and "== done: status 0" in report

    train = json.loads((tmp_path / "train_throughput.json").read_text())
    assert "ratio engine/bare (train images/s)" in report
    for side in ("bare", "engine"):
        assert train[side]["train_images"] > 0 and 0 <= train[side]["test_acc"] <= 1
    assert train["ratio_train_images_per_s"] > 0

    predict = json.loads((tmp_path / "predict_load.json").read_text())
    assert predict["errors"] == 0
    (r,) = predict["rounds"]
    assert {b["runtime"] for b in r["baseline"].values()} == {"torch", "onnx"}
    for b in r["baseline"].values():
        assert b["batched_img_s"] > 0 and b["bare_p50_ms"] > 0
    for runtime in ("torch", "onnx"):
        assert r[runtime]["c1"]["requests"] == 10 and r[runtime]["cn"]["requests"] > 0
        assert r[runtime]["cn"]["mean_batch"] >= 1
    assert predict["summary"]["onnx_throughput_vs_eager_fp32"] > 0
