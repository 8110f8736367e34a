"""What a job's training process (:mod:`worker.child`) tells its worker: one event per line
of its stdout, as JSON with an ``"event"`` name and the event's fields.

A run says :class:`Start`, then (resumed) an :class:`Epoch` for each epoch it resumes after,
then :class:`Progress` (at most once a second), :class:`Epoch` and :class:`Checkpoint` as it
goes (an epoch's ``Epoch`` before its ``Checkpoint``: a run killed in between repeats it, so
no epoch is ever checkpointed unreported), and ends with exactly one :class:`Done`,
:class:`Cancelled` or :class:`Error` (an :data:`Outcome`). Both sides use :func:`encode` and
:func:`decode`, so the format lives here alone.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
from dataclasses import dataclass
from typing import Any, ClassVar, Union, get_args, get_origin, get_type_hints

from app.db.models import ErrorKind
from app.engine import EpochMetrics


class ProtocolError(ValueError):
    """A line that is not an event of this protocol (garbled, unknown, or missing fields)."""


@dataclass(frozen=True)
class Start:
    name: ClassVar[str] = "start"
    classes: list[str]
    train_count: int
    test_count: int
    device: str
    precision: str
    start_epoch: int  # epochs already done (a resumed run continues after them)
    epochs: int
    batches_per_epoch: int
    world_size: int  # training processes (torchrun); 1 for the plain single process
    val_count: int  # validation images (0: no validation split)


@dataclass(frozen=True)
class Progress:
    """How far epoch ``epoch`` (1-based) is, ``0 < fraction < 1``."""

    name: ClassVar[str] = "progress"
    epoch: int
    fraction: float


@dataclass(frozen=True)
class Epoch:
    name: ClassVar[str] = "epoch"
    metrics: EpochMetrics


@dataclass(frozen=True)
class Checkpoint:
    """The run's state after ``epoch`` is on disk: a later attempt resumes from it."""

    name: ClassVar[str] = "checkpoint"
    epoch: int
    path: str


@dataclass(frozen=True)
class Done:
    name: ClassVar[str] = "done"
    checkpoint: str
    test_acc: float  # the kept model's
    evaluation: dict[str, Any]  # app.engine.Evaluation.to_dict(), of the kept model on test
    exports: dict[str, Any]  # by format: app.engine.export.ExportRecord.to_dict()
    selected_epoch: int | None  # the epoch whose model the checkpoint holds (None: evaluate)
    note: str | None  # e.g. why it stopped before its last epoch (early stopping)


@dataclass(frozen=True)
class Cancelled:
    name: ClassVar[str] = "cancelled"


@dataclass(frozen=True)
class Error:
    """The run failed in a way no other attempt would fix."""

    name: ClassVar[str] = "error"
    kind: ErrorKind
    exception: str  # what failed, e.g. "PretrainedWeightsMissing", "OutOfMemory"
    message: str

    @property
    def text(self) -> str:
        """The job's ``error``, as users and clients have always read it."""
        return f"{self.exception}: {self.message}"


Event = Start | Progress | Epoch | Checkpoint | Done | Cancelled | Error
Outcome = Done | Cancelled | Error  # how a run ends: exactly one of these, last
EVENT_TYPES: dict[str, type[Event]] = {
    cls.name: cls for cls in (Start, Progress, Epoch, Checkpoint, Done, Cancelled, Error)
}


def encode(event: Event) -> str:
    """One line of JSON (without the newline)."""
    return json.dumps({"event": event.name, **dataclasses.asdict(event)})


def decode(line: str) -> Event:
    """The event on ``line``; :class:`ProtocolError` if it is not one."""
    try:
        fields = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise ProtocolError(f"not a JSON object: {type(fields).__name__}")
    name = fields.pop("event", None)
    cls = EVENT_TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ProtocolError(f"unknown event {name!r}")
    try:
        event: Event = _build(cls, fields)
    except ProtocolError as exc:
        raise ProtocolError(f"{name} event: {exc}") from None
    return event


def _build(cls: type[Any], fields: dict[str, Any]) -> Any:
    """An instance of the dataclass ``cls`` from JSON ``fields``, every field checked."""
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in fields]
    extra = sorted(set(fields) - set(names))
    if missing or extra:
        raise ProtocolError(f"missing fields {missing}, unexpected fields {extra}")
    return cls(**{n: _value(hints[n], fields[n], n) for n in names})


def _value(expected: Any, value: Any, field: str) -> Any:
    """``value`` as the field's type: JSON numbers, strings, lists and objects as they are
    (ints accepted for floats), enums by value, nested dataclasses built field by field,
    ``X | None`` as null or an X."""
    if get_origin(expected) in (Union, types.UnionType):
        if value is None and type(None) in get_args(expected):
            return None
        (inner,) = [a for a in get_args(expected) if a is not type(None)]
        return _value(inner, value, field)
    if isinstance(expected, type) and dataclasses.is_dataclass(expected):
        if not isinstance(value, dict):
            raise ProtocolError(f"{field}: expected an object, got {value!r}")
        return _build(expected, value)
    if isinstance(expected, type) and issubclass(expected, enum.Enum):
        try:
            return expected(value)
        except ValueError:
            raise ProtocolError(f"{field}: {value!r} is not a {expected.__name__}") from None
    runtime = get_origin(expected) or expected
    if runtime is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, runtime) or (isinstance(value, bool) and runtime is not bool):
        raise ProtocolError(f"{field}: expected {expected}, got {value!r}")
    if runtime is list and get_args(expected) == (str,) and not all(
            isinstance(item, str) for item in value):
        raise ProtocolError(f"{field}: expected a list of strings, got {value!r}")
    return value
