"""The runtimes /predict can serve with: INT8 kept or discarded by its verification rule,
compiled PyTorch checked before it serves (and eager kept when the compile fails), the
fastest measured runtime chosen under ``auto``, and the raw image body."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from app.api.app import create_app
from app.api.serving import LoadedModel, ModelCache, ServingMetrics
from app.core.config import Settings
from app.engine import Predictor, TrainConfig, fit
from app.engine import export as ex
from app.engine.data import load_image_folder
from tests.helpers import TINY, finished_job, migrated, upload, zip_tree


@pytest.fixture(scope="module")
def job(color_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model with everything a worker writes beside it: the verified ONNX export,
    the INT8 model and the verification set."""
    out = tmp_path_factory.mktemp("runtimes") / "model.pt"
    fit(color_dataset, TrainConfig(**TINY, epochs=1, val_fraction=0), out)
    exports = ex.exports_for_job(out, color_dataset, int8=True)
    assert "error" not in exports["onnx"], exports
    return out


def _photos(color_dataset: Path) -> list[Path]:
    return [p for p, _ in load_image_folder(color_dataset).test]


def test_int8_is_kept_when_it_agrees_with_fp32_and_records_the_figures(
        job: Path, color_dataset: Path) -> None:
    record = ex.int8_for_job(job, color_dataset, job.with_suffix(".onnx"),
                             job.with_name("again.int8.onnx"))
    assert record.error is None, record
    assert record.file == "again.int8.onnx" and job.with_name("again.int8.onnx").is_file()
    assert record.images == len(_photos(color_dataset)) and record.calibration_images == 16
    assert record.agreement is not None and record.agreement >= ex.INT8_MIN_AGREEMENT
    assert record.accuracy is not None and record.reference_accuracy is not None
    assert record.reference_accuracy - record.accuracy <= ex.INT8_MAX_ACCURACY_DROP
    # The quantized graph carries the contract and serves the same labels as fp32.
    int8 = Predictor(job, runtime="onnx_int8")
    assert (int8.runtime, int8.precision) == ("onnx_int8", "int8")
    assert int8.onnx is not None and int8.onnx.contract["classes"] == ["hotdog", "not-hotdog"]
    fp32 = Predictor(job, runtime="onnx")
    photos = _photos(color_dataset)
    assert [p.label for p in int8.predict(photos)] == [p.label for p in fp32.predict(photos)]


def test_int8_failing_the_rule_is_discarded_with_the_reason(
        job: Path, color_dataset: Path, tmp_path: Path) -> None:
    # The rule itself, at its edges.
    assert ex.int8_verdict(0.99, 0.90, 0.905) is None
    assert "agree with fp32's on 98.0%" in (ex.int8_verdict(0.98, 0.95, 0.95) or "")
    assert "below fp32's" in (ex.int8_verdict(1.0, 0.90, 0.906) or "")
    # A model that fails the rule is deleted, and the record says why, with its figures.
    # (Which real model fails it cannot be foretold: a tiny model's labels are often the
    # same whatever the calibration. The threshold no model can meet makes it certain.)
    pre = Predictor(job).preprocessing
    calibration = [torch.zeros(4, pre.image_size, pre.image_size, 3, dtype=torch.uint8)]
    test = list(ex.labelled_images(color_dataset, pre))
    out = tmp_path / "bad.int8.onnx"
    record = ex.int8_verified(job.with_suffix(".onnx"), calibration, test, out,
                              min_agreement=1.01)
    assert record.file is None and not out.exists()
    assert record.error is not None and record.error.startswith(
        "INT8 model discarded: its labels agree with fp32's on ")
    assert record.agreement is not None and record.images == len(test)
    assert record.to_dict()["calibration_images"] == 4


def cache(runtime: str, **kw: object) -> ModelCache:
    return ModelCache(size=2, device="cpu", precision="auto", max_batch=4, max_delay=0,
                      max_queue=16, metrics=ServingMetrics(CollectorRegistry()),
                      runtime=runtime, tune_seconds=0.2, **kw)  # type: ignore[arg-type]


def tuned(models: ModelCache, checkpoint: Path) -> LoadedModel:
    model = models.get("job", checkpoint)
    assert model.tuned.wait(300), "the runtimes were not measured within 5 minutes"
    return model


def test_a_compile_failure_leaves_eager_serving(job: Path, color_dataset: Path) -> None:
    models = cache("compiled", compile_backend="no_such_backend")
    try:
        model = models.get("job", job)
        assert model.predictor.runtime == "torch"  # serves at once, before any compile
        model = tuned(models, job)
        assert model.predictor.runtime == "torch"
        assert "no_such_backend" in model.runtimes["compiled"]["error"]
        assert model.runtimes["torch"]["images_per_second"] > 0
        assert model.serving()["runtime"] == "torch" and not model.serving()["measuring"]
        x = torch.stack([model.predictor.load(p) for p in _photos(color_dataset)])
        assert model.forward(x).shape == (len(x), 2)
    finally:
        models.close()


def test_compiled_pytorch_is_checked_against_eager_then_swapped_in(
        job: Path, color_dataset: Path) -> None:
    # A real torch.compile (dynamo traces the model) with the eager backend: inductor's code
    # generation takes minutes on a small CPU (the benchmark measures it).
    models = cache("compiled", compile_backend="eager")
    try:
        model = tuned(models, job)
        assert model.predictor.runtime == "compiled", model.runtimes
        record = model.runtimes["compiled"]
        assert record["max_abs_diff"] <= 0.05 and record["compile_seconds"] >= 0
        eager = Predictor(job)
        photos = _photos(color_dataset)
        x = torch.stack([eager.load(p) for p in photos])
        assert torch.equal(model.forward(x).argmax(1), eager.probabilities(x).argmax(1))
    finally:
        models.close()


def test_a_runtime_without_its_verified_file_never_serves(job: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare.pt"
    bare.write_bytes(job.read_bytes())  # a checkpoint alone: no export, no INT8 model
    models = cache("onnx_int8")
    try:
        model = tuned(models, bare)
        assert model.predictor.runtime == "torch"
        assert "no verified onnx_int8 file" in model.runtimes["onnx_int8"]["error"]
    finally:
        models.close()


@pytest.fixture(scope="module")
def service(color_dataset: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The API in process (PREDICT_RUNTIME=auto) with one model that has every runtime but
    the compiled one (see above), and its id."""
    tmp = tmp_path_factory.mktemp("runtime-service")
    settings: Settings = migrated(tmp / "data", predict_compile=False, predict_tune_seconds=0.2)
    with TestClient(create_app(settings)) as c:
        ds = upload(c, zip_tree(color_dataset)).json()["id"]
        job_id = finished_job(settings, ds, tmp, color_dataset, export=True, int8=True)
        yield c, job_id


def test_auto_serves_the_fastest_measured_runtime_and_says_so(
        service, color_dataset: Path) -> None:  # type: ignore[no-untyped-def]
    c, job_id = service
    photo = _photos(color_dataset)[0]
    assert c.post("/predict", files={"file": ("a.jpg", photo.read_bytes(), "image/jpeg")}
                  ).status_code == 200  # loads the model; measuring starts
    models = c.app.state.hotdog.models  # type: ignore[attr-defined]
    assert models.models[job_id].tuned.wait(120)

    [listed] = c.get("/models").json()
    serving = listed["serving"]
    assert serving["measuring"] is False
    speeds = serving["runtimes"]
    assert set(speeds) == {"torch", "onnx", "onnx_int8"}, speeds
    fastest = max(speeds, key=lambda rt: speeds[rt]["images_per_second"])
    assert serving["runtime"] == fastest
    assert serving["images_per_second"] == speeds[fastest]["images_per_second"] > 0
    answer = c.post("/predict", content=photo.read_bytes(),
                    headers={"content-type": "image/jpeg"}).json()
    assert answer["runtime"] == fastest
    assert answer["images_per_second"] == speeds[fastest]["images_per_second"]


def test_a_raw_image_body_is_answered_as_the_same_photo_in_a_form(
        service, color_dataset: Path) -> None:  # type: ignore[no-untyped-def]
    c, job_id = service
    photo = _photos(color_dataset)[1]
    form = c.post("/predict", files={"file": ("lunch.jpg", photo.read_bytes(), "image/jpeg")},
                  data={"model": job_id})
    raw = c.post(f"/predict?model={job_id}&filename=lunch.jpg", content=photo.read_bytes(),
                 headers={"content-type": "image/jpeg"})
    assert form.status_code == raw.status_code == 200, raw.text
    a, b = form.json(), raw.json()
    assert a["model"] == b["model"] == job_id and a["runtime"] == b["runtime"]
    [pa], [pb] = a["predictions"], b["predictions"]
    assert pa["filename"] == pb["filename"] == "lunch.jpg" and pa["label"] == pb["label"]
    assert np.allclose(list(pa["probabilities"].values()), list(pb["probabilities"].values()),
                       atol=1e-6)
    # Without a filename, the answer names it "image"; PNG works the same way.
    png = c.post("/predict", content=_png(photo), headers={"content-type": "image/png"})
    assert png.status_code == 200 and png.json()["predictions"][0]["filename"] == "image"


def _png(photo: Path) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.open(photo).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("ctype", ["text/plain", "image/svg+xml", "image/heic",
                                   "application/x-www-form-urlencoded", "application/json", None])
def test_other_content_types_are_415(service, color_dataset: Path,  # type: ignore[no-untyped-def]
                                     ctype: str | None) -> None:
    c, _ = service
    body = _photos(color_dataset)[0].read_bytes()
    r = c.post("/predict", content=body, headers={"content-type": ctype} if ctype else {})
    assert r.status_code == 415, r.text
    assert "image/jpeg, image/png, image/webp, image/gif" in r.json()["detail"]
    if ctype == "application/json":  # a photo over a JSON body's 1 MiB too: it is no JSON
        big = body + b"\0" * (2 << 20)
        r = c.post("/predict", content=big, headers={"content-type": ctype})
        assert r.status_code == 415, r.text


@pytest.mark.parametrize(("fmt", "ctype"), [
    ("GIF", "image/gif"), ("BMP", "image/bmp"), ("TIFF", "image/tiff"), ("WEBP", "image/webp"),
    ("JPEG", "image/jpg"), ("PNG", "application/octet-stream"), ("BMP", "image/x-ms-bmp"),
    ("PNG", "image/jpeg"),  # the header is a label: the decoder reads the bytes' format
])
def test_a_raw_body_takes_every_format_a_form_takes(  # type: ignore[no-untyped-def]
        service, color_dataset: Path, fmt: str, ctype: str) -> None:
    import io

    from PIL import Image

    c, job_id = service
    buf = io.BytesIO()
    Image.open(_photos(color_dataset)[2]).convert("RGB").save(buf, fmt)
    form = c.post("/predict", files={"file": ("p", buf.getvalue(), "application/octet-stream")},
                  data={"model": job_id})
    raw = c.post(f"/predict?model={job_id}&filename=p", content=buf.getvalue(),
                 headers={"content-type": ctype})
    assert form.status_code == raw.status_code == 200, raw.text
    [pa], [pb] = form.json()["predictions"], raw.json()["predictions"]
    assert pa["label"] == pb["label"]
    assert np.allclose(list(pa["probabilities"].values()), list(pb["probabilities"].values()),
                       atol=1e-6)


def test_raw_bodies_that_are_no_photo_are_422(service) -> None:  # type: ignore[no-untyped-def]
    c, _ = service
    empty = c.post("/predict", content=b"", headers={"content-type": "image/jpeg"})
    assert empty.status_code == 422 and "empty" in empty.json()["detail"]
    junk = c.post("/predict", content=b"not a photo", headers={"content-type": "image/webp"})
    assert junk.status_code == 422, junk.text
    no_file = c.post("/predict", data={"model": "x"}, files={"other": ("a", b"a", "text/plain")})
    assert no_file.status_code == 422 and "no `file` field" in no_file.json()["detail"]


def test_a_raw_body_query_is_checked_as_a_form_query_is(
        service, color_dataset: Path) -> None:  # type: ignore[no-untyped-def]
    # The raw body skips FastAPI's parameter handling (PredictRoute): its query must still be
    # refused with the very answer FastAPI gives a form's.
    c, _ = service
    photo = _photos(color_dataset)[0].read_bytes()
    raw_type = {"content-type": "image/jpeg"}
    for query in ("top_k=0", "top_k=two", "crop=left", "explain=perhaps", "model=" + "x" * 65,
                  "filename=" + "y" * 256):
        raw = c.post(f"/predict?{query}", content=photo, headers=raw_type)
        form = c.post(f"/predict?{query}", files={"file": ("a.jpg", photo, "image/jpeg")})
        assert raw.status_code == form.status_code == 422, (query, raw.text)
        assert raw.json() == form.json(), query
        [error] = raw.json()["detail"]
        assert error["loc"] == ["query", query.split("=")[0]]
    top = c.post("/predict?top_k=1&top_k=2&filename=x.jpg&unknown=1", content=photo,
                 headers=raw_type)
    assert top.status_code == 200, top.text
    [p] = top.json()["predictions"]
    assert p["filename"] == "x.jpg" and len(p["probabilities"]) == 2  # the last top_k counts
    top = c.post("/predict?top_k=1", content=photo, headers=raw_type).json()["predictions"][0]
    assert list(top["probabilities"]) == [top["label"]]
    unknown = c.post("/predict?model=nosuchjob", content=photo, headers=raw_type)
    assert unknown.status_code == 404, unknown.text
