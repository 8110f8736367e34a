"""What operators watch: /metrics beyond requests (predictions by label, queue depth,
training images/s and epoch durations) and logs that carry the job id, in text and JSON."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.logs import job_context, make_handler
from app.db.session import make_engine
from app.jobs.service import claim_job, record_epoch
from tests.helpers import (
    TINY,
    Stack,
    embedded_stack,
    finished_job,
    migrated,
    upload,
    zip_tree,
)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text → {(sample name, labels): value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


def named(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples(text).items() if n == name}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated(tmp_path / "data", models_cached=1)  # one model in memory at a time


def test_predictions_are_counted_by_model_and_label(client: TestClient, settings: Settings,
                                                     color_dataset: Path, tmp_path: Path
                                                     ) -> None:
    ds = upload(client, zip_tree(color_dataset)).json()["id"]
    first = finished_job(settings, ds, tmp_path, color_dataset, seed=0)
    photos = [color_dataset / "test" / cls / f"00{i}.jpg"
              for cls in ("hotdog", "not-hotdog") for i in range(3)]
    r = client.post("/predict", data={"model": first},
                    files=[("file", (p.name, p.read_bytes(), "image/jpeg")) for p in photos])
    assert r.status_code == 200, r.text
    labels = [p["label"] for p in r.json()["predictions"]]
    text = client.get("/metrics").text
    counted = named(text, "hotdog_predictions_total")
    assert counted == {frozenset({("model", first), ("label", label)}): float(labels.count(label))
                       for label in set(labels)}
    assert sum(counted.values()) == len(photos) == value(text, "hotdog_predict_images_total")

    # Bounded: a model's series go when it leaves the cache (MODELS_CACHED=1 here).
    second = finished_job(settings, ds, tmp_path, color_dataset, seed=1)
    r = client.post("/predict", data={"model": second},
                    files=[("file", ("a.jpg", photos[0].read_bytes(), "image/jpeg"))])
    label = r.json()["predictions"][0]["label"]
    counted = named(client.get("/metrics").text, "hotdog_predictions_total")
    assert counted == {frozenset({("model", second), ("label", label)}): 1.0}


def test_queue_depth_and_training_speed_come_from_the_database_and_broker(
        client: TestClient, settings: Settings, color_dataset: Path) -> None:
    text = client.get("/metrics").text
    assert value(text, "hotdog_queue_jobs") == 0
    assert value(text, "hotdog_queue_oldest_job_seconds") == 0
    assert value(text, "hotdog_queue_messages", queue="training") == 0
    assert value(text, "hotdog_training_epoch_seconds_count") == 0

    ds = upload(client, zip_tree(color_dataset)).json()["id"]
    # queue_anyway: no worker runs here (without it, POST /jobs refuses the jobs).
    a, b = (client.post("/jobs", json={"dataset_id": ds, **TINY, "epochs": 3,
                                       "queue_anyway": True}).json()["id"]
            for _ in range(2))
    text = client.get("/metrics").text  # no worker runs: both wait, in the database and broker
    assert value(text, "hotdog_queue_jobs") == 2
    assert value(text, "hotdog_queue_messages", queue="training") == 2
    assert value(text, "hotdog_queue_oldest_job_seconds") >= 0

    # A worker claims one and records two epochs, as tasks.py does.
    engine = make_engine(settings.db_url)
    with Session(engine) as s:
        claim_job(s, a, worker="w", lease_seconds=60)
        for epoch, speed, seconds in ((1, 12.5, 3.0), (2, 20.0, 40.0)):
            record_epoch(s, a, {"epoch": epoch, "train_loss": 1.0, "train_acc": 0.5,
                                "test_loss": 1.0, "test_acc": 0.5, "images_per_s": speed,
                                "seconds": seconds})
        s.commit()
    engine.dispose()
    text = client.get("/metrics").text
    assert value(text, "hotdog_queue_jobs") == 1
    assert named(text, "hotdog_training_images_per_second") == {
        frozenset({("job_id", a)}): 20.0}  # the latest epoch of the running job only
    assert value(text, "hotdog_training_epoch_seconds_count") == 2
    assert value(text, "hotdog_training_epoch_seconds_sum") == 43.0
    assert value(text, "hotdog_training_epoch_seconds_bucket", le="1.0") == 0
    assert value(text, "hotdog_training_epoch_seconds_bucket", le="5.0") == 1
    assert value(text, "hotdog_training_epoch_seconds_bucket", le="60.0") == 2
    assert value(text, "hotdog_training_epoch_seconds_bucket", le="+Inf") == 2
    assert b  # still queued


def test_log_lines_carry_the_job_id_in_text_and_json() -> None:
    for fmt in ("text", "json"):
        out = io.StringIO()
        log = logging.getLogger(f"hotdog.test.{fmt}")
        log.addHandler(make_handler(fmt, out))  # what configure_logging puts on the root
        log.setLevel(logging.INFO)
        log.propagate = False
        log.info("outside")
        with job_context("abc123"):
            log.info("inside")
            try:
                raise ValueError("boom")
            except ValueError:
                log.exception("failed")
        log.warning("named", extra={"job_id": "def456"})
        lines = out.getvalue().splitlines()
        if fmt == "json":
            records = [json.loads(line) for line in lines]
            assert [r.get("job_id") for r in records] == [None, "abc123", "abc123", "def456"]
            assert records[1]["message"] == "inside" and records[1]["level"] == "INFO"
            assert "ValueError: boom" in records[2]["exception"]
            assert records[0]["logger"] == "hotdog.test.json" and records[0]["time"].endswith("Z")
        else:
            assert "job_id" not in lines[0] and lines[0].endswith("hotdog.test.text: outside")
            assert lines[1].endswith("hotdog.test.text job_id=abc123: inside")
            assert "job_id=def456: named" in out.getvalue()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with embedded_stack(tmp_path_factory.mktemp("observed"), LOG_FORMAT="json",
                        EXPORT_ONNX="false") as s:
        yield s


def test_a_trained_job_shows_in_metrics_and_every_log_line_about_it_names_it(
        stack: Stack, color_dataset: Path) -> None:
    with stack.client() as c:
        ds = c.upload(color_dataset)
        job = c.submit(ds["id"], **TINY, epochs=2)
        stack.wait(job["id"], {"succeeded"})
        photo = color_dataset / "test" / "hotdog" / "000.jpg"
        label = c.predict([photo], model=job["id"])["predictions"][0]["label"]
    text = httpx.get(stack.url + "/metrics").text
    assert value(text, "hotdog_training_epoch_seconds_count") == 2
    assert value(text, "hotdog_training_epoch_seconds_sum") > 0
    assert value(text, "hotdog_training_epoch_seconds_bucket", le="+Inf") == 2
    assert named(text, "hotdog_training_images_per_second") == {}  # no job runs now
    assert value(text, "hotdog_queue_jobs") == 0
    assert value(text, "hotdog_predictions_total", model=job["id"], label=label) == 1

    # LOG_FORMAT=json: the worker's lines, and its training process's, are JSON objects;
    # those about the job carry its id, whoever logged them.
    records = [json.loads(line) for line in (stack.tmp / "worker.log").read_text().splitlines()
               if line.startswith("{")]
    about = [r for r in records if r.get("job_id") == job["id"]]
    loggers = {r["logger"] for r in about}
    assert {"worker.tasks", "app.engine.train"} <= loggers, loggers
    assert {r["pid"] for r in about} != {about[0]["pid"]}  # worker and training process
    assert sum(r["message"].startswith("epoch ") for r in about
               if r["logger"] == "app.engine.train") == 2
    for r in records:
        if job["id"] in r["message"]:
            assert r.get("job_id") == job["id"], r
    api = [json.loads(line) for line in (stack.tmp / "api.log").read_text().splitlines()
           if line.startswith("{")]
    assert any(r["logger"] == "uvicorn.access" for r in api)
