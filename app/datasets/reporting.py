"""Dataset reports computed in the background, on a bounded executor of their own.

An upload (or a relabelled version) is answered first; then its report is queued here. A
report is *claimed* in the database before it runs (pending, or running but silent for
``REPORT_STALE_SECONDS``, with attempts left), so two API processes never compute the same
one, and one whose process died is taken up again: at the API's start (every pending or
silent one) and when a client looks at it (``GET /datasets/{id}`` or its report). After
``REPORT_MAX_ATTEMPTS`` starts it is ``failed``, saying so. A running report renews its
heartbeat every ``PROGRESS_EVERY`` images; one in progress when the API stops is put back
(pending, the attempt not counted), for the next start to take up at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any, cast

from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.datasets.report import build_report, write_report
from app.db.models import Dataset, ReportStatus
from app.engine.images import decode_budget

log = logging.getLogger(__name__)



class Stopped(RuntimeError):
    """The API process is stopping: the report in progress is put back (pending)."""

ERROR_LENGTH = 2000


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _takeable(stale_before: datetime) -> Any:
    """Reports that nobody computes: pending (never claimed, or put back), or running but
    silent since ``stale_before``."""
    return or_(Dataset.report_status == ReportStatus.PENDING,
               (Dataset.report_status == ReportStatus.RUNNING)
               & or_(Dataset.report_heartbeat_at.is_(None),
                     Dataset.report_heartbeat_at < stale_before))


def claim(session: Session, dataset_id: str, *, stale_before: datetime) -> bool:
    """Mark the report running (one more attempt) if nobody computes it; False otherwise."""
    done = cast(CursorResult[Any], session.execute(
        update(Dataset)
        .where(Dataset.id == dataset_id, Dataset.deleted_at.is_(None),
               _takeable(stale_before))
        .values(report_status=ReportStatus.RUNNING, report_heartbeat_at=_now(),
                report_attempts=Dataset.report_attempts + 1, report_error=None)
        .execution_options(synchronize_session=False))).rowcount
    return bool(done)


def heartbeat(session: Session, dataset_id: str) -> None:
    session.execute(update(Dataset).where(Dataset.id == dataset_id,
                                          Dataset.report_status == ReportStatus.RUNNING)
                    .values(report_heartbeat_at=_now())
                    .execution_options(synchronize_session=False))


def finish(session: Session, dataset_id: str, *, error: str | None = None) -> None:
    status = ReportStatus.READY if error is None else ReportStatus.FAILED
    session.execute(update(Dataset).where(Dataset.id == dataset_id)
                    .values(report_status=status, report_heartbeat_at=_now(),
                            report_error=None if error is None else error[:ERROR_LENGTH])
                    .execution_options(synchronize_session=False))


def put_back(session: Session, dataset_id: str) -> None:
    """An interrupted report (not failed) is pending again, its attempt not counted."""
    session.execute(update(Dataset).where(Dataset.id == dataset_id,
                                          Dataset.report_status == ReportStatus.RUNNING)
                    .values(report_status=ReportStatus.PENDING,
                            report_attempts=Dataset.report_attempts - 1)
                    .execution_options(synchronize_session=False))


def needs_taking_up(dataset: Dataset, *, stale_seconds: float) -> bool:
    """Whether a client's look at ``dataset`` should (re)queue its report: pending or
    running, and silent for ``stale_seconds`` (a pending one since its creation)."""
    if dataset.report_status not in (ReportStatus.PENDING, ReportStatus.RUNNING):
        return False
    seen = dataset.report_heartbeat_at or dataset.created_at
    return seen < _now() - timedelta(seconds=stale_seconds)


def untaken(session: Session, *, stale_before: datetime) -> list[str]:
    """Live datasets whose report nobody computes (see :func:`claim`), oldest first."""
    return list(session.scalars(
        select(Dataset.id).where(Dataset.deleted_at.is_(None), _takeable(stale_before))
        .order_by(Dataset.created_at)))


class Reports:
    """The API process's report executor: ``REPORT_WORKERS`` reports at once, each decoding
    on ``REPORT_THREADS`` threads within the process's decode budget. A dataset already
    queued here is not queued twice."""

    def __init__(self, settings: Settings, sessions: Callable[[], Session]) -> None:
        self.settings = settings
        self.sessions = sessions
        self._lock = threading.Lock()
        self._queued: set[str] = set()
        self._pool: ThreadPoolExecutor | None = None
        self._stopping = threading.Event()

    def submit(self, dataset_id: str) -> None:
        with self._lock:
            if dataset_id in self._queued:
                return
            if self._pool is None:
                self._stopping.clear()
                self._pool = ThreadPoolExecutor(max_workers=self.settings.report_workers,
                                                thread_name_prefix="report-runner")
            self._queued.add(dataset_id)
            self._pool.submit(self._run, dataset_id)

    def recover(self) -> int:
        """Queue every report that nobody computes (at the API's start)."""
        with self.sessions() as session:
            ids = untaken(session, stale_before=self._stale_before())
        for dataset_id in ids:
            self.submit(dataset_id)
        return len(ids)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            # Queued reports stay pending in the database, the running one is put back
            # within PROGRESS_EVERY images: the next start takes them up.
            self._stopping.set()
            pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._queued.clear()

    def _stale_before(self) -> datetime:
        return _now() - timedelta(seconds=self.settings.report_stale_seconds)

    def _run(self, dataset_id: str) -> None:
        try:
            self._compute(dataset_id)
        except Exception:
            log.exception("dataset %s: the report could not be recorded", dataset_id)
        finally:
            with self._lock:
                self._queued.discard(dataset_id)

    def _compute(self, dataset_id: str) -> None:
        with self.sessions() as session:
            if not claim(session, dataset_id, stale_before=self._stale_before()):
                return  # computed, being computed elsewhere, or deleted
            attempts = session.get_one(Dataset, dataset_id).report_attempts
            session.commit()
            if attempts > self.settings.report_max_attempts:
                finish(session, dataset_id, error=f"the report was started {attempts - 1} "
                       "time(s) and interrupted each time")
                session.commit()
                return

        def alive(_done: int, _total: int) -> None:
            if self._stopping.is_set():
                raise Stopped("the API is stopping")
            with self.sessions() as s:
                heartbeat(s, dataset_id)
                s.commit()

        root = self.settings.dataset_dir(dataset_id)
        error = None
        try:
            report = build_report(root, threads=self.settings.report_threads,
                                  budget=decode_budget(), dataset_id=dataset_id,
                                  max_near_images=self.settings.report_near_max_images,
                                  progress=alive)
            write_report(root, report)
            log.info("dataset %s: report ready in %.1f s", dataset_id, report["seconds"])
        except Stopped:
            with self.sessions() as session:
                put_back(session, dataset_id)
                session.commit()
            return
        except Exception as exc:
            log.warning("dataset %s: report failed: %s", dataset_id, exc)
            # (the dataset's folder named by its id: the error is shown to clients)
            error = f"{type(exc).__name__}: {exc}".replace(str(root), f"dataset {dataset_id}")
        with self.sessions() as session:
            finish(session, dataset_id, error=error)
            session.commit()
