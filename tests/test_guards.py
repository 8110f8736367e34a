"""Safe defaults: the API answers only the Host names it is meant for (DNS rebinding), and
without an API key it refuses state-changing requests that browsers mark as cross-site;
every answer carries a request id that the log lines of the request carry too."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.api.guards import new_request_id
from app.core.config import Settings, is_loopback
from app.core.logs import make_handler
from app.db.session import upgrade
from tests.helpers import Stack, free_port, migrated, stack_env, zip_tree

CROSS_SITE = [
    {"Origin": "http://evil.example"},
    {"Origin": "null"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site", "Origin": "http://localhost:3000"},
]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated(tmp_path / "data")


@pytest.fixture
def defaults(settings: Settings) -> Iterator[Settings]:
    """The settings as a user who set neither HOST nor ALLOWED_HOSTS has them."""
    yield settings.model_copy(update={"allowed_hosts": None, "host": "127.0.0.1"})


def test_default_allowed_hosts_follow_the_bind_address() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.9", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.4", "example.com"))
    loopback = Settings(host="127.0.0.1").host_names
    assert set(loopback) == {"localhost", "127.0.0.1", "[::1]"}
    assert "[::1]" in Settings(host="::1").host_names
    assert Settings(host="0.0.0.0").host_names == ["*"]
    assert Settings(host="0.0.0.0", allowed_hosts="api.example.com, *.example.org"
                    ).host_names == ["api.example.com", "*.example.org"]


def test_a_loopback_service_answers_only_loopback_names(defaults: Settings) -> None:
    app = create_app(defaults)
    for base in ("http://localhost:8000", "http://127.0.0.1:1234", "http://[::1]:8000",
                 "http://LOCALHOST"):
        with TestClient(app, base_url=base) as c:
            assert c.get("/health").status_code == 200, base
            assert c.get("/datasets").status_code == 200, base
    for base in ("http://evil.example:8000", "http://testserver", "http://127.0.0.1.nip.io"):
        with TestClient(app, base_url=base) as c:
            for path in ("/datasets", "/", "/ui/app.js", "/openapi.json"):
                r = c.get(path)
                assert r.status_code == 400, (base, path)
                detail = r.json()["detail"]
                assert "Host header" in detail and "not allowed" in detail
                assert "ALLOWED_HOSTS" in detail
            # Probes by address (an orchestrator's) still reach liveness and readiness.
            assert c.get("/health").status_code == c.get("/ready").status_code == 200


def test_allowed_hosts_is_the_list_when_set(defaults: Settings) -> None:
    named = defaults.model_copy(update={"allowed_hosts": "hotdog.example.com"})
    with TestClient(create_app(named), base_url="https://hotdog.example.com") as c:
        assert c.get("/datasets").status_code == 200
    with TestClient(create_app(named), base_url="http://localhost:8000") as c:
        assert c.get("/datasets").status_code == 400
    anywhere = defaults.model_copy(update={"host": "0.0.0.0"})
    with TestClient(create_app(anywhere), base_url="http://evil.example") as c:
        assert c.get("/datasets").status_code == 200


def test_cross_site_writes_are_refused_without_a_key(settings: Settings,
                                                     color_dataset: Path) -> None:
    data = zip_tree(color_dataset)
    with TestClient(create_app(settings)) as c:
        for headers in CROSS_SITE:
            for method, path in (("POST", "/datasets"), ("POST", "/predict"),
                                 ("DELETE", "/datasets/x"), ("POST", "/jobs")):
                r = c.request(method, path, headers=headers,
                              files={"file": ("a.zip", data)} if method == "POST" else None)
                assert r.status_code == 403, (headers, method, path, r.text)
                detail = r.json()["detail"]
                assert "cross-site request refused" in detail
                assert ("Origin" in detail) or ("Sec-Fetch-Site" in detail)
        assert c.get("/datasets").json() == []  # nothing was stored
        # Reads are not refused (a page on another site cannot read the answers), nor are
        # the page's own writes, nor clients that are not browsers.
        assert c.get("/datasets", headers=CROSS_SITE[0]).status_code == 200
        same = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
        assert c.post("/datasets", headers=same, files={"file": ("a.zip", data)}
                      ).status_code == 201
        assert c.post("/datasets", files={"file": ("a.zip", data)}).status_code == 201
        typed = {"Sec-Fetch-Site": "none"}  # typed into the address bar
        assert c.delete("/datasets/nope", headers=typed).status_code == 404
        # The browser's word decides: same-origin behind a proxy that rewrote the Host.
        proxied = {"Sec-Fetch-Site": "same-origin", "Origin": "https://hotdog.example.com"}
        assert c.delete("/datasets/nope", headers=proxied).status_code == 404


def test_with_a_key_the_key_decides(settings: Settings, color_dataset: Path) -> None:
    keyed = settings.model_copy(update={"api_key": "k"})
    with TestClient(create_app(keyed)) as c:
        r = c.post("/datasets", files={"file": ("a.zip", zip_tree(color_dataset))},
                   headers={"X-API-Key": "k", **CROSS_SITE[0]})
        assert r.status_code == 201, r.text


def test_answers_carry_a_request_id_that_the_log_lines_carry(settings: Settings) -> None:
    stream = io.StringIO()
    handler = make_handler("json", stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with TestClient(create_app(settings.model_copy(update={"broker_url": None}))) as c:
            (settings.broker_folder / "queue").rmdir()  # /ready logs why it fails
            r = c.get("/ready", headers={"X-Request-ID": "abc-123"})
            assert r.status_code == 503 and r.headers["x-request-id"] == "abc-123"
            fresh = c.get("/health", headers={"X-Request-ID": "bad id\twith tabs"})
            assert len(fresh.headers["x-request-id"]) == 32
    finally:
        root.removeHandler(handler)
    lines = [line for line in stream.getvalue().splitlines() if "readiness" in line]
    assert lines and all('"request_id": "abc-123"' in line for line in lines), lines
    assert str(settings.broker_folder) in lines[0]  # the log names the path; the answer not


def test_request_ids_are_fresh_in_every_process() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    # A forked worker (uvicorn --workers, Celery's prefork) must not repeat its parent's ids.
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert len(child) == 32 and child != new_request_id()


def _serve(tmp: Path, host: str) -> Stack:
    db_url = f"sqlite:///{tmp / 'data' / 'hotdog.db'}"
    (tmp / "data").mkdir(parents=True)
    upgrade(db_url)
    port = free_port()
    stack = Stack(f"http://127.0.0.1:{port}", stack_env(tmp, db_url), tmp)
    stack.start("api", "serve", "--port", str(port), "--host", host)
    return stack


@pytest.mark.parametrize(("host", "foreign"), [("127.0.0.1", 400), ("0.0.0.0", 200)])
def test_serve_answers_the_names_of_the_address_it_listens_on(tmp_path: Path, host: str,
                                                              foreign: int) -> None:
    stack = _serve(tmp_path, host)
    try:
        stack.wait_ready(60)
        assert httpx.get(stack.url + "/datasets", headers={"Host": "evil.example"}
                         ).status_code == foreign
    finally:
        stack.stop_all()
