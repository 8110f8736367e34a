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
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "chaos.py"), *SHORT_RUN],
                          capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode in (0, 1), proc.stderr[-5000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sum(result["kills"].values()) > 0, result
    broken = {name: inv["failures"] for name, inv in result["invariants"].items()
              if not inv["held"]}
    assert not broken, json.dumps(result, indent=1) + "\n" + proc.stderr[-3000:]
    assert proc.returncode == 0
