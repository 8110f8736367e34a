"""The job's training process: events, cancellation, a hard kill and resume, errors."""

from __future__ import annotations

from pathlib import Path

from app.engine import TrainConfig, load_checkpoint
from tests.common import TINY
from worker.runner import TrainingProcess


def _process(data: Path, tmp_path: Path, epochs: int) -> TrainingProcess:
    return TrainingProcess(data_dir=data, config=TrainConfig(**TINY, epochs=epochs),
                           out=tmp_path / "job" / "model.pt",
                           epoch_checkpoint=tmp_path / "job" / "last.pt")


def test_events_of_a_successful_run(color_dataset: Path, tmp_path: Path) -> None:
    proc = _process(color_dataset, tmp_path, epochs=2).start()
    events = list(proc.events())
    kinds = [e["event"] for e in events if e["event"] != "progress"]  # progress is timed
    assert kinds == ["start", "checkpoint", "epoch", "checkpoint", "epoch", "done"]
    for e in events:
        if e["event"] == "progress":
            assert e["epoch"] in (1, 2) and 0 < e["fraction"] < 1
    assert [e["metrics"]["epoch"] for e in events if e["event"] == "epoch"] == [1, 2]
    done = events[-1]
    assert proc.returncode == 0 and Path(done["checkpoint"]).is_file()
    assert done["evaluation"]["count"] == 8 and 0 <= done["test_acc"] <= 1
    assert not list((tmp_path / "job").glob(".spec-*"))


def test_cancel_stops_between_batches(color_dataset: Path, tmp_path: Path) -> None:
    proc = _process(color_dataset, tmp_path, epochs=50).start()
    events = []
    for event in proc.events():
        events.append(event)
        if event["event"] == "start":
            proc.cancel()
    assert events[-1] == {"event": "cancelled"} and proc.returncode == 3
    assert not (tmp_path / "job" / "model.pt").exists()


def test_killed_process_resumes_from_its_last_epoch(color_dataset: Path, tmp_path: Path) -> None:
    first = _process(color_dataset, tmp_path, epochs=3).start()
    for event in first.events():
        if event["event"] == "checkpoint":
            first.kill()  # kill -9 in the middle of the run
            break
    first.proc.wait()  # type: ignore[union-attr]
    assert load_checkpoint(tmp_path / "job" / "last.pt")["epoch"] >= 1
    second = _process(color_dataset, tmp_path, epochs=3).start()
    events = list(second.events())
    start = events[0]
    resumed_epochs = [e["metrics"]["epoch"] for e in events if e["event"] == "epoch"]
    assert start["start_epoch"] >= 1
    assert resumed_epochs == list(range(start["start_epoch"] + 1, 4))
    assert events[-1]["event"] == "done" and second.returncode == 0
    assert len(load_checkpoint(events[-1]["checkpoint"])["history"]) == 3


def test_a_bad_dataset_is_a_readable_error(tmp_path: Path) -> None:
    proc = _process(tmp_path / "missing", tmp_path, epochs=1).start()
    events = list(proc.events())
    assert events[-1]["event"] == "error" and events[-1]["kind"] == "DatasetError"
    assert "no such dataset directory" in events[-1]["message"] and proc.returncode == 1
