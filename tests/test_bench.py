"""The benchmarks stay runnable: bench/gpu_check.sh --quick runs the GPU check's every step
on the CPU (the gpu tests, then a seconds-long run of both benchmarks), and
bench/hostile_load.py --quick attacks a real service with small hostile inputs, and the batch
job and explanation benchmarks run quick against real services. No timing asserted."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from PIL import Image

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
    assert predict["errors"] == 0 and predict["summary"]["answers_differing"] == 0
    (r,) = predict["rounds"]
    # Every runtime the model has (INT8 when its verification kept it; no compile in quick).
    kept_int8 = "file" in predict["exports"]["onnx_int8"]
    assert {b["runtime"] for b in r["baseline"].values()} == {
        "torch", "onnx", *(["onnx_int8"] if kept_int8 else [])}
    for b in r["baseline"].values():
        assert b["batched_img_s"] > 0 and b["bare_p50_ms"] > 0
    assert r["load"]["c1"]["requests"] == 10 and r["load"]["c16"]["requests"] > 0
    assert r["load"]["c16"]["mean_batch"] >= 1
    # The service's CPU split by thread: its forward and decode threads are named.
    split = r["load"]["c16"]["server_cpu_ms_per_image_by_part"]
    assert split["forward"] > 0 and split["decode"] > 0 and split["event loop"] > 0
    # The service measured each runtime and serves the fastest.
    speeds = predict["serving"]["runtimes"]
    assert predict["serving"]["runtime"] == max(
        (rt for rt in speeds if "images_per_second" in speeds[rt]),
        key=lambda rt: speeds[rt]["images_per_second"])
    assert predict["summary"]["best_vs_eager_batched"] > 0
    assert predict["summary"]["c16_vs_best_batched"] > 0


def _hostile_inputs() -> Any:
    spec = importlib.util.spec_from_file_location("hostile_inputs",
                                                  ROOT / "bench" / "hostile_inputs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_hostile_inputs_are_what_they_claim(tmp_path: Path) -> None:
    h = _hostile_inputs()
    h.write_gray16_png(tmp_path / "gray.png", 300)
    h.write_rgba_png(tmp_path / "rgba.png", 200)
    with Image.open(tmp_path / "gray.png") as gray, Image.open(tmp_path / "rgba.png") as rgba:
        assert (gray.mode, gray.size) == ("I;16", (300, 300))
        assert gray.getextrema() == (32768, 32768)
        assert (rgba.mode, rgba.size) == ("RGBA", (200, 200))
        assert rgba.getextrema()[3] == (0, 0)  # fully transparent
    h.write_entries_zip(tmp_path / "entries.zip", 70_000)  # past the 16-bit count: zip64
    with zipfile.ZipFile(tmp_path / "entries.zip") as zf:
        names = zf.namelist()
    assert len(names) == len(set(names)) == 70_000
    h.write_classes_zip(tmp_path / "classes.zip", 30)
    with zipfile.ZipFile(tmp_path / "classes.zip") as zf:
        assert zf.testzip() is None
        classes = {split: {n.split("/")[1] for n in zf.namelist() if n.startswith(split)}
                   for split in ("train", "test")}
    assert len(classes["train"]) == 30 and classes["train"] == classes["test"]
    h.write_zeros_zip(tmp_path / "zeros.zip", 3, 8 << 20)
    with zipfile.ZipFile(tmp_path / "zeros.zip") as zf:
        assert [i.file_size for i in zf.infolist()] == [8 << 20] * 3
        assert all(i.compress_size < 16 << 10 for i in zf.infolist())
        assert zf.read(zf.infolist()[0]) == bytes(8 << 20)


HOSTILE_FIELDS = {"quick", "statuses", "slowest_ms", "peak_rss_mib", "baseline_rss_mib",
                  "rss_growth_mib", "disk_peak_mib", "disk_written_mib", "slowest_health_ms",
                  "health", "server_alive", "server_exit", "guard_tripped", "max_rss_mib",
                  "held", "inputs", "seconds"}


def test_the_hostile_load_bench_runs_quick_and_the_server_holds(tmp_path: Path) -> None:
    """bench/hostile_load.py --quick against a real `hotdog serve`: every case answered,
    the server alive, and every answer a 2xx, a 4xx, a 503 (busy) or a 507 (no room on
    disk): any other 5xx is a bug."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "hostile_load.py"), "--quick",
                           "--cache", str(tmp_path / "inputs")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode in (0, 1), proc.stderr[-5000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) == HOSTILE_FIELDS, result
    assert result["quick"] is True
    assert result["server_alive"] and result["server_exit"] is None, result
    assert not result["guard_tripped"], result
    for case, clients in (("predict_16bit", 2), ("predict_rgba", 1), ("zip_directory", 1),
                          ("class_count", 1), ("disk_zeros", 1)):
        answers = result["statuses"][case]
        assert sum(answers.values()) == clients, (case, answers)
        unexpected = {s for s in answers if not (s[0] in "24" or s in ("503", "507"))}
        assert not unexpected, (case, answers, result)
    assert result["peak_rss_mib"] >= result["baseline_rss_mib"] > 0
    assert result["health"]["answered"] > 0 and result["slowest_health_ms"] > 0
    # Its figures are read, whatever they are: at the least, the answers it wrote.
    assert result["disk_written_mib"] > 0, result
    assert result["held"] is True and proc.returncode == 0, result


def test_the_dataset_report_benchmarks_run(tmp_path: Path) -> None:
    """bench/dataset_report.py and bench/hash_separation.py on a few images (the README's
    figures come from their full runs)."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "dataset_report.py"),
                           "--images", "40", "--leaks", "3", "--data", str(tmp_path / "set")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["images"] == 39 and out["leaked_images"] == out["planted_leaks"] == 3
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "hash_separation.py"),
                           "--photos", "20", "--copies", "5"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    table = json.loads(proc.stdout)
    assert {"phash", "dhash", "phash+dhash", "colour_diff"} <= set(table)


def test_the_batch_job_and_explanation_benchmarks_run(tmp_path: Path) -> None:
    """bench/batch_predict.py and bench/explain_load.py --quick against a real service (the
    README's figures come from their full runs): each runs to its end, every job succeeds
    and no plain request fails."""
    out = tmp_path / "batch.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "batch_predict.py"), "--quick",
                           "--json", str(out)], capture_output=True, text=True, timeout=600,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-5000:]
    batch = json.loads(out.read_text())
    (round_,) = batch["rounds"]
    assert round_["job"]["photos"] == batch["photos"] == 40
    assert round_["ratio_job_run"] > 0 and len(batch["engine_runs"]) == 2
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "explain_load.py"), "--quick"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-5000:] + proc.stdout[-2000:]
    assert "median plain img/s with a burst of explanations / alone" in proc.stdout
