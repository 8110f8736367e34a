"""What operators and browsers use: liveness, readiness, Prometheus metrics, the web page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import StateDep
from app.api.schemas import ERRORS, Health

# The web page (``app/web``): ``GET /`` and its static files under ``/ui/``. They hold no
# data, so they load without the API key; the page then asks for it (the API still needs it).
WEB_DIR = Path(__file__).resolve().parents[2] / "web"
WEB_PREFIX = "/ui"
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
            "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
            "form-action 'self'")

router = APIRouter(tags=["ops"])


# Both async: answered on the event loop, never queued behind the thread pool's work.
@router.get("/health", response_model=Health)
async def health() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@router.get("/ready", response_model=Health,
            responses={503: {"model": Health, "description": "a dependency is unreachable"}})
async def ready(state: StateDep) -> Any:
    """Readiness: the database and the broker are reachable (503 otherwise). Probed at most
    once a second, each with a timeout of its own (``app.api.readiness``)."""
    checks = await state.readiness.checks()
    ok = all(v == "ok" for v in checks.values())
    body = Health(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get("/metrics", response_class=PlainTextResponse, responses={401: ERRORS[401]})
def metrics(state: StateDep) -> PlainTextResponse:
    """Prometheus text format."""
    return PlainTextResponse(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
def web_page() -> FileResponse:
    """The web page (no API key needed to load it; its API calls need one)."""
    return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers={
        "Cache-Control": "no-cache", "Content-Security-Policy": PAGE_CSP,
        "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})
