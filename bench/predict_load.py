"""/predict under load with ``PREDICT_RUNTIME=auto``, against each runtime's own speed
measured in the same run.

What it does
------------
1. Makes a model to serve: a ResNet-18 trained for one epoch at ``--image-size`` (224) on a
   few generated photos (the weights do not matter for speed), recorded as a succeeded job
   in a fresh SQLite database under a temporary ``DATA_DIR``, with everything a worker writes
   beside it: the verified ONNX export, the verified INT8 model and the verification set.
2. Baselines, in this process, on the same photos (generated JPEGs of 160-512 px), with the
   ``Predictor`` the service uses (same device and threads), for every runtime: eager
   PyTorch at the default precision (``auto``: bf16 on CPUs with native bf16, else fp32),
   compiled PyTorch (inductor, freezing; its compile time is printed), ONNX Runtime fp32 and
   INT8. Measured again before every round of load (``--rounds``): this machine's speed
   drifts by tens of percent within a minute, so each round's load is divided by the
   baselines measured just before it, and the medians of those ratios are the result.
   * **batched forward**: images/s on batches of ``--batch`` already decoded images - the
     model's ceiling on that runtime;
   * **bare latency**: one photo decoded, cropped and classified, p50 over many runs - what a
     request costs without HTTP, queueing or batching.
3. Starts ``hotdog serve`` (``PREDICT_RUNTIME=auto``, default settings otherwise), waits
   until it has measured every runtime and chosen one (``GET /models``), and sends
   ``POST /predict`` with one photo per request as the raw body (``--body raw``, the
   default; ``multipart`` sends forms): ``--requests`` sequential requests (concurrency 1),
   then each of ``--concurrency`` (16 and 64) clients at once for ``--seconds``. Requests
   are encoded once, sent on keep-alive connections that one thread drives (``Load``), so
   the client costs little CPU next to the server. Finally every photo is sent once more
   and its answer compared with the serving runtime's own output in this process.

How to read it
--------------
``batch`` is the mean images per forward pass and ``fwd busy`` the share of the wall time
the service spent in forward passes (from its ``/metrics``); ``server CPU ms/img`` the CPU
time (all its threads, user + system) the service process spent per image classified, and
``client CPU`` the load generator's own CPU, in cores (both share the machine). The next
table splits the service's CPU per image by thread: the forward threads (compare with the
in-process ``batched CPU ms/img``: a forward pass served costs what it costs alone), the
decode threads, the event loop (HTTP, the app's Python, hand-offs) and the rest (mostly
ONNX Runtime's own pool threads, which a pass running alone on two threads uses: they are
started with the session, by the thread that built it). A lone request (c1) is decoded on
a forward thread (``Batcher.run_alone``), so its decode counts as forward there. On 2
cores, every millisecond of decode and event loop per image comes out of the forward
passes' share: that is what separates /predict from the batched figure. "best" is
the runtime the service chose. Targets (issue 17): best batched / eager batched >= 1.25;
/predict c16 / best batched >= 0.85; c1 p50 / best bare p50 <= 1.15; zero errors; every
answer equal to the runtime's in-process output. Ratios are medians over rounds, with their
range. The client and server share the machine's cores: on 2 cores the client's own work
(about 1 % of a core) lowers the concurrent figures a little. Absolute numbers vary between
machines and runs.

Usage::

    .venv/bin/python bench/predict_load.py                   # 10-20 min on 2 cores (compiles)
    .venv/bin/python bench/predict_load.py --no-compile      # without compiled PyTorch
    .venv/bin/python bench/predict_load.py --quick           # a smoke test (no compile)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
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


RUNTIMES = ("torch", "compiled", "onnx", "onnx_int8")


def make_model(data_dir: Path, image_size: int) -> tuple[str, Path, list[Path], dict[str, Any]]:

    from app.datasets.synthetic import generate_demo_dataset
    from app.engine import TrainConfig, fit
    from app.engine.export import exports_for_job

    photos_dir = data_dir / "photos"
    generate_demo_dataset(photos_dir, train_per_class=4, test_per_class=16, seed=1)
    cfg = TrainConfig(init="scratch", epochs=1, batch_size=8, image_size=image_size)
    ckpt = data_dir / "model.pt"
    result = fit(photos_dir, cfg, ckpt)
    exports = exports_for_job(ckpt, photos_dir, int8=True)
    if "error" in exports["onnx"]:
        raise SystemExit(f"the ONNX export failed: {exports['onnx']['error']}")
    job_id = record_model(data_dir, ckpt, result, cfg.to_dict(), exports=exports)
    return job_id, ckpt, sorted((photos_dir / "test").glob("*/*.jpg")), exports


def make_predictors(ckpt: Path, device: str, runtimes: list[str]) -> dict[str, Any]:
    """What the baselines run: each runtime the model has (compiled: compiled now)."""
    from app.engine import Predictor
    from app.engine.predict import available_runtimes

    out = {}
    for runtime in available_runtimes(ckpt):
        if runtime not in runtimes:
            continue
        out[runtime] = Predictor(ckpt, device=device, runtime=runtime)
        if runtime == "compiled":
            print(f"compiled PyTorch: compiled in {out[runtime].warm_up():.0f} s", flush=True)
    return out


def baselines(predictor: Any, photos: list[Path], batch: int, seconds: float
              ) -> dict[str, Any]:
    import torch

    from app.engine.predict import images_per_second

    images = [predictor.load(p) for p in photos]
    x = torch.stack([images[i % len(images)] for i in range(batch)])
    cpu, wall = time.process_time(), time.perf_counter()
    batched = images_per_second(predictor, x, seconds=seconds)
    # CPU per image of the batched run (its warm-up pass included): what a forward pass
    # costs the machine, to set beside the service's forward threads' figure.
    batched_cpu = (time.process_time() - cpu) / max(1e-9, batched * (time.perf_counter() - wall))
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
    return {"batched_img_s": batched, "batched_cpu_ms_per_image": 1000 * batched_cpu,
            "bare_p50_ms": 1000 * statistics.median(lat),
            "precision": predictor.precision, "runtime": predictor.runtime,
            "device": str(predictor.plan.device)}


def raw(photo: Path) -> tuple[bytes, str]:
    return photo.read_bytes(), "image/jpeg"


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


def _cpu_seconds(stat: str) -> float:
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int | None) -> dict[str, tuple[str, float]]:
    """CPU seconds (user + system) that process ``pid`` has used so far: ``total`` (which
    keeps the time of threads that ended), and per live thread id its part and seconds.
    Parts: the forward threads (and the ONNX Runtime or OpenMP threads they started, which
    inherit the name), the decode threads (the service names both:
    ``app.core.procs.name_thread``), the event loop (the main thread). Empty without a pid
    or ``/proc``."""
    out: dict[str, tuple[str, float]] = {}
    if pid is None or not Path(f"/proc/{pid}").is_dir():
        return out
    out["total"] = ("total", _cpu_seconds(Path(f"/proc/{pid}/stat").read_text()))
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            seconds = _cpu_seconds((task / "stat").read_text())
        except OSError:  # the thread ended meanwhile
            continue
        part = ("event loop" if task.name == str(pid) else
                name if name in ("forward", "decode") else "other")
        out[task.name] = (part, seconds)
    return out


def cpu_by_part(before: dict[str, tuple[str, float]], after: dict[str, tuple[str, float]],
                images: int) -> dict[str, float]:
    """ms of CPU per image between two ``process_cpu`` readings, by part; ``other`` is the
    rest of the process's total (threads that ended included)."""
    if "total" not in after:
        return {}
    ms = {"total": 0.0, "forward": 0.0, "decode": 0.0, "event loop": 0.0}
    for key, (part, seconds) in after.items():
        if part in ms:
            ms[part] += seconds - before.get(key, (part, 0.0))[1]
    ms["other"] = ms["total"] - ms["forward"] - ms["decode"] - ms["event loop"]
    return {part: 1000 * v / max(1, images) for part, v in ms.items()}


class Load:
    """The load generator: one thread drives every connection (``selectors``, keep-alive,
    requests encoded once up front, responses parsed by their Content-Length). Client and
    service share the machine's cores, so the client must cost little: 16 ``http.client``
    threads cost several times more CPU per request (header parsing by the email package,
    the interpreter lock passed between 16 threads), and that CPU was taken from the
    service being measured. Its own CPU is measured and reported (``client_cpu``)."""

    def __init__(self, port: int, bodies: list[tuple[bytes, str]], per_request: int = 1,
                 server_pid: int | None = None) -> None:
        self.port = port
        self.server_pid = server_pid
        self.requests = [(f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                          f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
                          ).encode() + body for body, ctype in bodies]
        self.per_request = per_request
        self.latencies: list[float] = []
        self.errors: list[str] = []

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _drive(self, concurrency: int, stop_at: float | None, count: int | None) -> None:
        """``concurrency`` connections, each sending its next request as soon as the last
        one is answered, until ``stop_at`` or ``count`` requests per connection."""
        sel = selectors.DefaultSelector()
        conns = []
        for k in range(concurrency):
            conns.append({"sock": self._connect(), "next": k * 7, "done": 0, "buf": b"",
                          "sent": 0.0})
        in_flight = 0

        def send(c: dict[str, Any]) -> bool:
            nonlocal in_flight
            if (stop_at is not None and time.perf_counter() >= stop_at) or (
                    count is not None and c["done"] >= count):
                return False
            request = self.requests[c["next"] % len(self.requests)]
            c["next"] += 1
            c["buf"] = b""
            c["sent"] = time.perf_counter()
            c["sock"].sendall(request)  # fits the socket buffer of a local connection
            in_flight += 1
            return True

        for c in conns:
            if send(c):
                sel.register(c["sock"], selectors.EVENT_READ, c)
        deadline = 60.0
        while in_flight:
            events = sel.select(timeout=deadline)
            if not events:
                self.errors.append(f"no answer within {deadline:.0f} s")
                break
            for key, _ in events:
                c = key.data
                chunk = c["sock"].recv(1 << 16)
                if not chunk:
                    self.errors.append("the service closed the connection")
                    in_flight -= 1
                    sel.unregister(c["sock"])
                    c["sock"].close()
                    continue
                c["buf"] += chunk
                head_end = c["buf"].find(b"\r\n\r\n")
                if head_end < 0:
                    continue
                head = c["buf"][:head_end].decode("latin-1")
                length = next((int(line.split(":", 1)[1]) for line in head.split("\r\n")[1:]
                               if line.lower().startswith("content-length:")), 0)
                if len(c["buf"]) < head_end + 4 + length:
                    continue
                elapsed = time.perf_counter() - c["sent"]
                in_flight -= 1
                c["done"] += 1
                status = head[9:12]
                if status == "200":
                    self.latencies.append(elapsed)
                else:
                    self.errors.append(f"{status} {c['buf'][head_end + 4:][:200]!r}")
                if not send(c):
                    sel.unregister(c["sock"])
        for c in conns:
            c["sock"].close()
        sel.close()

    def run(self, concurrency: int, *, seconds: float | None = None,
            requests: int | None = None) -> dict[str, Any]:
        self.latencies, self.errors = [], []
        stop_at = time.perf_counter() + seconds if seconds else None
        before = scrape(self.port)
        cpu, server_cpu = time.process_time(), process_cpu(self.server_pid)
        start = time.perf_counter()
        self._drive(concurrency, stop_at, requests)
        wall = time.perf_counter() - start
        client_cpu = (time.process_time() - cpu) / wall
        server_ms = cpu_by_part(server_cpu, process_cpu(self.server_pid),
                                len(self.latencies) * self.per_request)
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
                "client_cpu": client_cpu,
                "server_cpu_ms_per_image": server_ms.get("total", float("nan")),
                "server_cpu_ms_per_image_by_part": server_ms,
                "first_error": self.errors[0] if self.errors else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32, help="batch of the batched-forward baseline")
    ap.add_argument("--concurrency", default="16,64",
                    help="concurrent clients, comma-separated (concurrency 1 always runs)")
    ap.add_argument("--no-compile", action="store_true",
                    help="leave compiled PyTorch out (here and in the service)")
    ap.add_argument("--body", choices=("raw", "multipart"), default="raw",
                    help="raw: the photo as the body (one per request); multipart: forms")
    ap.add_argument("--rounds", type=int, default=5,
                    help="baselines and load measured alternately this many times")
    ap.add_argument("--seconds", type=float, default=5.0, help="each concurrent load per round")
    ap.add_argument("--requests", type=int, default=30, help="sequential requests per round")
    ap.add_argument("--photos-per-request", type=int, default=1, metavar="N",
                    help="photos in each /predict request (more than 1: multipart)")
    ap.add_argument("--baseline-seconds", type=float, default=2.0,
                    help="each baseline per round")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true",
                    help="tiny run: 64 px, one short round, no compile")
    ap.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = ap.parse_args(argv)
    if args.quick:
        args.image_size, args.rounds, args.seconds, args.requests = 64, 1, 2.0, 10
        args.baseline_seconds, args.no_compile = 0.5, True
    levels = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    runtimes = [rt for rt in RUNTIMES if rt != "compiled" or not args.no_compile]
    per = args.photos_per_request
    body = "multipart" if per > 1 else args.body

    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hotdog-predict-bench-") as tmp:
        data_dir = Path(tmp)
        job_id, ckpt, photos, exports = make_model(data_dir, args.image_size)
        print("exports: " + json.dumps(exports), flush=True)
        bodies = ([raw(p) for p in photos] if body == "raw" else
                  [multipart([photos[(i + k) % len(photos)] for k in range(per)])
                   for i in range(len(photos))])
        # In-process first (the compile takes all cores), then the service (its compile
        # finds inductor's cache warm).
        predictors = make_predictors(ckpt, args.device, runtimes)
        server, port = start_server(data_dir, "auto", args.device, compile=not args.no_compile)
        try:
            wait_ready(server, port, data_dir / "api-auto.log")
            load = Load(port, bodies, per, server.pid)
            load.run(2, requests=4)  # loads the model: the service starts measuring runtimes
            serving = wait_tuned(port, job_id, server, data_dir / "api-auto.log")
            print(f"service chose {serving['runtime']} ({serving['images_per_second']} "
                  f"images/s measured): {json.dumps(serving['runtimes'])}", flush=True)
            load.run(4, requests=8)  # warm the chosen runtime's sessions and threads
            for i in range(args.rounds):
                base = {name: baselines(p, photos, args.batch, args.baseline_seconds)
                        for name, p in predictors.items()}
                r: dict[str, Any] = {"baseline": base, "load": {}}
                r["load"]["c1"] = load.run(1, requests=args.requests)
                for c in levels:
                    r["load"][f"c{c}"] = load.run(c, seconds=args.seconds)
                rounds.append(r)
                print(f"round {i + 1}: " + " | ".join(
                    f"{name} {b['batched_img_s']:.1f} img/s, bare {b['bare_p50_ms']:.1f} ms"
                    for name, b in base.items()) + " || /predict " + " | ".join(
                    f"{k} {v['img_s']:.1f} img/s p50 {v['p50_ms']:.1f} ms"
                    for k, v in r["load"].items()), flush=True)
            mismatches = compare_answers(port, photos, predictors.get(serving["runtime"]))
        finally:
            server.terminate()
            server.wait(timeout=30)

    summary = report(rounds, serving, args, len(photos), body)
    summary["answers_differing"] = mismatches
    errors = sum(v["errors"] for r in rounds for v in r["load"].values())
    print(f"errors: {errors}; answers differing from the runtime's in-process output: "
          f"{mismatches}")
    for r in rounds:
        for k, v in r["load"].items():
            if v["first_error"]:
                print(f"first error ({k}): {v['first_error']}")
    if args.json:
        print(json.dumps({"rounds": rounds, "summary": summary, "serving": serving,
                          "exports": exports, "errors": errors}))
    return 0 if errors == 0 and mismatches == 0 else 1


def wait_tuned(port: int, job_id: str, server: subprocess.Popen[bytes], log: Path,
               timeout: float = 1200) -> dict[str, Any]:
    """The service's ``serving`` record of the model once it has measured every runtime."""
    deadline = time.monotonic() + timeout
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/models")
        models = json.loads(conn.getresponse().read())
        conn.close()
        serving = next((m["serving"] for m in models if m["id"] == job_id), None)
        if serving and not serving["measuring"]:
            return dict(serving)
        if time.monotonic() > deadline or server.poll() is not None:
            raise SystemExit("the service did not finish measuring its runtimes:\n"
                             + log.read_text()[-2000:])
        time.sleep(1)


def compare_answers(port: int, photos: list[Path], predictor: Any) -> int:
    """Photos whose /predict answer differs from ``predictor``'s (the runtime the service
    chose, in this process): another label, or a probability off by more than 1e-3 (a
    batch's composition moves bf16's and ONNX Runtime's last digits)."""
    if predictor is None:
        return 0
    differing = 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for photo in photos:
        conn.request("POST", "/predict", body=photo.read_bytes(),
                     headers={"Content-Type": "image/jpeg"})
        served = json.loads(conn.getresponse().read())["predictions"][0]
        [own] = predictor.predict([photo.read_bytes()], names=[photo.name])
        off = max(abs(served["probabilities"][c] - p) for c, p in own.probabilities.items())
        if served["label"] != own.label or off > 1e-3:
            differing += 1
            print(f"{photo.name}: served {served['label']} {served['probabilities']}, "
                  f"in process {own.label} {own.probabilities}")
    conn.close()
    return differing


def report(rounds: list[dict[str, Any]], serving: dict[str, Any], args: argparse.Namespace,
           photos: int, body: str) -> dict[str, Any]:
    """Print the per-runtime table and the median ratios (with their range); return them."""
    base0 = rounds[0]["baseline"]

    def spread(values: list[float]) -> tuple[float, float, float]:
        return statistics.median(values), min(values), max(values)

    print(f"\nmodel: ResNet-18 at {args.image_size} px on {base0['torch']['device']}, "
          f"{photos} photos of 160-512 px, {args.photos_per_request} per request ({body}), "
          f"{len(rounds)} round(s); medians over rounds [min-max]")
    print(f"{'in process':>22} {'batched img/s':>22} {'bare p50 ms':>20} "
          f"{'batched CPU ms/img':>18}")
    for name, b in base0.items():
        label = f"{b['runtime']} {b['precision']}"
        bm = spread([r["baseline"][name]["batched_img_s"] for r in rounds])
        lm = spread([r["baseline"][name]["bare_p50_ms"] for r in rounds])
        cm = statistics.median(r["baseline"][name]["batched_cpu_ms_per_image"] for r in rounds)
        print(f"{label:>22} {bm[0]:>8.1f} [{bm[1]:.1f}-{bm[2]:.1f}] "
              f"{lm[0]:>8.1f} [{lm[1]:.1f}-{lm[2]:.1f}] {cm:>18.2f}")
    print(f"{'/predict (auto: ' + serving['runtime'] + ')':>22} {'requests':>8} {'img/s':>7} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'batch':>5} {'fwd busy':>8} "
          f"{'server CPU ms/img':>17} {'client CPU':>10}")
    for key in rounds[0]["load"]:
        rs = [r["load"][key] for r in rounds]
        print(f"{key:>22} {sum(x['requests'] for x in rs):>8} "
              f"{statistics.median(x['img_s'] for x in rs):>7.1f} "
              f"{statistics.median(x['p50_ms'] for x in rs):>7.1f} "
              f"{statistics.median(x['p99_ms'] for x in rs):>7.1f} "
              f"{sum(x['errors'] for x in rs):>6} "
              f"{statistics.median(x['mean_batch'] for x in rs):>5.1f} "
              f"{statistics.median(x['forward_busy'] for x in rs):>8.0%} "
              f"{statistics.median(x['server_cpu_ms_per_image'] for x in rs):>17.1f} "
              f"{statistics.median(x['client_cpu'] for x in rs):>10.0%}")
    parts = ("forward", "decode", "event loop", "other")
    print(f"{'service CPU ms/img by':>22} " + " ".join(f"{p:>10}" for p in parts))
    for key in rounds[0]["load"]:
        rs = [r["load"][key]["server_cpu_ms_per_image_by_part"] for r in rounds]
        print(f"{key:>22} " + " ".join(
            f"{statistics.median(x.get(p, 0.0) for x in rs):>10.2f}" for p in parts))

    best = serving["runtime"] if serving["runtime"] in base0 else "torch"
    summary: dict[str, Any] = {"best": best}

    def ratio(name: str, values: list[float], target: str) -> None:
        m, lo, hi = spread(values)
        summary[name] = m
        summary[name + "_range"] = [lo, hi]
        print(f"{name}: {m:.2f} [{lo:.2f}-{hi:.2f}] (target {target})")

    ratio("best_vs_eager_batched", [r["baseline"][best]["batched_img_s"]
                                    / r["baseline"]["torch"]["batched_img_s"] for r in rounds],
          ">= 1.25")
    for key in rounds[0]["load"]:
        if key != "c1":
            ratio(f"{key}_vs_best_batched", [r["load"][key]["img_s"]
                                             / r["baseline"][best]["batched_img_s"]
                                             for r in rounds], ">= 0.85" if key == "c16" else "-")
    ratio("c1_p50_vs_best_bare", [r["load"]["c1"]["p50_ms"] / r["baseline"][best]["bare_p50_ms"]
                                  for r in rounds], "<= 1.15")
    return summary


def start_server(data_dir: Path, runtime: str, device: str, *, compile: bool
                 ) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "DATA_DIR": str(data_dir), "PREDICT_DEVICE": device,
           "PREDICT_RUNTIME": runtime, "PREDICT_COMPILE": str(compile).lower(),
           "DATABASE_URL": "", "BROKER_URL": ""}
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
