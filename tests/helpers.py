"""What many test modules share: the tiny training setting, one polling helper, free ports,
and a real service (``hotdog serve`` + ``hotdog worker`` processes) started and stopped."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, TypeVar

import httpx
import numpy as np
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.orm import Session

from app.client import Client, Worker
from app.core.config import Settings
from app.db.models import JobStatus
from app.db.session import make_engine, upgrade
from app.engine import TrainConfig, fit
from app.engine.export import exports_for_job
from app.jobs.service import claim_job, create_job, finish_job
from tests.servers import free_port as free_port  # tests take it from here with the rest

CLASSES = ("hotdog", "not-hotdog")


def write_color_dataset(
    root: Path, *, train: int = 8, test: int = 4, seed: int = 0, sizes: tuple[int, int] = (40, 72)
) -> Path:
    """A tiny two-class set that is easy to learn: warm vs green noisy JPEGs of varied sizes."""
    rng = np.random.default_rng(seed)
    base = {"hotdog": (190, 90, 40), "not-hotdog": (50, 150, 70)}
    for split, n in (("train", train), ("test", test)):
        for cls in CLASSES:
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = rng.integers(sizes[0], sizes[1], size=2)
                noise = rng.normal(0, 25, size=(h, w, 3))
                arr = np.clip(np.array(base[cls]) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{i:03d}.jpg", quality=90)
    return root



# Objects that tell the classes apart by colour, painted on grey noise (write_object_dataset).
OBJECT_COLOURS = {"hotdog": (205, 95, 35), "not-hotdog": (40, 150, 60)}


def object_photo(cls: str, box: tuple[int, int, int, int], size: tuple[int, int],
                 rng: np.random.Generator) -> bytes:
    """A JPEG of ``size`` (w, h): grey noise with one ellipse of ``cls``'s colour filling
    ``box`` (x0, y0, x1, y1): the only thing in the photo that says its class."""
    w, h = size
    grey = rng.integers(90, 170)
    arr = np.clip(grey + rng.normal(0, 18, size=(h, w, 3)), 0, 255)
    ys, xs = np.mgrid[0:h, 0:w]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    rx, ry = (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
    inside = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1
    arr[inside] = np.clip(np.array(OBJECT_COLOURS[cls]) + rng.normal(0, 12, (int(inside.sum()), 3)),
                          0, 255)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def write_object_dataset(root: Path, *, train: int = 48, test: int = 16, seed: int = 0,
                         size: tuple[int, int] = (128, 96), side: int = 30
                         ) -> dict[str, tuple[int, int, int, int]]:
    """Photos of one coloured object each, placed off-centre at random (but inside what
    CenterCrop keeps of a 64 px model's input); returns each test photo's object box by its
    path under ``root``. For the pointing game (tests/test_explain.py)."""
    rng = np.random.default_rng(seed)
    w, h = size
    boxes: dict[str, tuple[int, int, int, int]] = {}
    for split, n in (("train", train), ("test", test)):
        for cls in CLASSES:
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                while True:  # off-centre: the object's centre at least side/2 from the photo's
                    x0 = int(rng.integers(w // 6, w - w // 6 - side))
                    y0 = int(rng.integers(h // 12, h - h // 12 - side))
                    if max(abs(x0 + side / 2 - w / 2), abs(y0 + side / 2 - h / 2)) >= side / 2:
                        break
                box = (x0, y0, x0 + side, y0 + side)
                (d / f"{i:03d}.jpg").write_bytes(object_photo(cls, box, size, rng))
                if split == "test":
                    boxes[f"{split}/{cls}/{i:03d}.jpg"] = box
    return boxes


class TrainingSize(TypedDict):
    init: str
    image_size: int
    batch_size: int


# The smallest training setting that still exercises every part: scratch, 32 px, batch 8.
TINY: TrainingSize = {"init": "scratch", "image_size": 32, "batch_size": 8}

# Epochs of a job that a test interrupts at epoch 2 and lets finish: enough that it is still
# training when the test strikes (each epoch also writes a checkpoint), few enough to finish
# soon after.
INTERRUPTED_EPOCHS = 10

# Short heartbeats and leases, so that a lost worker's job is taken back within seconds; and
# prediction on the CPU whatever the machine has.
FAST_LEASES = {"HEARTBEAT_SECONDS": "0.3", "JOB_LEASE_SECONDS": "5", "PREDICT_DEVICE": "cpu"}

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], *, timeout: float, interval: float = 0.05,
             what: str | Callable[[], str]) -> T:
    """Calls ``check`` until it returns something truthy, and returns that; fails after
    ``timeout`` seconds saying what it waited for (``what`` may be a function, e.g. logs)."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what() if callable(what) else what}")
        time.sleep(interval)
    return value


async def wait_for_async(check: Callable[[], T | None], *, timeout: float, interval: float = 0.001,
                         what: str) -> T:
    """``wait_for`` inside an event loop: the loop runs on (its tasks make progress) while
    this waits."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)
    return value


def status_of(url: str) -> int:
    """The HTTP status of a GET, or 0 where nothing answers."""
    try:
        return httpx.get(url, timeout=10).status_code
    except httpx.TransportError:
        return 0


@dataclass
class Stack:
    """Processes of one service (``hotdog <args>``), their logs in ``tmp``."""

    url: str
    env: dict[str, str]
    tmp: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    log_offsets: dict[str, int] = field(default_factory=dict)  # where each start's log begins

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.log_offsets[name] = log.tell()
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", *args], env=self.env,
                                stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}"
                         for p in sorted(self.tmp.glob("*.log")))

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{name} did not stop on signal {sig}\n{self.logs()}") from None

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def client(self) -> Client:
        return Client(self.url, timeout=60)

    def assert_alive(self) -> None:
        for name, proc in self.procs.items():
            assert proc.poll() is None, f"{name} exited\n{self.logs()}"

    def wait_worker_ready(self, name: str, timeout: float = 120) -> None:
        """Until the worker started as ``name`` takes tasks (Celery logged "ready.")."""
        log = self.tmp / f"{name}.log"

        def ready() -> bool:
            self.assert_alive()
            with log.open("rb") as f:
                f.seek(self.log_offsets[name])
                return b" ready." in f.read()

        wait_for(ready, timeout=timeout, interval=0.2,
                 what=lambda: f"worker {name} to start\n{self.logs()}")

    def wait_workers(self, count: int = 1, timeout: float = 120) -> list[Worker]:
        """Until ``count`` workers are alive in ``GET /workers`` (before that, ``POST /jobs``
        refuses jobs that no live worker would take)."""
        with Client(self.url, api_key=self.env.get("API_KEY") or None, timeout=60) as c:
            def alive() -> list[Worker] | None:
                self.assert_alive()
                live = [w for w in c.workers() if w["alive"]]
                return live if len(live) >= count else None

            return wait_for(alive, timeout=timeout, interval=0.2,
                            what=lambda: f"{count} live worker(s)\n{self.logs()}")

    def wait_ready(self, timeout: float = 60) -> None:
        """Until /ready answers 200; fails with the logs if the API exits or never does."""
        def ready() -> bool:
            assert self.procs["api"].poll() is None, f"the API exited\n{self.logs()}"
            return status_of(self.url + "/ready") == 200

        wait_for(ready, timeout=timeout, interval=0.2,
                 what=lambda: f"the service to start\n{self.logs()}")

    def wait(self, job_id: str, statuses: set[str], timeout: float = 300,
             until: Callable[[dict], bool] = lambda job: True) -> dict:
        """The job once its status is one of ``statuses`` and ``until(job)`` holds."""
        with self.client() as c:
            def reached() -> dict | None:
                self.assert_alive()
                job = c.job(job_id)
                return job if job["status"] in statuses and until(job) else None

            return wait_for(reached, timeout=timeout, interval=0.2,
                            what=lambda: f"job {job_id} ({c.job(job_id)})\n{self.logs()}")


def stack_env(tmp: Path, db_url: str, broker: str = "", **env: str) -> dict[str, str]:
    """The settings of a service's processes: data in ``tmp/data``, fast leases, ``env``."""
    own_queue = ({"TRAINING_QUEUE": f"training-{uuid.uuid4().hex[:8]}"} if broker else {})
    return {**os.environ, "DATA_DIR": str(tmp / "data"), "DATABASE_URL": db_url,
            "BROKER_URL": broker, **FAST_LEASES,
            # a queue of this run's own: leftovers in a shared Redis never reach its workers
            **own_queue, **env}


@contextmanager
def running_stack(tmp: Path, *, db_url: str = "", broker: str = "", worker: bool = True,
                  **env: str) -> Iterator[Stack]:
    """``hotdog serve`` (and ``hotdog worker`` unless ``worker=False``) on ``db_url`` and
    ``broker``, by default the embedded SQLite and file-system broker in ``tmp/data``;
    ``env``: extra settings of both processes (e.g. LOG_FORMAT, TORCH_HOME, API_KEY). With a
    worker, it returns once the worker has announced itself."""
    db_url = db_url or f"sqlite:///{tmp / 'data' / 'hotdog.db'}"
    (tmp / "data").mkdir(parents=True, exist_ok=True)
    upgrade(db_url)
    port = free_port()
    stack = Stack(f"http://127.0.0.1:{port}", stack_env(tmp, db_url, broker, **env), tmp)
    stack.start("api", "serve", "--port", str(port))
    if worker:
        stack.start("worker", "worker")
    try:
        stack.wait_ready(120)
        if worker:  # jobs are refused until a worker has announced itself
            stack.wait_workers(1)
        yield stack
    finally:
        stack.stop_all()


def embedded_stack(tmp: Path, *, worker: bool = True,
                   **env: str) -> AbstractContextManager[Stack]:
    """The embedded default (SQLite + the file-system broker) in a folder of the test's own;
    ``worker=False`` starts the API alone (jobs then stay queued)."""
    return running_stack(tmp, worker=worker, **env)


@contextmanager
def stack_without_weights(tmp: Path) -> Iterator[Stack]:
    """A service whose worker has no ImageNet weights (imagenet jobs fail at once) and
    writes no exports (saves time)."""
    with embedded_stack(tmp, TORCH_HOME=str(tmp / "no-torch-cache"),
                        HOTDOG_PRETRAINED_PATH="", EXPORT_ONNX="false") as stack:
        yield stack


# ----------------------------------------------------------------- the API in process

TEST_HOST = "testserver"  # the Host header of TestClient's requests

def embedded(data_dir: Path, **overrides: Any) -> Settings:
    """The embedded default in ``data_dir``, whatever DATABASE_URL/BROKER_URL say (.ci/run
    exports DATABASE_URL for the Postgres tests). It answers the Host of TestClient's
    requests (``testserver``) besides the loopback names."""
    overrides.setdefault("allowed_hosts", f"{TEST_HOST},localhost,127.0.0.1,[::1]")
    overrides.setdefault("api_key", None)
    overrides.setdefault("api_keys", None)
    return Settings(data_dir=data_dir, database_url=None, broker_url=None, **overrides)


def migrated(data_dir: Path, **overrides: Any) -> Settings:
    """:func:`embedded` settings whose database is migrated to the current schema."""
    from app.db.session import upgrade

    settings = embedded(data_dir, **overrides)
    upgrade(settings.db_url)
    return settings


def stored_datasets(settings: Settings) -> list[str]:
    """What DATA_DIR/datasets holds, leftovers of refused uploads (``.incoming-…``) too."""
    root = settings.data_dir / "datasets"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def zip_tree(root: Path, prefix: str = "") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + str(p.relative_to(root)))
    return buf.getvalue()


def upload(client: TestClient, data: bytes, name: str = "set.zip") -> httpx.Response:
    return client.post("/datasets", files={"file": (name, data, "application/zip")})


def finished_job(settings: Settings, dataset_id: str, tmp_path: Path, data: Path,
                  seed: int = 0, lr: float | None = None, export: bool = False,
                  val_fraction: float = 0.1, int8: bool = False) -> str:
    """A job run to success by the engine directly, recorded as a worker would (with its
    verified ONNX export and verification set when ``export``, and its INT8 model when
    ``int8`` too)."""
    engine = make_engine(settings.db_url)
    cfg = TrainConfig(**TINY, epochs=1, seed=seed, lr=lr, val_fraction=val_fraction)
    out = tmp_path / f"model-{seed}.pt"
    result = fit(data, cfg, out)
    exports = exports_for_job(out, data, int8=int8) if export else None
    with Session(engine) as s:
        job = create_job(s, dataset_id=dataset_id, params=cfg.to_dict(), epochs=1)
        s.commit()
        claim_job(s, job.id, worker="w", lease_seconds=60)
        assert result.evaluation is not None
        finish_job(s, job.id, worker="w", status=JobStatus.SUCCEEDED, checkpoint_path=str(out),
                   evaluation=result.evaluation.to_dict(), exports=exports,
                   selected_epoch=result.selected_epoch, note=result.note)
        s.commit()
        job_id = job.id
    engine.dispose()
    return job_id


# ----------------------------------------------------------------- upload contents

def make_zip(entries: dict[str, bytes], *, symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def jpeg(color: tuple[int, int, int] = (200, 80, 40), size: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "JPEG")
    return buf.getvalue()


# Uploads the API refuses, each with words its 422 must contain.
BAD_UPLOADS = {
    "not a zip": (b"this is text", "not a readable zip"),
    "no test split": (make_zip({"train/a/1.jpg": jpeg(), "train/b/1.jpg": jpeg()}),
                      "missing the 'test/' folder"),
    "one class": (make_zip({"train/a/1.jpg": jpeg(), "test/a/1.jpg": jpeg()}),
                  "at least 2 class folders"),
    "classes differ": (make_zip({"train/a/1.jpg": jpeg(), "train/b/1.jpg": jpeg(),
                                 "test/a/1.jpg": jpeg(), "test/c/1.jpg": jpeg()}),
                       "same classes"),
    "wrong layout": (make_zip({"photos/a/1.jpg": jpeg()}), "train/<class>/ and test/<class>/"),
    "corrupt image": (make_zip({"train/a/1.jpg": jpeg(), "train/b/1.jpg": jpeg()[:60],
                                "test/a/1.jpg": jpeg(), "test/b/1.jpg": jpeg()}),
                      "train/b/1.jpg"),
    "path escape": (make_zip({"../evil.jpg": jpeg()}), "points outside the dataset"),
    "absolute path": (make_zip({"/etc/evil.jpg": jpeg()}), "points outside the dataset"),
    "drive letter": (make_zip({"C:/evil.jpg": jpeg()}), "points outside the dataset"),
    "backslash": (make_zip({"train\\a\\1.jpg": jpeg()}), "backslash"),
    "control character": (make_zip({"train/a\x07/1.jpg": jpeg()}), "control characters"),
    "symlink": (make_zip({"train/a/1.jpg": jpeg()}, symlink="train/b/link.jpg"),
                "symbolic link"),
    "compression bomb": (make_zip({"train/a/bomb.jpg": b"\0" * (64 << 20)}),
                         "compression bomb"),
}
