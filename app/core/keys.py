"""API keys and their scopes, as the settings hold them (``API_KEY``, ``API_KEYS``).

``API_KEYS`` is ``KEY:SCOPE[,SCOPE...]`` entries separated by ``;`` (or white space), e.g.
``k1...:predict;k2...:read,train``. Nothing in it needs quoting in an env file or in
docker compose (no ``$``, ``#``, quotes or spaces); in a shell, quote the whole value (``;``
ends a command there). ``API_KEY`` is one key with every scope.

Which scope each request needs is the API's business (``app.api.keys``). Errors here name an
entry by its position, never the key itself: they end up in logs and terminals.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

# Every scope, in the order they are shown.
SCOPES = ("predict", "read", "train", "admin")
ALL_SCOPES = frozenset(SCOPES)
MIN_KEY_LENGTH = 16  # for API_KEYS entries; `hotdog keys generate` makes 43 characters
KEY_CHARS = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space: a header value as is
SEPARATORS = re.compile(r"[;\s]+")


class KeysInvalid(ValueError):
    """API_KEYS (or a ``--scopes`` list) cannot be used; the message names the entry."""


@dataclass(frozen=True)
class KeyEntry:
    key: str
    scopes: frozenset[str]


def parse_scopes(text: str, where: str = "scopes") -> frozenset[str]:
    """``predict,read`` → the set; a word that is no scope is refused, naming it."""
    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words:
        raise KeysInvalid(f"{where}: no scope given (scopes: {', '.join(SCOPES)})")
    unknown = [w for w in words if w not in ALL_SCOPES]
    if unknown:
        raise KeysInvalid(f"{where}: unknown scope {unknown[0]!r} (scopes: {', '.join(SCOPES)})")
    return frozenset(words)


def ordered(scopes: frozenset[str] | set[str]) -> list[str]:
    return [s for s in SCOPES if s in scopes]


def parse_api_keys(text: str | None) -> list[KeyEntry]:
    """The entries of an ``API_KEYS`` value (empty or unset: none)."""
    entries: list[KeyEntry] = []
    seen: set[str] = set()
    for n, raw in enumerate((e for e in SEPARATORS.split(text or "") if e), start=1):
        where = f"API_KEYS entry {n}"
        key, colon, scopes = raw.rpartition(":")
        if not colon or not key:
            raise KeysInvalid(f"{where} is not KEY:SCOPE[,SCOPE...] (no ':' before its scopes)")
        if len(key) < MIN_KEY_LENGTH:
            raise KeysInvalid(f"{where}: its key is shorter than {MIN_KEY_LENGTH} characters "
                              "(`hotdog keys generate` makes one)")
        if not KEY_CHARS.fullmatch(key):
            raise KeysInvalid(f"{where}: a key is printable ASCII characters only")
        if key in seen:
            raise KeysInvalid(f"{where}: the same key is listed twice")
        seen.add(key)
        entries.append(KeyEntry(key, parse_scopes(scopes, where)))
    return entries


def all_keys(api_key: str | None, api_keys: str | None) -> list[KeyEntry]:
    """Every configured key: ``API_KEY`` (all scopes) first, then ``API_KEYS``'s."""
    entries = [KeyEntry(api_key, ALL_SCOPES)] if api_key else []
    for entry in parse_api_keys(api_keys):
        if api_key and entry.key == api_key:
            raise KeysInvalid("API_KEYS lists the key of API_KEY (which has every scope)")
        entries.append(entry)
    return entries


def new_key() -> str:
    return secrets.token_urlsafe(32)


def entry_line(key: str, scopes: frozenset[str]) -> str:
    """The ``API_KEYS`` entry of ``key``: ``KEY:scope,scope``."""
    return f"{key}:{','.join(ordered(scopes))}"
