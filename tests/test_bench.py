"""The benchmark stays runnable: a seconds-long --quick run of both sides. No timing asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_throughput_quick_runs_both_sides() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "train_throughput.py"), "--quick", "--json"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ratio engine/bare (train images/s)" in proc.stdout
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    for side in ("bare", "engine"):
        assert figures[side]["train_images"] > 0 and 0 <= figures[side]["test_acc"] <= 1
    assert figures["ratio_train_images_per_s"] > 0


def test_predict_load_quick_runs_both_runtimes_and_their_baselines() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "predict_load.py"), "--quick", "--json"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["errors"] == 0
    (r,) = figures["rounds"]
    assert {b["runtime"] for b in r["baseline"].values()} == {"torch", "onnx"}
    for b in r["baseline"].values():
        assert b["batched_img_s"] > 0 and b["bare_p50_ms"] > 0
    for runtime in ("torch", "onnx"):
        assert r[runtime]["c1"]["requests"] == 10 and r[runtime]["cn"]["requests"] > 0
        assert r[runtime]["cn"]["mean_batch"] >= 1
    assert figures["summary"]["onnx_throughput_vs_eager_fp32"] > 0
