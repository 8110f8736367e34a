"""Which epoch's model a run keeps, read from the validation split alone.

``select``: ``best`` keeps the epoch with the best ``select_metric`` on the validation split
(the first such epoch on a tie), ``last`` the last epoch, ``auto`` is ``best`` when the run
has a validation split and ``last`` otherwise. The test split is never read here: an
epoch's test figures are reported, never used to choose.

The training loop, the API (which epoch a running job would keep now) and the checkpoint
all go through :func:`pick` and :func:`improves`, so they agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar

SELECT_CHOICES = ("auto", "best", "last")
SELECT_METRICS = ("val_loss", "val_acc", "val_macro_f1")
LOWER_IS_BETTER = frozenset({"val_loss"})

T = TypeVar("T")


def resolve(select: str, has_val: bool) -> str:
    """``best`` or ``last`` for a run with (or without) a validation split."""
    if select == "auto":
        return "best" if has_val else "last"
    if select == "best" and not has_val:
        raise ValueError("select 'best' needs a validation split: give the dataset a val/ "
                         "folder or set val_fraction above 0")
    return select


def score(epoch: Any, metric: str) -> float | None:
    """``metric`` of an epoch's figures (EpochMetrics, an epoch row or a dict); None
    without a validation split."""
    value = epoch.get(metric) if isinstance(epoch, dict) else getattr(epoch, metric)
    return None if value is None else float(value)


def improves(new: float | None, old: float | None, metric: str) -> bool:
    """Whether ``new`` is strictly better than ``old`` (None: nothing yet). NaN never is."""
    if new is None or math.isnan(new):
        return False
    if old is None:
        return True
    return new < old if metric in LOWER_IS_BETTER else new > old


def pick(history: Sequence[T], select: str, metric: str) -> T | None:
    """The epoch ``select`` keeps of ``history`` (in epoch order): the last, or the first
    with the best ``metric``; the last when no epoch has a score (the run diverged)."""
    if not history:
        return None
    if select != "best":
        return history[-1]
    best: T | None = None
    for epoch in history:
        if improves(score(epoch, metric), None if best is None else score(best, metric), metric):
            best = epoch
    return best if best is not None else history[-1]
