"""What a request body must be before a route reads it: under its route's size limit, arriving
without stalling (``BodyLimit``), and, when it says it is JSON, JSON that the routes can
read and answer about (``StrictJson``)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sys

from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

JSON_BODY_LIMIT = 1 << 20  # every JSON body; and every body of a route without a limit of its own
# nginx's "client closed request": the client went away before its body was in. Not the
# service's fault, so not a 500; the metrics and the access log count it under this status.
CLIENT_CLOSED = 499


def client_gone(method: str, path: str) -> Response:
    """The answer to a request whose client went away before its body was in (nobody reads
    it; the metrics and the access log count its status)."""
    log.info("client went away during %s %s before its body was in", method, path)
    return Response(status_code=CLIENT_CLOSED)


class BodyLimit:
    """Refuse request bodies over a per-route limit with a JSON 413 that names it: by
    Content-Length before reading, and by counting while reading (chunked uploads); and a
    body that stalls, no bytes for ``idle_seconds``, with a 408 (the connection is then
    closed): a client that declares a body and sends nothing more would otherwise hold an
    upload slot, or its share of /predict's intake, for as long as it keeps the socket."""

    def __init__(self, app: ASGIApp, limits: dict[tuple[str, str], int],
                 idle_seconds: float) -> None:
        self.app = app
        self.limits = limits
        self.idle_seconds = idle_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get((scope["method"], scope["path"].rstrip("/")), JSON_BODY_LIMIT)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        what = f"{scope['method']} {scope['path']}"
        if declared is not None:
            if not declared.isdigit():
                await JSONResponse({"detail": "invalid Content-Length header"}, 400)(
                    scope, receive, send)
                return
            if int(declared) > limit:
                await JSONResponse(
                    {"detail": f"request body of {int(declared)} bytes is over the limit "
                               f"of {limit} bytes for {what}"}, 413)(scope, receive, send)
                return
        seen = 0
        done = False

        async def counting() -> Message:
            nonlocal seen, done
            if done:  # the body is in: what is awaited now is the disconnect, however late
                return await receive()
            try:
                async with asyncio.timeout(self.idle_seconds):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(
                    408, f"the request body stalled: no bytes for {self.idle_seconds:g} s "
                         f"after {seen} bytes of {what}", {"Connection": "close"}) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(
                        413, f"request body is over the limit of {limit} bytes for {what}")
                done = not message.get("more_body", False)
            else:
                done = True
            return message

        await self.app(scope, counting, send)


def json_media_type(scope: Scope) -> bool:
    """Whether the request says its body is JSON (``application/json``, ``…+json``)."""
    for name, value in scope.get("headers") or []:
        if name == b"content-type":
            media: bytes = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return False


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number: send a finite number")


def _parse_int(digits: str) -> int:
    limit = sys.get_int_max_str_digits()  # 0: none (PYTHONINTMAXSTRDIGITS=0)
    if limit and len(digits.lstrip("-")) > limit:
        raise ValueError(f"a number of {len(digits)} digits is more than this service reads")
    return int(digits)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999
        raise ValueError(f"{text} is beyond a float's range: send a finite number")
    return value


def json_problem(body: bytes) -> str | None:
    """Why a JSON body would break a route although Python's parser reads it (None: it
    would not). A body that is not JSON at all (a photo labelled application/json, JSON in
    UTF-16) is left to the route, which answers it as before."""
    # Decoded once; with bad bytes replaced where it is not UTF-8, so that a JSON document
    # with a stray byte in a string is told apart from bytes that are no JSON at all.
    not_utf8: UnicodeDecodeError | None = None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        not_utf8, text = exc, body.decode("utf-8", "replace")
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_parse_float,
                           parse_int=_parse_int)
        if "\\u" in text:  # only an escape makes a lone surrogate
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except json.JSONDecodeError:
        return None
    except UnicodeEncodeError:  # "\ud800": half of a surrogate pair, no character
        return "the JSON body holds an unpaired surrogate escape (such as \\ud800): no " \
               "character; send text as UTF-8 or whole \\u pairs"
    except RecursionError:
        return "the JSON body is nested too deeply"
    except ValueError as exc:  # NaN, Infinity, 1e999, too many digits
        return f"the JSON body is not valid JSON: {exc}"
    if not_utf8 is not None:
        return f"the JSON body is not UTF-8 text ({not_utf8.reason} at byte {not_utf8.start})"
    return None


class StrictJson:
    """Read a JSON body whole (at most ``JSON_BODY_LIMIT``), and refuse with a 422 naming it
    what Python's json module takes but JSON does not, and what the answers could not carry:
    ``NaN`` and ``Infinity``, unpaired surrogate escapes, bytes that are not text, nesting
    past the parser's recursion limit. Each reached a route, which answered 500 when it
    echoed the value in a 422 (JSON has no NaN; UTF-8 has no lone surrogate). Other bodies
    pass untouched; the route reads the checked body as if from the client."""

    def __init__(self, app: ASGIApp, not_json: frozenset[tuple[str, str]] = frozenset()) -> None:
        self.app = app
        self.not_json = not_json  # (method, path) of routes that take no JSON: they say so

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or not json_media_type(scope)
                or (scope["method"], scope["path"].rstrip("/")) in self.not_json):
            await self.app(scope, receive, send)
            return
        what = f"{scope['method']} {scope['path']}"
        chunks: list[bytes] = []
        size = 0
        more = True
        try:
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    await client_gone(scope["method"], scope["path"])(scope, receive, send)
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > JSON_BODY_LIMIT:
                    raise HTTPException(413, f"a JSON body is at most {JSON_BODY_LIMIT} bytes "
                                        f"({what})")
                chunks.append(chunk)
                more = message.get("more_body", False)
        except HTTPException as exc:  # over a limit, or stalled (BodyLimit)
            await JSONResponse({"detail": exc.detail}, exc.status_code, exc.headers)(
                scope, receive, send)
            return
        body = b"".join(chunks)
        problem = json_problem(body) if body else None
        if problem is not None:
            await JSONResponse({"detail": problem}, 422)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
