"""Workers as rows (who is alive, which queues they serve, whether they have the ImageNet
weights) and what the API does with them; and the active-job cap under concurrent
submissions, on both backends."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.models import Dataset, Job
from app.db.session import make_engine
from app.engine.config import TrainConfig
from app.jobs.service import TooManyActiveJobs, submit
from app.workers import service as workers
from tests.helpers import TINY

SUBMITTERS = 12
CAP = 3


def _dataset(db_url: str) -> str:
    engine = make_engine(db_url)
    with Session(engine) as s:
        s.add(Dataset(id="d" * 32, name="colors", classes=["a", "b"], counts={}, warnings=[],
                      size_bytes=1))
        s.commit()
    engine.dispose()
    return "d" * 32


def test_the_active_job_cap_holds_under_concurrent_submissions(db_url: str) -> None:
    """Many submissions at once, each on its own connection: exactly CAP are stored, the
    rest are refused (a count then an insert let them all through)."""
    dataset_id = _dataset(db_url)
    engine = make_engine(db_url, pool_size=SUBMITTERS, max_overflow=0)
    start = threading.Barrier(SUBMITTERS)
    outcomes: list[str] = []

    def submitter() -> None:
        with Session(engine) as s:
            start.wait()
            try:
                submit(s, dataset_id=dataset_id, config=TrainConfig(**TINY, epochs=1),
                       max_active_jobs=CAP, max_attempts=3)
                s.commit()
                outcomes.append("stored")
            except TooManyActiveJobs:
                s.rollback()
                outcomes.append("refused")

    threads = [threading.Thread(target=submitter) for _ in range(SUBMITTERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with Session(engine) as s:
        stored = s.scalar(select(func.count()).select_from(Job))
    engine.dispose()
    assert sorted(outcomes) == ["refused"] * (SUBMITTERS - CAP) + ["stored"] * CAP
    assert stored == CAP
