"""The worker's periodic sweep of DATA_DIR (:func:`app.storage.retention.sweep`): every
worker runs one, every ``SWEEP_SECONDS`` (0: none), the first right after it starts (what a
crash left behind goes at the next start). Several workers sweeping at once are safe."""

from __future__ import annotations

import logging
import threading

from app.core.config import Settings
from app.db.session import make_engine
from app.storage import retention

log = logging.getLogger(__name__)


class Sweeper(threading.Thread):
    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True, name="hotdog-sweeper")
        self.settings = settings
        self.stopped = threading.Event()

    def run(self) -> None:
        engine = make_engine(self.settings.db_url)  # one pool for the worker's lifetime
        try:
            while not self.stopped.is_set():
                try:
                    retention.sweep(engine, self.settings)
                except Exception:  # a database blip or a busy file: the next sweep retries
                    log.exception("sweeping the data dir failed; will retry")
                if self.stopped.wait(self.settings.sweep_seconds):
                    return
        finally:
            engine.dispose()


def start(settings: Settings) -> Sweeper | None:
    if settings.sweep_seconds <= 0:
        return None
    sweeper = Sweeper(settings)
    sweeper.start()
    return sweeper
