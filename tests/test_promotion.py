"""The promotion gate, the activation history and rollback, and evaluate jobs' submission:
the API in process on a real SQLite database, with models recorded as a worker records them
(scores chosen here, so that every decision of the gate is known). The same through a real
worker and real training is in test_service.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.api.app import create_app
from app.core.config import Settings
from app.db.models import JobKind, JobStatus
from app.db.session import downgrade, make_engine, upgrade
from app.jobs.service import claim_job, create_job, finish_job
from tests.helpers import embedded, upload, zip_tree

CLASSES = ["hotdog", "not-hotdog"]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = embedded(tmp_path / "data")
    upgrade(s.db_url)
    return s


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def evaluation(accuracy: float, f1s: list[float]) -> dict:
    return {"accuracy": accuracy, "loss": 0.5, "classes": CLASSES,
            "confusion": [[1, 0], [0, 1]],
            "per_class": [{"label": c, "precision": f, "recall": f, "f1": f, "support": 4}
                          for c, f in zip(CLASSES, f1s, strict=True)]}


def record_job(settings: Settings, dataset_id: str, tmp_path: Path, ev: dict, *,
               model_id: str | None = None) -> str:
    """A job ended ``succeeded`` with the evaluation ``ev``, as a worker records it: a
    training job with a model file, or (``model_id``) an evaluate job of that model."""
    engine = make_engine(settings.db_url)
    try:
        with Session(engine) as s:
            kind = JobKind.EVALUATE if model_id else JobKind.TRAIN
            job_id = create_job(s, dataset_id=dataset_id, params={"image_size": 32}, epochs=1,
                                kind=kind, model_id=model_id).id
            s.commit()
            claim_job(s, job_id, worker="w", lease_seconds=60)
            checkpoint = None
            if model_id is None:
                checkpoint = tmp_path / f"{job_id}.pt"
                checkpoint.write_bytes(b"")  # activation only checks that it is there
            finish_job(s, job_id, worker="w", status=JobStatus.SUCCEEDED,
                       checkpoint_path=str(checkpoint) if checkpoint else None, evaluation=ev)
            s.commit()
        return job_id
    finally:
        engine.dispose()


def activate(client: TestClient, job_id: str, **params: str) -> dict:
    r = client.post(f"/models/{job_id}/activate", params=params)
    return {"status": r.status_code, **r.json()}


def active_id(client: TestClient) -> str:
    return client.get("/models").json()[0]["id"]


def test_the_gate_refuses_worse_accepts_better_and_force_and_rollback_walk_back(
        client: TestClient, settings: Settings, color_dataset: Path, tmp_path: Path) -> None:
    ds = upload(client, zip_tree(color_dataset)).json()["id"]
    good = record_job(settings, ds, tmp_path, evaluation(0.9, [0.9, 0.9]))
    bad = record_job(settings, ds, tmp_path, evaluation(0.5, [0.6, 0.2]))
    newest = record_job(settings, ds, tmp_path, evaluation(0.75, [0.75, 0.75]))
    assert active_id(client) == newest  # nothing activated: the newest serves
    models = {m["id"]: m for m in client.get("/models").json()}
    assert models[bad]["macro_f1"] == pytest.approx(0.4)

    # The first activation passes (nobody chose a model yet), even a worse one; recorded
    # with the comparison against the default it replaces.
    assert activate(client, bad)["status"] == 200 and active_id(client) == bad
    # A better one passes the gate; a worse one is refused with both scores.
    assert activate(client, good)["status"] == 200
    refused = activate(client, bad)
    assert refused["status"] == 409 and refused["kind"] == "promotion_refused"
    assert refused["comparison"] == {"metric": "macro_f1", "dataset_id": ds,
                                     "candidate_id": bad, "active_id": good,
                                     "candidate": pytest.approx(0.4),
                                     "active": pytest.approx(0.9)}
    assert "0.4000" in refused["detail"] and "0.9000" in refused["detail"]
    assert active_id(client) == good
    # Equal scores pass ("at least as good"); the model already active changes nothing.
    twin = record_job(settings, ds, tmp_path, evaluation(0.9, [0.9, 0.9]))
    assert activate(client, twin)["status"] == 200
    assert activate(client, twin)["status"] == 200
    # force overrides the gate.
    forced = activate(client, bad, force="true")
    assert forced["status"] == 200 and forced["active"] and active_id(client) == bad

    history = client.get("/models/history").json()
    assert [(a["action"], a["model_id"], a["previous_id"], a["forced"]) for a in history] == [
        ("activate", bad, twin, True), ("activate", twin, good, False),
        ("activate", good, bad, False), ("activate", bad, newest, False)]
    assert (history[0]["model_score"], history[0]["previous_score"]) == pytest.approx((0.4, 0.9))
    assert history[0]["metric"] == "macro_f1" and history[0]["dataset_id"] == ds
    assert history[0]["actor"] == "anonymous" and history[0]["client"] == "testclient"
    assert "first activation" in history[-1]["note"] and not history[-1]["forced"]
    assert history[-1]["model_score"] == pytest.approx(0.4)  # compared, not gated

    # Rollbacks walk back through the history, then say there is nothing left.
    for expected in (twin, good, bad, newest):
        r = client.post("/models/rollback")
        assert r.status_code == 200, r.text
        assert r.json()["action"] == "rollback" and r.json()["model_id"] == expected
        assert active_id(client) == expected
    r = client.post("/models/rollback")
    assert r.status_code == 409 and "nothing to roll back" in r.json()["detail"]
    history = client.get("/models/history", params={"limit": 2}).json()
    assert [a["undoes_id"] for a in history] == [1, 2]


def test_the_gate_metric_is_a_setting(settings: Settings, color_dataset: Path,
                                      tmp_path: Path) -> None:
    with TestClient(create_app(settings)) as client:
        ds = upload(client, zip_tree(color_dataset)).json()["id"]
        balanced = record_job(settings, ds, tmp_path, evaluation(0.8, [0.8, 0.8]))
        # More right overall, but one class mostly missed: a higher accuracy, a lower macro F1.
        lopsided = record_job(settings, ds, tmp_path, evaluation(0.85, [0.9, 0.3]))
        assert activate(client, balanced)["status"] == 200
        assert activate(client, lopsided)["kind"] == "promotion_refused"
    by_accuracy = settings.model_copy(update={"promotion_metric": "accuracy"})
    with TestClient(create_app(by_accuracy)) as client:
        assert activate(client, lopsided)["status"] == 200
        assert client.get("/models/history").json()[0]["metric"] == "accuracy"


def test_models_of_different_datasets_compare_on_a_named_one(
        client: TestClient, settings: Settings, color_dataset: Path, tmp_path: Path) -> None:
    first_ds = upload(client, zip_tree(color_dataset)).json()["id"]
    other_ds = upload(client, zip_tree(color_dataset)).json()["id"]
    current = record_job(settings, first_ds, tmp_path, evaluation(0.9, [0.9, 0.9]))
    candidate = record_job(settings, other_ds, tmp_path, evaluation(1.0, [1.0, 1.0]))
    assert activate(client, current)["status"] == 200
    # Trained on different datasets: their own test scores say nothing about each other.
    r = activate(client, candidate)
    assert r["status"] == 409 and r["kind"] == "against_required" and "against" in r["detail"]
    # On the current model's dataset, the candidate has no score yet: which job to run.
    r = activate(client, candidate, against=first_ds)
    assert r["status"] == 409 and r["kind"] == "evaluation_missing"
    assert f"POST /models/{candidate}/evaluate" in r["detail"] and first_ds in r["detail"]
    assert r["comparison"]["candidate"] is None and r["comparison"]["active"] == 0.9
    assert activate(client, candidate, against="0" * 32)["status"] == 404
    # An evaluate job's result is what `against` compares.
    record_job(settings, first_ds, tmp_path, evaluation(0.5, [0.5, 0.5]), model_id=candidate)
    r = activate(client, candidate, against=first_ds)
    assert r["status"] == 409 and r["comparison"]["candidate"] == 0.5
    record_job(settings, first_ds, tmp_path, evaluation(0.95, [0.95, 0.95]), model_id=candidate)
    assert activate(client, candidate, against=first_ds)["status"] == 200  # the newest counts
    listed = client.get(f"/models/{candidate}/evaluations").json()
    assert [(e["source"], e["dataset_id"], e["macro_f1"]) for e in listed] == [
        ("evaluation", first_ds, 0.95), ("evaluation", first_ds, 0.5),
        ("training", other_ds, 1.0)]
    # An evaluate job is not a model.
    evaluate_job = listed[0]["job_id"]
    assert activate(client, evaluate_job)["status"] == 409
    assert evaluate_job not in [m["id"] for m in client.get("/models").json()]


def test_evaluating_a_model_is_a_job(client: TestClient, settings: Settings,
                                     color_dataset: Path, tmp_path: Path) -> None:
    ds = upload(client, zip_tree(color_dataset)).json()["id"]
    model = record_job(settings, ds, tmp_path, evaluation(0.9, [0.9, 0.9]))
    # No worker runs here: refused, as POST /jobs is, unless queued anyway.
    r = client.post(f"/models/{model}/evaluate", json={"dataset_id": ds})
    assert r.status_code == 409 and r.json()["kind"] == "no_live_worker"
    r = client.post(f"/models/{model}/evaluate", json={"dataset_id": ds, "queue_anyway": True})
    assert r.status_code == 202, r.text
    job = r.json()
    assert (job["kind"], job["model_id"], job["dataset_id"], job["status"]) == (
        "evaluate", model, ds, "queued")
    assert client.get(f"/jobs/{job['id']}").json()["kind"] == "evaluate"
    # A job like any other: it counts against MAX_ACTIVE_JOBS, and it can be cancelled.
    with TestClient(create_app(settings.model_copy(update={"max_active_jobs": 1}))) as capped:
        r = capped.post(f"/models/{model}/evaluate",
                        json={"dataset_id": ds, "queue_anyway": True})
        assert r.status_code == 429 and "MAX_ACTIVE_JOBS" in r.json()["detail"]
    assert client.post(f"/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    # The dataset must have the model's classes.
    other = tmp_path / "pets"
    for split in ("train", "test"):
        for cls, color in (("cat", (90, 90, 90)), ("dog", (200, 200, 40))):
            (other / split / cls).mkdir(parents=True)
            Image.new("RGB", (40, 40), color).save(other / split / cls / "a.jpg")
    pets = upload(client, zip_tree(other)).json()["id"]
    r = client.post(f"/models/{model}/evaluate", json={"dataset_id": pets, "queue_anyway": True})
    assert r.status_code == 422 and "cat" in r.json()["detail"]
    assert client.post(f"/models/{model}/evaluate", json={"dataset_id": "0" * 32}
                       ).status_code == 404
    assert client.post(f"/models/{'0' * 32}/evaluate", json={"dataset_id": ds}
                       ).status_code == 404
    # Only a succeeded training job has a model to evaluate.
    r = client.post(f"/models/{job['id']}/evaluate", json={"dataset_id": ds, "queue_anyway": True})
    assert r.status_code == 409 and "not a model" in r.json()["detail"]


def test_a_rollback_needs_an_activation_that_replaced_a_model(
        client: TestClient, settings: Settings, color_dataset: Path, tmp_path: Path) -> None:
    assert client.post("/models/rollback").status_code == 409
    ds = upload(client, zip_tree(color_dataset)).json()["id"]
    only = record_job(settings, ds, tmp_path, evaluation(0.9, [0.9, 0.9]))
    assert activate(client, only)["status"] == 200  # it was the default already
    (record,) = client.get("/models/history").json()
    assert record["previous_id"] is None and record["model_score"] is None
    assert record["metric"] is None and "default model already" in record["note"]
    r = client.post("/models/rollback")
    assert r.status_code == 409 and "nothing to roll back to" in r.json()["detail"]


def test_the_history_records_the_key_not_the_key_itself(
        settings: Settings, color_dataset: Path, tmp_path: Path) -> None:
    keyed = settings.model_copy(update={"api_key": "s3cret-key"})
    with TestClient(create_app(keyed), headers={"X-API-Key": "s3cret-key"}) as client:
        ds = upload(client, zip_tree(color_dataset)).json()["id"]
        model = record_job(settings, ds, tmp_path, evaluation(0.9, [0.9, 0.9]))
        assert activate(client, model)["status"] == 200
        (record,) = client.get("/models/history").json()
    assert record["actor"].startswith("key:") and len(record["actor"]) == 16
    assert "s3cret" not in record["actor"]


def test_the_migration_records_past_activations(db_url: str, tmp_path: Path) -> None:
    downgrade(db_url, "0006")
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO datasets (id, name, classes, counts, warnings, size_bytes) "
                "VALUES ('d', 'd', '[]', '{}', '[]', 0)"))
            for i, at in enumerate(("2026-01-02 00:00:00", "2026-01-01 00:00:00", None)):
                conn.execute(text(
                    "INSERT INTO jobs (id, dataset_id, status, params, epoch, epochs, attempt, "
                    "max_attempts, cancel_requested, activated_at) VALUES (:id, 'd', "
                    "'succeeded', '{}', 1, 1, 1, 3, false, :at)"), {"id": f"j{i}", "at": at})
        upgrade(db_url)
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT model_id, previous_id, action FROM activations ORDER BY id")).all()
            kinds = set(conn.execute(text("SELECT kind FROM jobs")).scalars())
    finally:
        engine.dispose()
    assert [tuple(r) for r in rows] == [("j1", None, "activate"), ("j0", "j1", "activate")]
    assert kinds == {"train"}
