"""Migrations and models on both databases: SQLite (embedded default) and Postgres.

The ``db_url`` fixture (conftest) gives each test both; unreachable Postgres fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from app.db.models import Dataset, EpochMetric, Evaluation, Job, JobStatus
from app.db.session import downgrade, make_engine, normalize_url, upgrade

TABLES = {"datasets", "jobs", "epoch_metrics", "evaluations", "workers", "activations"}


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_head_then_downgrade_base(db_url: str) -> None:
    upgrade(db_url)
    assert _tables(db_url) == TABLES
    downgrade(db_url, "base")
    assert _tables(db_url) == set()
    upgrade(db_url)  # and back up again
    assert _tables(db_url) == TABLES


def _dataset() -> Dataset:
    return Dataset(id=uuid.uuid4().hex, name="demo", classes=["hotdog", "not-hotdog"],
                   counts={"train": {"hotdog": 1}}, warnings=[], size_bytes=10)


def test_models_round_trip_and_constraints(db_url: str) -> None:
    engine = make_engine(db_url)
    ds = _dataset()
    ds_id, job_id, classes = ds.id, uuid.uuid4().hex, list(ds.classes)
    job = Job(id=job_id, dataset=ds, status=JobStatus.QUEUED, params={"lr": 0.0064},
              epochs=2)
    with Session(engine) as s:
        s.add_all([ds, job])
        s.commit()
        job.metrics.append(EpochMetric(epoch=1, train_loss=0.5, train_acc=0.8, test_loss=0.4,
                                       test_acc=0.9, images_per_s=30.0, seconds=2.0))
        job.evaluation = Evaluation(accuracy=0.9, loss=0.4, classes=classes,
                                    confusion=[[1, 0], [0, 1]], per_class=[])
        s.commit()
    with Session(engine) as s:
        loaded = s.get(Job, job_id)
        assert loaded is not None and loaded.status is JobStatus.QUEUED
        assert loaded.params == {"lr": 0.0064} and loaded.attempt == 0 and loaded.epoch == 0
        assert [m.epoch for m in loaded.metrics] == [1]
        assert loaded.evaluation is not None and loaded.evaluation.confusion == [[1, 0], [0, 1]]
        assert loaded.created_at is not None and not loaded.cancel_requested
        # The same epoch twice for one job is refused: no duplicate metric rows, ever.
        s.add(EpochMetric(job_id=job_id, epoch=1, train_loss=0, train_acc=0, test_loss=0,
                          test_acc=0, images_per_s=0, seconds=0))
        with pytest.raises(IntegrityError):
            s.commit()
        s.rollback()
        # A dataset that a job uses cannot be deleted out from under it.
        with pytest.raises(IntegrityError):
            s.execute(text("DELETE FROM datasets WHERE id = :id"), {"id": ds_id})
            s.commit()
        s.rollback()
        # Deleting a job takes its metrics and evaluation with it.
        s.delete(s.get(Job, job_id))
        s.commit()
        assert s.scalars(select(EpochMetric)).all() == []
        assert s.scalars(select(Evaluation)).all() == []
    engine.dispose()


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'sub' / 'x.db'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()


def test_postgres_ends_a_transaction_its_client_left_idle(migrated_postgres_url: str) -> None:
    """A session that holds a transaction (and its locks) and then says nothing, as a worker
    killed mid-transaction whose socket lingers does, is ended by Postgres, so the others
    can take the locks; before, such a lock held every worker's resend of a job forever."""
    key = 7_351_246  # an advisory lock stands for the row locks of an UPDATE
    held = make_engine(migrated_postgres_url, idle_transaction_seconds=1)
    other = make_engine(migrated_postgres_url)
    try:
        conn = held.connect()
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})  # then silence
        deadline = time.monotonic() + 15
        with other.connect() as probe:
            while not probe.execute(text("SELECT pg_try_advisory_xact_lock(:k)"),
                                    {"k": key}).scalar():
                probe.rollback()
                assert time.monotonic() < deadline, "the idle transaction still holds its lock"
                time.sleep(0.2)
            probe.rollback()
        with pytest.raises(DBAPIError, match="idle-in-transaction timeout"):  # ended for good
            conn.execute(text("SELECT 1"))
        conn.close()
        # The service's own sessions carry the setting (unless the URL sets its options).
        with other.connect() as c:
            assert c.execute(text("SHOW idle_in_transaction_session_timeout")).scalar() == "1min"
    finally:
        held.dispose()
        other.dispose()


def test_postgres_urls_use_psycopg3() -> None:
    assert normalize_url("postgresql://u:p@h:5432/d") == "postgresql+psycopg://u:p@h:5432/d"
    assert normalize_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"


def test_hotdog_migrate_creates_the_embedded_sqlite_database(tmp_path: Path) -> None:
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": ""}
    proc = subprocess.run([sys.executable, "-m", "app.cli", "migrate", "--json"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["revision"] == "head"
    db = tmp_path / "data" / "hotdog.db"
    assert db.is_file() and _tables(f"sqlite:///{db}") == TABLES


def test_migrations_match_the_models(db_url: str) -> None:
    """What `upgrade head` builds (``db_url`` is at head) is what the models describe: no
    drift on either backend."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from app.db.models import Base

    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []
