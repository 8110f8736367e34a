"""No answer names a server path: refused uploads, models whose checkpoint is gone or
broken, /ready. The full message, paths included, is logged with the request id."""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.api.app import create_app
from app.api.redact import public_message
from app.core.config import Settings
from app.core.logs import make_handler
from app.db.models import JobStatus
from app.db.session import make_engine
from app.jobs.service import claim_job, create_job, finish_job
from tests.helpers import BAD_UPLOADS, TINY, jpeg, make_zip, migrated, upload, zip_tree

NESTED_CORRUPT = make_zip({"top/train/a/1.jpg": jpeg(), "top/train/b/1.jpg": jpeg()[:60],
                           "top/test/a/1.jpg": jpeg(), "top/test/b/1.jpg": jpeg()})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated(tmp_path / "data")


@pytest.fixture
def log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = make_handler("text", stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def assert_no_server_path(settings: Settings, text: str) -> None:
    for path in (settings.data_dir.resolve(), Path(tempfile.gettempdir())):
        assert f"{path}/" not in text and not text.endswith(str(path)), text


def _succeeded_job(settings: Settings, dataset_id: str, checkpoint: Path) -> str:
    engine = make_engine(settings.db_url)
    with Session(engine) as s:
        job = create_job(s, dataset_id=dataset_id, params=dict(TINY), epochs=1)
        s.commit()
        claim_job(s, job.id, worker="w", lease_seconds=60)
        finish_job(s, job.id, worker="w", status=JobStatus.SUCCEEDED,
                   checkpoint_path=str(checkpoint))
        s.commit()
        job_id = job.id
    engine.dispose()
    return job_id


def test_refused_uploads_name_paths_inside_the_zip_only(settings: Settings,
                                                        log: io.StringIO) -> None:
    with TestClient(create_app(settings)) as c:
        for data, _ in [*BAD_UPLOADS.values(), (NESTED_CORRUPT, "")]:
            r = upload(c, data)
            assert r.status_code == 422, r.text
            assert_no_server_path(settings, r.text)
        # The folder names inside the zip are kept: they say where the problem is.
        assert "top/train/b/1.jpg" in r.json()["detail"]
        missing_test = upload(c, BAD_UPLOADS["no test split"][0])
        assert missing_test.json()["detail"].startswith("the zip: missing the 'test/'")
        request_id = missing_test.headers["x-request-id"]
    lines = [line for line in log.getvalue().splitlines() if request_id in line]
    assert lines and str(settings.data_dir.resolve()) in lines[0]  # logged in full


def test_models_whose_checkpoint_is_gone_or_broken_name_no_path(settings: Settings,
                                                                 color_dataset: Path) -> None:
    job_dir = settings.data_dir / "jobs"
    job_dir.mkdir(parents=True)
    broken_file = job_dir.resolve() / "broken.pt"
    broken_file.write_bytes(b"not a checkpoint")
    with TestClient(create_app(settings)) as c:
        ds = upload(c, zip_tree(color_dataset)).json()["id"]
        gone = _succeeded_job(settings, ds, job_dir.resolve() / "gone.pt")
        broken = _succeeded_job(settings, ds, broken_file)
        for job in (gone, broken):
            r = c.post("/predict", data={"model": job},
                       files={"file": ("a.jpg", jpeg(), "image/jpeg")})
            assert r.status_code == 409, r.text
            assert job in r.json()["detail"] or "checkpoint" in r.json()["detail"]
            assert_no_server_path(settings, r.text)


def test_public_message_keeps_what_the_client_can_place(tmp_path: Path) -> None:
    data = tmp_path / "data"
    incoming = data.resolve() / "datasets" / ".incoming-abc"
    assert public_message(f"{incoming}/train: need 2", data) == "train: need 2"
    assert public_message(f"{incoming}: missing", data) == "the zip: missing"
    assert public_message(f"'{data.resolve()}/jobs/j/m.pt': bad", data) == (
        "'DATA_DIR/jobs/j/m.pt': bad")
    assert public_message(f"{tempfile.gettempdir()}/spool1", Path("/srv/none")) == (
        "a temporary file")
    assert "DATA_DIR" not in public_message(f"{data.resolve()}x/y is another folder", data)
    assert public_message("POST /datasets/x: no", data) == "POST /datasets/x: no"
