"""The events between the worker and the training process: every type round-trips, and a
line that is not an event is refused with the reason."""

from __future__ import annotations

import json
import re

import pytest

from app.db.models import ErrorKind
from app.engine import EpochMetrics
from worker.protocol import (
    EVENT_TYPES,
    Cancelled,
    Checkpoint,
    Done,
    Epoch,
    Error,
    Event,
    Progress,
    ProtocolError,
    Start,
    decode,
    encode,
)

WEIGHTS_MISSING = Error(kind=ErrorKind.WEIGHTS_MISSING, exception="PretrainedWeightsMissing",
                        message="no ImageNet weights")
EVENTS: list[Event] = [
    Start(classes=["hotdog", "not-hotdog"], train_count=16, test_count=8, device="cpu",
          precision="fp32", start_epoch=1, epochs=3, batches_per_epoch=2, world_size=1,
          val_count=2),
    Progress(epoch=2, fraction=0.5),
    Epoch(metrics=EpochMetrics(epoch=2, epochs=3, train_loss=0.6, train_acc=0.75,
                               test_loss=0.5, test_acc=0.875, images_per_s=120.5, seconds=1.25)),
    # with a validation split's figures (without one they are null, as above)
    Epoch(metrics=EpochMetrics(epoch=2, epochs=3, train_loss=0.6, train_acc=0.75,
                               test_loss=0.5, test_acc=0.875, images_per_s=120.5, seconds=1.25,
                               val_loss=0.4, val_acc=1.0, val_macro_f1=1.0)),
    Checkpoint(epoch=2, path="/data/jobs/x/last.pt"),
    Done(checkpoint="/data/jobs/x/model.pt", test_acc=0.875,
         evaluation={"accuracy": 0.875, "loss": 0.5, "classes": ["a", "b"],
                     "confusion": [[4, 0], [1, 3]], "per_class": [], "count": 8},
         exports={"onnx": {"file": "/data/jobs/x/model.onnx", "max_abs_diff": 1e-6}},
         selected_epoch=2, note="stopped early after epoch 3 of 5"),
    Cancelled(),
    WEIGHTS_MISSING,
]


def test_every_event_type_round_trips() -> None:
    assert {type(e) for e in EVENTS} == set(EVENT_TYPES.values())
    for event in EVENTS:
        line = encode(event)
        assert "\n" not in line and json.loads(line)["event"] == event.name
        assert decode(line) == event


def test_the_wire_format() -> None:
    assert json.loads(encode(WEIGHTS_MISSING)) == {
        "event": "error", "kind": "weights_missing", "exception": "PretrainedWeightsMissing",
        "message": "no ImageNet weights"}
    # the job's error text, as it has always read
    assert WEIGHTS_MISSING.text == "PretrainedWeightsMissing: no ImageNet weights"
    assert decode('{"event": "progress", "epoch": 1, "fraction": 1}') == Progress(1, 1.0)


@pytest.mark.parametrize(("line", "reason"), [
    ("Downloading weights 45%", "not JSON"),
    ('{"event": "progress", "epoch": 1, "frac', "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"epoch": 1}', "unknown event None"),
    ('{"event": "restart"}', "unknown event 'restart'"),
    ('{"event": "progress", "epoch": 1}', "missing fields ['fraction']"),
    ('{"event": "cancelled", "why": "user"}', "unexpected fields ['why']"),
    ('{"event": "progress", "epoch": "1", "fraction": 0.5}', "epoch: expected"),
    ('{"event": "progress", "epoch": true, "fraction": 0.5}', "epoch: expected"),
    ('{"event": "epoch", "metrics": [1]}', "metrics: expected an object"),
    ('{"event": "epoch", "metrics": {"epoch": 1}}', "missing fields"),
    ('{"event": "error", "kind": "gremlins", "exception": "X", "message": "m"}',
     "kind: 'gremlins' is not a ErrorKind"),
    ('{"event": "start", "classes": [1, 2], "train_count": 1, "test_count": 1, "device": "cpu",'
     ' "precision": "fp32", "start_epoch": 0, "epochs": 1, "batches_per_epoch": 1,'
     ' "world_size": 1, "val_count": 0}', "classes: expected a list of strings"),
    ('{"event": "epoch", "metrics": {"epoch": 1, "epochs": 1, "train_loss": 1, "train_acc": 1,'
     ' "test_loss": 1, "test_acc": 1, "images_per_s": 1, "seconds": 1, "val_loss": "low",'
     ' "val_acc": null, "val_macro_f1": null}}', "val_loss: expected"),
])
def test_a_line_that_is_not_an_event_is_refused_with_the_reason(line: str, reason: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(reason)):
        decode(line)
