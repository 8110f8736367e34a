"""Routing jobs to GPU, CPU-only or any worker, and one worker process per GPU."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.client import ServiceError
from app.db.session import upgrade
from app.jobs.queues import queue_for, worker_queues
from tests.helpers import (
    TINY,
    Stack,
    embedded,
    embedded_stack,
    stack_env,
    upload,
    wait_for,
    zip_tree,
)

ROOT = Path(__file__).resolve().parents[1]


def test_queue_names() -> None:
    assert queue_for("training", {"device": "cuda"}) == "training.gpu"
    assert queue_for("training", {"device": "cuda:1"}) == "training.gpu"
    assert queue_for("training", {"device": "cpu"}) == "training.cpu"
    assert queue_for("training", {"device": "auto"}) == "training"
    assert queue_for("training", {}) == "training"
    assert queue_for("training", {"device": "auto", "gpus": 2}) == "training.gpu"
    assert queue_for("training", {"device": "auto", "gpus": 0}) == "training.gpu"  # all of them
    assert queue_for("training", {"device": "cpu", "gpus": 2}) == "training.cpu"
    assert worker_queues("training", has_gpu=True) == ["training.gpu", "training"]
    assert worker_queues("training", has_gpu=False) == ["training.cpu", "training"]


def _messages(client: TestClient) -> dict[str, float]:
    out = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("hotdog_queue_messages{"):
            name, value = line.rsplit(" ", 1)
            out[name.split('queue="')[1].split('"')[0]] = float(value)
    return out


def test_jobs_are_sent_to_their_devices_queue(tmp_path: Path, color_dataset: Path) -> None:
    settings = embedded(tmp_path / "data")
    upgrade(settings.db_url)
    with TestClient(create_app(settings)) as c:
        ds = upload(c, zip_tree(color_dataset)).json()["id"]
        assert _messages(c) == {"training": 0, "training.gpu": 0, "training.cpu": 0}
        for device in ("cuda", "cpu", "cpu", "auto"):
            # No worker runs here: queued regardless (else refused, tests/test_workers.py).
            r = c.post("/jobs", json={"dataset_id": ds, **TINY, "device": device,
                                      "queue_anyway": True})
            assert r.status_code == 202, r.text
            assert r.json()["params"]["device"] == device
        assert _messages(c) == {"training": 1, "training.gpu": 1, "training.cpu": 2}
        r = c.post("/jobs", json={"dataset_id": ds, "device": "tpu"})
        assert r.status_code == 422 and "device" in r.text


@pytest.fixture(scope="module")
def cpu_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with embedded_stack(tmp_path_factory.mktemp("queues"), EXPORT_ONNX="false") as stack:
        yield stack


def test_a_cpu_worker_takes_cpu_and_shared_jobs_but_not_gpu_ones(cpu_worker: Stack,
                                                                  color_dataset: Path) -> None:
    with cpu_worker.client() as c:
        (worker,) = [w for w in c.workers() if w["alive"]]
        assert (worker["kind"], worker["queues"]) == ("cpu", ["training", "training.cpu"])
        ds = c.upload(color_dataset)["id"]
        with pytest.raises(ServiceError) as refused:  # no worker with a GPU is running
            c.submit(ds, **TINY, epochs=1, device="cuda")
        assert refused.value.status == 409 and "a worker with a GPU" in str(refused.value)
        gpu = c.submit(ds, **TINY, epochs=1, device="cuda", queue_anyway=True)
        cpu = c.submit(ds, **TINY, epochs=1, device="cpu")
        shared = c.submit(ds, **TINY, epochs=1)
        for job in (cpu, shared):
            done = cpu_worker.wait(job["id"], {"succeeded", "failed", "cancelled"})
            assert done["status"] == "succeeded", done["error"]
            assert done["waiting_for"] is None
        gpu = c.job(gpu["id"])
        assert gpu["status"] == "queued"  # waits for a GPU worker, and says so
        assert gpu["waiting_for"] == "a worker with a GPU (none is running)"
        metrics = httpx.get(cpu_worker.url + "/metrics").text
        assert 'hotdog_queue_messages{queue="training.gpu"} 1.0' in metrics
        assert c.cancel(gpu["id"])["status"] == "cancelled"


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _visible_devices(pid: int) -> str | None:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    for entry in env:
        if entry.startswith(b"CUDA_VISIBLE_DEVICES="):
            return entry.split(b"=", 1)[1].decode()
    return None


def test_one_worker_per_gpu_each_seeing_its_own(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'data' / 'hotdog.db'}"
    upgrade(db_url)
    env = stack_env(tmp_path, db_url)
    log_file = tmp_path / "workers.log"
    log = open(log_file, "wb")  # noqa: SIM115 - closed below
    sup = subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--per-gpu", "0,1"],
                           env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    def started(text: str) -> Callable[[], bool]:  # seen in the log of both workers
        def check() -> bool:
            assert sup.poll() is None, log_file.read_text()
            return log_file.read_text().count(text) >= 2
        return check

    try:
        children = wait_for(lambda: _children(sup.pid) if len(_children(sup.pid)) == 2
                            else None, timeout=60, interval=0.2, what=log_file.read_text)
        assert sorted(_visible_devices(p) or "" for p in children) == ["0", "1"]
        wait_for(started(" announced"), timeout=60, interval=0.2, what=log_file.read_text)
        # Celery's " ready." line: each worker handles signals from here on
        wait_for(started(" ready."), timeout=60, interval=0.2, what=log_file.read_text)
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(timeout=60) == 0, log_file.read_text()
        assert not any(Path(f"/proc/{p}").exists() and
                       "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2]
                       for p in children)
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
        log.close()
    text = log_file.read_text()
    assert "2 workers, one per GPU (0, 1)" in text and "gpu0@" in text and "gpu1@" in text
