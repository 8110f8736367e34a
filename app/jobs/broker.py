"""The Celery application: Redis in production, kombu's file-system transport embedded.

One task per job on the training queue (``TRAINING_QUEUE``, default ``training``); the
database, not Celery, holds job state, so there is no result backend. ``acks_late`` +
``task_reject_on_worker_lost``: a message is acknowledged only when its job has ended, and
goes back to the queue if the worker dies.

Both sides use it: the API sends job messages with it, ``hotdog worker`` consumes them
(``worker.tasks`` registers the task on the module-level ``celery_app``).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from app.core.config import Settings, get_settings
from app.jobs.queues import queue_for


class QueueUnreachable(RuntimeError):
    """The broker refused or could not take a job's message (503: retry shortly)."""


def ensure_broker_folders(settings: Settings) -> None:
    if settings.broker.startswith("filesystem://"):
        for sub in ("queue", "processed", "control"):
            (settings.broker_folder / sub).mkdir(parents=True, exist_ok=True)


def broker_options(settings: Settings) -> dict[str, Any]:
    if settings.broker.startswith("filesystem://"):
        folder = settings.broker_folder
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),  # else kombu writes ./control
            "store_processed": False,
        }
    return {"visibility_timeout": settings.max_job_seconds + 3600}


def make_celery(settings: Settings | None = None, *, create_folders: bool = True) -> Celery:
    """``create_folders``: make the file-system broker's folders (the module-level app
    below leaves that to the worker, so importing this module writes nothing)."""
    settings = settings or get_settings()
    if create_folders:
        ensure_broker_folders(settings)
    app = Celery("hotdog", broker=settings.broker, include=["worker.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=settings.training_queue,
        task_routes={"hotdog.run_job": {"queue": settings.training_queue}},
        broker_transport_options=broker_options(settings),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


def send_job(celery: Celery, settings: Settings, job_id: str, params: dict[str, Any]) -> None:
    """Send the job to its queue (``app.jobs.queues``: GPU, CPU-only or any worker). Only
    its id travels: the worker reads the rest from the database, so commit the row first."""
    try:
        celery.send_task(
            "hotdog.run_job", args=[job_id], queue=queue_for(settings.training_queue, params),
            retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2,
                                      "interval_step": 0.5},
        )
    except Exception as exc:
        raise QueueUnreachable(f"the message broker cannot be reached ({exc})") from exc


celery_app = make_celery(create_folders=False)
