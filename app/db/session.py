"""Engines and migrations for Postgres (production) and SQLite (the embedded default)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
# Postgres ends a session that holds a transaction open and does nothing for this long,
# rolling it back. The service never keeps one idle (every transaction is a few statements),
# so such a session is a client gone without closing: a process killed mid-transaction whose
# socket lingers, or a network cut. Its row locks would otherwise block every worker's
# claims and resends of those jobs for good (bench/chaos.py found jobs queued forever).
IDLE_TRANSACTION_SECONDS = 60.0


def normalize_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` URLs use psycopg 3, the driver we install."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str, *, idle_transaction_seconds: float = IDLE_TRANSACTION_SECONDS,
                **kwargs: Any) -> Engine:
    url = normalize_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(url, pool_pre_ping=True,
                           connect_args=_postgres_options(url, idle_transaction_seconds),
                           **kwargs)
    event.listen(engine, "before_cursor_execute", _without_nul, retval=True)
    return engine


# Postgres text cannot hold NUL, not even as a query's parameter: an id from a URL
# (``/jobs/a%00b``), a query or JSON value, a dataset's name, each made the driver raise and
# the API answer 500. Every string sent to Postgres has NUL replaced by U+FFFD (the
# replacement character) instead: a lookup then finds nothing (404), a name is stored
# readable, and a row the service writes itself (an error text) cannot fail on one. SQLite
# stores NUL as given.
NUL, REPLACEMENT = "\x00", "\ufffd"


def _nul_free(value: Any) -> Any:
    return value.replace(NUL, REPLACEMENT) if isinstance(value, str) and NUL in value else value


def _row_without_nul(row: Any) -> Any:
    if isinstance(row, dict):
        return {k: _nul_free(v) for k, v in row.items()}
    if isinstance(row, (tuple, list)):
        return type(row)(_nul_free(v) for v in row)
    return row


def _holds_nul(row: Any) -> bool:
    values = row.values() if isinstance(row, dict) else row
    return any(isinstance(v, str) and NUL in v for v in values)


def _without_nul(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any,
                 executemany: bool) -> tuple[str, Any]:
    rows = parameters if executemany else [parameters]
    if not any(row and _holds_nul(row) for row in rows):
        return statement, parameters  # nearly always: nothing copied
    if executemany:
        return statement, [_row_without_nul(row) for row in parameters]
    return statement, _row_without_nul(parameters)


def _postgres_options(url: str, idle_transaction_seconds: float) -> dict[str, Any]:
    """libpq ``options`` for the service's sessions (none when the URL sets its own
    ``options``: the operator's word wins)."""
    if "options" in make_url(url).query:
        return {}
    return {"options": "-c idle_in_transaction_session_timeout="
                       f"{int(idle_transaction_seconds * 1000)}"}


def make_probe_engine(url: str, timeout: float) -> Engine:
    """An engine for health probes that waits at most about ``timeout`` seconds for a
    connection, a lock or a statement (the service's engine waits 30 s on a busy SQLite
    file); one connection at a time."""
    url = normalize_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        return create_engine(url, poolclass=NullPool, connect_args={"timeout": timeout})
    return create_engine(url, pool_size=1, max_overflow=0, pool_timeout=timeout,
                         pool_pre_ping=True, connect_args={
                             # libpq counts whole seconds (2 at least)
                             "connect_timeout": max(2, round(timeout)),
                             "options": f"-c statement_timeout={int(timeout * 1000)}"})


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while a worker writes; the busy timeout waits out the lock
    # instead of failing with "database is locked"; SQLite leaves foreign keys off otherwise.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def lock_for_writing(session: Session, key: int) -> None:
    """Make a read-then-write atomic among the transactions that take the same ``key``: the
    second waits until the first's transaction ends, then reads what it committed.
    Postgres: a transaction-scoped advisory lock on ``key``. SQLite: ``BEGIN IMMEDIATE``, its
    one write lock (the driver opens a transaction only at the first write, so none is open
    here unless the caller already wrote, which took that lock too)."""
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    elif conn.dialect.name == "sqlite":
        driver = conn.connection.dbapi_connection
        if driver is not None and not driver.in_transaction:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)
