"""Who may call what: the API keys (``API_KEY``, ``API_KEYS``) and the one table that says
which scope each request needs, from its method and path alone.

A route needs no entry of its own: a new ``GET`` is ``read``, a new write under
``/datasets``, ``/jobs`` or ``/predictions`` is ``train``, any ``DELETE`` is ``admin``, and a
write that no row names is ``admin`` too (fail closed). The README's scopes table is this one.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette._utils import get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.deps import CALLER, GUARDED, Caller, caller, scopes_of
from app.api.routes.ops import WEB_PREFIX
from app.api.schemas import ERRORS, KeyOut, ScopeRuleOut
from app.core.keys import KeyEntry, ordered

PUBLIC = None  # no key needed
ANY_KEY: tuple[str, ...] = ()  # any valid key, whatever its scopes


@dataclass(frozen=True)
class Rule:
    methods: frozenset[str] | None  # None: every method
    path: re.Pattern[str]
    scopes: tuple[str, ...] | None  # any one of them suffices; PUBLIC, ANY_KEY

    def matches(self, method: str, path: str) -> bool:
        return (self.methods is None or method in self.methods) and bool(
            self.path.fullmatch(path))


def _rule(methods: str, path: str, scopes: tuple[str, ...] | None) -> Rule:
    return Rule(None if methods == "*" else frozenset(methods.split()), re.compile(path), scopes)


READS = "GET HEAD"
# The first row that matches decides.
RULES: tuple[Rule, ...] = (
    _rule("*", r"/health|/ready", PUBLIC),  # probes
    _rule(READS, rf"/|{re.escape(WEB_PREFIX)}/.*", PUBLIC),  # the page's files: no data
    _rule(READS, r"/keys/me", ANY_KEY),  # what this key may do (the page asks)
    _rule("*", r"/storage(/.*)?", ("admin",)),  # disk use, and what to delete
    _rule("DELETE", r".*", ("admin",)),
    _rule(READS, r"/models", ("predict", "read")),  # what /predict can use
    _rule(READS, r".*", ("read",)),  # every other GET: lists, results, docs, /metrics
    _rule("POST", r"/predict", ("predict",)),
    _rule("*", r"/(datasets|jobs|predictions)(/.*)?", ("train",)),  # uploads, jobs, reviews
    _rule("*", r"/models/[^/]+/evaluate", ("train",)),  # an evaluate job
    _rule("*", r".*", ("admin",)),  # activation, rollback, and any write not named above
)


def scopes_needed(method: str, path: str) -> tuple[str, ...] | None:
    """The scopes of which a key needs one for ``method path`` (``ANY_KEY``: none in
    particular; ``PUBLIC``: no key at all)."""
    method = method.upper()
    for rule in RULES:
        if rule.matches(method, path):
            return rule.scopes
    return ("admin",)  # (the last row matches everything)


def describe(scopes: tuple[str, ...] | None) -> str:
    if scopes is PUBLIC:
        return "no key"
    if not scopes:
        return "any key"
    return " or ".join(f"'{s}'" for s in scopes)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """The configured keys, kept as SHA-256 digests only. A presented key is compared with
    every one of them in constant time (``hmac.compare_digest`` of equal-length digests, no
    early exit), so the time taken says neither how much of a key was right nor which."""

    def __init__(self, entries: Iterable[KeyEntry]) -> None:
        self._keys = [(_digest(e.key), Caller(_digest(e.key).hex()[:12], e.scopes))
                      for e in entries]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def summary(self) -> str:
        """The keys for the log: each one's fingerprint and scopes, never the key."""
        return "; ".join(f"key:{c.fingerprint} ({','.join(ordered(c.scopes))})"
                         for _digest, c in self._keys) or "none (every request is allowed)"

    def identify(self, given: list[str]) -> Caller | None:
        """The caller whose key every credential in ``given`` is, or None."""
        if not given:
            return None
        found: list[Caller | None] = []
        for credential in given:
            digest = _digest(credential)
            match = None
            for known, who in self._keys:
                if hmac.compare_digest(digest, known):
                    match = who
            found.append(match)
        first = found[0]
        return first if first is not None and all(f is first for f in found) else None


MISSING_KEY = "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key'"


def credentials(scope: Scope) -> list[str]:
    """The keys a request presents: its ``X-API-Key`` and its bearer token."""
    given = []
    for name, value in scope.get("headers") or []:
        name = name.lower()
        if name == b"x-api-key":
            given.append(value.decode("latin-1"))
        elif name == b"authorization" and value[:7].lower() == b"bearer ":
            given.append(value[7:].decode("latin-1").strip())
    return given


class ApiKeyGate:
    """With a key configured, every request but the public ones needs a known key (401
    otherwise: the API, the docs, /metrics and unknown paths alike, so routes cannot be
    enumerated) whose scopes include one that the request needs (403 naming it). The caller
    is left in the request's state for the handlers (``app.api.deps.caller``)."""

    def __init__(self, app: ASGIApp, ring: KeyRing) -> None:
        self.app = app
        self.ring = ring

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.ring:
            await self.app(scope, receive, send)
            return
        # The path the routes see (behind a proxy's root_path, without that prefix).
        method, path = scope["method"], get_route_path(scope)
        needed = scopes_needed(method, path)
        if needed is PUBLIC:
            await self.app(scope, receive, send)
            return
        who = self.ring.identify(credentials(scope))
        if who is None:
            await JSONResponse({"detail": MISSING_KEY}, 401,
                               headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        if needed and not who.scopes & set(needed):
            await JSONResponse(
                {"detail": f"this API key lacks the {describe(needed)} scope, which "
                           f"{method} {path} needs (it has: {', '.join(ordered(who.scopes))})",
                 "kind": "scope_missing", "scopes": list(needed)}, 403,
                headers={"WWW-Authenticate":
                         f'Bearer error="insufficient_scope", scope="{" ".join(needed)}"'},
            )(scope, receive, send)
            return
        scope.setdefault("state", {})[CALLER] = who
        await self.app(scope, receive, send)


def document_scopes(api: FastAPI) -> None:
    """Each operation of the OpenAPI schema says which scope it needs (``x-scopes``, and a
    line of its description), from the same table the gate uses."""
    build = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema:
            return api.openapi_schema
        schema = build()
        for path, operations in schema.get("paths", {}).items():
            for method, op in operations.items():
                needed = scopes_needed(method, path)
                if needed is PUBLIC:
                    continue
                op["x-scopes"] = list(needed)
                op["description"] = (op.get("description", "").rstrip() + "\n\n"
                                     f"API key scope: {describe(needed)}.").lstrip()
        return schema

    api.openapi = openapi  # type: ignore[method-assign]


# ``GET /keys/me``: here rather than in ``routes/``, beside the table it serves (the routes
# may not import this module, which imports theirs for the page's prefix).
router = APIRouter(prefix="/keys", tags=["keys"], dependencies=GUARDED, responses=ERRORS)


@router.get("/me", response_model=KeyOut)
async def my_key(request: Request) -> KeyOut:
    """The scopes of the key this request carries (any valid key may ask; every scope when
    the service has no key), and the table of which scope each request needs, so that a
    client can offer only what the key may do."""
    found = caller(request)
    rules = [ScopeRuleOut(methods=sorted(r.methods) if r.methods else None,
                          path=r.path.pattern, scopes=None if r.scopes is None else [*r.scopes])
             for r in RULES]
    return KeyOut(scopes=ordered(scopes_of(request)), key_required=found is not None,
                  actor=f"key:{found.fingerprint}" if found else "anonymous", rules=rules)
