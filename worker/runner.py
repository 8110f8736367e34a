"""Starting and watching a job's training process (see :mod:`worker.child`)."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core.logs import job_env
from app.engine import TrainConfig


def _die_with_parent() -> None:
    """Linux: the training dies with the worker that started it (a killed worker must not
    leave a run behind that holds the GPU and writes the job's files)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:
            pass


PR_SET_PDEATHSIG = 1


@dataclass
class TrainingProcess:
    """One training run in a child process; iterate :meth:`events` until it ends."""

    data_dir: Path
    config: TrainConfig
    out: Path
    epoch_checkpoint: Path
    export_onnx: bool = True
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    returncode: int | None = None

    def start(self) -> TrainingProcess:
        spec = {
            "data_dir": str(self.data_dir), "out": str(self.out),
            "epoch_checkpoint": str(self.epoch_checkpoint),
            # An earlier attempt's last epoch, if any: a resumed job continues from it.
            "resume_from": str(self.epoch_checkpoint), "config": self.config.to_dict(),
            "export_onnx": self.export_onnx,
        }
        self.out.parent.mkdir(parents=True, exist_ok=True)
        fd, spec_path = tempfile.mkstemp(prefix=".spec-", suffix=".json", dir=self.out.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump(spec, fh)
        self._spec_path = Path(spec_path)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker.child", spec_path],
            stdout=subprocess.PIPE, stderr=None, text=True, bufsize=1,
            env={**os.environ, **job_env(), **self.env}, preexec_fn=_die_with_parent,
        )
        return self

    def events(self) -> Iterator[dict[str, Any]]:
        """The child's events, in order, until its stdout closes; then ``returncode`` is set."""
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if line.startswith("{"):
                yield json.loads(line)
        self.returncode = self.proc.wait()
        self._spec_path.unlink(missing_ok=True)

    def cancel(self) -> None:
        """Ask the child to stop between batches."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
