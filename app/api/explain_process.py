"""What runs in an API process's explanation process (``/predict?explain=true``;
:class:`app.api.explainers.Explanations` starts it). Grad-CAM needs gradients, an fp32 model
and several times a prediction's CPU per photo; on a thread of the API process it would also
hold the interpreter lock between torch's operations, and the request path (the event loop,
decoding, the batcher) would wait for it whatever its priority: next to a burst of
explanations, plain predictions lost 18 % that way on 2 cores, against none to 9 % with the
same work in a process of its own in the SCHED_IDLE class (bench/explain_load.py; see the
README).

This module imports only the engine: it is what the process imports when it starts."""

from __future__ import annotations

import os
from collections import OrderedDict
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import torch

from app.core.procs import die_with_parent
from app.engine.explain import Crop, Explainer, Explanation
from app.engine.images import DecodeBudget, set_decode_budget


@dataclass
class _Process:
    threads: int
    device: str
    models: int  # explainers kept, least recently used dropped
    budget: DecodeBudget
    explainers: OrderedDict[str, Explainer]


_process: _Process | None = None


def start(nice: int, threads: int, device: str, models: int, decode_bytes: int | None
          ) -> None:
    """The process's initializer: it dies with the API process, runs at ``nice`` (when
    plain predictions need the cores, explanations wait; an idle machine still runs them
    at full speed), with ``threads`` intra-op threads and a decode budget of its own
    (``DECODE_BUDGET_BYTES``, None: sized from this machine's memory)."""
    global _process
    die_with_parent()
    with suppress(AttributeError, OSError):  # not Linux, or not allowed: normal priority
        os.setpriority(os.PRIO_PROCESS, 0, nice)
        if nice == 19:  # the lowest: Linux's idle class, which runs only on idle cores
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    torch.set_num_threads(threads)
    _process = _Process(threads=threads, device=device, models=models,
                        budget=set_decode_budget(decode_bytes), explainers=OrderedDict())


def explain(job_id: str, checkpoint: Path, data: bytes, name: str, target: str, crop: Crop,
            wait: float | None) -> Explanation:
    """One photo's explanation for ``target``; its decode within this process's budget,
    waiting for it up to ``wait`` seconds."""
    assert _process is not None, "explain_process.start() runs first (the initializer)"
    return _explainer(_process, job_id, checkpoint).explain(
        data, target, crop=crop, name=name, budget=_process.budget, wait=wait,
        threads=_process.threads)


def _explainer(process: _Process, job_id: str, checkpoint: Path) -> Explainer:
    cached = process.explainers
    if job_id in cached:
        cached.move_to_end(job_id)
        return cached[job_id]
    explainer = cached[job_id] = Explainer(checkpoint, device=process.device)
    while len(cached) > process.models:
        cached.popitem(last=False)
    return explainer
