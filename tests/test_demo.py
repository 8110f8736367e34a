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

from app.engine.data import load_image_folder
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


def test_demo_with_label_noise_trains_clean_noisy_and_relabelled(
        tmp_path: Path, no_imagenet: Path) -> None:
    out = tmp_path / "noise"
    proc = hotdog("demo", "--mode", "local", "--label-noise", "0.25", "--out", str(out),
                  "--json", *TINY_DEMO)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert list(result["runs"]) == ["clean", "noisy", "relabelled"]
    assert all(len(run["history"]) == 2 for run in result["runs"].values())
    assert set(result["table"][0]) == {"epoch", "clean_test_acc", "noisy_test_acc",
                                       "relabelled_test_acc"}
    review = result["review"]
    assert review["flipped"] == 4  # a quarter of 16 training images, seeded
    assert 0 <= review["found"] <= min(review["flagged"], review["flipped"])
    assert review["backbone"].endswith("(the starting backbone)")  # the other-task model
    # The data: the clean set untouched, the noisy copy and its relabelled copy beside it.
    clean = Path(result["dataset"])
    counts = load_image_folder(clean).counts()["train"]
    assert counts == {"hotdog": 8, "not-hotdog": 8}
    noisy = out / f"{clean.name}-noise25"
    fixed = out / f"{clean.name}-noise25-fixed"
    assert sum(load_image_folder(noisy).counts()["train"].values()) == 16
    assert sum(load_image_folder(fixed).counts()["train"].values()) == 16
    refused = hotdog("demo", "--mode", "service", "--label-noise", "0.1", "--out", str(out))
    assert refused.returncode == 2 and "--label-noise runs in this process" in refused.stderr


def test_the_label_noise_results_side_by_side(capsys: pytest.CaptureFixture[str]) -> None:
    from app.cli.demo import print_noise_result
    from app.cli.output import Output
    from app.experiment import NoiseResult, Run

    def run(name: str, accs: list[float]) -> Run:
        return Run(name, "imagenet", 0.0064, 10.0, history=[
            {"epoch": e, "train_loss": 0.5, "test_acc": a} for e, a in enumerate(accs, 1)])

    result = NoiseResult("data", 0.1, [run("clean", [0.9, 0.95]), run("noisy", [0.8, 0.85]),
                                       run("relabelled", [0.88, 0.93])], flipped=20,
                         flagged=16, found=15, precision_at_k=0.8, backbone="imagenet",
                         review_seconds=3.2, relabelled_correctly=15, note=None)
    print_noise_result(result, Output())
    text = capsys.readouterr().out
    assert re.search(r"epoch +clean +noisy +relabelled\n +1 +0\.900 +0\.800 +0\.880\n"
                     r" +2 +0\.950 +0\.850 +0\.930", text)
    assert "final   clean 0.950, noisy 0.850, relabelled 0.930" in text
    assert ("flagged 16, of which 15 flipped (precision 0.94, recall 0.75 of 20 flipped; "
            "precision of the top 20: 0.80)") in text
    assert result.to_dict()["review"]["recall"] == 0.75
