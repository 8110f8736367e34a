"""``make run``: the whole service on this machine, with nothing else installed.

Migrates the SQLite database in ``DATA_DIR`` (default ``./data``), starts one Celery worker on
the file-system broker (no Redis) and the API on ``HOST:PORT`` (default 127.0.0.1:8000),
prints the URL, and on Ctrl-C stops both: a job in training goes back to the queue and
resumes from its last epoch the next time. With ``DATABASE_URL`` / ``BROKER_URL`` set it uses
those instead.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from app.client import DEFAULT_URL
from app.core.config import get_settings
from app.db.session import upgrade

WORKER_STOP_SECONDS = 30


def main() -> int:
    import uvicorn

    from app.api.app import create_app

    settings = get_settings()
    host = settings.host
    port = int(os.environ.get("PORT", "8000"))
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    log_path = settings.data_dir / "worker.log"
    with open(log_path, "ab") as log_file:
        # A session of its own: Ctrl-C reaches this process only, which stops the worker
        # in order (SIGTERM: the running job is handed back, not killed mid-write).
        worker = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"],
                                  stdout=log_file, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    url = f"http://{host}:{port}"
    data = Path(settings.data_dir)
    print(f"""
hotdog is starting at {url}   (API docs: {url}/docs)
  data, database and logs in {data.resolve()} (worker log: {log_path})
try it:
{try_it(url, data)}
Ctrl-C stops everything.
""", flush=True)
    from app.api.app import keep_temp_files_in
    from app.cli.ops import warn_if_exposed

    warn_if_exposed(host)
    keep_temp_files_in(settings.data_dir)
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info",
                    timeout_graceful_shutdown=5)
    finally:
        stop(worker)
    return 0


def try_it(url: str, data: Path) -> str:
    """Commands to paste into another terminal. They name the service (--url) when the
    client would look elsewhere by default (another PORT or HOST), so that they reach it."""
    at = "" if url == os.environ.get("HOTDOG_URL", DEFAULT_URL) else f" --url {url}"
    return f"""  .venv/bin/hotdog demo-data {data}/demo --zip
  .venv/bin/hotdog upload {data}/demo.zip{at}
  .venv/bin/hotdog submit DATASET_ID --watch --init scratch --image-size 64 --epochs 8 \\
      --batch-size 16 --lr 0.05{at}
  .venv/bin/hotdog classify {data}/demo/test/hotdog/0000.jpg{at}"""


def stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is not None:
        return
    print("stopping the worker…", flush=True)
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=WORKER_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


if __name__ == "__main__":
    sys.exit(main())
