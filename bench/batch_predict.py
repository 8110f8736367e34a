"""A batch prediction job (POST /predictions) against the engine's own batched throughput on
the same photos.

What it does
------------
1. Makes a model: a ResNet-18 trained for one epoch at ``--image-size`` on a few generated
   photos (the weights do not matter for speed), with its verified ONNX export, recorded as
   a succeeded job in a fresh SQLite database under a temporary ``DATA_DIR``.
2. Generates ``--photos`` synthetic food photos (JPEGs of 160-512 px, the demo generator's)
   and zips them (stored, as photos are).
3. **Engine**: in this process, the photos classified by ``app.engine.batch.predict_photos``
   (decoding on threads one batch ahead of the forward pass) with the ``Predictor`` the
   worker builds (the same runtime choice, device and batch size, BATCH_PREDICT_SIZE):
   photos/s, model loading not counted.
4. **Job**: starts ``hotdog serve`` and ``hotdog worker`` (embedded default), waits
   ``--settle`` seconds (the worker's spare prediction process, WARM_PREDICT_PROCESS, imports
   PyTorch meanwhile: a worker that has been up a while), uploads the zip to
   ``POST /predictions``, polls ``GET /predictions/{id}`` (every 0.2 s) until it has
   succeeded, and reads back every row. Three times are reported:
   * ``job run``: the job's ``started_at`` to ``finished_at`` (the worker's whole attempt:
     the job handed to a prediction process, the model loaded, every photo, the results
     written);
   * ``end to end``: from the first byte of the upload to the poll that saw it succeed
     (upload, unpacking, queueing and polling too);
   * the ratios ``engine photos/s / job photos/s`` for both (the target: job run <= 1.3).
   It checks that the results have one row per photo and none failed.
5. ``--rounds`` jobs (3), each between two engine runs (each run ``--settle`` seconds after
   a job, so that the worker's next spare does not import on the engine's time). This
   machine's speed drifts by tens of percent within a minute, so each job is compared with
   the mean of the engine runs just before and after it, and the median of those ratios
   (with their range) is the result.

The API, the worker and this process share the machine's cores; on a shared machine other
load moves the figures (run it on an idle one). ``--quick`` is a seconds-long smoke test.

Usage::

    .venv/bin/python bench/batch_predict.py                     # 1,000 photos at 224 px
    .venv/bin/python bench/batch_predict.py --image-size 128    # smaller, faster
    .venv/bin/python bench/batch_predict.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from served_model import record_model  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_model(data_dir: Path, image_size: int) -> Path:
    from app.datasets.synthetic import generate_demo_dataset
    from app.engine import TrainConfig, fit
    from app.engine.export import export_for_job

    train = data_dir / "train-photos"
    generate_demo_dataset(train, train_per_class=4, test_per_class=4, seed=1)
    cfg = TrainConfig(init="scratch", epochs=1, batch_size=8, image_size=image_size,
                      val_fraction=0)
    ckpt = data_dir / "model.pt"
    result = fit(train, cfg, ckpt)
    record = export_for_job(ckpt, train, ckpt.with_suffix(".onnx"))
    if record.error:
        raise SystemExit(f"the ONNX export failed: {record.error}")
    record_model(data_dir, ckpt, result, cfg.to_dict(), exports={"onnx": record.to_dict()})
    shutil.rmtree(train)
    return ckpt


def make_photos(work: Path, count: int) -> tuple[Path, Path]:
    """``count`` photos in a folder (the engine's), and the same in a zip (the job's)."""
    from app.datasets.synthetic import generate_demo_dataset

    tree = work / "photos-tree"
    per_class = -(-count // 2)
    generate_demo_dataset(tree, train_per_class=1, test_per_class=per_class, seed=2)
    folder = work / "photos"
    photos = sorted((tree / "test").glob("*/*.jpg"))[:count]
    archive = work / "photos.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for p in photos:
            name = f"{p.parent.name}/{p.name}"
            zf.write(p, name)
            (folder / p.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(p, folder / name)
    shutil.rmtree(tree)
    return folder, archive


def engine_run(ckpt: Path, folder: Path, batch_size: int) -> dict[str, Any]:
    """The worker's prediction, in this process: photos/s without the model load."""
    from app.core.config import Settings
    from app.engine.batch import photos_in, predict_photos
    from app.engine.predict import Predictor, choose_runtime

    settings = Settings()
    onnx_file = ckpt.with_suffix(".onnx")
    runtime = choose_runtime(settings.predict_runtime, onnx_file=onnx_file)
    predictor = Predictor(ckpt, runtime=runtime,
                          onnx_file=onnx_file if runtime == "onnx" else None)
    photos, _ = photos_in(folder)
    list(predict_photos(predictor, photos[:batch_size], batch_size=batch_size))  # warm-up
    start = time.perf_counter()
    rows = list(predict_photos(predictor, photos, batch_size=batch_size))
    seconds = time.perf_counter() - start
    assert len(rows) == len(photos) and not any(r.error for r in rows)
    return {"photos": len(rows), "seconds": seconds, "photos_per_s": len(rows) / seconds,
            "runtime": runtime, "device": str(predictor.plan.device)}


class Service:
    """``hotdog serve`` + ``hotdog worker`` on the embedded default in ``data_dir``."""

    def __init__(self, data_dir: Path, batch_size: int) -> None:
        self.port = free_port()
        self.env = {**os.environ, "DATA_DIR": str(data_dir), "DATABASE_URL": "",
                    "BROKER_URL": "", "BATCH_PREDICT_SIZE": str(batch_size)}
        self.logs = data_dir / "logs"
        self.logs.mkdir()
        self.procs = [self._start("api", "serve", "--port", str(self.port),
                                  "--log-level", "warning"),
                      self._start("worker", "worker")]

    def _start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        return subprocess.Popen([sys.executable, "-m", "app.cli", *args], env=self.env,
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                break
            try:
                status, body = self.request("GET", "/workers")
                if status == 200 and any(w["alive"] for w in json.loads(body)):
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise SystemExit("the service did not start:\n" + "\n".join(
            p.read_text()[-2000:] for p in self.logs.iterdir()))

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()


def multipart(archive: Path) -> tuple[bytes, str]:
    boundary = "hotdog-bench-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"photos.zip\"\r\nContent-Type: application/zip\r\n\r\n").encode()
    body += archive.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def job_run(service: Service, archive: Path) -> dict[str, Any]:
    body, ctype = multipart(archive)
    start = time.perf_counter()
    status, answer = service.request("POST", "/predictions", body, {"content-type": ctype})
    if status != 202:
        raise SystemExit(f"POST /predictions answered {status}: {answer[:500]!r}")
    job = json.loads(answer)
    while job["status"] in ("queued", "running"):
        time.sleep(0.2)
        job = json.loads(service.request("GET", f"/predictions/{job['id']}")[1])
    end_to_end = time.perf_counter() - start
    if job["status"] != "succeeded":
        raise SystemExit(f"the job ended {job['status']}: {job['error']}")
    status, rows = service.request("GET", f"/predictions/{job['id']}/results?format=jsonl")
    lines = [json.loads(line) for line in rows.decode().splitlines()]
    assert status == 200 and len(lines) == job["photos"], (status, len(lines))
    assert not any(r["error"] for r in lines)
    run = (datetime.fromisoformat(job["finished_at"])
           - datetime.fromisoformat(job["started_at"])).total_seconds()
    return {"id": job["id"], "photos": job["photos"], "job_run_seconds": run,
            "end_to_end_seconds": end_to_end, "worker_seconds": job["summary"]["seconds"],
            "runtime": job["summary"]["runtime"], "device": job["summary"]["device"],
            "upload_bytes": len(body)}


def _median_range(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photos", type=int, default=1000)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64,
                   help="photos per forward pass, in the engine and the job")
    p.add_argument("--rounds", type=int, default=3,
                   help="jobs, each between two engine runs (the ratios' median is reported)")
    p.add_argument("--settle", type=float, default=10.0,
                   help="seconds to wait after the worker is ready and after each job (its "
                        "next spare prediction process imports PyTorch meanwhile)")
    p.add_argument("--quick", action="store_true",
                   help="40 photos at 64 px, one round: a smoke test")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    if args.quick:
        args.photos, args.image_size, args.rounds, args.settle = 40, 64, 1, 0.0
    with tempfile.TemporaryDirectory(prefix="hotdog-batch-bench-") as tmp:
        work = Path(tmp)
        data_dir = work / "data"
        data_dir.mkdir()
        print(f"model at {args.image_size} px, {args.photos} photos ...", flush=True)
        ckpt = make_model(data_dir, args.image_size)
        folder, archive = make_photos(work, args.photos)
        engines = [engine_run(ckpt, folder, args.batch_size)]
        print(f"engine: {engines[0]['photos_per_s']:.1f} photos/s ({engines[0]['runtime']}, "
              f"{engines[0]['device']})", flush=True)
        service = Service(data_dir, args.batch_size)
        jobs = []
        try:
            service.wait_ready()
            time.sleep(args.settle)
            for _ in range(args.rounds):
                jobs.append(job_run(service, archive))
                time.sleep(args.settle)  # the worker's next spare imports: not on the engine
                engines.append(engine_run(ckpt, folder, args.batch_size))
                print(f"job {len(jobs)}: {jobs[-1]['job_run_seconds']:.1f} s, engine "
                      f"{engines[-1]['photos_per_s']:.1f} photos/s", flush=True)
        finally:
            service.stop()
    rounds = []
    for i, job in enumerate(jobs):
        engine = (engines[i]["photos_per_s"] + engines[i + 1]["photos_per_s"]) / 2
        job_rate = job["photos"] / job["job_run_seconds"]
        e2e_rate = job["photos"] / job["end_to_end_seconds"]
        rounds.append({"engine_photos_per_s": engine, "job": job,
                       "job_run_photos_per_s": job_rate, "end_to_end_photos_per_s": e2e_rate,
                       "ratio_job_run": engine / job_rate, "ratio_end_to_end": engine / e2e_rate})
    result = {"photos": args.photos, "image_size": args.image_size,
              "batch_size": args.batch_size, "cpus": os.cpu_count(), "engine_runs": engines,
              "rounds": rounds,
              "ratio_job_run": statistics.median(r["ratio_job_run"] for r in rounds),
              "ratio_end_to_end": statistics.median(r["ratio_end_to_end"] for r in rounds)}
    job = jobs[0]
    print(f"\n{args.photos} photos at {args.image_size} px, batches of {args.batch_size}, "
          f"{os.cpu_count()} CPUs, runtime {job['runtime']} on {job['device']}, "
          f"{len(rounds)} round(s)")
    for i, r in enumerate(rounds, 1):
        print(f"  round {i}: engine {r['engine_photos_per_s']:6.1f} photos/s, job run "
              f"{r['job_run_photos_per_s']:6.1f} photos/s ({r['job']['job_run_seconds']:.1f} s,"
              f" in its process {r['job']['worker_seconds']:.1f} s), end to end "
              f"{r['end_to_end_photos_per_s']:6.1f} photos/s")
    print("  engine / job run    (median [range])  "
          + _median_range([r["ratio_job_run"] for r in rounds]))
    print("  engine / end to end (median [range])  "
          + _median_range([r["ratio_end_to_end"] for r in rounds]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
