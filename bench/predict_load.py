"""/predict under load on each runtime (PyTorch, ONNX Runtime), against eager PyTorch's own
speed measured in the same run.

What it does
------------
1. Makes a model to serve: a ResNet-18 trained for one epoch at ``--image-size`` (224) on a
   few generated photos (the weights do not matter for speed), recorded as a succeeded job
   in a fresh SQLite database under a temporary ``DATA_DIR``, with its ONNX export verified
   as a worker does it.
2. Baselines, in this process, on the same photos (generated JPEGs of 160-512 px), with the
   ``Predictor`` the service uses (same device and threads), measured again before every
   round of load (``--rounds``): this machine's speed drifts by tens of percent within a
   minute, so each round's load is divided by the baselines measured just before it, and
   the medians of those ratios are the result. For eager PyTorch at the service's default
   precision (``auto``: bf16 on CPUs with native bf16, else fp32), eager PyTorch in fp32
   and ONNX Runtime:
   * **batched forward**: images/s on batches of ``--batch`` already decoded images - the
     model's ceiling on that runtime;
   * **bare latency**: one photo decoded, cropped and classified, p50 over many runs - what a
     request costs without HTTP, queueing or batching.
3. Starts one ``hotdog serve`` per runtime (``PREDICT_RUNTIME=torch`` / ``onnx``; separate
   processes, one uvicorn worker, default settings otherwise) and sends ``POST /predict``
   with one photo per request: ``--requests`` sequential requests (concurrency 1), then
   ``--concurrency`` clients at once for ``--seconds``. Requests are pre-encoded multipart
   bodies on plain ``http.client`` connections (keep-alive), so the client costs little CPU
   next to the server. Only one server is under load at a time.

How to read it
--------------
``batch`` is the mean images per forward pass and ``fwd busy`` the share of the wall time
the service spent in forward passes (from its ``/metrics``).
- PyTorch runtime: ``c16 / eager batched`` is how close the service under load comes to
  the bare model (target >= 0.8); the remaining gap is HTTP, multipart parsing and
  decoding. ``c1 p50 / eager bare p50`` is what a lone request pays for being a request
  (target <= 1.3).
- ONNX runtime: ``c16 / eager batched`` (target >= 1.4) and ``c1 p50 / eager bare p50``
  (target < 1), against eager fp32 (the same numerics: outputs equal within 1e-4) and
  against eager at the default precision (bf16 where the CPU has it).
Errors must be zero. The client and server share the machine's cores: on 2 cores the
client's own work lowers the c16 figures a little. Absolute numbers vary between machines
and runs; the ratios are the result.

Usage::

    .venv/bin/python bench/predict_load.py                   # about 3 min on 2 cores
    .venv/bin/python bench/predict_load.py --runtime onnx    # one runtime only
    .venv/bin/python bench/predict_load.py --quick           # seconds: a smoke test
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from served_model import record_model  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


RUNTIMES = ("torch", "onnx")


def make_model(data_dir: Path, image_size: int) -> tuple[str, Path, list[Path]]:

    from app.datasets.synthetic import generate_demo_dataset
    from app.engine import TrainConfig, fit
    from app.engine.export import export_for_job

    photos_dir = data_dir / "photos"
    generate_demo_dataset(photos_dir, train_per_class=4, test_per_class=16, seed=1)
    cfg = TrainConfig(init="scratch", epochs=1, batch_size=8, image_size=image_size)
    ckpt = data_dir / "model.pt"
    result = fit(photos_dir, cfg, ckpt)
    record = export_for_job(ckpt, photos_dir, ckpt.with_suffix(".onnx"))
    if record.error:
        raise SystemExit(f"the ONNX export failed: {record.error}")
    job_id = record_model(data_dir, ckpt, result, cfg.to_dict(),
                          exports={"onnx": record.to_dict()})
    return job_id, ckpt, sorted((photos_dir / "test").glob("*/*.jpg"))


def make_predictors(ckpt: Path, device: str, runtimes: list[str]) -> dict[str, Any]:
    """What the baselines run: eager at the default precision, eager fp32, ONNX Runtime."""
    from app.engine import Predictor

    out = {"eager": Predictor(ckpt, device=device)}
    if "onnx" in runtimes:
        out["eager_fp32"] = Predictor(ckpt, device=device, precision="fp32")
        out["onnx"] = Predictor(ckpt, device=device, runtime="onnx")
    return out


def baselines(predictor: Any, photos: list[Path], batch: int, seconds: float
              ) -> dict[str, Any]:
    import torch

    images = [predictor.load(p) for p in photos]
    x = torch.stack([images[i % len(images)] for i in range(batch)])
    for _ in range(2):
        predictor.probabilities(x)  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        predictor.probabilities(x)
        n += batch
    batched = n / (time.perf_counter() - start)
    blobs = [p.read_bytes() for p in photos]
    for b in blobs[:3]:
        predictor.predict([b], names=["warm"])
    lat = []
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds or len(lat) < 10:
        t = time.perf_counter()
        predictor.predict([blobs[i % len(blobs)]], names=["x"])
        lat.append(time.perf_counter() - t)
        i += 1
    return {"batched_img_s": batched, "bare_p50_ms": 1000 * statistics.median(lat),
            "precision": predictor.precision, "runtime": predictor.runtime,
            "device": str(predictor.plan.device)}


def multipart(photos: list[Path]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b""
    for photo in photos:
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                 f"filename=\"{photo.name}\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
        body += photo.read_bytes() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def scrape(port: int) -> dict[str, float]:
    """The service's own counters: time in forward passes, images and batches."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out = {}
    for line in text.splitlines():
        if line.startswith(("hotdog_predict_forward_seconds_total",
                            "hotdog_predict_batch_size_sum", "hotdog_predict_batch_size_count")):
            name, value = line.split()
            out[name] = float(value)
    return out


class Load:
    def __init__(self, port: int, bodies: list[tuple[bytes, str]], per_request: int = 1) -> None:
        self.port = port
        self.bodies = bodies
        self.per_request = per_request
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def client(self, stop_at: float | None, count: int | None, offset: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        i = offset
        done = 0
        while (stop_at is None or time.perf_counter() < stop_at) and (
                count is None or done < count):
            body, ctype = self.bodies[i % len(self.bodies)]
            i += 1
            t = time.perf_counter()
            try:
                conn.request("POST", "/predict", body=body, headers={"Content-Type": ctype})
                r = conn.getresponse()
                payload = r.read()
                ok = r.status == 200
                detail = f"{r.status} {payload[:200]!r}"
            except (OSError, http.client.HTTPException) as exc:
                ok, detail = False, repr(exc)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            elapsed = time.perf_counter() - t
            with self.lock:
                if ok:
                    self.latencies.append(elapsed)
                else:
                    self.errors.append(detail)
            done += 1
        conn.close()

    def run(self, concurrency: int, *, seconds: float | None = None,
            requests: int | None = None) -> dict[str, Any]:
        self.latencies, self.errors = [], []
        stop_at = time.perf_counter() + seconds if seconds else None
        threads = [threading.Thread(target=self.client, args=(stop_at, requests, k * 7))
                   for k in range(concurrency)]
        before = scrape(self.port)
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        after = scrape(self.port)
        delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
        batches = delta.get("hotdog_predict_batch_size_count", 0.0)
        ok = len(self.latencies)
        return {"concurrency": concurrency, "requests": ok + len(self.errors),
                "req_s": ok / wall, "img_s": ok * self.per_request / wall,
                "p50_ms": 1000 * percentile(self.latencies, 50),
                "p99_ms": 1000 * percentile(self.latencies, 99), "errors": len(self.errors),
                "mean_batch": delta.get("hotdog_predict_batch_size_sum", 0.0) / max(1, batches),
                "forward_busy": delta.get("hotdog_predict_forward_seconds_total", 0.0) / wall,
                "first_error": self.errors[0] if self.errors else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32, help="batch of the batched-forward baseline")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--runtime", choices=(*RUNTIMES, "both"), default="both",
                    help="the /predict runtime(s) to load: PREDICT_RUNTIME of the server")
    ap.add_argument("--rounds", type=int, default=5,
                    help="baselines and load measured alternately this many times")
    ap.add_argument("--seconds", type=float, default=5.0, help="concurrent load per round")
    ap.add_argument("--requests", type=int, default=30, help="sequential requests per round")
    ap.add_argument("--photos-per-request", type=int, default=1, metavar="N",
                    help="photos in each /predict request (one HTTP request per N images)")
    ap.add_argument("--baseline-seconds", type=float, default=2.0,
                    help="each baseline per round")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="tiny run: 64 px, one short round")
    ap.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = ap.parse_args(argv)
    if args.quick:
        args.image_size, args.rounds, args.seconds, args.requests = 64, 1, 2.0, 10
        args.baseline_seconds = 0.5
    runtimes = list(RUNTIMES) if args.runtime == "both" else [args.runtime]

    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hotdog-predict-bench-") as tmp:
        data_dir = Path(tmp)
        _job_id, ckpt, photos = make_model(data_dir, args.image_size)
        per = args.photos_per_request
        bodies = [multipart([photos[(i + k) % len(photos)] for k in range(per)])
                  for i in range(len(photos))]
        servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        try:
            for runtime in runtimes:
                servers[runtime] = start_server(data_dir, runtime, args.device)
            loads = {}
            for runtime, (server, port) in servers.items():
                wait_ready(server, port, data_dir / f"api-{runtime}.log")
                loads[runtime] = Load(port, bodies, per)
                loads[runtime].run(2, requests=4)  # warm-up: loads the model, fills pools
            predictors = make_predictors(ckpt, args.device, runtimes)
            for i in range(args.rounds):
                base = {name: baselines(p, photos, args.batch, args.baseline_seconds)
                        for name, p in predictors.items()}
                r: dict[str, Any] = {"baseline": base}
                for runtime, load in loads.items():
                    r[runtime] = {"c1": load.run(1, requests=args.requests),
                                  "cn": load.run(args.concurrency, seconds=args.seconds)}
                rounds.append(r)
                print(f"round {i + 1}: " + " | ".join(
                    f"{name} {b['batched_img_s']:.1f} img/s, bare {b['bare_p50_ms']:.1f} ms"
                    for name, b in base.items()) + " || " + " | ".join(
                    f"/predict {rt}: c1 p50 {r[rt]['c1']['p50_ms']:.1f} ms, "
                    f"c{args.concurrency} {r[rt]['cn']['img_s']:.1f} img/s"
                    for rt in loads), flush=True)
        finally:
            for server, _ in servers.values():
                server.terminate()
            for server, _ in servers.values():
                server.wait(timeout=30)

    summary = report(rounds, runtimes, args, len(photos))
    errors = sum(r[rt][k]["errors"] for r in rounds for rt in runtimes for k in ("c1", "cn"))
    print(f"errors: {errors}")
    for r in rounds:
        for rt in runtimes:
            for k in ("c1", "cn"):
                if r[rt][k]["first_error"]:
                    print(f"first error ({rt}): {r[rt][k]['first_error']}")
    if args.json:
        print(json.dumps({"rounds": rounds, "summary": summary, "errors": errors}))
    return 0 if errors == 0 else 1


def report(rounds: list[dict[str, Any]], runtimes: list[str], args: argparse.Namespace,
           photos: int) -> dict[str, float]:
    """Print the per-runtime table and the median ratios; return the ratios."""
    base0 = rounds[0]["baseline"]
    print(f"\nmodel: ResNet-18 at {args.image_size} px on {base0['eager']['device']}, "
          f"{photos} photos of 160-512 px, {args.photos_per_request} per request, "
          f"{len(rounds)} round(s); medians over rounds")
    print(f"{'in process':>22} {'batched img/s':>13} {'bare p50 ms':>11}")
    for name, b in base0.items():
        label = f"{b['runtime']} {b['precision']}"
        print(f"{label:>22} "
              f"{statistics.median(r['baseline'][name]['batched_img_s'] for r in rounds):>13.1f} "
              f"{statistics.median(r['baseline'][name]['bare_p50_ms'] for r in rounds):>11.1f}")
    print(f"{'/predict':>22} {'requests':>8} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'errors':>6} {'batch':>5} {'fwd busy':>8}")
    for rt in runtimes:
        for name, key in (("c1", "c1"), (f"c{args.concurrency}", "cn")):
            rs = [r[rt][key] for r in rounds]
            print(f"{rt + ' ' + name:>22} {sum(x['requests'] for x in rs):>8} "
                  f"{statistics.median(x['req_s'] for x in rs):>7.1f} "
                  f"{statistics.median(x['p50_ms'] for x in rs):>7.1f} "
                  f"{statistics.median(x['p99_ms'] for x in rs):>7.1f} "
                  f"{sum(x['errors'] for x in rs):>6} "
                  f"{statistics.median(x['mean_batch'] for x in rs):>5.1f} "
                  f"{statistics.median(x['forward_busy'] for x in rs):>8.0%}")

    def ratio(rt: str, key: str, field: str, base: str, base_field: str) -> float:
        return statistics.median(r[rt][key][field] / r["baseline"][base][base_field]
                                 for r in rounds)

    summary: dict[str, float] = {}
    c = f"c{args.concurrency}"
    eager = f"eager {base0['eager']['precision']}"
    if "torch" in runtimes:
        summary["torch_throughput_ratio"] = ratio("torch", "cn", "img_s", "eager", "batched_img_s")
        summary["torch_latency_ratio"] = ratio("torch", "c1", "p50_ms", "eager", "bare_p50_ms")
        print(f"torch: {c} img/s / {eager} batched = {summary['torch_throughput_ratio']:.2f} "
              "(target >= 0.8)")
        print(f"torch: c1 p50 / {eager} bare p50 = {summary['torch_latency_ratio']:.2f} "
              "(target <= 1.3)")
    if "onnx" in runtimes:
        for base, label in (("eager_fp32", "eager fp32"), ("eager", eager)):
            t = ratio("onnx", "cn", "img_s", base, "batched_img_s")
            lat = ratio("onnx", "c1", "p50_ms", base, "bare_p50_ms")
            summary[f"onnx_throughput_vs_{base}"] = t
            summary[f"onnx_latency_vs_{base}"] = lat
            print(f"onnx: {c} img/s / {label} batched = {t:.2f} (target >= 1.4); "
                  f"c1 p50 / {label} bare p50 = {lat:.2f} (target < 1)")
            if base0["eager"]["precision"] == "fp32":
                break  # the same baseline twice
    return summary


def start_server(data_dir: Path, runtime: str, device: str
                 ) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "DATA_DIR": str(data_dir), "PREDICT_DEVICE": device,
           "PREDICT_RUNTIME": runtime, "DATABASE_URL": "", "BROKER_URL": ""}
    log = open(data_dir / f"api-{runtime}.log", "wb")  # noqa: SIM115 - closed with the process
    server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port),
                               "--log-level", "warning"], env=env, cwd=ROOT,
                              stdout=log, stderr=subprocess.STDOUT)
    return server, port


def wait_ready(server: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/ready")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            raise SystemExit("the service did not start:\n" + log.read_text()[-2000:])
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
