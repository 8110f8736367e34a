"""A real service for tests outside test_service.py: ``hotdog serve`` + ``hotdog worker`` on
the embedded default (SQLite + the file-system broker) in a folder of the test's own."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.db.session import upgrade
from tests.test_service import Stack, free_port


@contextmanager
def stack_without_weights(tmp: Path) -> Iterator[Stack]:
    """A service whose worker has no ImageNet weights (imagenet jobs fail at once) and
    writes no exports (saves time)."""
    with embedded_stack(tmp, TORCH_HOME=str(tmp / "no-torch-cache"),
                        HOTDOG_PRETRAINED_PATH="", EXPORT_ONNX="false") as stack:
        yield stack


@contextmanager
def embedded_stack(tmp: Path, *, worker: bool = True, **env: str) -> Iterator[Stack]:
    """``env``: extra settings of both processes (e.g. LOG_FORMAT, TORCH_HOME, API_KEY).
    ``worker=False`` starts the API alone (jobs then stay queued)."""
    db_url = f"sqlite:///{tmp / 'data' / 'hotdog.db'}"
    port = free_port()
    full_env = {**os.environ, "DATA_DIR": str(tmp / "data"), "DATABASE_URL": db_url,
                "BROKER_URL": "", "HEARTBEAT_SECONDS": "0.3", "JOB_LEASE_SECONDS": "5",
                "PREDICT_DEVICE": "cpu", **env}
    (tmp / "data").mkdir(parents=True, exist_ok=True)
    upgrade(db_url)
    stack = Stack(f"http://127.0.0.1:{port}", full_env, tmp)
    stack.start("api", "serve", "--port", str(port))
    if worker:
        stack.start("worker", "worker")
    try:
        stack.wait_ready(120)
        yield stack
    finally:
        stack.stop_all()
