"""Values that Python reads but JSON, UTF-8 or PostgreSQL cannot carry, sent where a client
can put them: each gets a 4xx that names it, or is stored readable; none is a 500. On both
databases (``db_url``), since PostgreSQL is where NUL failed.

Each of these answered 500 before ``app.api.bodies.StrictJson`` and the NUL guard of
``app.db.session``: a 422 that echoed a NaN (JSON has none) or an unpaired surrogate (UTF-8
has none), a body of bytes that were not UTF-8 in POST /predictions, and any NUL reaching
PostgreSQL (an id in a URL, a query value, a dataset's name).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.api.bodies import JSON_BODY_LIMIT
from tests.helpers import embedded, jpeg, zip_tree

JSON = {"content-type": "application/json"}
ROUTES = ["/jobs", "/predictions", "/models/abc/activate", "/datasets/abc/relabel"]
NOT_JSON = {
    "NaN": (b'{"dataset_id": "abc", "lr": NaN}', "NaN is not a JSON number"),
    "Infinity": (b'{"dataset_id": "abc", "lr": -Infinity}', "-Infinity is not a JSON number"),
    "1e999": (b'{"dataset_id": "abc", "lr": 1e999}', "1e999 is beyond a float's range"),
    "unpaired surrogate": (b'{"dataset_id": "\\ud800", "name": "x"}', "unpaired surrogate"),
    "not UTF-8": (b'{"dataset_id": "\xff\xfe"}', "not UTF-8 text"),
    "nested too deeply": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "5000 digits": (b'{"epochs": ' + b"9" * 5000 + b"}", "5000 digits"),
}


@pytest.fixture
def client(db_url: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = embedded(tmp_path / "data").model_copy(update={"database_url": db_url})
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.mark.parametrize("route", ROUTES)
def test_json_python_reads_but_json_does_not_is_422_naming_it(client: TestClient,
                                                              route: str) -> None:
    for case, (body, named) in NOT_JSON.items():
        r = client.post(route, content=body, headers=JSON)
        assert r.status_code == 422, (case, r.text)
        assert named in r.json()["detail"], (case, r.text)
    # JSON that is merely wrong for the route still gets the route's own answer.
    r = client.post("/jobs", json={"dataset_id": "abc", "lr": -1})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "lr"], r.text
    r = client.post(route, content=b'{"dataset_id": ', headers=JSON)
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid", r.text
    # A photo labelled JSON: the route's own refusal (POST /predictions' echoed its bytes
    # and could not be written), and POST /predict's is still 415 (test_runtimes).
    r = client.post(route, content=jpeg(), headers=JSON)
    assert r.status_code in (400, 422), r.text


def test_a_json_body_is_at_most_its_limit_on_every_route(client: TestClient) -> None:
    # POST /predictions takes zips of gigabytes as multipart; as JSON it is a few fields.
    big = b'{"dataset_id": "' + b"a" * JSON_BODY_LIMIT + b'"}'
    for route in ("/predictions", "/jobs"):
        r = client.post(route, content=big, headers=JSON)
        assert r.status_code == 413 and str(JSON_BODY_LIMIT) in r.json()["detail"], r.text


def test_nul_in_ids_and_names_is_no_server_error(client: TestClient,
                                                color_dataset: Path) -> None:
    for path in ("/jobs/a%00b", "/datasets/a%00b", "/predictions/a%00b",
                 "/datasets/a%00b/images"):
        r = client.get(path)
        assert r.status_code == 404, (path, r.text)
    r = client.post("/jobs", json={"dataset_id": "a\u0000"})
    assert r.status_code == 404 and "dataset a\u0000 not found" in r.json()["detail"], r.text
    r = client.post("/predict?model=a%00b", content=b"x", headers={"content-type": "image/png"})
    assert r.status_code == 404, r.text
    # A name is stored: with its NUL on SQLite, with U+FFFD in its place on PostgreSQL.
    r = client.post("/datasets", data={"name": "lunch\u0000box"},
                    files={"file": ("set.zip", zip_tree(color_dataset), "application/zip")})
    assert r.status_code == 201, r.text
    dataset = r.json()["id"]
    [listed] = client.get("/datasets").json()
    assert listed["name"] in ("lunch\u0000box", "lunch\ufffdbox")
    r = client.post(f"/datasets/{dataset}/relabel",
                    json={"changes": {"0": "drop"}, "name": "v2\u0000"})
    assert r.status_code == 201, r.text
    assert r.json()["name"] in ("v2\u0000", "v2\ufffd")
