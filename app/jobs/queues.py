"""Which broker queue a job goes to, and which queues a worker takes jobs from.

From ``TRAINING_QUEUE`` (say ``training``) come three queues:

- ``training.gpu``: jobs that asked for ``device: "cuda"``, or for ``gpus`` other than 1
  (several, or 0: all of the worker's) without saying ``cpu``; only workers with a GPU take
  them.
- ``training.cpu``: jobs that asked for ``device: "cpu"``; only workers without one take them.
- ``training``: every other job (``device: "auto"``, the default); every worker takes them.

So GPU and CPU-only workers can share one broker and one database, and a job that needs a
GPU never lands on a CPU-only worker.
"""

from __future__ import annotations

from typing import Any


def queue_for(base: str, params: dict[str, Any]) -> str:
    device = str(params.get("device") or "auto")
    if device == "cpu":
        return f"{base}.cpu"
    if device.startswith("cuda") or int(params.get("gpus", 1)) != 1:
        return f"{base}.gpu"
    return base


def worker_queues(base: str, *, has_gpu: bool) -> list[str]:
    """Its own kind's queue first, then the shared one."""
    return [f"{base}.gpu" if has_gpu else f"{base}.cpu", base]


def all_queues(base: str) -> list[str]:
    return [base, f"{base}.gpu", f"{base}.cpu"]
