"""What the API process holds: settings, database engine, Celery producer, loaded models,
and the threads and memory budget that decode images."""

from __future__ import annotations

import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from app.api.explainers import Explanations
from app.api.logs import Followers
from app.api.readiness import PROBE_SECONDS, Readiness
from app.api.serving import Intake, ModelCache, ServingMetrics
from app.core.config import Settings
from app.core.procs import name_thread
from app.datasets.reporting import Reports
from app.datasets.uploads import Uploads
from app.engine.images import DecodeBudget, set_decode_budget
from app.jobs.broker import make_celery, send_job

log = logging.getLogger(__name__)

STALE_UPLOAD_SECONDS = 3600


@dataclass
class State:
    settings: Settings
    engine: Engine
    celery: Celery
    models: ModelCache
    registry: CollectorRegistry
    uploads: Uploads  # dataset uploads: admission, and their own bounded executor
    # /predict admits requests (intake) before parsing them, and decodes on threads of its
    # own (not the handlers' shared pool), each image within the process's decode budget,
    # which upload checks share.
    intake: Intake
    decode_pool: ThreadPoolExecutor
    decode_budget: DecodeBudget
    # dataset reports, computed after the upload's answer on a bounded executor of their own
    reports: Reports = field(init=False)
    # /predict?explain=true: Grad-CAM on threads and within a bound of its own.
    explain: Explanations = field(init=False)
    # /ready's: an engine of its own with short timeouts, probed on threads of its own.
    probe_engine: Engine = field(init=False)
    readiness: Readiness = field(init=False)
    log_followers: Followers = field(init=False)  # GET /jobs/{id}/logs?follow=true streams

    def __post_init__(self) -> None:
        from app.db.session import make_probe_engine

        self.log_followers = Followers(self.settings.log_followers)
        self.explain = Explanations(self.settings)
        self.probe_engine = make_probe_engine(self.settings.db_url, PROBE_SECONDS)
        self.reports = Reports(self.settings, self.session)
        self.readiness = Readiness({"database": self.check_database,
                                    "broker": self.check_broker})

    @classmethod
    def create(cls, settings: Settings) -> State:
        from app.db.session import make_engine

        registry = CollectorRegistry()
        decode_pool = ThreadPoolExecutor(
            max_workers=settings.predict_decode_threads or os.cpu_count() or 1,
            thread_name_prefix="decode", initializer=name_thread, initargs=("decode",))
        models = ModelCache(
            size=settings.models_cached, device=settings.predict_device,
            precision=settings.predict_precision, max_batch=settings.predict_max_batch,
            max_delay=settings.predict_max_delay_ms / 1000, max_queue=settings.predict_queue_images,
            metrics=ServingMetrics(registry), lanes=_lanes(settings),
            threads=settings.predict_threads, runtime=settings.predict_runtime,
            loads_per_second=settings.model_loads_per_second,
            tune_seconds=settings.predict_tune_seconds, compile=settings.predict_compile,
        )
        intake = Intake(max_bytes=settings.predict_intake_bytes,
                        max_images=settings.predict_queue_images)
        return cls(settings, make_engine(settings.db_url), make_celery(settings), models,
                   registry, Uploads(settings.max_concurrent_uploads), intake, decode_pool,
                   set_decode_budget(settings.decode_budget_bytes))

    def close(self) -> None:
        self.decode_pool.shutdown(wait=False, cancel_futures=True)
        self.explain.close()
        self.models.close()
        self.uploads.close()
        self.reports.close()
        self.readiness.close()
        self.engine.dispose()
        self.probe_engine.dispose()

    def session(self) -> Session:
        # Objects stay readable after a commit: handlers commit, then shape their answer.
        return Session(self.engine, expire_on_commit=False)

    def enqueue(self, job_id: str, params: dict[str, Any]) -> None:
        send_job(self.celery, self.settings, job_id, params)

    def check_database(self) -> None:
        with self.probe_engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def check_broker(self) -> None:
        if self.settings.broker.startswith("filesystem://"):
            folder = self.settings.broker_folder / "queue"
            if not folder.is_dir():
                raise OSError(f"broker folder {folder} is missing")
            return
        with self.celery.connection_for_write(
                connect_timeout=PROBE_SECONDS,
                transport_options={"socket_timeout": PROBE_SECONDS}) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=PROBE_SECONDS)

    def sweep_incoming(self) -> None:
        """Remove what uploads interrupted by a crash left in the datasets folder."""
        root = self.settings.data_dir / "datasets"
        if not root.is_dir():
            return
        for p in root.glob(".incoming-*"):
            if time.time() - p.stat().st_mtime > STALE_UPLOAD_SECONDS:
                shutil.rmtree(p, ignore_errors=True)


def _lanes(settings: Settings) -> int:
    if settings.predict_lanes:
        return settings.predict_lanes
    import torch

    on_gpu = settings.predict_device.startswith("cuda") or (
        settings.predict_device == "auto" and torch.cuda.is_available())
    return 1 if on_gpu or torch.get_num_threads() < 2 else 2
