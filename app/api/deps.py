"""What handlers take as parameters: the process's state and settings, one database session
per request, the API key's declaration in the OpenAPI schema, and who calls (the key the
gate of ``app.api.keys`` let through)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.api.state import State
from app.core.config import Settings
from app.core.keys import ALL_SCOPES


# async (though nothing is awaited): resolved on the event loop, without a hop to a thread.
async def get_state(request: Request) -> State:
    state: State = request.app.state.hotdog
    return state


StateDep = Annotated[State, Depends(get_state)]


async def get_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(state: StateDep) -> Iterator[Session]:
    """One session per request. Services write through it without committing; it commits
    when the handler returns, before the answer is sent (an answer never reports what was
    not stored), and rolls back when the handler raises. A handler commits earlier itself
    only where something outside the database must follow the commit (a queue message,
    removed files)."""
    with state.session() as session:
        yield session
        session.commit()


# scope="function": the commit runs when the handler returns, not after the response is sent.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


_bearer = HTTPBearer(auto_error=False, description="the API key, when one is configured")
_header = APIKeyHeader(name="X-API-Key", auto_error=False)


# async, like get_state: FastAPI runs a plain ``def`` dependency on a worker thread, and this
# one is on every guarded request (a thread hop there and back for nothing).
async def api_key_scheme(
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header: Annotated[str | None, Depends(_header)],
) -> None:
    """Declares the API key in the OpenAPI schema (the docs' "Authorize" button). The check
    itself, the key and its scopes, is ApiKeyGate's (``app.api.keys``), once per request."""


# Every router but ops's takes this: the schema shows the key on each guarded operation.
GUARDED = [Depends(api_key_scheme)]


@dataclass(frozen=True)
class Caller:
    """A request's key, as far as anyone after the gate needs to know: its fingerprint (the
    first 12 hex digits of its SHA-256: what the activation history records) and scopes."""
    fingerprint: str
    scopes: frozenset[str]


CALLER = "hotdog_caller"  # the request state's entry for the gate's Caller (app.api.keys)


def caller(request: Request) -> Caller | None:
    """The request's key (None when the service has none)."""
    found: Caller | None = getattr(request.state, CALLER, None)
    return found


def scopes_of(request: Request) -> frozenset[str]:
    """What the request's key may do: every scope when the service has no key."""
    found = caller(request)
    return found.scopes if found else ALL_SCOPES
