"""The chaos harness's short seeded run (bench/chaos.py): a real embedded stack whose
training processes and workers are killed at random moments, and cancels; then every
invariant must hold. `bench/chaos.py --kills 300` is the long run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# 20 faults from a fixed seed; the faults' moments still depend on the machine's speed, the
# invariants checked do not. Bounded: faults for 150 s at most, then 150 s for the jobs to end.
SHORT_RUN = ["--seed", "13", "--kills", "20", "--jobs", "3", "--epochs", "5",
             "--duration", "150", "--deadline", "150"]


@pytest.mark.slow
def test_a_short_seeded_chaos_run_keeps_every_invariant() -> None:
    with subprocess.Popen([sys.executable, str(ROOT / "bench" / "chaos.py"), *SHORT_RUN],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}) as proc:
        try:
            out, err = proc.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            proc.terminate()  # the harness stops its stack on SIGTERM
            out, err = proc.communicate(timeout=120)
            pytest.fail(f"the chaos run did not end within 900 s\n{err[-5000:]}")
    assert proc.returncode in (0, 1), err[-5000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert sum(result["kills"].values()) > 0, result
    broken = {name: inv["failures"] for name, inv in result["invariants"].items()
              if not inv["held"]}
    assert not broken, json.dumps(result, indent=1) + "\n" + err[-3000:]
    assert proc.returncode == 0
