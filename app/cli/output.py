"""How the command line talks: results as one JSON line, the one progress bar and the one
per-epoch table (``train``, ``watch`` and the demo).

Progress bars go to stderr, shown only when it is a terminal, so that stdout stays clean for
``--json``. Lines go through :func:`write_line`, which keeps a bar in progress intact.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm


def emit_listing(as_json: bool, key: str, rows: Sequence[Any], header: str,
                 line: Callable[[Any], str]) -> None:
    """A list command's answer: ``{key: rows}`` as one JSON line, or a header and a line a
    row (``line(row)``) for people."""
    if as_json:
        emit_json({key: rows})
        return
    print(header)
    for row in rows:
        print(line(row))


def emit_json(obj: object) -> None:
    """A command's result for scripts: one JSON object on one line of stdout."""
    print(json.dumps(obj, default=_json_default), flush=True)


def _json_default(o: object) -> object:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def progress_bar(**kwargs: Any) -> tqdm[Any]:
    """A tqdm bar on stderr, shown when stderr is a terminal (``--json`` or not)."""
    return tqdm(disable=not sys.stderr.isatty(), file=sys.stderr, dynamic_ncols=True,
                leave=False, **kwargs)


def write_line(line: str, stream: TextIO | None = None) -> None:
    """Print ``line`` to ``stream`` (stdout) above any progress bar in progress."""
    out = stream or sys.stdout
    tqdm.write(line, file=out)
    out.flush()


RUN_WIDTH = 9  # "fine-tune"


def _optional(value: float | None, width: int, spec: str) -> str:
    """A figure a run may not have (validation metrics without a validation split): '-'."""
    return f"{'-' if value is None else format(value, spec):>{width}}"


class EpochTable:
    """Per-epoch metrics as rows under one header, printed before the first row. With
    ``runs``, a first column names the run (the demo trains several at once)."""

    HEADER = (f"{'epoch':>5} {'train loss':>10} {'train acc':>9} {'val loss':>8} "
              f"{'val acc':>7} {'test loss':>9} {'test acc':>8} {'img/s':>7} {'sec':>6}")

    def __init__(self, write: Callable[[str], None] = write_line, *, runs: bool = False
                 ) -> None:
        self.write = write
        self.runs = runs
        self.started = False

    def add(self, m: Mapping[str, Any], run: str = "") -> None:
        """``m``: an epoch's metrics (EpochMetrics.to_dict(), or the API's epoch record)."""
        if not self.started:
            self.started = True
            self.write(self._prefix("run") + self.HEADER)
        self.write(self._prefix(run) +
                   f"{m['epoch']:>5} {m['train_loss']:>10.4f} {m['train_acc']:>9.3f} "
                   f"{_optional(m.get('val_loss'), 8, '.4f')} "
                   f"{_optional(m.get('val_acc'), 7, '.3f')} "
                   f"{m['test_loss']:>9.4f} {m['test_acc']:>8.3f} {m['images_per_s']:>7.1f} "
                   f"{m['seconds']:>6.1f}")

    def _prefix(self, run: str) -> str:
        return f"{run:<{RUN_WIDTH}} " if self.runs else ""


class Output:
    """Where a long command talks (the demo's output object, app.experiment.DemoOutput):
    messages on stdout, or stderr when stdout is for JSON; progress bars on stderr."""

    def __init__(self, *, json_mode: bool = False) -> None:
        self.stream = sys.stderr if json_mode else sys.stdout
        self.table = EpochTable(self.say, runs=True)

    def say(self, message: str) -> None:
        write_line(message, self.stream)

    def bar(self, **kwargs: Any) -> tqdm[Any]:
        return progress_bar(**kwargs)

    def epoch(self, run: str, metrics: Mapping[str, Any]) -> None:
        self.table.add(metrics, run)
