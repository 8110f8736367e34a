"""The job's training process: events, cancellation, a hard kill and resume, errors."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from app.db.models import ErrorKind
from app.engine import TrainConfig, load_checkpoint
from tests.helpers import TINY
from worker.protocol import Cancelled, Checkpoint, Done, Epoch, Error, Progress, Start, decode
from worker.runner import TrainingProcess

ROOT = Path(__file__).resolve().parents[1]


def _process(data: Path, tmp_path: Path, epochs: int, init: str = "scratch") -> TrainingProcess:
    config = replace(TrainConfig(**TINY, epochs=epochs), init=init)
    return TrainingProcess(data_dir=data, config=config,
                           out=tmp_path / "job" / "model.pt",
                           epoch_checkpoint=tmp_path / "job" / "last.pt")


def test_events_of_a_successful_run(color_dataset: Path, tmp_path: Path) -> None:
    proc = _process(color_dataset, tmp_path, epochs=2).start()
    events = list(proc.events())
    kinds = [type(e) for e in events if not isinstance(e, Progress)]  # progress is timed
    # Each epoch reported before its checkpoint: none is ever on disk unreported.
    assert kinds == [Start, Epoch, Checkpoint, Epoch, Checkpoint, Done]
    for e in events:
        if isinstance(e, Progress):
            assert e.epoch in (1, 2) and 0 < e.fraction < 1
    assert [e.metrics.epoch for e in events if isinstance(e, Epoch)] == [1, 2]
    done = events[-1]
    assert isinstance(done, Done)
    assert proc.returncode == 0 and Path(done.checkpoint).is_file()
    assert done.evaluation["count"] == 8 and 0 <= done.test_acc <= 1
    assert not list((tmp_path / "job").glob(".spec-*"))


def test_a_killed_attempts_spec_is_removed_by_the_next(color_dataset: Path,
                                                       tmp_path: Path) -> None:
    """A worker SIGKILLed mid-job cannot remove its training's spec file; the job's next
    attempt does, so no temporary file outlives the job in DATA_DIR (found by bench/chaos)."""
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / ".spec-killed.json").write_text("{}")
    proc = _process(color_dataset, tmp_path, epochs=1).start()
    assert isinstance(list(proc.events())[-1], Done)
    assert not list((tmp_path / "job").glob(".spec-*"))


def test_cancel_stops_between_batches(color_dataset: Path, tmp_path: Path) -> None:
    proc = _process(color_dataset, tmp_path, epochs=50).start()
    events = []
    for event in proc.events():
        events.append(event)
        if isinstance(event, Start):
            proc.cancel()
    assert events[-1] == Cancelled() and proc.returncode == 3
    assert not (tmp_path / "job" / "model.pt").exists()


def test_killed_process_resumes_from_its_last_epoch(color_dataset: Path, tmp_path: Path) -> None:
    first = _process(color_dataset, tmp_path, epochs=3).start()
    for event in first.events():
        if isinstance(event, Checkpoint):
            first.kill()  # kill -9 in the middle of the run
            break
    first.proc.wait()  # type: ignore[union-attr]
    assert load_checkpoint(tmp_path / "job" / "last.pt")["epoch"] >= 1
    second = _process(color_dataset, tmp_path, epochs=3).start()
    events = list(second.events())
    start, done = events[0], events[-1]
    assert isinstance(start, Start) and isinstance(done, Done)
    reported = [e.metrics.epoch for e in events if isinstance(e, Epoch)]
    assert start.start_epoch >= 1
    # The epochs it resumes after are repeated first (a record lost with the killed run is
    # made up), then the rest.
    assert reported == list(range(1, 4))
    assert second.returncode == 0
    assert len(load_checkpoint(done.checkpoint)["history"]) == 3


def test_a_bad_dataset_is_a_readable_error(tmp_path: Path) -> None:
    proc = _process(tmp_path / "missing", tmp_path, epochs=1).start()
    error = list(proc.events())[-1]
    assert isinstance(error, Error) and error.exception == "DatasetError"
    assert error.kind is ErrorKind.BAD_DATASET
    assert "no such dataset directory" in error.message and proc.returncode == 1


def test_missing_imagenet_weights_are_an_error_of_their_kind(
        color_dataset: Path, tmp_path: Path, no_imagenet: Path) -> None:
    proc = _process(color_dataset, tmp_path, epochs=1, init="imagenet").start()
    error = list(proc.events())[-1]
    assert isinstance(error, Error) and error.kind is ErrorKind.WEIGHTS_MISSING, error
    assert error.text.startswith("PretrainedWeightsMissing: ") and proc.returncode == 1


def test_a_truncated_imagenet_file_fails_at_once_as_missing_weights(
        color_dataset: Path, tmp_path: Path, no_imagenet: Path) -> None:
    """Not a RuntimeError crash that the worker would retry: the same file fails every time."""
    import torch
    from torchvision.models import resnet18

    from app.engine.model import imagenet_weights_cache_path

    cache = imagenet_weights_cache_path()  # under the TORCH_HOME the child inherits
    cache.parent.mkdir(parents=True)
    torch.save(resnet18().state_dict(), cache)
    cache.write_bytes(cache.read_bytes()[:1 << 20])  # a copy cut off after 1 MB
    proc = _process(color_dataset, tmp_path, epochs=1, init="imagenet").start()
    error = list(proc.events())[-1]
    assert isinstance(error, Error) and error.kind is ErrorKind.WEIGHTS_MISSING, error
    assert f"{cache} is unreadable" in error.message and proc.returncode == 1


def test_a_job_that_runs_out_of_memory_fails_at_once_saying_what_to_change(
        color_dataset: Path, tmp_path: Path) -> None:
    """A real allocation failure: the training process runs under an address-space limit
    that fits the interpreter and the model but not a 1024 px batch."""
    probe = subprocess.run(
        [sys.executable, "-c", "import worker.child; from torchvision.models import resnet18; "
         "resnet18(); print(open('/proc/self/status').read().split('VmSize:')[1].split()[0])"],
        capture_output=True, text=True, check=True, cwd=ROOT)
    limit = (int(probe.stdout.strip()) << 10) + (1400 << 20)  # + 1.4 GB
    config = TrainConfig(init="scratch", image_size=1024, batch_size=16, epochs=1)
    spec = {"data_dir": str(color_dataset), "out": str(tmp_path / "model.pt"),
            "epoch_checkpoint": str(tmp_path / "last.pt"), "resume_from": None,
            "export_onnx": False, "config": config.to_dict()}
    (tmp_path / "spec.json").write_text(json.dumps(spec))

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "worker.child", str(tmp_path / "spec.json")],
                          capture_output=True, text=True, preexec_fn=limited, cwd=ROOT,
                          timeout=300)
    events = [decode(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 1, proc.stderr[-2000:]
    error = events[-1]
    assert isinstance(error, Error) and error.exception == "OutOfMemory", error
    assert error.kind is ErrorKind.OUT_OF_MEMORY
    assert "batch_size (now 16)" in error.message and "image_size (now 1024)" in error.message
    assert not (tmp_path / "model.pt").exists()


def test_an_evaluation_process_scores_a_model_as_training_did(color_dataset: Path,
                                                               tmp_path: Path) -> None:
    """An evaluate job's process: the same events and signals as training; the model scored
    on the test split it trained with gives the evaluation its training gave."""
    trained = list(_process(color_dataset, tmp_path, epochs=1).start().events())[-1]
    assert isinstance(trained, Done)
    model = Path(trained.checkpoint)

    def evaluation(data: Path, model: Path = model) -> TrainingProcess:
        return replace(_process(data, tmp_path / "eval", epochs=1), evaluate=model).start()

    proc = evaluation(color_dataset)
    events = [e for e in proc.events() if not isinstance(e, Progress)]
    assert [type(e) for e in events] == [Start, Done] and proc.returncode == 0
    start, done = events
    assert isinstance(start, Start) and isinstance(done, Done)
    assert (start.test_count, start.epochs, start.train_count) == (8, 1, 0)
    assert done.checkpoint == str(model) and done.exports == {}
    assert done.evaluation["confusion"] == trained.evaluation["confusion"]
    assert done.evaluation["accuracy"] == trained.evaluation["accuracy"]
    assert not (tmp_path / "eval" / "job" / "model.pt").exists()  # it writes no model

    # SIGTERM stops it between batches (here before the first: it waits for the flag file).
    flag = tmp_path / "go"
    proc = replace(_process(color_dataset, tmp_path / "eval", epochs=1), evaluate=model,
                   env={"HOTDOG_TEST_FAULT": f"wait-before-evaluation:{flag}"}).start()
    events = []
    for event in proc.events():
        events.append(event)
        if isinstance(event, Start):
            proc.cancel()
            flag.touch()
    assert events[-1] == Cancelled() and proc.returncode == 3

    # A dataset of other classes, and a model file that is not there: failed at once.
    other = tmp_path / "pets"
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (other / split / cls).mkdir(parents=True)
            (other / split / cls / "a.jpg").write_bytes(
                (color_dataset / "test" / "hotdog" / "000.jpg").read_bytes())
    for data, path, kind in ((other, model, ErrorKind.BAD_PARAMS),
                             (color_dataset, tmp_path / "gone.pt", ErrorKind.BAD_CHECKPOINT)):
        proc = evaluation(data, path)
        last = list(proc.events())[-1]
        assert isinstance(last, Error) and last.kind is kind, last
