"""``/keys/me``: what the request's API key may do, so that a client (the web page) can
offer only that."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.deps import GUARDED, caller, scopes_of
from app.api.keys import RULES
from app.api.schemas import ERRORS, KeyOut, ScopeRuleOut
from app.core.keys import ordered

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
