"""Running it for months (issue 19): deleting jobs, the worker's sweep (KEEP_MODELS,
intermediate files, what a crash left), per-job logs and the storage report, through one
real service (``hotdog serve`` + ``hotdog worker`` on the embedded SQLite and file-system
broker) shared by the module. The tests run in order: each continues the service's story.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.client import Client, ServiceError
from app.core import joblog
from app.core.config import Settings
from app.db.session import make_engine
from app.storage import retention
from tests.helpers import TINY, Stack, embedded_stack, wait_for, write_color_dataset

STALE = 30  # STALE_TEMP_SECONDS of the service
ONE_EPOCH = {**TINY, "epochs": 1}
LONG = {**TINY, "epochs": 1000}  # still running when the test strikes; then cancelled


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("retention")
    with embedded_stack(tmp, EXPORT_ONNX="false", SWEEP_SECONDS="0.5",
                        STALE_TEMP_SECONDS=str(STALE), JOB_LOG_BYTES="200000") as s:
        yield s


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[Client]:
    with stack.client() as c:
        yield c


@pytest.fixture(scope="module")
def dataset_id(client: Client, tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = write_color_dataset(tmp_path_factory.mktemp("colors") / "colors")
    return client.upload(folder)["id"]


@pytest.fixture(scope="module")
def story() -> dict[str, str]:
    """Job ids the tests hand on to the next."""
    return {}


def data(stack: Stack) -> Path:
    return Path(stack.env["DATA_DIR"])


def job_files(stack: Stack, job_id: str) -> set[str]:
    folder = data(stack) / "jobs" / job_id
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def train(stack: Stack, client: Client, dataset_id: str, **params: object) -> dict:
    job = client.submit(dataset_id, **{**ONE_EPOCH, **params})  # type: ignore[arg-type]
    return stack.wait(job["id"], {"succeeded", "failed", "cancelled"}, timeout=180)


def refusal(call: object) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        call()  # type: ignore[operator]
    return info.value


def test_deleting_refused_while_needed_retention_and_the_effects_on_disk(
        stack: Stack, client: Client, dataset_id: str, story: dict[str, str]) -> None:
    a, c, d = (train(stack, client, dataset_id) for _ in range(3))
    assert all(j["status"] == "succeeded" for j in (a, c, d)), (a, c, d)
    assert {"model.pt", "job.log"} <= job_files(stack, a["id"])
    client.activate(c["id"])

    # A running job that starts from A, and an evaluation of A queued behind it.
    b = client.submit(dataset_id, **{**LONG, "init": f"job:{a['id']}"})  # type: ignore[arg-type]
    stack.wait(b["id"], {"running"}, timeout=180, until=lambda j: j["progress"]["epoch"] >= 1)
    followed: list[str] = []

    def follow() -> None:
        with stack.client() as own:
            followed.extend(own.follow_logs(b["id"]))

    follower = threading.Thread(target=follow)
    follower.start()
    e = client.evaluate_model(a["id"], dataset_id)
    assert e["status"] == "queued"

    used = refusal(lambda: client.delete_job(a["id"]))
    assert used.status == 409 and used.kind == "model_in_use"
    assert set(used.body["used_by"]) == {b["id"], e["id"]}
    assert b["id"] in str(used.detail) and e["id"] in str(used.detail)
    assert refusal(lambda: client.delete_job(a["id"], files_only=True)).status == 409
    running = refusal(lambda: client.delete_job(b["id"]))
    assert running.status == 409 and "cancel it first" in str(running.detail)
    active = refusal(lambda: client.delete_job(c["id"]))
    assert active.status == 409 and active.kind == "active_model"

    # KEEP_MODELS=0, swept by two workers at once (the sweep the service's worker runs,
    # with that setting): D goes, C stays (active), A stays (B starts from it).
    settings = Settings(data_dir=data(stack), database_url=stack.env["DATABASE_URL"],
                        keep_models=0, stale_temp_seconds=STALE)
    engine = make_engine(settings.db_url)
    try:
        with ThreadPoolExecutor(2) as pool:
            reports = list(pool.map(lambda _: retention.sweep(engine, settings), range(2)))
    finally:
        engine.dispose()
    assert [job_id for r in reports for job_id in r.retired] == [d["id"]]
    assert job_files(stack, d["id"]) == {"job.log"}
    assert client.job(d["id"])["files_removed_at"]
    assert "model.pt" in job_files(stack, a["id"]) and "model.pt" in job_files(stack, c["id"])
    assert [m["id"] for m in client.models()] == [c["id"], a["id"]]

    client.cancel(e["id"])
    client.cancel(b["id"])
    assert stack.wait(b["id"], {"cancelled", "succeeded", "failed"})["status"] == "cancelled"
    follower.join(timeout=30)
    assert not follower.is_alive(), "following the log did not end with the job"
    streamed = "".join(followed)
    assert f"job {b['id']} attempt 1" in streamed and f"job {b['id']} cancelled" in streamed

    # files_only: the model files go, the job stays listed with its log; the API forgets
    # the model it had loaded.
    photo = next((data(stack) / "datasets" / dataset_id).rglob("*.jpg"))
    assert client.predict([photo], model=a["id"])["model"] == a["id"]
    client.delete_job(a["id"], files_only=True)
    assert refusal(lambda: client.predict([photo], model=a["id"])).status == 409
    assert job_files(stack, a["id"]) == {"job.log"}
    assert "job.log" in job_files(stack, a["id"])
    shown = client.job(a["id"])
    assert shown["files_removed_at"] and not shown["deleted_at"]
    assert a["id"] in [j["id"] for j in client.jobs()]
    assert a["id"] not in [m["id"] for m in client.models()]
    gone = refusal(lambda: client.submit(dataset_id, **{**ONE_EPOCH, "init": f"job:{a['id']}"}))  # type: ignore[arg-type]
    assert gone.status == 422 and "removed" in str(gone.detail)

    # The whole deletion: the folder goes; history, metrics and evaluation stay readable.
    client.delete_job(a["id"])
    assert not (data(stack) / "jobs" / a["id"]).exists()
    shown = client.job(a["id"])
    assert shown["deleted_at"] and shown["status"] == "succeeded"
    assert len(client.metrics(a["id"])) == 1
    assert client.evaluation(a["id"])["classes"] == ["hotdog", "not-hotdog"]
    assert a["id"] not in [j["id"] for j in client.jobs()]
    listed = client.request("GET", "/jobs", params={"include_deleted": "true"}).json()
    assert a["id"] in [j["id"] for j in listed]
    assert a["id"] not in [m["id"] for m in client.models()]
    assert refusal(lambda: client.activate(a["id"], force=True)).status == 409
    assert refusal(lambda: client.submit(
        dataset_id, **{**ONE_EPOCH, "init": f"job:{a['id']}"})).status == 422  # type: ignore[arg-type]
    assert refusal(lambda: client.predict([photo], model=a["id"])).status == 409
    assert refusal(lambda: client.delete_job(a["id"])).status == 409
    assert refusal(lambda: client.logs(a["id"])).status == 409
    assert client.predict([photo])["model"] == c["id"]
    story.update(active=c["id"], cancelled=b["id"])


def test_the_log_of_a_failed_job_is_readable_through_the_api(
        stack: Stack, client: Client, dataset_id: str) -> None:
    # lr 10 with a 1000x head from scratch: the losses blow up in the first epoch.
    f = train(stack, client, dataset_id, lr=10.0, head_lr_mult=1000.0)
    assert f["status"] == "failed" and f["error_kind"] == "bad_params", f
    text = client.logs(f["id"])
    assert f"job {f['id']} attempt 1: training" in text  # the worker's line
    assert "the job failed (bad_params)" in text and "diverged" in text  # the training's
    assert f"job {f['id']} failed (bad_params)" in text  # the worker's record of it
    assert all(f"job_id={f['id']}" in line for line in text.splitlines()
               if line[:2] == "20")  # each record's first line (not a traceback's)
    last = client.logs(f["id"], tail=1)
    assert last.count("\n") == 1 and last == text.splitlines(keepends=True)[-1]
    # Following a job that has ended: all of it, and the answer ends.
    assert "".join(client.follow_logs(f["id"])) == text
    # The command line prints the same.
    out = subprocess.run([sys.executable, "-m", "app.cli", "logs", f["id"], "--url", stack.url],
                         capture_output=True, text=True, env=stack.env, timeout=60)
    assert out.returncode == 0 and out.stdout == text, out.stderr


def test_the_worker_sweeps_intermediate_files_and_what_a_crash_left(
        stack: Stack, story: dict[str, str]) -> None:
    root = data(stack)
    old = time.time() - 2 * STALE
    planted_stale = [root / "tmp" / "tmpabc123", root / "datasets" / ".incoming-0f0f",
                     root / "jobs" / story["active"] / ".model.pt.x1y2.tmp",
                     root / "jobs" / ".deleted-feed-12345678"]
    planted_fresh = [root / "tmp" / "tmpfresh", root / "jobs" / story["active"] / ".m.pt.q.tmp"]
    for p in planted_stale + planted_fresh:
        if p.name.startswith((".incoming", ".deleted")):
            (p / "train" / "a").mkdir(parents=True)
            (p / "train" / "a" / "1.jpg").write_bytes(b"x" * 1000)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"x" * 1000)
    for p in planted_stale:
        for sub in [*sorted(p.rglob("*"), reverse=True), p]:
            os.utime(sub, (old, old))

    wait_for(lambda: not any(p.exists() for p in planted_stale), timeout=60,
             what=lambda: f"the sweep to remove {[p for p in planted_stale if p.exists()]}")
    assert all(p.exists() for p in planted_fresh)  # someone may be writing those
    # Finished jobs keep no per-epoch checkpoints; a model keeps its model.pt.
    active_files = job_files(stack, story["active"])
    assert "model.pt" in active_files and not {"last.pt", "best.pt"} & active_files
    assert not {"last.pt", "best.pt"} & job_files(stack, story["cancelled"])
    for p in planted_fresh:
        p.unlink()


def _tree(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if not p.is_dir())


def test_the_storage_report_matches_the_disk(
        stack: Stack, client: Client, dataset_id: str, story: dict[str, str]) -> None:
    report = client.storage(limit=100)
    root = data(stack)
    assert report["used_bytes"] == sum(report["categories"].values())
    assert report["categories"]["datasets"] == _tree(root / "datasets" / dataset_id)
    assert 0 < report["free_bytes"] <= report["total_bytes"]
    items = {(i["kind"], i["id"]): i for i in report["biggest"]}
    assert items[("dataset", dataset_id)]["bytes"] == _tree(root / "datasets" / dataset_id)
    for job_dir in (root / "jobs").iterdir():
        item = items.get(("job", job_dir.name))
        if item is not None:
            assert item["bytes"] == _tree(job_dir), item
    active = items[("job", story["active"])]
    assert active["protected"] == "it is the active model"
    assert active["by_category"]["checkpoints"] == (root / "jobs" / story["active"]
                                                    / "model.pt").stat().st_size
    assert items[("job", story["cancelled"])]["protected"] is None
    sizes = [i["bytes"] for i in report["biggest"]]
    assert sizes == sorted(sizes, reverse=True)
    assert len(client.storage(limit=1)["biggest"]) == 1
    out = subprocess.run([sys.executable, "-m", "app.cli", "storage", "--url", stack.url],
                         capture_output=True, text=True, env=stack.env, timeout=60)
    assert out.returncode == 0 and dataset_id in out.stdout, out.stderr


def test_a_job_log_keeps_its_newest_lines_under_its_cap(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    for i in range(200):
        joblog.append(log, f"line {i:03d} " + "x" * 40 + "\n", max_bytes=2000)
    text = joblog.tail(log)
    assert len(text.encode()) <= 2000 + 100
    assert text.startswith("[log trimmed: the first ") and text.endswith(f"line 199 {'x' * 40}\n")
    kept = [line for line in text.splitlines()[1:]]
    assert kept == [f"line {i:03d} {'x' * 40}" for i in range(200 - len(kept), 200)]
    # A reader that had read up to a point that was trimmed away is told how much it missed.
    chunk = joblog.read_from(log, 100)
    assert chunk.skipped > 0 and chunk.text == "".join(line + "\n" for line in kept)
    again = joblog.read_from(log, chunk.end)
    assert again.text == "" and again.skipped == 0
