"""``GET /models`` answers summaries: it never loads the evaluations' confusion matrices
(C x C cells each, up to MAX_CLASSES squared), only what a summary shows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.orm import Session

from app.api.app import create_app
from app.db.models import JobStatus
from app.db.session import upgrade
from app.jobs.service import claim_job, create_job, finish_job
from tests.helpers import embedded, upload, zip_tree


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = embedded(tmp_path / "data")
    upgrade(settings.db_url)
    with TestClient(create_app(settings)) as c:
        yield c


def test_listing_models_does_not_load_confusion_matrices(
        client: TestClient, color_dataset: Path, tmp_path: Path) -> None:
    dataset_id = upload(client, zip_tree(color_dataset)).json()["id"]
    engine = client.app.state.hotdog.engine  # type: ignore[attr-defined]
    classes = [f"c{i}" for i in range(300)]
    evaluation = {"accuracy": 0.5, "loss": 1.0, "classes": classes,
                  "confusion": [[1] * 300 for _ in range(300)], "per_class": []}
    (tmp_path / "model.pt").write_bytes(b"")  # activation only checks that it is there
    with Session(engine) as s:
        job_id = create_job(s, dataset_id=dataset_id, params={"image_size": 32}, epochs=1).id
        s.commit()
        claim_job(s, job_id, worker="w", lease_seconds=60)
        finish_job(s, job_id, worker="w", status=JobStatus.SUCCEEDED,
                   checkpoint_path=str(tmp_path / "model.pt"), evaluation=evaluation)
        s.commit()
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        models = client.get("/models").json()
        activated = client.post(f"/models/{job_id}/activate").json()
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert [(m["id"], m["accuracy"], m["classes"]) for m in models] == [(job_id, 0.5, classes)]
    assert activated["accuracy"] == 0.5 and activated["active"]
    assert statements and not [s for s in statements if "confusion" in s]
    assert client.get(f"/jobs/{job_id}/evaluation").json()["confusion"][0][0] == 1
