"""Batch prediction jobs (``/predictions``): the API in process, each job run by the worker's
own code path (``run_job_now``: a claim, the real prediction process, the outcome recorded),
as a worker would. tests/test_service.py runs one through a real stack; tests/test_browser.py
through the page."""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.engine.batch import csv_header
from tests.helpers import (
    BAD_UPLOADS,
    finished_job,
    jpeg,
    make_zip,
    migrated,
    upload,
    wait_for,
    zip_tree,
)
from worker.child import FAULT_ENV
from worker.tasks import run_job_now

TOLERANCE = 1e-5  # ONNX Runtime in the job and in /predict: the same computation


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data = tmp_path_factory.mktemp("predictions") / "data"
    data.mkdir()
    return migrated(data, heartbeat_seconds=0.3, job_lease_seconds=5, cancel_poll_seconds=0.2,
                    batch_max_photos=20, batch_predict_size=4, predict_device="cpu")


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    from app.api.app import create_app

    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def model(client: TestClient, settings: Settings, color_dataset: Path,
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A dataset of the colour photos and a model trained on it (with its ONNX export, as a
    worker writes it: /predict and the jobs then run the same runtime)."""
    r = upload(client, zip_tree(color_dataset))
    assert r.status_code == 201, r.text
    dataset_id = r.json()["id"]
    job_id = finished_job(settings, dataset_id, tmp_path_factory.mktemp("model"),
                          color_dataset, export=True)
    return {"dataset": dataset_id, "model": job_id}


def submit_zip(client: TestClient, data: bytes, **form: str) -> dict:
    r = client.post("/predictions", files={"file": ("photos.zip", data, "application/zip")},
                    data={"queue_anyway": "true", **form})
    assert r.status_code == 202, r.text
    return r.json()


def photos_zip(color_dataset: Path) -> tuple[bytes, dict[str, bytes]]:
    """Photos in a layout of their own: nested folders, a photo that does not decode and a
    file that is no photo."""
    photos = {f"lunch/{cls}-{i}.jpg": (color_dataset / "test" / cls / f"{i:03d}.jpg").read_bytes()
              for cls in ("hotdog", "not-hotdog") for i in range(4)}
    photos["lunch/deeper/red.png"] = _png()
    photos["broken.jpg"] = jpeg()[:80]
    return make_zip({**photos, "README.txt": b"my lunch photos"}), photos


def _run_in_thread(job_id: str, settings: Settings) -> tuple[threading.Thread, list[str]]:
    """``run_job_now`` on a thread, as a worker runs it; the list gets its outcome."""
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(
        run_job_now(job_id, settings=settings)))
    worker.start()
    return worker, outcome


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (50, 40), (220, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_a_zip_of_photos_is_classified_as_predict_classifies_each(
        client: TestClient, settings: Settings, model: dict[str, str],
        color_dataset: Path) -> None:
    data, photos = photos_zip(color_dataset)
    job = submit_zip(client, data)
    assert job["status"] == "queued" and job["model_id"] == model["model"]  # the active one
    assert (job["source"], job["photos"], job["done"], job["ignored"]) == ("upload", 10, 0, 1)
    assert job["dataset_id"] is None and job["results"] is None
    r = client.get(f"/predictions/{job['id']}/results")
    assert r.status_code == 409 and "queued" in r.json()["detail"]

    assert run_job_now(job["id"], settings=settings) == "succeeded"
    job = client.get(f"/predictions/{job['id']}").json()
    assert job["status"] == "succeeded" and (job["done"], job["fraction"]) == (10, 1.0)
    summary = job["summary"]
    assert (summary["photos"], summary["predicted"], summary["failed"]) == (10, 9, 1)
    assert sum(summary["labels"].values()) == 9
    # Its uploaded photos are gone once it has ended; its results stay.
    assert not (settings.job_dir(job["id"]) / "photos").exists()
    as_job = client.get(f"/jobs/{job['id']}").json()  # a job like the others
    assert as_job["kind"] == "predict" and as_job["dataset_id"] is None
    assert "1 of 10 photos did not decode" in as_job["note"]

    rows = [json.loads(line) for line in
            client.get(f"/predictions/{job['id']}/results?format=jsonl").text.splitlines()]
    assert [r["filename"] for r in rows] == sorted(photos)  # the paths as uploaded, in order
    (broken,) = [r for r in rows if r["error"]]
    assert broken["filename"] == "broken.jpg" and broken["label"] is None
    assert "broken.jpg" in broken["error"] and "corrupt" in broken["error"]
    # Each photo's answer is /predict's.
    good = [r for r in rows if not r["error"]]
    r = client.post("/predict", files=[("file", (r["filename"], photos[r["filename"]]))
                                       for r in good])
    assert r.status_code == 200, r.text
    for row, answer in zip(good, r.json()["predictions"], strict=True):
        assert row["label"] == answer["label"]
        assert row["probabilities"] == pytest.approx(answer["probabilities"], abs=TOLERANCE)

    r = client.get(f"/predictions/{job['id']}/results")  # CSV, the default
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    table = list(csv.reader(io.StringIO(r.text)))
    assert table[0] == csv_header(["hotdog", "not-hotdog"])
    assert [line[0] for line in table[1:]] == [row["filename"] for row in rows]
    for line, row in zip(table[1:], rows, strict=True):
        assert line[1] == (row["label"] or "") and line[4] == (row["error"] or "")
        if row["probabilities"]:
            assert [float(p) for p in line[2:4]] == [row["probabilities"][c]
                                                     for c in ("hotdog", "not-hotdog")]
    assert job["id"] in [j["id"] for j in client.get("/predictions").json()]


def test_a_split_of_a_stored_dataset_is_classified(
        client: TestClient, settings: Settings, model: dict[str, str]) -> None:
    r = client.post("/predictions", json={"dataset_id": model["dataset"], "split": "test",
                                          "model": model["model"], "queue_anyway": True})
    assert r.status_code == 202, r.text
    job = r.json()
    assert (job["source"], job["dataset_id"], job["split"], job["photos"]) == (
        "dataset", model["dataset"], "test", 8)
    assert run_job_now(job["id"], settings=settings) == "succeeded"
    rows = [json.loads(line) for line in
            client.get(f"/predictions/{job['id']}/results?format=jsonl").text.splitlines()]
    # Named by their path in the dataset's upload, not the stored names.
    assert [r["filename"] for r in rows] == [f"test/{c}/{i:03d}.jpg"
                                             for c in ("hotdog", "not-hotdog") for i in range(4)]
    assert all(r["label"] in ("hotdog", "not-hotdog") and not r["error"] for r in rows)


def test_a_batch_job_asked_for_coverage_gives_each_photo_predicts_crop_coverage(
        client: TestClient, settings: Settings, model: dict[str, str],
        color_dataset: Path) -> None:
    photos = {f"{cls}-{i}.jpg": (color_dataset / "test" / cls / f"{i:03d}.jpg").read_bytes()
              for cls in ("hotdog", "not-hotdog") for i in range(2)}
    photos["broken.jpg"] = jpeg()[:80]
    job = submit_zip(client, make_zip(photos), coverage="true")
    assert job["coverage"] is True
    assert run_job_now(job["id"], settings=settings) == "succeeded"
    rows = [json.loads(line) for line in
            client.get(f"/predictions/{job['id']}/results?format=jsonl").text.splitlines()]
    assert [r["filename"] for r in rows] == sorted(photos)
    (broken,) = [r for r in rows if r["error"]]
    assert broken["crop_coverage"] is None and broken["label"] is None
    good = [r for r in rows if not r["error"]]
    # Each photo's coverage is /predict's explanation's, for the same label.
    r = client.post("/predict", data={"explain": "true"},
                    files=[("file", (r["filename"], photos[r["filename"]])) for r in good])
    assert r.status_code == 200, r.text
    for row, answer in zip(good, r.json()["predictions"], strict=True):
        assert row["label"] == answer["label"]
        explained = answer["explanation"]["crop_coverage"]
        assert row["crop_coverage"] == pytest.approx(explained, abs=1e-3), row["filename"]
        assert row["crop_coverage"] is None or 0 <= row["crop_coverage"] <= 1
    table = list(csv.reader(io.StringIO(client.get(f"/predictions/{job['id']}/results").text)))
    assert table[0] == csv_header(["hotdog", "not-hotdog"], coverage=True)
    assert table[0][-2:] == ["crop_coverage", "error"]
    by_name = {row["filename"]: row for row in rows}
    for line in table[1:]:
        covered = by_name[line[0]]["crop_coverage"]
        assert line[-2] == ("" if covered is None else repr(covered))
    # A job not asked for it has no such column, and a yes/no field that is neither is a 422.
    assert "crop_coverage" not in csv_header(["hotdog", "not-hotdog"])
    r = client.post("/predictions", files={"file": ("p.zip", make_zip(photos))},
                    data={"coverage": "maybe", "queue_anyway": "true"})
    assert r.status_code == 422 and "true or false" in r.json()["detail"]


def test_a_batch_job_is_cancelled_queued_or_running(
        client: TestClient, settings: Settings, model: dict[str, str], color_dataset: Path,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, _ = photos_zip(color_dataset)
    queued = submit_zip(client, data)
    r = client.post(f"/predictions/{queued['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert client.post(f"/predictions/{queued['id']}/cancel").status_code == 409
    assert not settings.job_dir(queued["id"]).joinpath("photos").exists()

    # Running: its process waits (after it has started) until the flag file exists.
    flag = tmp_path / "go"
    monkeypatch.setenv(FAULT_ENV, f"wait-before-predictions:{flag}")
    job = submit_zip(client, data)
    worker, outcome = _run_in_thread(job["id"], settings)
    try:
        wait_for(lambda: client.get(f"/predictions/{job['id']}").json()["status"] == "running",
                 timeout=60, what="the job to run")
        r = client.post(f"/jobs/{job['id']}/cancel")  # the jobs' cancel works as well
        assert r.status_code == 200 and r.json()["cancel_requested"]
    finally:
        flag.touch()
        worker.join(timeout=120)
    assert outcome == ["cancelled"]
    job = client.get(f"/predictions/{job['id']}").json()
    assert job["status"] == "cancelled" and job["summary"] is None
    r = client.get(f"/predictions/{job['id']}/results")
    assert r.status_code == 409 and "cancelled" in r.json()["detail"]
    # No half-written results are left in its folder.
    assert not list(settings.job_dir(job["id"]).glob("*results*"))


def test_bad_zips_and_requests_are_refused_naming_the_problem(
        client: TestClient, settings: Settings, model: dict[str, str]) -> None:
    jobs = settings.data_dir / "jobs"
    jobs_before = sorted(p.name for p in jobs.iterdir()) if jobs.is_dir() else []
    refusals = {name: BAD_UPLOADS[name] for name in (
        "not a zip", "path escape", "absolute path", "symlink", "compression bomb",
        "backslash")}
    refusals["no photos"] = (make_zip({"notes/a.txt": b"x"}), "the zip has no photos")
    refusals["too many"] = (make_zip({f"p/{i}.jpg": jpeg() for i in range(21)}),
                            "21 photos; a batch job takes at most 20")
    for name, (data, words) in refusals.items():
        r = client.post("/predictions", files={"file": ("p.zip", data, "application/zip")},
                        data={"queue_anyway": "true"})
        assert r.status_code == 422 and words in r.json()["detail"], (name, r.text)
    photo = make_zip({"a.jpg": jpeg()})
    cases = [
        ({"files": {"file": ("p.zip", photo)}, "data": {"model": "0" * 32}}, 404, "not found"),
        ({"files": {"other": ("p.zip", photo)}}, 422, "'file' is required"),
        ({"json": {"dataset_id": "0" * 32}}, 404, "not found"),
        ({"json": {"dataset_id": model["dataset"], "split": "val"}}, 422, "no 'val' split"),
        ({"json": {"dataset_id": model["dataset"], "split": "holdout"}}, 422, "split"),
        ({"content": b"photos", "headers": {"content-type": "text/plain"}}, 422, "multipart"),
        ({"content": b" " * (2 << 20), "headers": {"content-type": "application/json"}}, 413,
         "at most"),
    ]
    for kwargs, code, words in cases:
        r = client.post("/predictions", **kwargs)  # type: ignore[arg-type]
        assert r.status_code == code and words in str(r.json()["detail"]), (kwargs, r.text)
    for path in ("/predictions/nope", "/predictions/nope/results",
                 f"/predictions/{model['model']}"):  # a training job is no prediction job
        assert client.get(path).status_code == 404
    # Refused uploads leave nothing behind.
    assert (sorted(p.name for p in jobs.iterdir()) if jobs.is_dir() else []) == jobs_before


def test_a_predict_job_runs_in_the_spare_process_started_ahead_of_it(
        client: TestClient, settings: Settings, model: dict[str, str], color_dataset: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """WARM_PREDICT_PROCESS: a worker keeps a prediction process that has imported
    everything; a predict job runs in it, with the environment a process started for it
    would have, and gives the same rows as in a process of its own; the next spare starts
    when the job has ended; a dead spare means a process of its own; a stopping worker
    leaves none behind."""
    from worker import runner, tasks

    spare = runner.SpareProcess()
    monkeypatch.setattr(runner, "SPARE", spare)
    monkeypatch.setattr(tasks, "SPARE", spare)
    data, _ = photos_zip(color_dataset)

    def results(job: dict) -> str:
        return client.get(f"/predictions/{job['id']}/results?format=jsonl").text

    def next_spare(*not_these: subprocess.Popen[str]) -> subprocess.Popen[str]:
        return wait_for(lambda: spare.proc if spare.proc not in (None, *not_these) else None,
                        timeout=30, what="the next spare process")

    cold = submit_zip(client, data)
    assert run_job_now(cold["id"], settings=settings) == "succeeded"
    assert spare.proc is None  # a worker that keeps none (run_job_now alone) starts none

    spare.ensure()  # as a worker does when it is ready
    first = next_spare()
    assert _cmdline(first.pid)[-3:] == ["-m", "worker.child", "--spare"]
    # Set after the spare started, the job's environment still reaches the job's process
    # there: it kills itself, and the job's next attempts succeed once the fault is gone.
    monkeypatch.setenv(FAULT_ENV, "kill-before-predictions")
    faulty = submit_zip(client, data)
    worker, outcome = _run_in_thread(faulty["id"], settings)
    try:
        assert first.wait(timeout=60) == -signal.SIGKILL
    finally:
        monkeypatch.delenv(FAULT_ENV)
        worker.join(timeout=120)
    # (an attempt that began before the fault was gone died the same way)
    assert outcome == ["succeeded"] and client.get(f"/jobs/{faulty['id']}").json()["attempt"] >= 2
    assert results(faulty) == results(cold)

    waiting = next_spare(first)
    if waiting.poll() is not None:  # the retried attempt ran in it: the next one, then
        waiting = next_spare(first, waiting)
    warm = submit_zip(client, data)
    assert run_job_now(warm["id"], settings=settings) == "succeeded"
    assert waiting.wait(timeout=30) == 0  # it ran the job and ended
    assert results(warm) == results(cold)

    dead = next_spare(first, waiting)
    dead.kill()
    dead.wait()
    after = submit_zip(client, data)
    assert run_job_now(after["id"], settings=settings) == "succeeded"  # in a process of its own
    assert results(after) == results(cold)
    last = next_spare(first, waiting, dead)

    spare.close()  # the worker stops
    assert last.poll() is not None and spare.take() is None
    spare.replenish()
    assert spare.proc is None


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().rstrip("\0").split("\0")
