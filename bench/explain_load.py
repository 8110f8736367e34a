"""Do explanations slow plain predictions? /predict under plain load, alone and next to a
burst of ``explain=true`` requests (issue 18: by no more than 10 %).

What it does
------------
1. Makes a model to serve (ResNet-18, one epoch at ``--image-size`` on a few generated
   photos; the weights do not matter for speed), recorded as a succeeded job in a fresh
   embedded ``DATA_DIR`` with its verified exports, and starts one ``hotdog serve`` on it
   (default settings: ``PREDICT_RUNTIME=auto``, ``EXPLAIN_WORKERS=1``,
   ``EXPLAIN_THREADS=1``, ``EXPLAIN_QUEUE_IMAGES=8``; but ``PREDICT_COMPILE=false``: a
   background compile would take the cores for a minute of the rounds).
2. ``--rounds`` rounds, each: ``--concurrency`` clients send plain one-photo ``/predict``
   requests for ``--seconds`` (**alone**); then the same again while ``--burst`` more
   clients send ``explain=true`` requests back to back (**with a burst**; beyond the
   explanations' bound they get 503, as they should). The machine's speed drifts, so each
   round's two phases are compared with each other, and the median of the rounds' ratios
   is the result.

How to read it: ``plain img/s with burst / alone`` (target >= 0.9); the explanations'
own rate and their 503s show the burst was real. Errors of plain requests must be zero.

Usage::

    .venv/bin/python bench/explain_load.py            # about 2 min on 2 cores
    .venv/bin/python bench/explain_load.py --quick    # seconds: a smoke test
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from predict_load import Load, make_model, multipart, start_server, wait_ready, wait_tuned


class Burst:
    """Clients that send ``explain=true`` requests back to back until stopped."""

    def __init__(self, port: int, bodies: list[tuple[bytes, str]], clients: int) -> None:
        self.port, self.bodies, self.clients = port, bodies, clients
        self.stop = threading.Event()
        self.done = self.refused = 0
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client, args=(k,)) for k in range(clients)]

    def client(self, k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        i = k
        while not self.stop.is_set():
            body, ctype = self.bodies[i % len(self.bodies)]
            i += 1
            conn.request("POST", "/predict?explain=true", body=body,
                         headers={"Content-Type": ctype})
            r = conn.getresponse()
            payload = r.read()
            with self.lock:
                if r.status == 200:
                    self.done += 1
                elif r.status == 503:
                    self.refused += 1
                    time.sleep(0.05)  # a client honouring Retry-After would wait longer
                else:
                    self.errors.append(f"{r.status} {payload[:200]!r}")
        conn.close()

    def __enter__(self) -> Burst:
        self.started = time.perf_counter()
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()
        self.seconds = time.perf_counter() - self.started


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--concurrency", type=int, default=4, help="plain clients")
    ap.add_argument("--burst", type=int, default=4, help="explain=true clients")
    ap.add_argument("--seconds", type=float, default=10.0, help="per phase")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="PREDICT_DEVICE of the service")
    ap.add_argument("--quick", action="store_true", help="64 px, 1 round of 2 s")
    args = ap.parse_args(argv)
    if args.quick:
        args.image_size, args.seconds, args.rounds = 64, 2.0, 1
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        job_id, _, photos, _ = make_model(data_dir, args.image_size)
        bodies = [multipart([p]) for p in photos]
        # Not compiled: a background compile would take the cores for a minute of the rounds.
        server, port = start_server(data_dir, "auto", args.device, compile=False)
        try:
            wait_ready(server, port, data_dir / "api-auto.log")
            Load(port, bodies).run(2, requests=4)  # warm-up: the model is loaded
            # and its runtimes measured, the fastest chosen (off the request path, but on
            # the same cores)
            serving = wait_tuned(port, job_id, server, data_dir / "api-auto.log")
            print(f"serving on {serving['runtime']} ({serving['images_per_second']:.0f} img/s "
                  "batched, measured by the service)", flush=True)
            with Burst(port, bodies, 1):  # and the explainer
                time.sleep(min(args.seconds, 3))
            rounds = []
            for r in range(args.rounds):
                alone = Load(port, bodies).run(args.concurrency, seconds=args.seconds)
                with Burst(port, bodies, args.burst) as burst:
                    loaded = Load(port, bodies).run(args.concurrency, seconds=args.seconds)
                row: dict[str, Any] = {
                    "alone_img_s": alone["img_s"], "burst_img_s": loaded["img_s"],
                    "ratio": loaded["img_s"] / alone["img_s"],
                    "alone_p50_ms": alone["p50_ms"], "burst_p50_ms": loaded["p50_ms"],
                    "explained_s": burst.done / burst.seconds, "explain_503": burst.refused,
                    "errors": alone["errors"] + loaded["errors"] + len(burst.errors)}
                rounds.append(row)
                print(f"round {r + 1}: plain {row['alone_img_s']:.1f} img/s alone, "
                      f"{row['burst_img_s']:.1f} with the burst (ratio {row['ratio']:.3f}); "
                      f"p50 {row['alone_p50_ms']:.0f} / {row['burst_p50_ms']:.0f} ms; "
                      f"explanations {row['explained_s']:.2f}/s, {row['explain_503']} x 503; "
                      f"errors {row['errors']}", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
    ratio = statistics.median(r["ratio"] for r in rounds)
    print(f"median plain img/s with a burst of explanations / alone = {ratio:.3f} "
          f"(target >= 0.9); {args.concurrency} plain clients, {args.burst} explain clients, "
          f"{args.image_size} px")
    return 0 if all(r["errors"] == 0 for r in rounds) else 1


if __name__ == "__main__":
    sys.exit(main())
