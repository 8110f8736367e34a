"""Prometheus collectors that read the jobs, the queue and the training from the database (and the
broker) at scrape time. Workers write a row per finished epoch (images/s, seconds) to the
database, so the API exports the training's numbers too: one /metrics for the whole
service, however many workers there are, and nothing to scrape on the workers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from app.api.state import State
from app.db.models import EpochMetric, Job, JobStatus
from app.jobs.queues import all_queues

log = logging.getLogger(__name__)

# Prometheus's own bucket formatting ("5.0", "+Inf"), with the type the library leaves out.
_go_float: Callable[[float], str] = floatToGoString

# An epoch takes seconds on a GPU for a small set, an hour on a CPU for a large one.
EPOCH_SECONDS_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class JobsCollector(Collector):
    """``hotdog_jobs{status}``, counted in the database at scrape time."""

    def __init__(self, state: State) -> None:
        self.state = state

    def collect(self) -> Any:
        gauge = GaugeMetricFamily("hotdog_jobs", "jobs by status", labels=["status"])
        try:
            with Session(self.state.engine) as s:
                counts = dict(s.execute(select(Job.status, func.count()).group_by(Job.status))
                              .all())
        except Exception:
            log.exception("counting jobs for /metrics failed")
            return
        for st in JobStatus:
            gauge.add_metric([st.value], counts.get(st, 0))
        yield gauge


class QueueCollector(Collector):
    """``hotdog_queue_jobs`` (queued in the database), ``hotdog_queue_oldest_job_seconds``
    and ``hotdog_queue_messages`` (waiting in the broker, not yet taken by a worker)."""

    def __init__(self, state: State) -> None:
        self.state = state

    def collect(self) -> Any:
        try:
            with Session(self.state.engine) as s:
                count, oldest = s.execute(
                    select(func.count(), func.min(Job.created_at))
                    .where(Job.status == JobStatus.QUEUED)).one()
        except Exception:
            log.exception("reading the job queue for /metrics failed")
        else:
            yield GaugeMetricFamily("hotdog_queue_jobs", "jobs waiting to be trained (queued)",
                                    value=count)
            age = 0.0
            if oldest is not None:
                if oldest.tzinfo is None:
                    oldest = oldest.replace(tzinfo=timezone.utc)
                age = max(0.0, (datetime.now(timezone.utc) - oldest).total_seconds())
            yield GaugeMetricFamily("hotdog_queue_oldest_job_seconds",
                                    "age of the oldest queued job (0 when none waits)",
                                    value=age)
        try:
            messages = self.broker_messages()
        except Exception as exc:
            log.debug("reading the broker's queue length for /metrics failed: %s", exc)
        else:
            gauge = GaugeMetricFamily(
                "hotdog_queue_messages",
                "job messages waiting in the broker's training queue (not yet taken by a "
                "worker)", labels=["queue"])
            for queue, count in messages.items():
                gauge.add_metric([queue], count)
            yield gauge

    def broker_messages(self) -> dict[str, int]:
        """By queue: the shared one and the GPU and CPU-only ones (``app.jobs.queues``)."""
        with self.state.celery.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=3)
            # Every kombu virtual transport (Redis, file system) counts a queue with _size.
            return {queue: int(conn.default_channel._size(queue))
                    for queue in all_queues(self.state.settings.training_queue)}


class TrainingCollector(Collector):
    """From the per-epoch rows the workers record: ``hotdog_training_images_per_second``
    (each running job's latest epoch) and ``hotdog_training_epoch_seconds`` (a histogram
    of every recorded epoch's duration)."""

    def __init__(self, state: State) -> None:
        self.state = state

    def collect(self) -> Any:
        try:
            with Session(self.state.engine) as s:
                speeds = self._running_speeds(s)
                totals = self._epoch_seconds(s)
        except Exception:
            log.exception("reading training metrics for /metrics failed")
            return
        gauge = GaugeMetricFamily(
            "hotdog_training_images_per_second",
            "training images per second of each running job's latest finished epoch",
            labels=["job_id"])
        for job_id, speed in speeds:
            gauge.add_metric([job_id], speed)
        yield gauge
        count, total, *cumulative = totals
        buckets = [(_go_float(b), float(n or 0)) for b, n in zip(
            EPOCH_SECONDS_BUCKETS, cumulative, strict=True)] + [("+Inf", float(count))]
        yield HistogramMetricFamily(
            "hotdog_training_epoch_seconds",
            "duration of finished training epochs (training pass and evaluation)",
            buckets=buckets, sum_value=float(total or 0.0))

    @staticmethod
    def _running_speeds(s: Session) -> list[tuple[str, float]]:
        latest = (select(EpochMetric.job_id, func.max(EpochMetric.epoch).label("epoch"))
                  .join(Job, Job.id == EpochMetric.job_id)
                  .where(Job.status == JobStatus.RUNNING)
                  .group_by(EpochMetric.job_id).subquery())
        rows = s.execute(
            select(EpochMetric.job_id, EpochMetric.images_per_s)
            .join(latest, and_(EpochMetric.job_id == latest.c.job_id,
                               EpochMetric.epoch == latest.c.epoch)))
        return [(job_id, float(speed)) for job_id, speed in rows]

    @staticmethod
    def _epoch_seconds(s: Session) -> tuple[Any, ...]:
        per_bucket = [func.sum(case((EpochMetric.seconds <= b, 1), else_=0))
                      for b in EPOCH_SECONDS_BUCKETS]
        return tuple(s.execute(
            select(func.count(), func.sum(EpochMetric.seconds), *per_bucket)).one())


def register(state: State) -> None:
    for collector in (JobsCollector(state), QueueCollector(state), TrainingCollector(state)):
        state.registry.register(collector)
