"""What the API process holds: settings, database engine, Celery producer, loaded models."""

from __future__ import annotations

import hmac
import logging
import shutil
import time
from dataclasses import dataclass
from typing import Any

from celery import Celery
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, text

from app.api.errors import Unavailable
from app.api.serving import ModelCache, ServingMetrics
from app.core.config import Settings
from app.jobs.queues import queue_for

log = logging.getLogger(__name__)

STALE_UPLOAD_SECONDS = 3600


@dataclass
class State:
    settings: Settings
    engine: Engine
    celery: Celery
    models: ModelCache
    registry: CollectorRegistry

    @classmethod
    def create(cls, settings: Settings) -> State:
        from app.db.session import make_engine
        from app.jobs.broker import make_celery

        registry = CollectorRegistry()
        models = ModelCache(
            size=settings.models_cached, device=settings.predict_device,
            precision=settings.predict_precision, max_batch=settings.predict_max_batch,
            max_delay=settings.predict_max_delay_ms / 1000, max_queue=settings.predict_queue_images,
            metrics=ServingMetrics(registry), lanes=_lanes(settings),
            threads=settings.predict_threads, runtime=settings.predict_runtime,
        )
        return cls(settings, make_engine(settings.db_url), make_celery(settings), models,
                   registry)

    def close(self) -> None:
        self.models.close()
        self.engine.dispose()

    def enqueue(self, job_id: str, params: dict[str, Any]) -> None:
        """Send the job to its queue (``app.jobs.queues``: GPU, CPU-only or any worker)."""
        try:
            self.celery.send_task(
                "hotdog.run_job", args=[job_id],
                queue=queue_for(self.settings.training_queue, params),
                retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2,
                                          "interval_step": 0.5},
            )
        except Exception as exc:
            raise Unavailable(f"the message broker cannot be reached ({exc})") from exc

    def check_database(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def check_broker(self) -> None:
        if self.settings.broker.startswith("filesystem://"):
            folder = self.settings.broker_folder / "queue"
            if not folder.is_dir():
                raise OSError(f"broker folder {folder} is missing")
            return
        with self.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=3)

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


def get_state(request: Request) -> State:
    return request.app.state.hotdog  # type: ignore[no-any-return]


_bearer = HTTPBearer(auto_error=False, description="the API key, when one is configured")
_header = APIKeyHeader(name="X-API-Key", auto_error=False)


MISSING_KEY = "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key'"


def key_matches(key: str, bearer: str | None, header: str | None) -> bool:
    """Whether a request carries ``key`` (as ``X-API-Key`` or a bearer token), compared in
    constant time. Every credential it presents must be right: a wrong one is refused even
    next to a right one."""
    given = [g for g in (header, bearer) if g is not None]
    return bool(given) and all(hmac.compare_digest(g.encode(), key.encode()) for g in given)


def api_key_scheme(
    bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
    header: str | None = Depends(_header),
) -> None:
    """Declares the API key in the OpenAPI schema (the docs' "Authorize" button). The check
    itself is ApiKeyGate's, once per request, for every path but /health and /ready."""
