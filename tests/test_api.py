"""The API in process (real SQLite database, real file-system broker; no worker needed):
uploads and their validation, parameters, errors, the API key, models and /predict.
The full path with a real worker is in test_service.py."""

from __future__ import annotations

import io
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.orm import Session

from app.api.app import create_app
from app.core.config import Settings
from app.db.models import Job, JobStatus
from app.db.session import make_engine
from app.engine.checkpoint import load_checkpoint
from app.engine.config import params
from app.engine.export import PARITY_TOLERANCE, OnnxModel
from app.engine.images import set_decode_budget
from app.jobs.service import claim_job
from tests.helpers import (
    BAD_UPLOADS,
    TINY,
    embedded,
    finished_job,
    jpeg,
    make_zip,
    migrated,
    stored_datasets,
    upload,
    wait_for,
    write_color_dataset,
    zip_tree,
)

# No worker runs here: jobs are queued regardless (without it, POST /jobs refuses a job that
# no live worker would take; tests/test_workers.py).
NO_WORKER = {"queue_anyway": True}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated(tmp_path / "data", predict_max_files=4, predict_max_bytes=2 << 20,
                    max_upload_bytes=8 << 20)


def test_upload_validates_and_stores(client: TestClient, settings: Settings,
                                     color_dataset: Path) -> None:
    # d2l's zip keeps its tree inside one folder; that works as well as a top-level tree.
    r = upload(client, zip_tree(color_dataset, "hotdog/"))
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["classes"] == ["hotdog", "not-hotdog"]
    assert ds["counts"] == {"train": {"hotdog": 8, "not-hotdog": 8},
                           "test": {"hotdog": 4, "not-hotdog": 4}}
    assert any("few training images" in w for w in ds["warnings"])
    assert stored_datasets(settings) == [ds["id"]]
    # Stored under names of our own; only the class folders (the labels) come from the zip,
    # and the manifest keeps each image's path in the upload (for reports).
    # (and the report, computed in the background, may be there already: report.json)
    stored_files = sorted(p.relative_to(settings.dataset_dir(ds["id"])).as_posix()
                          for p in settings.dataset_dir(ds["id"]).rglob("*") if p.is_file()
                          and p.name not in ("report.json", ".report.json.tmp"))
    assert "manifest.json" in stored_files
    assert len(stored_files) == 25 and stored_files[1] == "test/hotdog/000000.jpg"
    shown = client.get(f"/datasets/{ds['id']}").json()
    # (its report_status moves on from pending by itself)
    assert shown.pop("report_status") in ("pending", "running", "ready")
    assert shown == {k: v for k, v in ds.items() if k != "report_status"}
    assert [d["id"] for d in client.get("/datasets").json()] == [ds["id"]]
    r = client.post("/datasets", files={"file": ("x.zip", zip_tree(color_dataset))},
                    data={"name": "colours"})
    assert r.json()["name"] == "colours" and r.json()["warnings"] == ds["warnings"]


def test_a_val_folder_is_stored_and_a_split_that_cannot_be_carved_is_422(
        client: TestClient, settings: Settings, tmp_path: Path) -> None:
    data = write_color_dataset(tmp_path / "d", train=3, test=1)
    for cls in ("hotdog", "not-hotdog"):
        (data / "val" / cls).mkdir(parents=True)
        (data / "train" / cls / "000.jpg").rename(data / "val" / cls / "000.jpg")
    ds = upload(client, zip_tree(data)).json()
    assert ds["counts"]["val"] == {"hotdog": 1, "not-hotdog": 1}
    assert ds["counts"]["train"] == {"hotdog": 2, "not-hotdog": 2}
    assert (settings.dataset_dir(ds["id"]) / "val" / "hotdog" / "000000.jpg").is_file()
    # One training image per class: nothing to hold out, unless the dataset has val/.
    single = upload(client, make_zip({"train/a/1.jpg": jpeg(), "train/b/1.jpg": jpeg(),
                                      "test/a/1.jpg": jpeg(), "test/b/1.jpg": jpeg()})).json()
    r = client.post("/jobs", json={"dataset_id": single["id"], **NO_WORKER})
    assert r.status_code == 422 and "val_fraction" in r.json()["detail"], r.text
    assert "a, b" in r.json()["detail"]
    for body in ({"dataset_id": single["id"], "val_fraction": 0},
                 {"dataset_id": ds["id"], "val_fraction": 0.5}):
        assert client.post("/jobs", json={**body, **NO_WORKER}).status_code == 202


@pytest.mark.parametrize("case", BAD_UPLOADS)
def test_bad_uploads_are_422_and_leave_nothing(client: TestClient, settings: Settings,
                                               case: str) -> None:
    data, expected = BAD_UPLOADS[case]
    r = upload(client, data)
    assert r.status_code == 422, r.text
    assert expected in r.json()["detail"]
    assert stored_datasets(settings) == []
    assert client.get("/datasets").json() == []


def test_limits_name_themselves(client: TestClient) -> None:
    r = upload(client, b"\0" * (9 << 20))
    assert r.status_code == 413 and "limit of 8388608 bytes" in r.json()["detail"]
    files = [("file", (f"{i}.jpg", jpeg(), "image/jpeg")) for i in range(5)]
    r = client.post("/predict", files=files)
    assert r.status_code == 422 and "limit is 4" in r.json()["detail"]
    r = client.post("/jobs", content=b"{" + b" " * (2 << 20) + b"}",
                    headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_a_chunked_body_is_cut_off_while_it_streams(client: TestClient, settings: Settings
                                                    ) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: only counting can stop it
        for _ in range(64):
            yield b"\0" * (1 << 20)

    r = client.post("/datasets", content=chunks(),
                    headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and "limit of 8388608 bytes" in r.json()["detail"]
    assert stored_datasets(settings) == []


def test_a_zip_whose_headers_lie_about_sizes_is_refused(client: TestClient,
                                                        settings: Settings) -> None:
    data = bytearray(make_zip({"train/a/1.jpg": b"\0" * (4 << 20), "train/b/1.jpg": jpeg(),
                               "test/a/1.jpg": jpeg(), "test/b/1.jpg": jpeg()}))
    # Declare 1 KB instead of 4 MB, in the local header and in the central directory.
    real = (4 << 20).to_bytes(4, "little")
    assert data.count(real) == 2
    data = data.replace(real, (1024).to_bytes(4, "little"))
    r = upload(client, bytes(data))
    assert r.status_code == 422 and "train/a/1.jpg" in r.json()["detail"]
    assert stored_datasets(settings) == []


def test_job_parameters_are_checked(client: TestClient, color_dataset: Path) -> None:
    ds = upload(client, zip_tree(color_dataset)).json()["id"]
    for body, field in [
        ({"epochs": 0}, "epochs"), ({"lr": -1}, "lr"), ({"batch_size": 10**6}, "batch_size"),
        ({"image_size": 8}, "image_size"), ({"init": "resnet50"}, "init"),
        ({"momentum": 1.0}, "momentum"), ({"epochs": "many"}, "epochs"),
        ({"learning_rate": 0.1}, "learning_rate"), ({"init": "scratch\n"}, "init"),
        ({"device": "cuda\n"}, "device"), ({"precision": "fp8"}, "precision"),
    ]:
        r = client.post("/jobs", json={"dataset_id": ds, **body})
        assert r.status_code == 422, (body, r.text)
        assert field in [str(p) for e in r.json()["detail"] for p in e["loc"]], r.text
    r = client.post("/jobs", json={"dataset_id": "0" * 32})
    assert r.status_code == 404 and "not found" in r.json()["detail"]
    r = client.post("/jobs", json={"dataset_id": ds, "init": "job:" + "0" * 32})
    assert r.status_code == 422 and "not found" in r.json()["detail"]
    r = client.post("/jobs", json={"dataset_id": ds, "init": "scratch", "epochs": 2, **NO_WORKER})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["progress"] == {
        "epoch": 0, "epochs": 2, "fraction": 0.0, "eta_seconds": None}
    # The defaults by init are filled in and shown.
    assert job["params"]["lr"] == 0.064 and job["params"]["head_lr_mult"] == 1.0
    pretrained = client.post("/jobs", json={"dataset_id": ds, **NO_WORKER}).json()["params"]
    assert pretrained["lr"] == 0.0064 and pretrained["head_lr_mult"] == 10.0


def test_active_jobs_are_capped_with_429(settings: Settings, color_dataset: Path) -> None:
    capped = settings.model_copy(update={"max_active_jobs": 2})
    with TestClient(create_app(capped)) as c:
        ds = upload(c, zip_tree(color_dataset)).json()["id"]
        first = c.post("/jobs", json={"dataset_id": ds, **TINY, **NO_WORKER}).json()["id"]
        assert c.post("/jobs", json={"dataset_id": ds, **TINY, **NO_WORKER}).status_code == 202
        r = c.post("/jobs", json={"dataset_id": ds, **TINY, **NO_WORKER})
        assert r.status_code == 429 and r.headers["retry-after"] == "30"
        assert "MAX_ACTIVE_JOBS" in r.json()["detail"]
        c.post(f"/jobs/{first}/cancel")  # an ended job frees its slot
        assert c.post("/jobs", json={"dataset_id": ds, **TINY, **NO_WORKER}).status_code == 202


def test_unknown_ids_are_404(client: TestClient) -> None:
    for method, path in [("GET", "/jobs/nope"), ("GET", "/jobs/nope/metrics"),
                         ("GET", "/jobs/nope/evaluation"), ("POST", "/jobs/nope/cancel"),
                         ("GET", "/jobs/nope/checkpoint"), ("GET", "/datasets/nope"),
                         ("DELETE", "/datasets/nope"), ("POST", "/models/nope/activate"),
                         ("GET", "/no/such/route")]:
        r = client.request(method, path)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["detail"]
    r = client.post("/predict", files={"file": ("a.jpg", jpeg())}, data={"model": "nope"})
    assert r.status_code == 404


def test_api_key_guards_every_route_but_health_and_ready(settings: Settings,
                                                        color_dataset: Path) -> None:
    keyed = settings.model_copy(update={"api_key": "s3cret"})
    app = create_app(keyed)
    with TestClient(app) as c:
        # Every route the app has (its OpenAPI paths, and the routes outside the schema),
        # so that a route added later cannot be left open.
        routes = {(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops}
        routes |= {(m, r.path) for r in app.routes if hasattr(r, "path")
                   for m in getattr(r, "methods", None) or () if m != "HEAD"}
        calls = sorted((m, re.sub(r"{[^}]+}", "x", p)) for m, p in routes)
        assert len(calls) >= 20
        # The web page's files are public too (they hold no data; the page asks for the key).
        for method, path in [*calls, ("GET", "/no/such/route"), ("POST", "/"),
                             ("GET", "/ui/app.js"), ("POST", "/ui/app.js")]:
            r = c.request(method, path)
            if path in ("/health", "/ready") or (method == "GET" and path in ("/", "/ui/app.js")):
                assert r.status_code == 200, path
            else:
                assert r.status_code == 401, (method, path, r.status_code)
                assert "API key" in r.json()["detail"]
                assert r.headers["www-authenticate"] == "Bearer"
        data = zip_tree(color_dataset)
        r = c.post("/datasets", files={"file": ("x.zip", data)},
                   headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = c.post("/datasets", files={"file": ("x.zip", data)},
                   headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 201
        assert c.post("/jobs", json={"dataset_id": r.json()["id"], **NO_WORKER},
                      headers={"X-API-Key": "s3cret"}).status_code == 202
        assert c.get("/jobs", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/openapi.json", headers={"X-API-Key": "s3cret"}).status_code == 200


def test_models_activation_and_predict(client: TestClient, settings: Settings,
                                       color_dataset: Path, tmp_path: Path) -> None:
    ds = upload(client, zip_tree(color_dataset)).json()["id"]
    assert client.post("/predict", files={"file": ("a.jpg", jpeg())}).status_code == 409
    first = finished_job(settings, ds, tmp_path, color_dataset, seed=0)
    second = finished_job(settings, ds, tmp_path, color_dataset, seed=1)
    models = client.get("/models").json()
    assert [m["id"] for m in models] == [second, first]  # the newest is active by default
    assert models[0]["active"] and not models[1]["active"]
    assert models[0]["classes"] == ["hotdog", "not-hotdog"] and models[0]["image_size"] == 32

    photo = color_dataset / "test" / "hotdog" / "000.jpg"
    files = [("file", ("lunch.jpg", photo.read_bytes(), "image/jpeg")),
             ("file", ("green.png", _png((50, 150, 70)), "image/png"))]
    r = client.post("/predict", files=files)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model"] == second
    assert [p["filename"] for p in out["predictions"]] == ["lunch.jpg", "green.png"]
    for p in out["predictions"]:
        assert p["label"] in ("hotdog", "not-hotdog")
        assert abs(sum(p["probabilities"].values()) - 1) < 1e-5
        assert p["label"] == max(p["probabilities"], key=p["probabilities"].get)

    # /predict answers what the engine's Predictor answers for the same checkpoint.
    from app.engine import Predictor

    predictor = Predictor(tmp_path / "model-1.pt")
    engine_probs = predictor.predict([photo])[0].probabilities
    assert out["predictions"][0]["probabilities"] == pytest.approx(engine_probs, abs=1e-5)
    # Calibrated on the job's validation split, and it says so.
    assert out["calibrated"] is True and predictor.calibrated
    assert out["temperature"] == predictor.temperature == load_checkpoint(
        tmp_path / "model-1.pt")["temperature"]

    assert client.post(f"/models/{first}/activate").json()["active"]
    assert client.post("/predict", files=files[:1]).json()["model"] == first
    assert client.get("/models").json()[0]["id"] == first
    assert client.post("/predict", files=files[:1], data={"model": second}).json()[
        "model"] == second

    # A model trained without a validation split: plain softmax, temperature 1.
    uncalibrated = finished_job(settings, ds, tmp_path, color_dataset, seed=2, val_fraction=0)
    # Three models loaded within a second can pass MODEL_LOADS_PER_SECOND: wait as asked.
    r = client.post("/predict", files=files[:1], data={"model": uncalibrated})
    if r.status_code == 503 and "MODEL_LOADS_PER_SECOND" in r.text:
        time.sleep(float(r.headers["retry-after"]))
        r = client.post("/predict", files=files[:1], data={"model": uncalibrated})
    plain = r.json()
    assert plain["calibrated"] is False and plain["temperature"] == 1.0

    r = client.post("/predict", files={"file": ("notes.txt", b"hello")})
    assert r.status_code == 422 and "notes.txt" in r.json()["detail"]
    metrics = client.get("/metrics").text
    assert "hotdog_predict_images_total 5.0" in metrics
    assert 'hotdog_jobs{status="succeeded"} 3.0' in metrics
    assert 'route="/predict"' in metrics


def test_predict_runtimes_agree_and_exports_download(settings: Settings, color_dataset: Path,
                                                     tmp_path: Path) -> None:
    with TestClient(create_app(settings)) as c:
        ds = upload(c, zip_tree(color_dataset)).json()["id"]
    plain = finished_job(settings, ds, tmp_path, color_dataset, seed=1)
    job = finished_job(settings, ds, tmp_path, color_dataset, seed=0, lr=1e-3, export=True)
    photos = [p for p in sorted((color_dataset / "test").rglob("*.jpg"))]
    files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in photos[:4]]

    answers = {}
    for runtime in ("onnx", "torch"):
        app = create_app(settings.model_copy(
            update={"predict_runtime": runtime, "predict_precision": "fp32"}))
        with TestClient(app) as c:
            r = c.post("/predict", files=files, data={"model": job})
            assert r.status_code == 200, r.text
            answers[runtime] = r.json()
            # A model without an export is served by PyTorch whatever the setting.
            assert c.post("/predict", files=files[:1], data={"model": plain}
                          ).json()["runtime"] == "torch"
    assert answers["onnx"]["runtime"] == "onnx" and answers["torch"]["runtime"] == "torch"
    # Both apply the model's temperature (the ONNX graph itself, as its metadata says).
    temperature = load_checkpoint(tmp_path / "model-0.pt")["temperature"]
    assert answers["onnx"]["temperature"] == answers["torch"]["temperature"] == temperature
    assert OnnxModel(tmp_path / "model-0.onnx").contract["temperature"] == temperature
    for x, y in zip(answers["onnx"]["predictions"], answers["torch"]["predictions"],
                    strict=True):
        assert x["label"] == y["label"]
        assert x["probabilities"] == pytest.approx(y["probabilities"], abs=PARITY_TOLERANCE)

    with TestClient(create_app(settings)) as c:
        record = c.get(f"/jobs/{job}").json()["exports"]["onnx"]
        assert record["file"] == "model-0.onnx" and record["images"] == 8
        assert record["max_abs_diff"] <= PARITY_TOLERANCE
        r = c.get(f"/jobs/{job}/export")
        assert r.status_code == 200 and "hotdog-" in r.headers["content-disposition"]
        assert OnnxModel(r.content).contract["classes"] == ["hotdog", "not-hotdog"]
        r = c.get(f"/jobs/{job}/export", params={"format": "torchscript"})
        assert r.status_code == 200 and r.content[:2] == b"PK"  # a TorchScript zip archive
        assert c.get(f"/jobs/{job}/export", params={"format": "tflite"}).status_code == 422
        r = c.get(f"/jobs/{plain}/export")
        assert r.status_code == 409 and "no ONNX export" in r.json()["detail"]

    # A discarded export: the job says why, and so does the download.
    engine = make_engine(settings.db_url)
    with Session(engine) as s:
        s.get(Job, plain).exports = {"onnx": {"error": "it differed by 3e-2"}}
        s.commit()
    engine.dispose()
    with TestClient(create_app(settings)) as c:
        r = c.get(f"/jobs/{plain}/export")
        assert r.status_code == 409 and "discarded: it differed by 3e-2" in r.json()["detail"]


def test_predict_sheds_load_with_503_and_retry_after(settings: Settings, color_dataset: Path,
                                                     tmp_path: Path) -> None:
    full = settings.model_copy(update={"predict_queue_images": 1})
    with TestClient(create_app(full)) as c:
        ds = upload(c, zip_tree(color_dataset)).json()["id"]
        finished_job(full, ds, tmp_path, color_dataset)
        files = [("file", (f"{i}.jpg", jpeg(), "image/jpeg")) for i in range(2)]
        r = c.post("/predict", files=files)  # 2 images never fit a queue of 1
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "retry" in r.json()["detail"]
        assert c.post("/predict", files=files[:1]).status_code == 200


def test_predict_counts_images_being_decoded_and_sheds_before_parsing(
        settings: Settings, color_dataset: Path, tmp_path: Path) -> None:
    held = settings.model_copy(update={"predict_queue_images": 4,
                                       "predict_decode_wait_seconds": 60})
    app = create_app(held)
    state = app.state.hotdog
    with TestClient(app) as c:
        ds = upload(c, zip_tree(color_dataset)).json()["id"]
        finished_job(held, ds, tmp_path, color_dataset)
        files = [("file", (f"{i}.jpg", jpeg(), "image/jpeg")) for i in range(3)]
        with ThreadPoolExecutor(2) as pool:
            with state.decode_budget.reserve(state.decode_budget.capacity):  # decoding stalls
                first = pool.submit(c.post, "/predict", files=files)
                wait_for(lambda: state.intake.decoding == 3, timeout=30,
                         what="3 images waiting to be decoded")
                # The model's queue is empty, but 3 images wait to be decoded: 2 more are 503.
                r = c.post("/predict", files=files[:2])
                assert r.status_code == 503 and r.headers["retry-after"] == "1"
                assert "3 images are waiting to be decoded or for the model" in r.json()["detail"]
                second = pool.submit(c.post, "/predict", files=files[:1])
                wait_for(lambda: state.intake.decoding == 4, timeout=30, what="4 images")
                # Full: refused before its body is parsed (a body that is no form at all).
                r = c.post("/predict", content=b"junk", headers={
                    "content-type": "multipart/form-data; boundary=x"})
                assert r.status_code == 503 and r.headers["retry-after"] == "1"
                assert "4 images are waiting to be decoded" in r.json()["detail"]
            assert first.result(30).status_code == 200 and second.result(30).status_code == 200
    # A request whose images cannot start decoding within the wait is shed, not left waiting.
    with TestClient(create_app(held.model_copy(
            update={"predict_decode_wait_seconds": 0.2}))) as c:
        with state.decode_budget.reserve(state.decode_budget.capacity):
            r = c.post("/predict", files=files[:1])
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "decoding is at capacity" in r.json()["detail"]
        assert c.post("/predict", files=files[:1]).status_code == 200


def test_a_lone_request_of_many_slow_images_is_decoded_not_shed(
        settings: Settings, color_dataset: Path, tmp_path: Path) -> None:
    # One decode thread, a wait of 1 s, and 8 images of about a quarter second each: the
    # request takes longer than the wait, but it never stops progressing, so it is answered.
    slow = settings.model_copy(update={"predict_decode_threads": 1, "predict_max_files": 8,
                                       "predict_decode_wait_seconds": 1.0})
    buf = io.BytesIO()
    Image.new("I;16", (4000, 4000), 1234).save(buf, "PNG")
    files = [("file", (f"{i}.png", buf.getvalue(), "image/png")) for i in range(8)]
    with TestClient(create_app(slow)) as c:
        ds = upload(c, zip_tree(color_dataset)).json()["id"]
        finished_job(slow, ds, tmp_path, color_dataset)
        started = time.monotonic()
        r = c.post("/predict", files=files)
        assert r.status_code == 200, r.text
        assert len(r.json()["predictions"]) == 8
        took = time.monotonic() - started
    print(f"8 slow images in {took:.1f} s")


def test_an_image_over_the_decode_budget_is_422_naming_it(
        settings: Settings, color_dataset: Path, tmp_path: Path) -> None:
    small = settings.model_copy(update={"decode_budget_bytes": 4 << 20})
    buf = io.BytesIO()
    Image.new("RGB", (1200, 1200), (200, 80, 40)).save(buf, "PNG")  # 5.5 MiB decoded
    big = buf.getvalue()
    try:
        with TestClient(create_app(small)) as c:
            # Upload checks share the budget: the same image in a dataset is refused.
            entries = {str(p.relative_to(color_dataset)): p.read_bytes()
                       for p in color_dataset.rglob("*.jpg")}
            r = upload(c, make_zip({**entries, "train/hotdog/big.png": big}))
            assert r.status_code == 422
            assert re.search(r"big\.png: .*1200x1200 RGB .* needs about \d+ MiB .* 4 MiB",
                             r.json()["detail"])
            ds = upload(c, zip_tree(color_dataset)).json()["id"]
            finished_job(small, ds, tmp_path, color_dataset)
            files = [("file", ("fine.jpg", jpeg(), "image/jpeg")),
                     ("file", ("big.png", big, "image/png"))]
            r = c.post("/predict", files=files)
            assert r.status_code == 422
            assert re.match(r"big\.png: .* needs about \d+ MiB", r.json()["detail"])
            assert c.post("/predict", files=files[:1]).status_code == 200
    finally:
        set_decode_budget(None)  # the process's budget, for the tests that follow


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 60), color).save(buf, "PNG")
    return buf.getvalue()


def test_delete_dataset_refused_while_a_job_uses_it(client: TestClient, settings: Settings,
                                                   color_dataset: Path) -> None:
    ds = upload(client, zip_tree(color_dataset)).json()["id"]
    job = client.post("/jobs", json={"dataset_id": ds, **TINY, **NO_WORKER}).json()["id"]
    r = client.delete(f"/datasets/{ds}")
    assert r.status_code == 409 and job in r.json()["detail"]
    assert client.post(f"/jobs/{job}/cancel").json()["status"] == "cancelled"
    assert client.post(f"/jobs/{job}/cancel").status_code == 409  # already ended
    assert client.delete(f"/datasets/{ds}").status_code == 204
    assert client.get(f"/datasets/{ds}").status_code == 404
    assert stored_datasets(settings) == []
    # The job keeps its history; a new job on the deleted dataset is refused.
    assert client.get(f"/jobs/{job}").json()["dataset_id"] == ds
    assert client.post("/jobs", json={"dataset_id": ds}).status_code == 404


def test_checkpoint_and_evaluation_wait_for_success(client: TestClient,
                                                    color_dataset: Path) -> None:
    ds = upload(client, zip_tree(color_dataset)).json()["id"]
    job = client.post("/jobs", json={"dataset_id": ds, **TINY, **NO_WORKER}).json()["id"]
    for path in ("checkpoint", "evaluation"):
        r = client.get(f"/jobs/{job}/{path}")
        assert r.status_code == 409 and "queued" in r.json()["detail"]
    assert client.get(f"/jobs/{job}/metrics").json() == []


def test_health_ready_docs(client: TestClient) -> None:
    assert client.get("/health").json()["status"] == "ok"
    ready = client.get("/ready").json()
    assert ready == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/datasets", "/jobs", "/jobs/{job_id}", "/predict", "/models", "/metrics"):
        assert p in paths
    assert client.get("/docs").status_code == 200


def test_the_job_schema_comes_from_train_config(client: TestClient) -> None:
    """Every API parameter of TrainConfig, with its default, range and help, is in the
    OpenAPI schema (the web page builds its form from it)."""
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    fields = schemas["JobCreate"]["properties"]
    # the service's own fields (queueing, a follow-up label review), then the engine's
    assert list(fields) == (["dataset_id", "queue_anyway", "review_labels"]
                            + [f.name for f, _ in params("api")])
    assert fields["queue_anyway"]["default"] is False
    assert fields["review_labels"]["default"] is False
    for f, p in params("api"):
        assert fields[f.name]["description"] == p.help
        assert fields[f.name].get("default") == f.default, f.name
    assert fields["epochs"] | {"minimum": 1, "maximum": 1000, "type": "integer"} == fields["epochs"]
    assert fields["momentum"]["exclusiveMaximum"] == 1
    assert fields["lr"]["anyOf"][0] == {"type": "number", "exclusiveMinimum": 0, "maximum": 10}
    assert fields["precision"]["enum"] == ["auto", "fp32", "bf16", "fp16"]
    assert "job:" in fields["init"]["pattern"]
    assert schemas["JobCreate"]["additionalProperties"] is False
    assert "queue_unreachable" in schemas["JobOut"]["properties"]["error_kind"]["description"]


def test_ready_is_503_when_the_broker_is_down(settings: Settings) -> None:
    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down)) as c:
        r = c.get("/ready")
        assert r.status_code == 503
        assert r.json()["checks"]["database"] == "ok"
        assert r.json()["checks"]["broker"].startswith("unreachable")


def test_a_job_that_cannot_be_queued_is_failed_not_lost(settings: Settings,
                                                        color_dataset: Path) -> None:
    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down)) as c:
        ds = upload(c, zip_tree(color_dataset)).json()["id"]
        r = c.post("/jobs", json={"dataset_id": ds, **NO_WORKER})
        assert r.status_code == 503 and "broker" in r.json()["detail"]
        (job,) = c.get("/jobs").json()
        assert job["status"] == "failed" and "broker" in job["error"]
        assert job["error_kind"] == "queue_unreachable"


def test_refuses_to_start_on_an_unmigrated_database(tmp_path: Path) -> None:
    from app.api.app import SchemaNotCurrent

    fresh = embedded(tmp_path / "fresh")
    with pytest.raises(SchemaNotCurrent, match="hotdog migrate"), \
            TestClient(create_app(fresh)):
        pass


def test_progress_and_eta_while_running(client: TestClient, settings: Settings,
                                        color_dataset: Path) -> None:
    from app.jobs.service import record_epoch, record_progress

    ds = upload(client, zip_tree(color_dataset)).json()["id"]
    job_id = client.post("/jobs", json={"dataset_id": ds, **TINY, "epochs": 4,
                                         **NO_WORKER}).json()["id"]
    engine = make_engine(settings.db_url)
    with Session(engine) as s:
        claim_job(s, job_id, worker="w", lease_seconds=60)
        record_epoch(s, job_id, {"epoch": 1, "train_loss": 1.0, "train_acc": 0.5,
                                 "test_loss": 1.0, "test_acc": 0.75, "images_per_s": 10.0,
                                 "seconds": 10.0})
        record_progress(s, job_id, worker="w", epoch=2, fraction=0.5)
        s.commit()
    engine.dispose()
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "running"
    assert job["progress"]["fraction"] == pytest.approx(1.5 / 4)
    assert job["progress"]["eta_seconds"] == pytest.approx(25.0)  # 2.5 epochs of 10 s
    assert job["latest_metrics"]["test_acc"] == 0.75 == job["best_metrics"]["test_acc"]


def test_the_job_shows_the_kept_epoch_never_the_best_test_accuracy(
        client: TestClient, settings: Settings, color_dataset: Path) -> None:
    from app.jobs.service import finish_job, record_epoch

    ds = upload(client, zip_tree(color_dataset)).json()["id"]
    job_id = client.post("/jobs", json={"dataset_id": ds, **TINY, "epochs": 3,
                                         **NO_WORKER}).json()["id"]
    # Epoch 2 has the best validation loss, epoch 3 the best test accuracy.
    rows = [(1.0, 0.6, 0.5), (0.4, 0.8, 0.625), (0.7, 0.7, 1.0)]
    engine = make_engine(settings.db_url)
    with Session(engine) as s:
        claim_job(s, job_id, worker="w", lease_seconds=60)
        for epoch, (val_loss, val_acc, test_acc) in enumerate(rows, 1):
            record_epoch(s, job_id, {"epoch": epoch, "train_loss": 1.0, "train_acc": 0.5,
                                     "val_loss": val_loss, "val_acc": val_acc,
                                     "val_macro_f1": val_acc, "test_loss": 1.0,
                                     "test_acc": test_acc, "images_per_s": 10.0,
                                     "seconds": 1.0})
        s.commit()
        running = client.get(f"/jobs/{job_id}").json()
        assert running["best_metrics"]["epoch"] == 2 and running["selected_epoch"] is None
        per_class = [{"label": "hotdog", "precision": 0.6, "recall": 1.0, "f1": 0.75,
                      "support": 6},
                     {"label": "not-hotdog", "precision": 1.0, "recall": 0.25, "f1": 0.4,
                      "support": 4}]
        finish_job(s, job_id, worker="w", status=JobStatus.SUCCEEDED, checkpoint_path="/x.pt",
                   selected_epoch=2, note="stopped early after epoch 3 of 3",
                   evaluation={"accuracy": 0.7, "loss": 0.9, "classes": ["hotdog", "not-hotdog"],
                               "confusion": [[6, 0], [3, 1]], "per_class": per_class})
        s.commit()
    engine.dispose()
    evaluation = client.get(f"/jobs/{job_id}/evaluation").json()
    assert evaluation["accuracy"] == 0.7
    assert evaluation["balanced_accuracy"] == pytest.approx(0.625)  # (1.0 + 0.25) / 2
    assert evaluation["macro_f1"] == pytest.approx(0.575)
    job = client.get(f"/jobs/{job_id}").json()
    assert job["selected_epoch"] == 2 and job["note"] == "stopped early after epoch 3 of 3"
    kept = job["best_metrics"]
    assert (kept["epoch"], kept["val_loss"], kept["val_acc"], kept["test_acc"]) == (
        2, 0.4, 0.8, 0.625)
    assert job["latest_metrics"]["epoch"] == 3
    assert client.get(f"/jobs/{job_id}/metrics").json()[1]["val_acc"] == 0.8


def test_selection_without_a_validation_split_is_422(client: TestClient,
                                                      color_dataset: Path) -> None:
    ds = upload(client, zip_tree(color_dataset)).json()["id"]
    for asked, name in (({"select": "best"}, "select 'best'"),
                        ({"early_stopping_patience": 2}, "early_stopping_patience")):
        r = client.post("/jobs", json={"dataset_id": ds, "val_fraction": 0, **asked,
                                       **NO_WORKER})
        assert r.status_code == 422 and name in r.json()["detail"], r.text
    r = client.post("/jobs", json={"dataset_id": ds, "select": "worst", **NO_WORKER})
    assert r.status_code == 422 and "select" in r.text
    r = client.post("/jobs", json={"dataset_id": ds, "epochs": 2, "warmup_epochs": 2,
                                   "lr_schedule": "cosine", **NO_WORKER})
    assert r.status_code == 422 and "warmup_epochs must be fewer than epochs" in r.text


def test_serving_beyond_loopback_without_a_key_warns(caplog: pytest.LogCaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from app.cli.ops import warn_if_exposed

    monkeypatch.delenv("API_KEY", raising=False)
    with caplog.at_level("WARNING", logger="hotdog"):
        warn_if_exposed("127.0.0.1")
        assert not caplog.records
        warn_if_exposed("0.0.0.0")
    assert any("WITHOUT an API key" in r.getMessage() for r in caplog.records)
    caplog.clear()
    monkeypatch.setenv("API_KEY", "k")
    warn_if_exposed("0.0.0.0")
    assert not caplog.records


def test_a_server_spools_uploads_in_the_data_dir(tmp_path: Path) -> None:
    import tempfile

    from app.api.app import keep_temp_files_in

    before = tempfile.tempdir
    try:
        tmp = keep_temp_files_in(tmp_path / "data")
        with tempfile.SpooledTemporaryFile(max_size=1) as f:  # what Starlette spools to
            f.write(b"more than one byte")  # rolled over to a real (unnamed) file
            where = os.readlink(f"/proc/self/fd/{f.fileno()}")
            assert where.startswith(str(tmp)) and tmp == (tmp_path / "data" / "tmp").resolve()
    finally:
        tempfile.tempdir = before
