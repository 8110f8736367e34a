"""The worker's row in the workers table: written when the worker is ready, renewed every
few seconds, marked stopped when it shuts down (``app.workers.service``). The API reads it
to refuse jobs that no live worker would take, and the web page to show the workers."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.signals import worker_shutting_down
from sqlalchemy.orm import Session

import app as package
from app.core.config import Settings
from app.db.session import make_engine
from app.workers import service as workers
from worker.runner import cuda_device_count

log = logging.getLogger(__name__)


def consumed_queues(consumer: Any) -> list[str]:
    """The broker queues a Celery worker takes tasks from (its ``-Q``)."""
    return sorted(consumer.app.amqp.queues.consume_from or {})


def describe(name: str, queues: list[str]) -> workers.WorkerInfo:
    """This worker now (the weights file is looked for at every heartbeat: copying it in
    makes a running worker take ``imagenet`` jobs)."""
    return workers.WorkerInfo(name=name, gpus=cuda_device_count(), queues=queues,
                              version=package.__version__,
                              has_imagenet=workers.has_imagenet_weights())


class Presence(threading.Thread):
    """Announces the worker every ``interval`` seconds until stopped, then withdraws it."""

    def __init__(self, settings: Settings, name: str, queues: list[str]) -> None:
        super().__init__(daemon=True, name="hotdog-presence")
        self.settings, self.worker, self.queues = settings, name, queues
        # Several heartbeats within WORKER_SEEN_SECONDS, so one missed is not a death.
        self.interval = max(0.2, min(settings.heartbeat_seconds,
                                     settings.worker_seen_seconds / 4))
        self.stopped = threading.Event()
        self.engine = make_engine(settings.db_url)

    def announce(self) -> None:
        with Session(self.engine) as s:
            workers.announce(s, describe(self.worker, self.queues))
            s.commit()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.announce()
            except Exception:  # a database blip: the next heartbeat tries again
                log.exception("worker heartbeat failed; will retry")

    def stop(self) -> None:
        """Withdraw the worker (it is gone at once, not WORKER_SEEN_SECONDS later); after
        the last heartbeat, which would otherwise undo it."""
        self.stopped.set()
        self.join(timeout=10)
        try:
            with Session(self.engine) as s:
                workers.withdraw(s, self.worker)
                s.commit()
        except Exception:
            log.exception("could not mark worker %s stopped", self.worker)
        finally:
            self.engine.dispose()


_running: list[Presence] = []


def start(settings: Settings, name: str, consumer: Any) -> Presence:
    """Record the worker at once (a job submitted right after the worker is ready finds
    it), then keep it renewed."""
    presence = Presence(settings, name, consumed_queues(consumer))
    try:
        with Session(presence.engine) as s:
            workers.forget_old(s)
            s.commit()
        presence.announce()
    except Exception:  # the database is down: the heartbeats announce it once it is back
        log.exception("could not announce worker %s yet", name)
    presence.start()
    _running.append(presence)
    log.info("worker %s on queues %s announced", name, ", ".join(presence.queues))
    return presence


@worker_shutting_down.connect
def _withdraw(**_kwargs: Any) -> None:
    while _running:
        _running.pop().stop()
