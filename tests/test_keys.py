"""Scoped API keys: every route's scope (walking the OpenAPI paths, so that a route added
later is covered without a line here), 403 naming the scope, constant-time comparison, no
key in any log, ``/keys/me``, ``hotdog keys generate``, and one check through a real
``hotdog serve``."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.api.keys import ANY_KEY, PUBLIC, scopes_needed
from app.cli.main import main
from app.client import Client, ServiceError
from app.core.config import Settings
from app.core.keys import SCOPES, KeyEntry, KeysInvalid, parse_api_keys
from tests.helpers import embedded_stack, migrated, zip_tree

MASTER = "the-all-scopes-key"  # API_KEY: every scope
KEYS = {scope: f"{scope}-only-key-0123456789" for scope in SCOPES}  # API_KEYS: one scope each
API_KEYS = ";".join(f"{key}:{scope}" for scope, key in KEYS.items())
ALL = [MASTER, *KEYS.values()]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return migrated(tmp_path_factory.mktemp("keys") / "data", api_key=MASTER, api_keys=API_KEYS)


@pytest.fixture(scope="module")
def app(keyed: Settings) -> FastAPI:
    return create_app(keyed)


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


def every_call(app: FastAPI) -> list[tuple[str, str]]:
    """Every route the app has (its OpenAPI paths, and the routes outside the schema), with
    ``x`` for each path parameter, as tests/test_api.py's key test walks them."""
    routes = {(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops}
    routes |= {(m, r.path) for r in app.routes if hasattr(r, "path")
               for m in getattr(r, "methods", None) or () if m != "HEAD"}
    return sorted((m, re.sub(r"{[^}]+}", "x", p)) for m, p in routes)


def test_the_scopes_say_what_the_issue_says(app: FastAPI) -> None:
    """The policy, as properties of every route (today's and those added later): predict is
    POST /predict and GET /models only; read is every GET but /storage; train is the writes
    under /datasets, /jobs and /predictions; admin is any DELETE, /storage and the writes
    that change which model serves. No route is open but the probes and the page's files."""
    calls = every_call(app)
    assert len(calls) >= 20
    for method, path in calls:
        needed = scopes_needed(method, path)
        if path in ("/health", "/ready") or (method == "GET" and path == "/"):
            assert needed is PUBLIC, (method, path)
            continue
        assert needed is not PUBLIC, (method, path)
        if path == "/keys/me":
            assert needed == ANY_KEY
        elif path == "/storage" or path.startswith("/storage/") or method == "DELETE":
            assert needed == ("admin",), (method, path)
        elif method == "GET":
            assert "read" in needed, (method, path)
            assert ("predict" in needed) == (path == "/models"), (method, path)
        elif path.split("/")[1] in ("datasets", "jobs", "predictions"):
            assert needed == ("train",), (method, path)
        elif (method, path) == ("POST", "/predict"):
            assert needed == ("predict",)
    # Rows by name, the routes other helpers add included (DELETE /jobs/{id}, /storage, logs,
    # batch predictions, relabelling, reviews): none needs a line of its own.
    for method, path, scopes in [
        ("POST", "/predict", ("predict",)), ("GET", "/models", ("predict", "read")),
        ("GET", "/models/history", ("read",)), ("GET", "/metrics", ("read",)),
        ("GET", "/openapi.json", ("read",)), ("GET", "/docs", ("read",)),
        ("HEAD", "/jobs/x", ("read",)), ("GET", "/jobs/x/logs", ("read",)),
        ("GET", "/predictions/x/results", ("read",)), ("GET", "/datasets/x/report", ("read",)),
        ("GET", "/datasets/x/images/y", ("read",)), ("GET", "/jobs/x/label-review", ("read",)),
        ("POST", "/datasets", ("train",)), ("POST", "/jobs", ("train",)),
        ("POST", "/jobs/x/cancel", ("train",)), ("POST", "/predictions", ("train",)),
        ("POST", "/datasets/x/relabel", ("train",)), ("POST", "/jobs/x/review", ("train",)),
        ("POST", "/models/x/evaluate", ("train",)),
        ("POST", "/models/x/activate", ("admin",)), ("POST", "/models/rollback", ("admin",)),
        ("DELETE", "/datasets/x", ("admin",)), ("DELETE", "/jobs/x", ("admin",)),
        ("GET", "/storage", ("admin",)), ("POST", "/storage/sweep", ("admin",)),
        ("PUT", "/workers/x", ("admin",)),  # a write nobody classified: admin (fail closed)
        ("GET", "/keys/me", ANY_KEY), ("GET", "/ui/app.js", PUBLIC), ("GET", "/health", PUBLIC),
    ]:
        assert scopes_needed(method, path) == scopes, (method, path)


def test_each_scope_is_allowed_and_refused_on_every_route(app: FastAPI,
                                                          client: TestClient) -> None:
    calls = [*every_call(app), ("GET", "/no/such/route"), ("POST", "/no/such/route"),
             ("GET", "/ui/app.js")]
    for method, path in calls:
        needed = scopes_needed(method, path)
        r = client.request(method, path)
        if needed is PUBLIC:
            assert r.status_code not in (401, 403), (method, path, r.text)
            continue
        assert r.status_code == 401 and "API key" in r.json()["detail"], (method, path)
        assert r.headers["www-authenticate"] == "Bearer"
        for scope, key in [("all", MASTER), *KEYS.items()]:
            r = client.request(method, path, headers={"X-API-Key": key})
            assert r.status_code < 500, (method, path, scope, r.text)
            if scope == "all" or needed == ANY_KEY or scope in needed:
                assert r.status_code not in (401, 403), (method, path, scope, r.text)
            else:
                assert r.status_code == 403, (method, path, scope, r.status_code)
                body = r.json()
                assert body["kind"] == "scope_missing" and body["scopes"] == list(needed)
                for s in needed:  # the answer names the scope it needs, and the request
                    assert f"'{s}'" in body["detail"], body
                assert f"{method} {path}" in body["detail"] and f"has: {scope}" in body["detail"]
                assert r.headers["www-authenticate"] == (
                    f'Bearer error="insufficient_scope", scope="{" ".join(needed)}"')
        # A right key next to a wrong one, or two different keys, is refused.
        r = client.request(method, path, headers={"X-API-Key": MASTER,
                                                  "Authorization": "Bearer wrong"})
        assert r.status_code == 401, (method, path)
        r = client.request(method, path, headers={"X-API-Key": KEYS["read"],
                                                  "Authorization": f"Bearer {KEYS['admin']}"})
        assert r.status_code == 401, (method, path)


def test_a_proxy_prefix_does_not_change_the_scope(app: FastAPI) -> None:
    """Behind a proxy that serves the API under a prefix (ASGI root_path), the scope is the
    route's: /hotdog/storage is /storage (admin), not some other GET."""
    with TestClient(app, root_path="/hotdog") as c:
        for path in ("/hotdog/storage", "/hotdog/models/x/activate"):
            r = c.request("GET" if path.endswith("storage") else "POST", path,
                          headers={"X-API-Key": KEYS["read"]})
            assert r.status_code == 403 and r.json()["scopes"] == ["admin"], (path, r.text)
        assert c.get("/hotdog/jobs", headers={"X-API-Key": KEYS["read"]}).status_code == 200


def test_what_a_scope_allows_works_end_to_end(client: TestClient, color_dataset: Path) -> None:
    def as_(scope: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {KEYS[scope]}"}

    r = client.post("/datasets", files={"file": ("x.zip", zip_tree(color_dataset))},
                    headers=as_("train"))
    assert r.status_code == 201, r.text
    ds = r.json()["id"]
    r = client.post("/jobs", json={"dataset_id": ds, "queue_anyway": True},
                    headers=as_("train"))
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    assert client.get(f"/jobs/{job}", headers=as_("read")).json()["status"] == "queued"
    assert client.get("/models", headers=as_("predict")).json() == []
    assert client.post(f"/jobs/{job}/cancel", headers=as_("read")).status_code == 403
    assert client.post(f"/jobs/{job}/cancel", headers=as_("train")).status_code == 200
    assert client.delete(f"/datasets/{ds}", headers=as_("train")).status_code == 403
    assert client.delete(f"/datasets/{ds}", headers=as_("admin")).status_code == 204


def test_keys_me_says_what_the_key_may_do(app: FastAPI, client: TestClient,
                                          tmp_path: Path) -> None:
    for key, scopes in [(MASTER, list(SCOPES)), (KEYS["predict"], ["predict"]),
                        (KEYS["admin"], ["admin"])]:
        r = client.get("/keys/me", headers={"X-API-Key": key})
        assert r.status_code == 200
        me = r.json()
        rules = me.pop("rules")
        assert me == {"scopes": scopes, "key_required": True,
                      "actor": "key:" + hashlib.sha256(key.encode()).hexdigest()[:12]}
    # The table it gives (what the page decides by) decides as the gate does, on every route.
    for method, path in every_call(app):
        rule = next(r for r in rules if (r["methods"] is None or method in r["methods"])
                    and re.fullmatch(r["path"], path))
        needed = scopes_needed(method, path)
        assert rule["scopes"] == (None if needed is None else list(needed)), (method, path)
    assert client.get("/keys/me").status_code == 401
    with TestClient(create_app(migrated(tmp_path / "open"))) as open_client:
        me = open_client.get("/keys/me").json()
        assert {k: me[k] for k in ("scopes", "key_required", "actor")} == {
            "scopes": list(SCOPES), "key_required": False, "actor": "anonymous"}


def test_keys_are_compared_in_constant_time(client: TestClient,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Every configured key is compared, whichever matches (none, the first, the last), and
    as equal-length digests, never as the keys themselves."""
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    for given in ("wrong", "w" * 200, MASTER, KEYS["admin"]):
        compared.clear()
        client.get("/jobs", headers={"X-API-Key": given})
        assert len(compared) == len(ALL), given
        assert {len(a) for pair in compared for a in pair} == {32}
        assert all(given.encode() not in a + b for a, b in compared)
    compared.clear()
    client.get("/jobs", headers={"X-API-Key": MASTER, "Authorization": f"Bearer {MASTER}"})
    assert len(compared) == 2 * len(ALL)


def test_keys_never_appear_in_logs(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        for key in [*ALL, "a-wrong-key-0123456789"]:
            for method, path in [("GET", "/jobs"), ("GET", "/jobs/nope"), ("POST", "/jobs"),
                                 ("DELETE", "/datasets/nope"), ("POST", "/models/rollback"),
                                 ("GET", "/storage")]:
                client.request(method, path, headers={"X-API-Key": key})
                client.request(method, path, headers={"Authorization": f"Bearer {key}"})
    assert caplog.records  # the API did log (e.g. the 404s and 409s)
    logged = caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
    for key in [*ALL, "a-wrong-key-0123456789"]:
        assert key not in logged


def test_api_keys_format_and_refusals() -> None:
    a, b = "A" * 20, "b-_0123456789abcdef:x"  # a key may hold ':' (the last one ends it)
    assert parse_api_keys(f" {a}:predict,read ;\n{b}:admin;") == [
        KeyEntry(a, frozenset({"predict", "read"})), KeyEntry(b, frozenset({"admin"}))]
    assert parse_api_keys("") == parse_api_keys(None) == []  # compose passes unset as empty
    secret = "s3cret-s3cret-s3cret"
    for value, words in [
        (f"{secret}:trian", "unknown scope 'trian'"), (f"{secret}", "KEY:SCOPE"),
        (f"{secret}:", "no scope given"), ("tiny-key:read", "shorter than 16"),
        (f"{a}:read;{secret}:read;{secret}:admin", "entry 3: the same key is listed twice"),
        (f"{secret}\x7f:read", "printable ASCII"),
    ]:
        with pytest.raises(KeysInvalid) as caught:
            parse_api_keys(value)
        assert words in str(caught.value), (value, caught.value)
        assert secret not in str(caught.value) and "tiny-key" not in str(caught.value)
    with pytest.raises(KeysInvalid, match="API_KEYS lists the key of API_KEY"):
        Settings(api_key=secret, api_keys=f"{secret}:read").key_entries()
    # The API refuses to start on them, naming the entry and not the key.
    with pytest.raises(KeysInvalid, match="API_KEYS entry 1") as caught:
        create_app(Settings(api_keys=f"{secret}:everything"), check=False)
    assert secret not in str(caught.value)


def test_keys_generate_prints_an_entry_that_the_settings_read_back(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["keys", "generate", "--scopes", "read,predict"]) == 0
    out = capsys.readouterr().out
    (line,) = [ln.strip() for ln in out.splitlines() if ln.strip().startswith("API_KEYS=")]
    entry = line.removeprefix("API_KEYS=")
    key = entry.split(":")[0]
    assert len(key) >= 40 and key in out.splitlines()[1]
    (parsed,) = Settings(api_keys=entry).key_entries()
    assert parsed == KeyEntry(key, frozenset({"predict", "read"}))

    assert main(["keys", "generate", "--scopes", "admin", "--json"]) == 0
    made = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert made["scopes"] == ["admin"] and made["key"] != key
    assert made["api_keys_entry"] == f"{made['key']}:admin"
    # Appended to an API_KEYS that holds the first: the service takes both.
    settings = migrated(tmp_path / "data", api_keys=f"{entry};{made['api_keys_entry']}")
    with TestClient(create_app(settings)) as c:
        for k, scopes in [(key, ["predict", "read"]), (made["key"], ["admin"])]:
            assert c.get("/keys/me", headers={"X-API-Key": k}).json()["scopes"] == scopes

    assert main(["keys", "generate", "--scopes", "predict,everything"]) == 2
    assert "unknown scope 'everything'" in capsys.readouterr().err


def test_scoped_keys_through_a_real_service(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """``hotdog serve`` with API_KEY and API_KEYS: the client and the CLI send a key as
    today; a key without the scope gets 403 (exit 2), and no key reaches the log (uvicorn's
    access lines included)."""
    with embedded_stack(tmp_path, worker=False, API_KEY=MASTER, API_KEYS=API_KEYS,
                        LOG_FORMAT="json") as stack:
        with Client(stack.url, api_key=KEYS["predict"]) as c:
            assert c.models() == []
            with pytest.raises(ServiceError) as caught:
                c.jobs()
            assert caught.value.status == 403 and "'read'" in str(caught.value.detail)
        with Client(stack.url, api_key="wrong-key-0123456789") as c, \
                pytest.raises(ServiceError) as caught:
            c.models()
        assert caught.value.status == 401
        assert main(["jobs", "--url", stack.url, "--api-key", KEYS["read"]]) == 0
        assert main(["jobs", "--url", stack.url, "--api-key", KEYS["predict"]]) == 2
        assert "lacks the 'read' scope" in capsys.readouterr().err
        with Client(stack.url, api_key=MASTER) as c:
            assert c.jobs() == []
        stack.stop("api")
    log = (tmp_path / "api.log").read_text()
    assert '"logger": "uvicorn.access"' in log and "GET /jobs" in log
    # The start names each key by its fingerprint and scopes (an operator's check).
    def fingerprint(key: str) -> str:
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:12]

    assert f"{fingerprint(MASTER)} (predict,read,train,admin)" in log
    assert f"{fingerprint(KEYS['predict'])} (predict)" in log
    for key in [*ALL, "wrong-key-0123456789"]:
        assert key not in log
