"""Starting and watching a job's training process (see :mod:`worker.child`)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core.logs import job_env
from app.core.procs import die_with_parent
from app.engine import TrainConfig
from worker.protocol import Event, ProtocolError, decode

log = logging.getLogger(__name__)


def _ranks_of(launcher: int) -> list[int]:
    """The training processes torchrun started (its children running worker.child)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == launcher and b"worker.child" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return pids


# What makes fit() train as one rank of several (set by torchrun for each of its processes).
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                      "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


class NotEnoughDevices(ValueError):
    """The job asks for more GPUs than this worker has (it fails at once, no retry)."""


def cuda_device_count() -> int:
    """This worker's GPUs (``CUDA_VISIBLE_DEVICES`` applies); 0 without CUDA."""
    import torch

    return torch.cuda.device_count()


def training_processes(gpus: int, gpu_count: int, cpu_processes: int = 0) -> int:
    """How many training processes a job asking for ``gpus`` (0: all) runs on a worker with
    ``gpu_count`` GPUs. Without GPUs the job trains in one CPU process, or, for a request of
    N >= 2 where the worker allows ``cpu_processes`` >= N (``CPU_DDP_PROCESSES``; tests and
    development), in N CPU processes over gloo."""
    if gpu_count > 0:
        wanted = gpu_count if gpus == 0 else gpus
        if wanted > gpu_count:
            raise NotEnoughDevices(
                f"the job asks for {gpus} GPUs but its worker has {gpu_count}; submit it "
                f"with gpus <= {gpu_count}, or gpus=0 for all of the worker's GPUs"
            )
        return wanted
    if gpus == 0:
        return max(1, cpu_processes)
    if gpus == 1:
        return 1
    if gpus <= cpu_processes:
        return gpus
    raise NotEnoughDevices(
        f"the job asks for {gpus} GPUs but its worker has none (CUDA is not available"
        + (f"; it runs at most {cpu_processes} CPU processes" if cpu_processes > 1 else "")
        + "); submit it with gpus=1 to train on the CPU"
    )


@dataclass
class TrainingProcess:
    """One training run in a child process; iterate :meth:`events` until it ends. With
    ``evaluate`` (a model file), the process scores that model on ``data_dir``'s test split
    instead (an evaluate job); with ``review``, it reviews the labels of ``data_dir``'s
    training images (a review job); both with the same events and signals."""

    data_dir: Path
    config: TrainConfig
    out: Path
    epoch_checkpoint: Path
    export_onnx: bool = True
    export_int8: bool = True
    evaluate: Path | None = None
    # A predict job (worker.child's predict()): model, photos, split, results, summary,
    # runtime, batch_size.
    predict: dict[str, Any] | None = None
    review: dict[str, Any] | None = None  # a review job: see worker.child.review
    env: dict[str, str] = field(default_factory=dict)
    # More than one: ``torchrun`` starts this many training processes (DDP, one per GPU, or
    # gloo on CPU); rank 0 reports on the shared stdout. See :func:`training_processes`.
    processes: int = 1
    # The job's own log (app.core.joblog): the training process appends its lines there too.
    log: Path | None = None
    log_bytes: int = 0
    proc: subprocess.Popen[str] | None = None
    returncode: int | None = None

    def start(self) -> TrainingProcess:
        spec = {
            "data_dir": str(self.data_dir), "out": str(self.out),
            "epoch_checkpoint": str(self.epoch_checkpoint),
            # An earlier attempt's last epoch, if any: a resumed job continues from it.
            "resume_from": str(self.epoch_checkpoint), "config": self.config.to_dict(),
            "export_onnx": self.export_onnx, "export_int8": self.export_int8,
            **({"evaluate": str(self.evaluate)} if self.evaluate is not None else {}),
            **({"predict": self.predict} if self.predict is not None else {}),
            **({"job_log": str(self.log), "job_log_bytes": self.log_bytes}
               if self.log is not None and self.log_bytes > 0 else {}),
            **({"review": self.review} if self.review is not None else {}),
        }
        self.out.parent.mkdir(parents=True, exist_ok=True)
        # One attempt of a job runs at a time (the claim is atomic), so a spec already here
        # is an earlier attempt's whose worker was killed before it could remove it.
        for stale in self.out.parent.glob(".spec-*.json"):
            stale.unlink(missing_ok=True)
        fd, spec_path = tempfile.mkstemp(prefix=".spec-", suffix=".json", dir=self.out.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump(spec, fh)
        self._spec_path = Path(spec_path)
        env = {**_child_env(), **job_env(), **self.env}
        spare = SPARE.take() if self.predict is not None and self.processes <= 1 else None
        if spare is not None and _hand_over(spare, spec_path, env):
            self.proc = spare
            return self
        if self.processes <= 1:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker.child", spec_path],
                stdout=subprocess.PIPE, stderr=None, text=True, bufsize=1,
                env=env, preexec_fn=die_with_parent,
            )
            return self
        # torchrun from this virtualenv (cancel: see cancel()). The ranks die with it when it
        # is killed (worker.child sets their parent-death signal). Its own
        # session: a Ctrl-C at the worker's terminal is the worker's to handle, as for one
        # process (which ignores SIGINT).
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.processes)))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--standalone",
             f"--nproc-per-node={self.processes}", "--max-restarts=0",
             "-m", "worker.child", spec_path],
            stdout=subprocess.PIPE, stderr=None, text=True, bufsize=1,
            env=env, preexec_fn=die_with_parent, start_new_session=True,
        )
        return self

    def events(self) -> Iterator[Event]:
        """The child's events, in order, until its stdout closes; then ``returncode`` is set.
        Other lines (a library printing to stdout) are logged and skipped."""
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = decode(line)
            except ProtocolError as exc:
                log.warning("the training process wrote a line that is not an event (%s): %.300s",
                            exc, line)
                continue
            yield event
        self.returncode = self.proc.wait()
        self._spec_path.unlink(missing_ok=True)

    def cancel(self) -> None:
        """Ask the child to stop between batches. Several processes: SIGTERM to each rank
        (they agree to stop at the same batch), not to torchrun, which would forward it to
        each rank's whole process group, DataLoader workers included."""
        if self.proc is None or self.proc.poll() is not None:
            return
        ranks = _ranks_of(self.proc.pid) if self.processes > 1 else []
        for pid in ranks or [self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):  # it has just ended
                os.kill(pid, signal.SIGTERM)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in TORCHRUN_VARIABLES:  # a worker started by some launcher: not the job's
        env.pop(name, None)
    return env


def _hand_over(spare: subprocess.Popen[str], spec_path: str, env: dict[str, str]) -> bool:
    """Give a waiting spare process its job: the spec file, and the environment a process
    started now would have (the worker's, the job's); False when the spare is gone (the
    caller starts a process of its own)."""
    assert spare.stdin is not None
    try:
        spare.stdin.write(json.dumps({"spec": spec_path, "env": env}) + "\n")
        spare.stdin.close()
    except OSError:  # it died while waiting (killed, out of memory)
        spare.kill()
        spare.wait()
        return False
    log.info("the job runs in the spare prediction process %d (started ahead of it)",
             spare.pid)
    return True


class SpareProcess:
    """One prediction process started ahead of its job (WARM_PREDICT_PROCESS): ``python -m
    worker.child --spare`` imports PyTorch, torchvision and the engine (seconds of a batch
    job's run otherwise), then waits for a spec on its stdin. A predict job takes it
    (:meth:`take`) instead of starting a process, and the worker starts the next one when
    the job has ended (:meth:`ensure`), on a thread of its own: the spare dies with that
    thread's process (parent-death signal), and the thread lives as long as the worker. A
    spare that died is replaced at the next :meth:`ensure`; none at hand: the job starts
    its own process, as every job did before."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[str] | None = None
        self.wanted = threading.Event()
        self.closed = False
        self.keeper: threading.Thread | None = None

    def ensure(self) -> None:
        """Have a spare waiting soon (started on the keeper thread; the first call starts
        that thread)."""
        with self.lock:
            if self.closed:
                return
            if self.keeper is None:
                self.keeper = threading.Thread(target=self._keep, daemon=True,
                                               name="hotdog-spare-keeper")
                self.keeper.start()
        self.wanted.set()

    def replenish(self) -> None:
        """:meth:`ensure`, if this worker keeps a spare (it has called :meth:`ensure`)."""
        if self.keeper is not None:
            self.ensure()

    def take(self) -> subprocess.Popen[str] | None:
        """The waiting spare, now the caller's; None when there is none alive."""
        with self.lock:
            proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is not None:
            return None
        return proc

    def close(self) -> None:
        """The worker is stopping: the spare that waits goes, and none is started again."""
        with self.lock:
            self.closed = True
            proc, self.proc = self.proc, None
        self.wanted.set()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def _keep(self) -> None:
        while True:
            self.wanted.wait()
            self.wanted.clear()
            with self.lock:
                if self.closed:
                    return
                if self.proc is not None and self.proc.poll() is None:
                    continue
                try:
                    self.proc = subprocess.Popen(
                        [sys.executable, "-m", "worker.child", SPARE_ARG],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
                        text=True, bufsize=1, env=_child_env(), preexec_fn=die_with_parent)
                except OSError:
                    log.exception("the spare prediction process could not be started; jobs "
                                  "start their own")
                    self.proc = None


SPARE_ARG = "--spare"
# This worker's spare prediction process (kept from when the worker is ready, if
# WARM_PREDICT_PROCESS; run_job_now without a Celery worker has none).
SPARE = SpareProcess()
