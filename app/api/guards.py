"""What a request passes before the API looks at it: an id for the logs, a Host this service
answers to, and (without an API key) an origin that is not another web site.

Why: a service on 127.0.0.1 without a key is reachable from any web page its user opens.
A page on another site can send it simple requests (a multipart POST needs no CORS
preflight), and DNS rebinding lets such a page read the answers too, under a name of its
own that resolves to 127.0.0.1. The Host check stops the second; the cross-site check
stops the first. Clients that are not browsers (curl, the ``hotdog`` commands) send neither
``Origin`` nor ``Sec-Fetch-Site`` and pass.
"""

from __future__ import annotations

import random
import re
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.logs import REQUEST_ID

REQUEST_ID_HEADER = "X-Request-ID"
CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SAME_ORIGIN_SITES = frozenset({"same-origin", "none"})  # "none": typed in, a bookmark
DEFAULT_PORTS = {"http": "80", "https": "443"}
SHOWN = 100  # characters of a header value quoted in an answer


def _quoted(value: str) -> str:
    return repr(value[:SHOWN] + ("…" if len(value) > SHOWN else ""))


def new_request_id() -> str:
    """32 random hex digits. Not ``uuid4``: its ``os.urandom`` is a system call that lets go
    of the GIL, and the event loop then waits for the forward and decode threads to hand it
    back (0.6 ms a request at concurrency 16, in a cProfile of the loop). An id that finds a
    log line needs no cryptographic randomness; ``random`` is reseeded in each forked
    process."""
    return f"{random.getrandbits(128):032x}"


class RequestId:
    """Every request gets an id: the client's ``X-Request-ID`` when it is a plain token,
    else a new one. Every line logged while answering carries it (``app.core.logs``) and the
    answer's ``X-Request-ID`` header returns it, so an answer can be found in the log."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        request_id = given if CLIENT_REQUEST_ID.fullmatch(given) else new_request_id()

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        # Not reset on the way out: each request runs in a task (a context) of its own, and
        # the error handler that logs an unhandled exception runs after this returns.
        REQUEST_ID.set(request_id)
        await self.app(scope, receive, sending)


class HostCheck:
    """Refuses a request whose ``Host`` is not one of ``allowed_hosts`` (``ALLOWED_HOSTS``)
    with a JSON 400 that names the header. Starlette's TrustedHostMiddleware decides.
    ``exempt`` paths pass whatever their Host: liveness and readiness, which orchestrators
    probe by address (they reveal nothing)."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str],
                 exempt: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.exempt = exempt
        self.trusted = TrustedHostMiddleware(_mark_allowed, allowed_hosts=allowed_hosts,
                                             www_redirect=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or self.trusted.allow_any
                or scope["path"] in self.exempt):
            await self.app(scope, receive, send)
            return
        await self.trusted(scope, receive, _discard)
        if scope.pop("hotdog.host_allowed", False):
            await self.app(scope, receive, send)
            return
        host = Headers(scope=scope).get("host")
        what = "missing" if host is None else f"{_quoted(host)} is not allowed"
        await JSONResponse(
            {"detail": f"Host header {what}: this service answers only the names in its "
                       "ALLOWED_HOSTS setting"}, 400)(scope, receive, send)


async def _mark_allowed(scope: Scope, _receive: Receive, _send: Send) -> None:
    scope["hotdog.host_allowed"] = True


async def _discard(_message: Message) -> None:
    pass


def cross_site(headers: Headers) -> str | None:
    """Why a browser's request comes from another site (None: it does not, or no browser
    sent it). A browser's own ``Sec-Fetch-Site`` decides where it is sent (pages cannot set
    it, and it holds behind a proxy that rewrites Host); else ``Origin`` against ``Host``."""
    site = headers.get("sec-fetch-site")
    if site is not None:
        return None if site in SAME_ORIGIN_SITES else f"Sec-Fetch-Site is {_quoted(site)}"
    origin = headers.get("origin")
    if origin is not None and not _same_origin(origin, headers.get("host", "")):
        return f"Origin {_quoted(origin)} is not this service's"
    return None


def _same_origin(origin: str, host: str) -> bool:
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme not in DEFAULT_PORTS or not parts.netloc:
        return False  # "null" (sandboxed pages, file:), or not a web origin

    def bare(netloc: str) -> str:
        return netloc.lower().removesuffix(f":{DEFAULT_PORTS[parts.scheme]}")

    return bare(parts.netloc) == bare(host)


class CrossSiteGuard:
    """Without an API key: refuses (403, naming the reason) a state-changing request
    (POST, PUT, PATCH, DELETE) that a browser marks as coming from another site. The web
    page's own requests are same-origin and pass."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in STATE_CHANGING:
            reason = cross_site(Headers(scope=scope))
            if reason is not None:
                await JSONResponse(
                    {"detail": f"cross-site request refused: {reason}. Without API_KEY this "
                               "service accepts changes only from its own page and from "
                               "clients that are not browsers"}, 403)(scope, receive, send)
                return
        await self.app(scope, receive, send)
