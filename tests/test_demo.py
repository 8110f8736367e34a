"""``hotdog demo``: the fine-tune vs scratch experiment in one command, in process and
through a running service, at a tiny size (32 px, a few images, 1-2 epochs)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from app.plot import PALETTE, chart_size
from tests.helpers import Stack, stack_without_weights

TINY_DEMO = ("--epochs", "2", "--image-size", "32", "--batch-size", "8",
             "--train-per-class", "8", "--test-per-class", "3",
             "--pretext-epochs", "1", "--pretext-per-class", "4", "--interval", "0.2")
TITLE = "hotdog / not-hotdog: fine-tuning a pretrained ResNet-18 vs training from scratch"


def hotdog(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True,
                          text=True, timeout=900, env={**os.environ, **(env or {})})


def assert_curves_png(path: Path) -> None:
    with Image.open(path) as image:
        image.verify()  # a complete, uncorrupted PNG
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == chart_size(2, TITLE)
        # Both runs' curves are drawn, each in its own colour.
        pixels = {c: n for n, c in image.convert("RGB").getcolors(1 << 20)}
        for colour in PALETTE[:2]:
            assert pixels.get(colour, 0) >= 10, colour


def test_demo_in_process_prints_both_runs_per_epoch_and_draws_the_curves(
        tmp_path: Path, no_imagenet: Path) -> None:
    out = tmp_path / "run"
    proc = hotdog("demo", "--mode", "local", "--out", str(out), *TINY_DEMO)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    text = proc.stdout
    # Offline: no ImageNet weights, so the fine-tune starts from the other task and says so.
    assert "No ImageNet weights here" in text and "different synthetic task" in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split() == [
        "epoch", "train", "loss", "test", "acc", "train", "loss", "test", "acc"])
    assert "fine-tune" in lines[header - 1] and "scratch" in lines[header - 1]
    rows = [line.split() for line in lines[header + 1:header + 3]]
    assert [r[0] for r in rows] == ["1", "2"]
    for r in rows:  # epoch, then train loss and test accuracy of each side
        assert len(r) == 5
        losses, accs = [float(r[1]), float(r[3])], [float(r[2]), float(r[4])]
        assert all(loss >= 0 for loss in losses) and all(0 <= a <= 1 for a in accs)
    assert "final test accuracy: fine-tune" in text
    assert re.search(r"fine-tune: from the checkpoint .*pretext.*lr 0\.0064, new head at x10",
                     text)
    assert re.search(r"scratch: +from random weights \(scratch\), lr 0\.064, head x1", text)
    assert_curves_png(out / "curves.png")

    # --json: the same experiment as one object on stdout (messages on stderr); the data
    # and the other-task model of the first run are reused.
    png = tmp_path / "elsewhere.png"
    proc = hotdog("demo", "--mode", "local", "--out", str(out), "--png", str(png), "--json",
                  *TINY_DEMO)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(proc.stdout.strip().splitlines()) == 1
    assert "reusing" in proc.stderr and "using the hotdog / not-hotdog photos" in proc.stderr
    assert result["mode"] == "local" and result["png"] == str(png)
    assert [r["epoch"] for r in result["table"]] == [1, 2]
    assert set(result["table"][0]) == {"epoch", "fine_tune_train_loss", "fine_tune_test_acc",
                                       "scratch_train_loss", "scratch_test_acc"}
    assert result["fine_tune"]["head_lr_mult"] == 10 and result["scratch"]["head_lr_mult"] == 1
    assert result["pretext"]["init"] == "scratch" and result["note"]
    assert_curves_png(png)


def test_demo_refuses_bad_sizes_with_exit_2(tmp_path: Path) -> None:
    proc = hotdog("demo", "--mode", "local", "--out", str(tmp_path), "--epochs", "0")
    assert proc.returncode == 2 and "epochs" in proc.stderr and "Traceback" not in proc.stderr


def test_demo_asked_for_imagenet_without_weights_exits_4(tmp_path: Path,
                                                         no_imagenet: Path) -> None:
    proc = hotdog("demo", "--mode", "local", "--start", "imagenet", "--out", str(tmp_path),
                  *TINY_DEMO)
    assert proc.returncode == 4 and "HOTDOG_PRETRAINED_PATH" in proc.stderr


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # The service's worker has no ImageNet weights either: an imagenet job is refused.
    with stack_without_weights(tmp_path_factory.mktemp("demo-stack")) as s:
        yield s


def test_demo_through_a_running_service(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = hotdog("demo", "--url", stack.url, "--out", str(out), "--json", *TINY_DEMO)
    assert proc.returncode == 0, proc.stderr + stack.logs()
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["mode"] == "service"  # --mode auto found the service at --url
    fine, scratch, pretext = result["fine_tune"], result["scratch"], result["pretext"]
    # The service refused the imagenet job (no running worker has the weights); the
    # fine-tune then started from a job trained on the other task, and the output says so.
    assert fine["init"] == f"job:{pretext['job_id']}" and "No ImageNet weights" in result["note"]
    assert scratch["init"] == "scratch" and (scratch["lr"], scratch["head_lr_mult"]) == (0.064, 1)
    assert (fine["lr"], fine["head_lr_mult"]) == (0.0064, 10)
    assert [m["epoch"] for m in fine["history"]] == [1, 2]
    assert [r["epoch"] for r in result["table"]] == [1, 2]
    assert "uploaded" in proc.stderr and "jobs submitted" in proc.stderr
    assert_curves_png(out / "curves.png")
    with stack.client() as c:
        jobs = {j["id"]: j for j in c.jobs()}
    assert jobs[fine["job_id"]]["status"] == "succeeded"
    assert jobs[scratch["job_id"]]["status"] == "succeeded"
    # Refused, not run: no job failed, and none started from ImageNet.
    assert [j for j in jobs.values() if j["status"] != "succeeded"] == []
    assert all(j["params"]["init"] != "imagenet" for j in jobs.values())
