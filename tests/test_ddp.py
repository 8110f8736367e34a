"""One job on several processes: ``torchrun`` with DDP, here on the CPU over gloo with two
processes (the same code runs one process per GPU over NCCL)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from app.api.schemas import JobCreate
from app.engine import Predictor, TrainConfig, fit, load_checkpoint
from app.engine.distributed import epoch_shard
from tests.helpers import TINY, wait_for
from worker.protocol import Cancelled, Checkpoint, Done, Epoch, Error, Event, Progress, Start
from worker.runner import NotEnoughDevices, TrainingProcess, training_processes

# fp32: the sharded evaluation is compared with a one-process one to the last digits. No
# validation split: the counts below are those of the whole training set (the validation
# split's sharded evaluation: test_a_validation_split_on_two_processes).
DDP = {**TINY, "precision": "fp32", "val_fraction": 0.0}


class Run:
    """A :class:`TrainingProcess` on two processes whose events are collected in a thread."""

    def __init__(self, data: Path, job_dir: Path, config: TrainConfig, processes: int = 2
                 ) -> None:
        self.proc = TrainingProcess(data_dir=data, config=config, out=job_dir / "model.pt",
                                    epoch_checkpoint=job_dir / "last.pt", export_onnx=False,
                                    processes=processes).start()
        self.events: list[Event] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for event in self.proc.events():
            self.events.append(event)

    def wait_for(self, kind: type[Event], timeout: float = 120, **fields: Any) -> Event:
        def seen() -> Event | None:
            match = next((e for e in self.events if isinstance(e, kind)
                          and all(getattr(e, k) == v for k, v in fields.items())), None)
            assert match is not None or self.thread.is_alive(), \
                f"ended without {kind}: {self.events}"
            return match

        return wait_for(seen, timeout=timeout, what=lambda: f"a {kind}: {self.events}")

    def finish(self, timeout: float = 180) -> list[Event]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"still running after {timeout}s: {self.events}"
        return self.events

    def ranks(self) -> list[int]:
        """The pids of the launcher's children (the training ranks)."""
        assert self.proc.proc is not None
        pid = self.proc.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [int(c) for c in children]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pids: list[int], timeout: float) -> None:
    wait_for(lambda: not any(alive(p) for p in pids), timeout=timeout, interval=0.1,
             what=lambda: f"processes to end: {[p for p in pids if alive(p)]} still alive")


def untimed(metrics: dict[str, Any]) -> dict[str, Any]:
    """Epoch metrics without the timings (each rank times its own work)."""
    return {k: v for k, v in metrics.items() if k not in ("images_per_s", "seconds")}


@pytest.fixture(scope="module")
def straight(color_dataset: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[Path, list[Event]]:
    """An uninterrupted two-process run of two epochs through the worker's launcher."""
    job_dir = tmp_path_factory.mktemp("straight")
    run = Run(color_dataset, job_dir, TrainConfig(**DDP, epochs=2, momentum=0.9, seed=5))
    return job_dir, run.finish()


# --------------------------------------------------------------------------- the engine


def test_fit_under_torchrun_shards_reduces_and_reports_on_rank0(color_dataset: Path,
                                                                 tmp_path: Path) -> None:
    config = TrainConfig(**DDP, epochs=2)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "tests.ddp_probe", str(color_dataset), str(tmp_path),
         json.dumps(config.to_dict())],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    train_count = 16  # color_dataset: 8 per class
    for epoch in range(2):
        a, b = r0["epochs"][epoch], r1["epochs"][epoch]
        # Each image once per epoch, on exactly one rank, half on each.
        assert sorted(a["indices"] + b["indices"]) == list(range(train_count))
        assert len(a["indices"]) == len(b["indices"]) == train_count // 2
        # Every rank returns the all-reduced totals: the whole epoch, not its half.
        assert a["seen"] == b["seen"] == train_count
        assert a["loss"] == b["loss"] and a["acc"] == b["acc"]
        assert (a["acc"] * train_count) == pytest.approx(round(a["acc"] * train_count))
    # A new permutation each epoch.
    assert r0["epochs"][0]["indices"] != r0["epochs"][1]["indices"]
    # Rank 0 alone reports: start, every batch with the global image count, each epoch
    # and then its checkpoint; rank 1's callback is only asked whether to stop.
    assert r1["callback"] == []
    kinds = [c[0] for c in r0["callback"]]
    assert kinds == ["start", "batch", "batch", "epoch", "checkpoint",
                     "batch", "batch", "epoch", "checkpoint"]
    assert r0["callback"][0] == ["start", train_count, 2]
    assert [c[3] for c in r0["callback"] if c[0] == "batch"] == [8, 16, 8, 16]
    history = r0["history"]
    assert [m["epoch"] for m in history] == [1, 2]
    assert [untimed(m) for m in r1["history"]] == [untimed(m) for m in history]
    assert [c[1] for c in r0["callback"] if c[0] == "epoch"] == history
    for m, e in zip(history, r0["epochs"], strict=True):
        assert m["train_loss"] == e["loss"] and m["train_acc"] == e["acc"]
        assert math.isfinite(m["train_loss"]) and 0 <= m["train_acc"] <= 1
        assert math.isfinite(m["test_loss"]) and 0 <= m["test_acc"] <= 1
    # One checkpoint (and the epoch file), written by rank 0, with the whole history.
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["last.pt", "model.pt"]
    ck = load_checkpoint(tmp_path / "model.pt")
    compile_decision = ck["compute"].pop("compile")
    assert ck["compute"] == {"device": "cpu", "precision": "fp32", "world_size": 2}
    # auto never compiles several CPU processes (gloo: a development mode), and says so
    assert compile_decision["compiled"] is False
    assert "several CPU processes" in compile_decision["reason"]
    assert ck["history"] == history and ck["epoch"] == 2
    # The evaluation covers the whole test set (both shards, gathered), and is what one
    # process computes from the saved model: every rank evaluated rank 0's weights.
    evaluation = ck["evaluation"]
    assert evaluation == r0["evaluation"] == r1["evaluation"]
    assert sum(map(sum, evaluation["confusion"])) == 8
    local, _ = Predictor(tmp_path / "model.pt", device="cpu", precision="fp32").evaluate_folder(
        color_dataset)
    assert local.confusion == evaluation["confusion"]
    assert local.loss == pytest.approx(evaluation["loss"], rel=1e-5)
    assert history[-1]["test_acc"] == evaluation["accuracy"]


def test_global_batch_is_split_so_the_gradient_is_the_batch_mean() -> None:
    # 21 images, global batch 8, 2 ranks: batches of 8, 8, 5 (pieces 4/4, 4/4, 3/2).
    g = torch.Generator().manual_seed(0)
    shards = [epoch_shard(21, 8, 2, r, torch.Generator().manual_seed(0)) for r in (0, 1)]
    assert [len(b) for b in shards[0].batches] == [4, 4, 3]
    assert [len(b) for b in shards[1].batches] == [4, 4, 2]
    assert shards[0].global_sizes == shards[1].global_sizes == [8, 8, 5]
    everything = sorted(i for s in shards for b in s.batches for i in b)
    assert everything == list(range(21))
    # Rank r backpropagates w * (mean over its n images) and DDP averages over the 2 ranks:
    # each image's loss then counts w / n / 2, which must be 1 / (global batch).
    for i in range(3):
        n0, n1 = len(shards[0].batches[i]), len(shards[1].batches[i])
        for shard, n in ((shards[0], n0), (shards[1], n1)):
            assert shard.weights[i] / n / 2 == pytest.approx(1 / (n0 + n1))
    assert shards[0].weights[:2] == shards[1].weights[:2] == [1.0, 1.0]
    # A last global batch that cannot give each rank two images is dropped (BatchNorm).
    assert epoch_shard(19, 8, 2, 0, g).global_sizes == [8, 8]
    with pytest.raises(ValueError, match="at least 4 training images"):
        epoch_shard(3, 8, 2, 0, g)


# --------------------------------------------------------------------------- through the launcher


def test_two_processes_through_the_worker_launcher(straight: tuple[Path, list[Event]]
                                                   ) -> None:
    job_dir, events = straight
    kinds = [type(e) for e in events if not isinstance(e, Progress)]  # those come by the clock
    # Exactly one report, from rank 0: no event twice.
    assert kinds == [Start, Epoch, Checkpoint, Epoch, Checkpoint, Done], kinds
    start, done = events[0], events[-1]
    assert isinstance(start, Start) and isinstance(done, Done)
    assert start.world_size == 2 and start.train_count == 16
    assert done.exports == {}
    ck = load_checkpoint(job_dir / "model.pt")
    assert ck["compute"]["world_size"] == 2
    assert [m["epoch"] for m in ck["history"]] == [1, 2]
    assert ck["history"] == [e.metrics.to_dict() for e in events if isinstance(e, Epoch)]
    assert not list(job_dir.glob(".spec-*"))  # the spec file is cleaned up


def test_resume_with_two_processes_equals_the_uninterrupted_run(
        color_dataset: Path, tmp_path: Path, straight: tuple[Path, list[Event]]
) -> None:
    cfg = {**DDP, "momentum": 0.9, "seed": 5}  # momentum: the optimiser state is resumed too
    first = Run(color_dataset, tmp_path, TrainConfig(**cfg, epochs=1)).finish()
    assert isinstance(first[-1], Done)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    # The worker resumes from last.pt when it exists, as after a crash or a shutdown.
    resumed = Run(color_dataset, tmp_path, TrainConfig(**cfg, epochs=2)).finish()
    assert isinstance(resumed[0], Start) and resumed[0].start_epoch == 1
    # epoch 1 repeated from the checkpoint (for a record lost with a killed run), then 2
    assert [e.metrics.epoch for e in resumed if isinstance(e, Epoch)] == [1, 2]
    s = load_checkpoint(straight[0] / "model.pt")
    r = load_checkpoint(tmp_path / "model.pt")
    for k in s["model"]:
        assert torch.equal(s["model"][k], r["model"][k]), k
    for k, v in s["optimizer"]["state"].items():
        assert torch.equal(v["momentum_buffer"], r["optimizer"]["state"][k]["momentum_buffer"])
    # The same metrics too ("epochs" differs: the first run was told 1).
    assert [{**untimed(m), "epochs": 2} for m in r["history"]] == \
        [untimed(m) for m in s["history"]]


def test_a_two_process_checkpoint_resumes_in_one_process(
        color_dataset: Path, tmp_path: Path, straight: tuple[Path, list[Event]]
) -> None:
    # The checkpoint does not depend on the number of processes: another number continues
    # from the same state (not bit for bit the same run: other batches per process).
    result = fit(color_dataset, TrainConfig(**DDP, epochs=3, momentum=0.9, seed=5),
                 tmp_path / "m.pt", resume_from=straight[0] / "last.pt")
    ck = load_checkpoint(result.checkpoint)
    assert [m["epoch"] for m in ck["history"]] == [1, 2, 3]
    assert ck["history"][:2] == load_checkpoint(straight[0] / "model.pt")["history"]
    assert ck["compute"]["world_size"] == 1


def test_a_validation_split_on_two_processes(color_dataset: Path, tmp_path: Path) -> None:
    # The validation images are sharded like the test images and gathered back: the epoch's
    # figures are those of the whole split, as one process computes them from the model.
    events = Run(color_dataset, tmp_path,
                 TrainConfig(**{**DDP, "val_fraction": 0.25}, epochs=1, lr=0.01)).finish()
    start = events[0]
    assert isinstance(start, Start) and (start.train_count, start.val_count) == (12, 4)
    (epoch,) = [e.metrics for e in events if isinstance(e, Epoch)]
    val, _ = Predictor(tmp_path / "last.pt", device="cpu", precision="fp32").evaluate_folder(
        color_dataset, split="val")
    assert val.count == 4 and val.accuracy == epoch.val_acc
    assert epoch.val_loss is not None and val.loss == pytest.approx(epoch.val_loss, rel=1e-5)


@pytest.mark.parametrize("how", ["worker", "launcher"])
def test_cancel_stops_every_rank_at_once(color_dataset: Path, tmp_path: Path, how: str) -> None:
    # workers=1: each rank has a DataLoader process too. "worker": what the worker does,
    # SIGTERM to each rank. "launcher": SIGTERM to torchrun, which forwards it to each rank's
    # process group, the loader processes included (they must not die of it mid-batch).
    run = Run(color_dataset, tmp_path, TrainConfig(**DDP, epochs=500, workers=1))
    run.wait_for(Epoch, timeout=180)
    ranks = run.ranks()
    assert len(ranks) == 2
    started = time.monotonic()
    if how == "worker":
        run.proc.cancel()
    else:
        assert run.proc.proc is not None
        run.proc.proc.send_signal(signal.SIGTERM)
    events = run.finish(timeout=60)
    assert time.monotonic() - started < 20, "torchrun had to kill the ranks"
    assert events[-1] == Cancelled(), events[-3:]
    assert not [e for e in events if isinstance(e, (Done, Error))]
    wait_gone(ranks, 10)
    epochs = [e.metrics.epoch for e in events if isinstance(e, Epoch)]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) < 500
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == epochs[-1]


def test_a_stop_asked_of_one_rank_stops_them_all(color_dataset: Path, tmp_path: Path) -> None:
    # The ranks agree on stopping every batch: rank 1 alone is told, and rank 0 (which
    # reports) stops at the same batch and says so, instead of being killed by torchrun
    # when rank 1 leaves.
    run = Run(color_dataset, tmp_path, TrainConfig(**DDP, epochs=500))
    run.wait_for(Epoch, timeout=180)
    ranks = {_rank_of(pid): pid for pid in run.ranks()}
    os.kill(ranks[1], signal.SIGTERM)
    events = run.finish(timeout=60)
    assert events[-1] == Cancelled(), events[-3:]
    wait_gone(list(ranks.values()), 10)


def _rank_of(pid: int) -> int:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    (rank,) = [int(v[5:]) for v in env if v.startswith(b"RANK=")]
    return rank


def test_killing_the_launcher_kills_every_rank(color_dataset: Path, tmp_path: Path) -> None:
    # The worker kills the launcher when it shuts down or loses the lease: no rank may live
    # on to hold a GPU and write the job's files.
    run = Run(color_dataset, tmp_path, TrainConfig(**DDP, epochs=500))
    run.wait_for(Epoch, timeout=180)
    ranks = run.ranks()
    run.proc.kill()
    run.finish(timeout=30)
    wait_gone(ranks, 10)


# --------------------------------------------------------------------------- the job parameter


def test_how_many_processes_a_job_gets() -> None:
    assert training_processes(1, 0) == 1  # the default: one process, CPU or one GPU
    assert training_processes(1, 4) == 1
    assert training_processes(0, 4) == 4  # all of the worker's
    assert training_processes(3, 4) == 3
    assert training_processes(0, 0) == 1
    with pytest.raises(NotEnoughDevices, match="asks for 5 GPUs but its worker has 4"):
        training_processes(5, 4)
    with pytest.raises(NotEnoughDevices, match="asks for 2 GPUs but its worker has none"):
        training_processes(2, 0)
    # CPU_DDP_PROCESSES: a CPU worker runs such a job as gloo processes, up to its limit.
    assert training_processes(2, 0, cpu_processes=2) == 2
    assert training_processes(0, 0, cpu_processes=2) == 2
    with pytest.raises(NotEnoughDevices, match="at most 2 CPU processes"):
        training_processes(3, 0, cpu_processes=2)


def test_gpus_is_a_bounded_job_parameter() -> None:
    assert JobCreate(dataset_id="d").train_config().gpus == 1
    assert JobCreate(dataset_id="d", gpus=0).train_config().gpus == 0
    for bad in (-1, 65):
        with pytest.raises(ValueError, match="gpus"):
            JobCreate(dataset_id="d", gpus=bad)
    with pytest.raises(ValueError, match="gpus must be in 0..64"):
        TrainConfig(gpus=100).resolved()


# --------------------------------------------------------------------------- a real worker


def test_a_two_process_job_through_a_real_worker(color_dataset: Path, tmp_path: Path) -> None:
    from tests.helpers import embedded_stack

    with embedded_stack(tmp_path, EXPORT_ONNX="false", CPU_DDP_PROCESSES="2") as stack, \
            stack.client() as c:
        ds = c.upload(color_dataset)["id"]
        # device cpu: the CPU-only queue (a multi-GPU job would wait for a GPU worker).
        too_many = c.submit(ds, **TINY, epochs=2, gpus=3, device="cpu")["id"]
        job = c.submit(ds, **TINY, epochs=2, gpus=2, device="cpu")
        assert job["params"]["gpus"] == 2
        failed = stack.wait(too_many, {"failed", "succeeded", "cancelled"})
        assert failed["status"] == "failed" and failed["attempt"] == 1, failed
        assert "asks for 3 GPUs" in failed["error"]
        done = stack.wait(job["id"], {"failed", "succeeded", "cancelled"})
        assert done["status"] == "succeeded" and done["attempt"] == 1, done
        assert [m["epoch"] for m in c.metrics(job["id"])] == [1, 2]
        assert sum(map(sum, c.evaluation(job["id"])["confusion"])) == 8
        ck = load_checkpoint(Path(stack.env["DATA_DIR"]) / "jobs" / job["id"] / "model.pt")
        assert ck["compute"]["world_size"] == 2
        # No training process is left behind.
        assert not [p for p in Path("/proc").iterdir() if p.name.isdigit()
                    and job["id"].encode() in _cmdline(p) and os.getpid() != int(p.name)]


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""
