"""Hostile load: small inputs that cost the server a lot, all at once, against a real
``hotdog serve``; the server's memory, disk and /health latency while it lasts.

    python bench/hostile_load.py [--clients 32 --images 64] [--max-rss-mib 8192]
    python bench/hostile_load.py --quick       # small sizes, ~30 s: what CI runs

What it does
------------
1. Writes the hostile inputs (bench/hostile_inputs.py; cached in a temp folder) and a tiny
   model (one epoch at 32 px on a few generated photos) recorded as a succeeded job in a
   fresh SQLite database under a temporary ``DATA_DIR``.
2. Starts ``hotdog serve`` there (the embedded default, default settings) and sends it one
   small /predict so that the model is loaded before anything is measured.
3. Attacks, every case at the same moment, each client sending ``--rounds`` requests:

   predict_16bit  ``--clients`` clients POST /predict with ``--images`` copies each of a
                  16-bit grayscale PNG of ``--side`` px square (8000: 135 KB, 128 MB of
                  pixels)
   predict_rgba   ``--rgba-clients`` clients, the same with a transparent RGBA PNG of
                  ``--rgba-side`` px square (4000: 16 MP in 62 KB)
   zip_directory  POST /datasets of a zip with ``--entries`` empty entries (400,000: 20 MB)
   class_count    POST /datasets of a valid dataset of ``--classes`` one-image classes
   disk_zeros     ``--disk-uploads`` concurrent POST /datasets, each a zip of
                  ``--disk-members`` members of exactly 8 MiB of zeros (8 KB deflated each)

   Meanwhile GET /health every 50 ms; the server's resident memory (/proc/PID/status) every
   20 ms; its bytes written and ``DATA_DIR``'s size as often as walking it allows.
4. Ends when every request is answered or at ``--deadline`` (unanswered: "timeout"), or
   when the server dies. With ``--max-rss-mib`` (default 8192; 0: none) the server is
   killed as soon as its resident memory passes that much, so that the run cannot take the
   machine with it: ``guard_tripped`` says it happened.

It prints one JSON line on stdout:
- ``statuses``: per case, each answer (an HTTP status, or "timeout", "conn_error",
  "server_gone") and how many times it came; ``slowest_ms``: per case, the slowest answer;
- ``peak_rss_mib`` (the server's during the attack), ``baseline_rss_mib`` (before it, the
  model loaded) and ``rss_growth_mib``;
- ``disk_peak_mib``: the most ``DATA_DIR`` grew, its unlinked files still open included
  (sampled: a short-lived file may be missed); ``disk_written_mib``: the bytes the server
  wrote (files, its log, its sockets);
- ``slowest_health_ms`` and ``health`` (answered, over 100 ms, failed); a /health left
  unanswered for 10 s is given up ("timeout") and counts as 10 s;
- ``server_alive``, ``server_exit``, ``guard_tripped``, ``held``, and the inputs' sizes.
``held`` is true when the server survived and answered every request with a 2xx, a 4xx, a
503 or a 507 (the answers the service is designed to give; any other 5xx is a bug).
Exit status: 0 when it held, 1 when not, 2 when the bench itself could not run. Progress
goes to stderr. ``--cases`` runs some cases only (e.g. one, to see its own cost).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import hostile_inputs as inputs  # noqa: E402
from served_model import record_model  # noqa: E402

MIB = 1 << 20
HEALTH_EVERY = 0.05
HEALTH_TIMEOUT = 10.0
RSS_EVERY = 0.02
CASES = ("predict_16bit", "predict_rgba", "zip_directory", "class_count", "disk_zeros")
QUICK = {"clients": 2, "images": 4, "side": 2000, "rgba_clients": 1, "rgba_side": 1000,
         "entries": 210_000, "classes": 1_100, "disk_uploads": 1, "disk_members": 2,
         "deadline": 120.0}


def say(message: str) -> None:
    print(f"hostile {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------ inputs


def build_inputs(args: argparse.Namespace, cache: Path) -> dict[str, Path]:
    """The hostile files, written into ``cache`` unless already there."""
    mb = args.disk_members
    return {
        "gray16": inputs.cached(cache, f"gray16-{args.side}.png",
                                partial(inputs.write_gray16_png, side=args.side)),
        "rgba": inputs.cached(cache, f"rgba-{args.rgba_side}.png",
                              partial(inputs.write_rgba_png, side=args.rgba_side)),
        "entries": inputs.cached(cache, f"entries-{args.entries}.zip",
                                 partial(inputs.write_entries_zip, entries=args.entries)),
        "classes": inputs.cached(cache, f"classes-{args.classes}.zip",
                                 partial(inputs.write_classes_zip, classes=args.classes)),
        "zeros": inputs.cached(cache, f"zeros-{mb}x8MiB.zip",
                               partial(inputs.write_zeros_zip, members=mb,
                                       member_bytes=8 * MIB)),
    }


def multipart(files: list[tuple[str, bytes, str]]) -> tuple[bytes, str]:
    """A multipart body with one ``file`` field per (name, bytes, content type)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, data, ctype in files:
        parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                     f"filename=\"{name}\"\r\nContent-Type: {ctype}\r\n\r\n".encode())
        parts += [data, b"\r\n"]
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@dataclass
class Case:
    name: str
    path: str  # the endpoint
    body: tuple[bytes, str]
    clients: int


def cases(args: argparse.Namespace, files: dict[str, Path]) -> list[Case]:
    gray, rgba = files["gray16"].read_bytes(), files["rgba"].read_bytes()

    def upload(key: str) -> tuple[bytes, str]:
        return multipart([(f"{key}.zip", files[key].read_bytes(), "application/zip")])

    return [
        Case("predict_16bit", "/predict", multipart(
            [(f"{i}.png", gray, "image/png") for i in range(args.images)]), args.clients),
        Case("predict_rgba", "/predict", multipart(
            [(f"{i}.png", rgba, "image/png") for i in range(args.images)]), args.rgba_clients),
        Case("zip_directory", "/datasets", upload("entries"), 1),
        Case("class_count", "/datasets", upload("classes"), 1),
        Case("disk_zeros", "/datasets", upload("zeros"), args.disk_uploads),
    ]


# ------------------------------------------------------------------------ the service


def make_model(data_dir: Path) -> None:
    """A tiny model (scratch, 1 epoch, 32 px) recorded as a succeeded job: /predict's
    default model."""
    import numpy as np
    from PIL import Image

    from app.engine import TrainConfig, fit

    photos = data_dir / "photos"
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        for cls, color in (("a", (200, 80, 40)), ("b", (40, 160, 70))):
            (photos / split / cls).mkdir(parents=True)
            for i in range(n):
                arr = np.clip(np.array(color) + rng.normal(0, 20, (40, 40, 3)), 0, 255)
                Image.fromarray(arr.astype(np.uint8)).save(photos / split / cls / f"{i}.jpg")
    cfg = TrainConfig(init="scratch", epochs=1, batch_size=8, image_size=32, device="cpu")
    ckpt = data_dir / "model.pt"
    result = fit(photos, cfg, ckpt)
    record_model(data_dir, ckpt, result, cfg.to_dict())


def start_server(data_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "DATA_DIR": str(data_dir), "DATABASE_URL": "", "BROKER_URL": ""}
    with log.open("wb") as out:  # the child keeps its own descriptor
        server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port",
                                   str(port), "--log-level", "warning"], env=env, cwd=ROOT,
                                  stdout=out, stderr=subprocess.STDOUT)
    return server, port


def request(port: int, method: str, path: str, body: bytes | None = None,
            ctype: str | None = None, timeout: float = 60) -> tuple[str, float]:
    """(status or "timeout"/"conn_error", seconds) of one request on a fresh connection."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=max(0.1, timeout))
    try:
        conn.request(method, path, body=body, headers={"Content-Type": ctype} if ctype else {})
        response = conn.getresponse()
        response.read()
        outcome = str(response.status)
    except TimeoutError:
        outcome = "timeout"
    except (OSError, http.client.HTTPException):
        outcome = "conn_error"
    finally:
        conn.close()
    return outcome, time.perf_counter() - start


def wait_ready(server: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 120
    while request(port, "GET", "/ready", timeout=2)[0] != "200":
        if time.monotonic() > deadline or server.poll() is not None:
            raise RuntimeError("the service did not start:\n" + log.read_text()[-3000:])
        time.sleep(0.2)


def warm_up(port: int) -> None:
    """One small /predict: the model is loaded before the baseline is taken."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 80, 40)).save(buf, "JPEG")
    body, ctype = multipart([("warm.jpg", buf.getvalue(), "image/jpeg")])
    status, _ = request(port, "POST", "/predict", body, ctype)
    if status != "200":
        raise RuntimeError(f"the warm-up /predict answered {status}")


# ------------------------------------------------------------------------ measuring


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes (neither for a process that died)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def proc_written(pid: int) -> int:
    """Bytes the process passed to write() and friends (files, pipes and sockets)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def disk_usage(root: Path) -> int:
    """Bytes allocated to the files under ``root`` (as du counts), whatever vanishes
    while it walks."""
    total = 0
    stack = [str(root)]
    while stack:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as entries:
            for e in entries:
                with contextlib.suppress(OSError):
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    else:
                        total += e.stat(follow_symlinks=False).st_blocks * 512
    return total


def unlinked_usage(pid: int, root: Path) -> int:
    """Bytes allocated to files under ``root`` that ``pid`` holds open after unlinking them
    (an upload's spool file is one: it never has a name for a walk to find)."""
    total = 0
    prefix = str(root.resolve()) + os.sep
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith(prefix) and target.endswith(" (deleted)"):
                    total += os.stat(f"/proc/{pid}/fd/{fd}").st_blocks * 512
    return total


def reset_peak_rss(pid: int) -> bool:
    """Reset the kernel's high-water mark (VmHWM) of ``pid``; False where not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@dataclass
class Watch:
    """The server's memory, disk and /health, sampled in threads until ``stop``."""

    server: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    max_rss: int  # bytes; 0: no guard
    stop: threading.Event = field(default_factory=threading.Event)
    peak_rss: int = 0
    peak_disk: int = 0
    written: int = 0  # the server's wchar at the latest sample
    guard_tripped: bool = False
    health: list[float] = field(default_factory=list)
    health_failures: Counter[str] = field(default_factory=Counter)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for target in (self.watch_rss, self.watch_disk, self.poll_health):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self.threads.append(t)

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()

    def alive(self) -> bool:
        return self.server.poll() is None

    def gone(self) -> bool:
        """Whether the server died (a connection just failed: a killed process may take a
        moment to be reaped)."""
        deadline = time.monotonic() + 1
        while self.alive() and not self.guard_tripped and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.guard_tripped or not self.alive()

    def watch_rss(self) -> None:
        while not self.stop.is_set() and self.alive():
            with contextlib.suppress(OSError):
                rss = proc_status(self.server.pid).get("VmRSS", 0)  # none once it died
                self.peak_rss = max(self.peak_rss, rss)
                self.written = max(self.written, proc_written(self.server.pid))
                if self.max_rss and rss > self.max_rss:
                    self.guard_tripped = True
                    self.server.send_signal(signal.SIGKILL)
                    say(f"the server passed {self.max_rss // MIB} MiB resident: killed it")
                    return
            time.sleep(RSS_EVERY)

    def watch_disk(self) -> None:
        # A walk of tens of thousands of files costs: walk at most a fifth of the time.
        while not self.stop.is_set() and self.alive():
            start = time.perf_counter()
            used = disk_usage(self.data_dir) + unlinked_usage(self.server.pid, self.data_dir)
            self.peak_disk = max(self.peak_disk, used)
            self.stop.wait(max(0.02, 4 * (time.perf_counter() - start)))

    def poll_health(self) -> None:
        while not self.stop.is_set() and self.alive():
            status, seconds = request(self.port, "GET", "/health", timeout=HEALTH_TIMEOUT)
            if status == "conn_error" and self.gone():
                return  # the guard or the kernel killed it: not a /health failure
            if status != "200":
                self.health_failures[status] += 1
            self.health.append(seconds)
            self.stop.wait(HEALTH_EVERY)


# ------------------------------------------------------------------------ the attack


@dataclass
class Tally:
    statuses: dict[str, Counter[str]] = field(default_factory=dict)
    slowest: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, case: str, status: str, seconds: float) -> None:
        with self.lock:
            self.statuses.setdefault(case, Counter())[status] += 1
            self.slowest[case] = max(self.slowest.get(case, 0.0), seconds)


def client(port: int, case: Case, rounds: int, deadline: float, tally: Tally,
           gone: Callable[[], bool]) -> None:
    body, ctype = case.body
    for _ in range(rounds):
        left = deadline - time.monotonic()
        if left <= 0:
            tally.add(case.name, "timeout", 0.0)
            continue
        status, seconds = request(port, "POST", case.path, body, ctype, timeout=left)
        if status == "conn_error" and gone():
            status = "server_gone"
        tally.add(case.name, status, seconds)


def attack(port: int, attack_cases: list[Case], rounds: int, deadline_s: float,
           watch: Watch) -> Tally:
    """Every client of every case at once; returns when all are answered or given up."""
    tally = Tally()
    deadline = time.monotonic() + deadline_s
    threads = [threading.Thread(target=client, daemon=True,
                                args=(port, case, rounds, deadline, tally, watch.gone))
               for case in attack_cases for _ in range(case.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 5)
    return tally


def held(statuses: dict[str, Counter[str]], alive: bool) -> bool:
    """The server survived and answered every request as designed: a 2xx, a 4xx, a 503
    (busy: retry) or a 507 (no room on disk). Any other 5xx is a bug."""
    return alive and all(answer_as_designed(s) for c in statuses.values() for s in c)


def answer_as_designed(status: str) -> bool:
    return status.isdigit() and (status[0] in "24" or status in ("503", "507"))


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    started = time.monotonic()
    files = build_inputs(args, Path(args.cache))
    attack_cases = [c for c in cases(args, files) if c.name in args.cases]
    data_dir = tmp / "data"
    data_dir.mkdir()
    make_model(data_dir)
    log = tmp / "api.log"
    server, port = start_server(data_dir, log)
    try:
        wait_ready(server, port, log)
        warm_up(port)
        pid = server.pid
        baseline_rss, baseline_disk = proc_status(pid)["VmRSS"], disk_usage(data_dir)
        baseline_written, hwm_reset = proc_written(pid), reset_peak_rss(pid)
        watch = Watch(server, port, data_dir, args.max_rss_mib * MIB)
        watch.start()
        setup_s = time.monotonic() - started
        say(f"attacking: {', '.join(f'{c.name} x{c.clients}' for c in attack_cases)}")
        tally = attack(port, attack_cases, args.rounds, args.deadline, watch)
        attack_s = time.monotonic() - started - setup_s
        # The kernel's own figures: nothing since the last sample is missed. (A process
        # that just died has neither: its last samples stand.)
        peak_rss, written = watch.peak_rss, watch.written
        with contextlib.suppress(OSError):
            if hwm_reset:
                peak_rss = max(peak_rss, proc_status(pid).get("VmHWM", 0))
            written = max(written, proc_written(pid))
        alive = watch.alive()
        watch.finish()
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    health = watch.health
    statuses = {c.name: dict(sorted(tally.statuses.get(c.name, Counter()).items()))
                for c in attack_cases}
    return {
        "quick": args.quick,
        "statuses": statuses,
        "slowest_ms": {name: round(1000 * s) for name, s in tally.slowest.items()},
        "peak_rss_mib": round(peak_rss / MIB),
        "baseline_rss_mib": round(baseline_rss / MIB),
        "rss_growth_mib": round((peak_rss - baseline_rss) / MIB),
        "disk_peak_mib": round(max(0, watch.peak_disk - baseline_disk) / MIB, 1),
        # To the KiB: a quick run whose uploads are all refused before their bodies are
        # read writes only its answers, which a tenth of a MiB rounded to nothing.
        "disk_written_mib": round(max(0, written - baseline_written) / MIB, 3),
        "slowest_health_ms": round(1000 * max(health), 1) if health else None,
        "health": {"answered": len(health) - sum(watch.health_failures.values()),
                   "over_100ms": sum(1 for h in health if h > 0.1),
                   "failed": dict(watch.health_failures)},
        "server_alive": alive,
        "server_exit": None if alive else server.returncode,
        "guard_tripped": watch.guard_tripped,
        "max_rss_mib": args.max_rss_mib,
        "held": held(tally.statuses, alive),
        "inputs": {c.name: {"clients": c.clients, "request_kib": round(len(c.body[0]) / 1024)}
                   for c in attack_cases} | {
            "sizes": {"side": args.side, "images": args.images, "rgba_side": args.rgba_side,
                      "entries": args.entries, "classes": args.classes,
                      "disk_members": args.disk_members, "rounds": args.rounds}},
        "seconds": {"setup": round(setup_s, 1), "attack": round(attack_s, 1)},
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=32, help="/predict clients, 16-bit PNGs")
    p.add_argument("--images", type=int, default=64, help="images in each /predict request")
    p.add_argument("--side", type=int, default=8000, help="side of the 16-bit PNG")
    p.add_argument("--rgba-clients", type=int, default=4, help="/predict clients, RGBA PNGs")
    p.add_argument("--rgba-side", type=int, default=4000, help="side of the RGBA PNG")
    p.add_argument("--entries", type=int, default=400_000, help="entries of the zip_directory")
    p.add_argument("--classes", type=int, default=15_000, help="classes of the class_count zip")
    p.add_argument("--disk-uploads", type=int, default=4, help="concurrent disk_zeros uploads")
    p.add_argument("--disk-members", type=int, default=16, help="8 MiB members in each")
    p.add_argument("--cases", type=lambda v: v.split(","), default=list(CASES),
                   help=f"which cases, comma-separated (default: all of {','.join(CASES)})")
    p.add_argument("--rounds", type=int, default=1, help="requests each client sends")
    p.add_argument("--deadline", type=float, default=600,
                   help="seconds the attack may last; requests unanswered by then: timeout")
    p.add_argument("--max-rss-mib", type=int, default=8192,
                   help="kill the server when its resident memory passes this (0: never)")
    p.add_argument("--cache", default=str(inputs.default_cache()), help="the inputs' folder")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run for CI")
    args = p.parse_args(argv)
    if unknown := set(args.cases) - set(CASES):
        p.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    if args.quick:  # smaller defaults; sizes given on the command line still count
        for key, value in QUICK.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stops the server too
    with tempfile.TemporaryDirectory(prefix="hotdog-hostile-") as tmp:
        try:
            result = run(args, Path(tmp))
        except Exception:
            say(f"the bench failed:\n{traceback.format_exc()}")
            if (log := Path(tmp) / "api.log").exists():
                say(f"the server's log ends:\n{log.read_text(errors='replace')[-3000:]}")
            return 2
    print(json.dumps(result), flush=True)
    return 0 if result["held"] else 1


if __name__ == "__main__":
    sys.exit(main())
