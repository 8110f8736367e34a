"""The FastAPI application: ``create_app(settings)``; ``hotdog serve`` runs it with uvicorn.

The API validates, stores uploads, writes rows, enqueues job ids and serves predictions.
It never trains.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import Counter, Histogram
from sqlalchemy.exc import DBAPIError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import app as package
from app.api import errors
from app.api.bodies import BodyLimit, StrictJson
from app.api.guards import CrossSiteGuard, HostCheck, RequestId
from app.api.keys import ApiKeyGate, KeyRing, document_scopes
from app.api.keys import router as keys_router
from app.api.metrics import register as register_collectors
from app.api.routes import datasets, jobs, models, ops, predict, predictions, storage, workers
from app.api.routes.ops import WEB_DIR, WEB_PREFIX
from app.api.state import State
from app.core.config import Settings, get_settings

log = logging.getLogger(__name__)

class SchemaNotCurrent(RuntimeError):
    pass


def check_schema(state: State) -> None:
    """Refuse to start on a database that ``hotdog migrate`` has not brought up to date."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from app.db.session import alembic_config

    head = ScriptDirectory.from_config(alembic_config(state.settings.db_url)).get_current_head()
    with state.engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    if current != head:
        raise SchemaNotCurrent(
            f"the database is at revision {current or 'none'}, the code needs {head}: "
            "run `hotdog migrate` first"
        )


# The docs' sections, in the order a user needs them.
TAGS = [{"name": name, "description": text} for name, text in (
    ("datasets", "upload an ImageFolder zip (train/<class>/..., test/<class>/...); its "
                 "report, images and labels"),
    ("jobs", "fine-tune on a dataset: progress, metrics, logs, evaluation, checkpoint, export"),
    ("models", "the models that serve: activate, roll back, evaluate on a dataset"),
    ("predict", "classify photos with the active model or a named one"),
    ("predictions", "classify many photos (a zip or a stored dataset) in the background"),
    ("workers", "the training workers"),
    ("storage", "what the data directory holds"),
    ("ops", "liveness, readiness and Prometheus metrics"),
    ("keys", "what the calling API key may do"),
)]


# Probes: answered whatever their Host (and, app.api.keys, without a key).
PUBLIC_PATHS = frozenset({"/health", "/ready"})


class HttpMetrics:
    """Requests counted and timed by route template and status."""

    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app = app
        r = state.registry
        self.requests = Counter("hotdog_http_requests", "HTTP requests",
                                ["method", "route", "status"], registry=r)
        self.seconds = Histogram("hotdog_http_request_seconds", "HTTP request duration",
                                 ["method", "route"], registry=r,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        code = 500

        async def sending(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.requests.labels(scope["method"], route, str(code)).inc()
            self.seconds.labels(scope["method"], route).observe(time.perf_counter() - start)


def keep_temp_files_in(data_dir: Path) -> Path:
    """Uploads are spooled to temporary files before a handler sees them: keep those in
    ``DATA_DIR/tmp`` (the data volume), not the system's /tmp. For a server process only:
    it changes where every temporary file of the process goes."""
    tmp = (data_dir / "tmp").resolve()
    tmp.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(tmp)
    return tmp


def _allowed_methods(api: FastAPI) -> Callable[[str], list[str]]:
    """path → every method the API serves on it (from its OpenAPI paths, built on first use)."""
    table: list[tuple[re.Pattern[str], list[str]]] = []

    def allowed(path: str) -> list[str]:
        if path == "/" or path.startswith(WEB_PREFIX + "/"):  # the web page's files
            return ["GET", "HEAD"]
        if not table:
            for template, ops in api.openapi()["paths"].items():
                regex = re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template))
                pattern = re.compile(f"^{regex}$")
                table.append((pattern, sorted(m.upper() for m in ops)))
        return sorted({m for pattern, methods in table if pattern.match(path) for m in methods})

    return allowed


def _recover_reports(state: State) -> None:
    """Queue the dataset reports that nobody computes (this process's last run stopped)."""
    try:
        queued = state.reports.recover()
    except DBAPIError as exc:  # the database is down: GET takes them up later
        log.warning("dataset reports not recovered at start: %s", exc)
        return
    if queued:
        log.info("queued %d dataset report(s) left pending or interrupted", queued)


def create_app(settings: Settings | None = None, *, check: bool = True) -> FastAPI:
    settings = settings or get_settings()
    ring = KeyRing(settings.key_entries())  # an unusable API_KEYS stops here, naming the entry
    state = State.create(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if check:
            await run_in_threadpool(check_schema, state)
        state.sweep_incoming()
        await run_in_threadpool(_recover_reports, state)
        log.info("hotdog API ready: database %s, broker %s, data dir %s",
                 state.engine.url.render_as_string(hide_password=True),
                 settings.broker.split("@")[-1], settings.data_dir.resolve())
        log.info("API keys: %s", ring.summary())
        try:
            yield
        finally:
            state.close()

    api = FastAPI(
        title="hotdog",
        version=package.__version__,
        description="Fine-tune a pretrained ResNet-18 on your labelled photos, then classify "
        "new ones. Upload an ImageFolder zip (`POST /datasets`), start a job (`POST /jobs`), "
        "poll it (`GET /jobs/{id}`), then `POST /predict`.",
        lifespan=lifespan,
        openapi_tags=TAGS,
    )
    api.state.hotdog = state
    errors.install(api)
    # /predict first: FastAPI tries the routes in order, and it is the one under load (its
    # matching walked the 27 routes of the routers before it). The docs keep the workflow's
    # order (openapi_tags).
    for module in (predict, datasets, jobs, models, predictions, workers, storage, ops):
        api.include_router(module.router)
    api.include_router(keys_router)  # GET /keys/me
    document_scopes(api)  # each operation names its scope (app.api.keys.RULES)
    register_collectors(state)  # jobs by status, queue depth, training speed, epoch times

    api.mount(WEB_PREFIX, StaticFiles(directory=WEB_DIR), name="ui")

    allowed = _allowed_methods(api)

    @api.exception_handler(405)
    async def method_not_allowed(request: Request, _exc: Exception) -> JSONResponse:
        # Starlette's Allow names one route's methods; a path may have several routes.
        methods = allowed(request.url.path)
        return JSONResponse({"detail": f"{request.method} is not allowed on "
                                       f"{request.url.path}; use {', '.join(methods)}"},
                            405, headers={"Allow": ", ".join(methods)})

    # Inside BodyLimit: it reads what that lets through. Photos and zips labelled JSON go on
    # to their routes, whose 415/422 names the mistake (a photo is not cut off at 1 MiB).
    api.add_middleware(StrictJson, not_json=frozenset({("POST", "/predict"),
                                                       ("POST", "/datasets")}))
    api.add_middleware(BodyLimit, limits={
        ("POST", "/datasets"): settings.max_upload_bytes,
        ("POST", "/predict"): settings.predict_max_bytes,
        ("POST", "/predictions"): settings.max_upload_bytes,  # a zip of photos
    }, idle_seconds=settings.request_body_idle_seconds)
    if not ring:  # with a key, a page on another site cannot send it
        api.add_middleware(CrossSiteGuard)
    api.add_middleware(ApiKeyGate, ring=ring)
    api.add_middleware(HostCheck, allowed_hosts=settings.host_names, exempt=PUBLIC_PATHS)
    api.add_middleware(HttpMetrics, state=state)
    api.add_middleware(RequestId)  # outermost: every line logged for a request has its id
    return api
