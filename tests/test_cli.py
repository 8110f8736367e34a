from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.engine import load_checkpoint
from tests.helpers import Stack, free_port, stack_without_weights


def hotdog(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})},
    )


def last_json(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_demo_data_train_evaluate_predict(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    summary = last_json(hotdog("demo-data", str(data), "--train-per-class", "6",
                               "--test-per-class", "3", "--seed", "2", "--zip", "--json"))
    assert summary["counts"]["train"] == {"hotdog": 6, "not-hotdog": 6}
    assert Path(summary["zip"]).is_file()

    ckpt = tmp_path / "model.pt"
    proc = hotdog("train", str(data), "--out", str(ckpt), "--init", "scratch", "--epochs", "2",
                  "--image-size", "32", "--batch-size", "4", "--json")
    trained = last_json(proc)
    assert ckpt.is_file() and not (tmp_path / "model.last.pt").exists()
    assert not (tmp_path / "model.best.pt").exists()
    assert [e["epoch"] for e in trained["epochs"]] == [1, 2]
    assert trained["selected_epoch"] in (1, 2) and trained["note"] is None
    assert 0.0 <= trained["test_acc"] <= 1.0 and trained["params"]["lr"] == 0.064

    evaluated = last_json(hotdog("evaluate", str(ckpt), str(data), "--json", "--per-image"))
    assert evaluated["test_acc"] == trained["test_acc"]
    assert evaluated["balanced_accuracy"] == trained["evaluation"]["balanced_accuracy"]
    assert evaluated["macro_f1"] == trained["evaluation"]["macro_f1"]
    assert evaluated["confusion"] == trained["evaluation"]["confusion"]
    assert len(evaluated["predictions"]) == 6

    photo = next((data / "test" / "hotdog").iterdir())
    predicted = last_json(hotdog("predict", str(ckpt), str(photo), "--json"))
    (only,) = predicted["predictions"]
    assert only["label"] in ("hotdog", "not-hotdog")
    assert sum(only["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    by_file = {p["filename"]: p for p in evaluated["predictions"]}
    same = by_file[str(photo.relative_to(data))]
    for cls, p in only["probabilities"].items():
        assert p == pytest.approx(same["probabilities"][cls], abs=1e-6)

    # The new parameters come as options too (made from TrainConfig like the others).
    human = hotdog("train", str(data), "--out", str(tmp_path / "h.pt"), "--init", "scratch",
                   "--epochs", "1", "--image-size", "32", "--batch-size", "4",
                   "--val-fraction", "0.25", "--select-metric", "val_acc",
                   "--lr-schedule", "cosine", "--class-weights", "balanced",
                   "--sampler", "balanced")
    assert human.returncode == 0, human.stderr
    assert "train loss" in human.stdout and "val acc" in human.stdout
    assert "kept the model of epoch 1: validation accuracy" in human.stdout
    assert "probabilities: calibrated, temperature" in human.stdout
    params = load_checkpoint(tmp_path / "h.pt")["params"]
    assert (params["lr_schedule"], params["class_weights"], params["sampler"]) == (
        "cosine", "balanced", "balanced")
    # Text mode: the label and every class's probability (as `classify` prints them too).
    human = hotdog("predict", str(ckpt), str(photo))
    assert human.returncode == 0, human.stderr
    for cls, p in only["probabilities"].items():
        assert f"{cls} {p:.3f}" in human.stdout


def test_resume_from_last_checkpoint(tmp_path: Path, color_dataset: Path) -> None:
    common = ("--init", "scratch", "--image-size", "32", "--batch-size", "8", "--json")
    two = last_json(hotdog("train", str(color_dataset), "--out", str(tmp_path / "a.pt"),
                           "--epochs", "2", *common))
    four = last_json(hotdog("train", str(color_dataset), "--out", str(tmp_path / "b.pt"),
                            "--epochs", "4", "--resume-from", str(tmp_path / "a.pt"), *common))
    assert [e["epoch"] for e in four["epochs"]] == [1, 2, 3, 4]
    assert four["epochs"][:2] == two["epochs"]


def test_missing_imagenet_weights_exit_4_with_instructions(tmp_path: Path,
                                                           color_dataset: Path) -> None:
    proc = hotdog("train", str(color_dataset), "--out", str(tmp_path / "m.pt"),
                  env={"TORCH_HOME": str(tmp_path / "empty"), "HOTDOG_PRETRAINED_PATH": ""})
    assert proc.returncode == 4
    assert "HOTDOG_PRETRAINED_PATH" in proc.stderr and "Traceback" not in proc.stderr


def test_unusable_inputs_exit_3_naming_the_problem(tmp_path: Path, color_dataset: Path) -> None:
    proc = hotdog("train", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.pt"),
                  "--init", "scratch")
    assert proc.returncode == 3 and "no such dataset directory" in proc.stderr
    bad = tmp_path / "bad.jpg"
    bad.write_text("not a photo")
    proc = hotdog("predict", str(tmp_path / "missing.pt"), str(bad))
    assert proc.returncode == 3 and "missing.pt" in proc.stderr


def test_bad_parameter_values_exit_2(tmp_path: Path, color_dataset: Path) -> None:
    proc = hotdog("train", str(color_dataset), "--out", str(tmp_path / "m.pt"), "--init",
                  "scratch", "--epochs", "0")
    assert proc.returncode == 2 and "epochs" in proc.stderr
    assert hotdog("train").returncode == 2  # argparse usage error


def test_help_has_examples() -> None:
    proc = hotdog("train", "--help")
    assert proc.returncode == 0 and "examples:" in proc.stdout and "exit codes:" in proc.stdout


def test_every_command_has_examples_exit_codes_and_json() -> None:
    from app.cli.main import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"train", "demo", "upload", "submit", "watch", "classify", "serve"} <= set(commands)
    for name, sub in commands.items():
        text = sub.format_help()
        assert "examples:" in text, name
        assert "exit codes:" in text and "5  the service cannot be reached" in text, name
        assert "--json" in text, name


def test_client_commands_start_without_torch() -> None:
    """Every command's parser, and a client command that reaches no service (exit 5),
    without importing torch: the engine's computing modules are imported by the commands
    that compute."""
    probe = ("import sys\n"
             "from app.cli.main import build_parser, main\n"
             "build_parser().format_help()\n"
             "code = main(sys.argv[1:])\n"
             "print(code, 'torch' in sys.modules, 'torchvision' in sys.modules)\n")
    proc = subprocess.run(
        [sys.executable, "-c", probe, "jobs", "--url", f"http://127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["5", "False", "False"], proc.stdout + proc.stderr
    assert "cannot" in proc.stderr or "reach" in proc.stderr, proc.stderr


def test_the_engine_s_names_resolve_to_their_homes() -> None:
    import importlib

    import app.engine as engine

    for name in engine.__all__:
        home = importlib.import_module(f"app.engine.{engine._HOME[name]}")
        assert getattr(engine, name) is getattr(home, name), name
    assert set(engine.__all__) == set(engine._HOME)
    with pytest.raises(AttributeError, match="no_such_name"):
        engine.no_such_name  # noqa: B018


def test_train_options_come_from_train_config() -> None:
    from app.cli.main import build_parser
    from app.cli.options import given, train_config
    from app.engine.config import TrainConfig, params

    parser = build_parser()
    # hotdog train: TrainConfig's defaults, every `cli` parameter an option.
    args = parser.parse_args(["train", "data", "--out", "m.pt"])
    assert train_config(args) == TrainConfig()
    args = parser.parse_args(["train", "data", "--out", "m.pt", "--batch-size", "7",
                              "--lr", "0.5", "--precision", "fp32", "--workers", "2"])
    assert (train_config(args).batch_size, train_config(args).lr) == (7, 0.5)
    assert train_config(args).workers == 2
    # hotdog submit: only what was given is sent (the service fills in the rest).
    args = parser.parse_args(["submit", "DS", "--epochs", "3", "--gpus", "2"])
    assert given(args, "api") == {"epochs": 3, "gpus": 2}
    assert {f.name for f, _ in params("api")} <= set(vars(args))


def test_the_job_exit_code_follows_its_error_kind() -> None:
    from app.cli.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_WEIGHTS, job_exit_code

    def job(status: str, kind: str | None) -> Any:  # the fields job_exit_code reads
        return {"status": status, "error": "PretrainedWeightsMissing: ...", "error_kind": kind}

    assert job_exit_code(job("failed", "weights_missing")) == EXIT_WEIGHTS
    assert job_exit_code(job("failed", "crashed")) == EXIT_FAILED  # the kind decides
    assert job_exit_code(job("cancelled", "cancelled_by_user")) == EXIT_FAILED
    assert job_exit_code(job("succeeded", None)) == EXIT_OK


def test_make_run_prints_commands_that_reach_its_port(monkeypatch: pytest.MonkeyPatch) -> None:
    import shlex

    from app.cli.main import build_parser
    from app.client import DEFAULT_URL
    from app.quickstart import try_it

    monkeypatch.delenv("HOTDOG_URL", raising=False)
    for url in (DEFAULT_URL, "http://127.0.0.1:8042"):
        text = try_it(url, Path("data")).replace("\\\n", " ")
        lines = [shlex.split(line)[1:] for line in text.splitlines()]
        assert {line[0] for line in lines} == {"demo-data", "upload", "submit", "classify"}
        for argv in lines:
            args = build_parser().parse_args(argv)
            assert getattr(args, "url", url) == url, argv


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with stack_without_weights(tmp_path_factory.mktemp("cli-stack")) as s:
        yield s


def test_upload_streams_the_file_and_reports_progress(stack: Stack, color_dataset: Path,
                                                      tmp_path: Path) -> None:
    from app.datasets.archive import zip_dataset

    archive = zip_dataset(color_dataset, tmp_path / "colors.zip")
    seen: list[tuple[int, int]] = []
    with stack.client() as c:
        ds = c.upload(archive, progress=lambda done, total: seen.append((done, total)))
    size = archive.stat().st_size
    assert ds["counts"]["train"] == {"hotdog": 8, "not-hotdog": 8}
    assert seen[-1] == (size, size) and len(seen) > 1
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    # --json: one JSON object on stdout, nothing else there.
    proc = hotdog("upload", str(color_dataset), "--url", stack.url, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["classes"] == ["hotdog", "not-hotdog"]


def test_client_exit_codes_say_what_went_wrong(stack: Stack, color_dataset: Path,
                                               tmp_path: Path) -> None:
    env = {"HOTDOG_URL": stack.url}
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    proc = hotdog("upload", str(bad), env=env)
    assert proc.returncode == 3 and "422" in proc.stderr  # unusable dataset
    ds = last_json(hotdog("upload", str(color_dataset), "--json", env=env))["id"]
    proc = hotdog("submit", ds, "--epochs", "0", env=env)
    assert proc.returncode == 2 and "epochs" in proc.stderr  # bad parameter
    proc = hotdog("watch", "0" * 32, env=env)
    assert proc.returncode == 3 and "404" in proc.stderr  # unknown id
    # No running worker has the ImageNet weights: refused, saying how to provide them.
    proc = hotdog("submit", ds, "--init", "imagenet", "--image-size", "32", "--epochs", "1",
                  "--watch", "--interval", "0.2", env=env)
    assert proc.returncode == 4 and "HOTDOG_PRETRAINED_PATH" in proc.stderr
    # Queued anyway, the worker fails it at once for want of them (the same exit code).
    proc = hotdog("submit", ds, "--init", "imagenet", "--image-size", "32", "--epochs", "1",
                  "--queue-anyway", "--watch", "--interval", "0.2", env=env)
    assert proc.returncode == 4 and "PretrainedWeightsMissing" in proc.stdout
    proc = hotdog("jobs", "--url", f"http://127.0.0.1:{free_port()}")
    assert proc.returncode == 5 and "cannot reach the hotdog service" in proc.stderr


def test_workers_lists_the_running_worker(stack: Stack) -> None:
    (live,) = stack.wait_workers(1)
    proc = hotdog("workers", "--url", stack.url, "--json")
    assert proc.returncode == 0, proc.stderr
    (shown,) = [w for w in json.loads(proc.stdout)["workers"] if w["alive"]]
    assert shown["name"] == live["name"] and shown["has_imagenet"] is False
    proc = hotdog("workers", "--url", stack.url)
    assert proc.returncode == 0 and live["name"] in proc.stdout, proc.stderr
