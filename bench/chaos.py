"""Chaos: a real service under random faults, then the promises that must still hold.

    python bench/chaos.py [--seed 0] [--kills 20] [--jobs 4] [--stack embedded|postgres]

What it does
------------
1. Starts a real stack in a temporary folder: ``hotdog serve`` and two ``hotdog worker``
   processes, on the embedded default (SQLite + the file-system broker) or, with ``--stack
   postgres``, on PostgreSQL (a database of its own on DATABASE_URL's server, the default
   local one, or a throwaway one; see tests/servers.py) reached through a TCP proxy that the
   harness can cut, and a redis-server of its own that it can restart.
2. Uploads a tiny set and submits ``--jobs`` short jobs (scratch, 32 px, ``--epochs``).
3. Delivers ``--kills`` faults, one after another at random moments drawn from ``--seed``:
   SIGKILL of a training process, SIGKILL of a worker, SIGTERM of a worker (a deploy), a
   cancel of a random job, and on ``--stack postgres`` a restart of the broker and a cut of
   the database connection. Some kills strike just after a job writes its epoch
   checkpoint, the boundary where a lost epoch hides. Workers that died or stopped are
   started again a little later, as an operator (or systemd) would. A kill that would
   spend a job's last attempt is not delivered: every job must be able to succeed.
4. Starts every worker, waits up to ``--deadline`` seconds for every job to end, stops the
   stack, and checks the invariants:

   terminal           every job ended within the deadline
   succeeded          every job not cancelled succeeded
   cancel_wins        every cancel the API accepted ended the job cancelled
   epoch_rows         a succeeded job has one metric row for each epoch 1..epochs, and its
                      latest_metrics is the last epoch
   checkpoint         each final checkpoint loads, the evaluation it holds equals the job's
                      stored evaluation, and evaluating it again on the test set gives the same
   attempts           attempts <= MAX_ATTEMPTS, and no more than one plus the faults that may
                      spend one (a SIGTERM of a worker spends none)
   no_stray_processes no training process, torchrun rank or DataLoader process is left
                      (nothing at all with the run's DATA_DIR once the stack is stopped)
   no_temp_files      no temporary file is left in DATA_DIR (names starting with "." or
                      ending in .tmp/.part, anything in DATA_DIR/tmp)

It prints the result as one JSON line on stdout (the faults delivered by kind, the jobs'
final statuses, and each invariant with what broke it) and exits 1 when an invariant fails,
2 when the harness itself could not run. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.client import Client, ServiceError  # noqa: E402
from app.core.config import Settings  # noqa: E402
from tests.helpers import TINY, Stack, running_stack, write_color_dataset  # noqa: E402
from tests.servers import PrivateRedis, Proxy, postgres_database, postgres_server  # noqa: E402

TERMINAL = {"succeeded", "failed", "cancelled"}
WORKERS = ("w1", "w2")
MAX_ATTEMPTS = Settings.model_fields["max_attempts"].default
# Relative weights of the faults; a stack without a server to fault has none of those.
FAULTS = {"train_sigkill": 3, "worker_sigkill": 2, "worker_sigterm": 2, "cancel": 1,
          "broker_restart": 1, "db_cut": 1}
SERVER_FAULTS = {"broker_restart", "db_cut"}
# Which share of the kills waits for a job's next epoch checkpoint before striking; which
# share of the faults strikes whenever (a worker starting, nothing training) instead of at
# a random moment while some job trains.
AT_CHECKPOINT = 0.4
ANYTIME = 0.15


class PatientClient(Client):
    """The harness's client: it retries what the service asks it to retry, as a user would:
    a 503 (the API answers so while the database connection is cut, with Retry-After), for
    up to ``patience`` seconds. Any other answer is the service's, as it was."""

    patience = 60.0

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        deadline = time.monotonic() + self.patience
        while True:
            try:
                return super().request(method, path, **kwargs)
            except ServiceError as exc:
                if exc.status != 503 or time.monotonic() > deadline:
                    raise
            time.sleep(0.5)


def say(message: str) -> None:
    print(f"chaos {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------ processes

def _stat_ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")


def processes() -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def children(parent: int) -> list[int]:
    found = []
    for pid in processes():
        with contextlib.suppress(OSError, IndexError, ValueError):
            if _stat_ppid(pid) == parent:
                found.append(pid)
    return found


def job_of_training(pid: int) -> str | None:
    """The job a training process runs: its spec file lies in the job's folder."""
    with contextlib.suppress(OSError):
        for arg in _cmdline(pid):
            if "/.spec-" in arg and arg.endswith(".json"):
                return Path(arg).parent.name
    return None


def processes_of_run(data_dir: Path) -> list[str]:
    """Every process (other than this one) whose environment names the run's DATA_DIR:
    the service's processes and whatever they started (training, torchrun ranks,
    DataLoader workers), orphans included."""
    marker = f"DATA_DIR={data_dir}".encode()
    found = []
    for pid in processes():
        if pid == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.append(f"{pid}: {' '.join(_cmdline(pid))[:200]}")
    return found


def temp_files(data_dir: Path) -> list[str]:
    """Files written to be renamed or removed (a dot name, .tmp, .part) and anything left in
    DATA_DIR/tmp (the uploads' spool)."""
    spool = data_dir / "tmp"
    return sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*")
                  if p.name.startswith(".") or p.name.endswith((".tmp", ".part"))
                  or (p.is_file() and spool in p.parents))


# ------------------------------------------------------------------------ the run

@dataclass
class Training:
    pid: int
    job_id: str
    worker: str


@dataclass
class Chaos:
    """The faults of one run and what they may have cost each job."""

    stack: Stack
    client: Client
    rng: random.Random
    data_dir: Path
    job_ids: list[str]
    redis: PrivateRedis | None = None
    proxy: Proxy | None = None
    kills: Counter[str] = field(default_factory=Counter)
    at_checkpoint: int = 0
    skipped: int = 0
    spent: Counter[str] = field(default_factory=Counter)  # attempt-spending faults by job
    cancels: set[str] = field(default_factory=set)  # cancels the API accepted
    restart_at: dict[str, float] = field(default_factory=dict)
    anomalies: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ workers

    def start_worker(self, name: str) -> None:
        self.stack.start(name, "worker", "--name", f"{name}@%h")

    def live_workers(self) -> list[str]:
        return [n for n in WORKERS if n in self.stack.procs
                and self.stack.procs[n].poll() is None]

    def tend(self) -> None:
        """The operator: starts again each stopped worker once its time has come, and
        notices one that died by itself."""
        now = time.monotonic()
        for name in WORKERS:
            proc = self.stack.procs.get(name)
            if proc is not None and proc.poll() is not None and name not in self.restart_at:
                self.anomalies.append(f"worker {name} exited by itself ({proc.returncode})")
                self.stack.procs.pop(name)
                self.restart_at[name] = now
            if name in self.restart_at and self.restart_at[name] <= now:
                del self.restart_at[name]
                self.start_worker(name)

    def pause(self, seconds: float) -> None:
        """A random moment later, tending the workers meanwhile."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.tend()
            time.sleep(min(left, 0.1))

    def await_training(self, timeout: float) -> bool:
        """Until some job trains (a fault then hits work in progress), tending the workers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.trainings():
                return True
            if self.all_ended():
                return False
            self.pause(0.2)
        return False

    def trainings(self) -> list[Training]:
        found = []
        for name in self.live_workers():
            for pid in children(self.stack.procs[name].pid):
                job_id = job_of_training(pid)
                if job_id is not None:
                    found.append(Training(pid, job_id, name))
        return found

    def affordable(self, job_id: str) -> bool:
        """One more attempt-spending fault leaves the job an attempt to succeed with."""
        return self.spent[job_id] < MAX_ATTEMPTS - 1

    def wait_for_checkpoint(self, job_id: str, timeout: float = 10) -> bool:
        """Until the job writes its next epoch checkpoint (polled every half millisecond:
        the lost-epoch window is a few milliseconds wide)."""
        path = self.data_dir / "jobs" / job_id / "last.pt"

        def mtime() -> int:
            with contextlib.suppress(OSError):
                return path.stat().st_mtime_ns
            return 0

        before, deadline = mtime(), time.monotonic() + timeout
        while time.monotonic() < deadline:
            if mtime() != before:
                return True
            time.sleep(0.0005)
        return False

    def strike_moment(self, job_id: str | None) -> None:
        if (job_id is not None and self.rng.random() < AT_CHECKPOINT
                and self.wait_for_checkpoint(job_id)):
            self.at_checkpoint += 1

    # ------------------------------------------------------------------ the faults

    def train_sigkill(self) -> bool:
        targets = [t for t in self.trainings() if self.affordable(t.job_id)]
        if not targets:
            return False
        target = self.rng.choice(targets)
        self.strike_moment(target.job_id)
        try:
            os.kill(target.pid, signal.SIGKILL)
        except ProcessLookupError:  # it ended meanwhile
            return False
        self.spent[target.job_id] += 1
        say(f"SIGKILL training {target.pid} of job {target.job_id[:8]}")
        return True

    def _pick_worker(self, spends: bool) -> tuple[str, str | None] | None:
        """A live worker and the job it trains (None: idle); with ``spends``, only one whose
        job can afford the fault."""
        jobs = {t.worker: t.job_id for t in self.trainings()}
        names = [n for n in self.live_workers()
                 if not spends or jobs.get(n) is None or self.affordable(jobs[n])]
        if not names:
            return None
        name = self.rng.choice(names)
        return name, jobs.get(name)

    def worker_sigkill(self) -> bool:
        picked = self._pick_worker(spends=True)
        if picked is None:
            return False
        name, job_id = picked
        self.strike_moment(job_id)
        proc = self.stack.procs.pop(name)
        proc.kill()
        proc.wait()
        # Whatever it held when it died, the database says (it can no longer change it).
        holder = f"{socket.gethostname()}:{proc.pid}"
        held = [j["id"] for j in self.client.jobs(status="running") if j["worker"] == holder]
        for held_id in held:
            self.spent[held_id] += 1
        self.restart_at[name] = time.monotonic() + self.rng.uniform(0.2, 2.5)
        say(f"SIGKILL worker {name} (jobs {[h[:8] for h in held]})")
        return True

    def worker_sigterm(self) -> bool:
        picked = self._pick_worker(spends=False)
        if picked is None:
            return False
        name, job_id = picked
        self.strike_moment(job_id)
        try:
            self.stack.stop(name, signal.SIGTERM, timeout=60)
        except AssertionError:
            self.anomalies.append(f"worker {name} did not stop within 60 s of SIGTERM")
        self.restart_at[name] = time.monotonic() + self.rng.uniform(0.2, 2.5)
        say(f"SIGTERM worker {name} (job {job_id and job_id[:8]})")
        return True

    def cancel(self) -> bool:
        if len(self.cancels) >= max(1, len(self.job_ids) // 3):
            return False
        open_jobs = [j for j in self.job_ids if j not in self.cancels
                     and self.client.job(j)["status"] not in TERMINAL]
        if not open_jobs:
            return False
        job_id = self.rng.choice(open_jobs)
        try:
            self.client.cancel(job_id)
        except ServiceError as exc:  # it ended meanwhile: a cancel refused, not lost
            say(f"cancel of job {job_id[:8]} refused: {exc}")
            return False
        self.cancels.add(job_id)
        say(f"cancel job {job_id[:8]}")
        return True

    def broker_restart(self) -> bool:
        assert self.redis is not None
        self.redis.kill()
        self.pause(self.rng.uniform(0.5, 3))
        self.redis.start()
        say("restarted the broker")
        return True

    def db_cut(self) -> bool:
        assert self.proxy is not None
        running = [j["id"] for j in self.client.jobs(status="running")]
        if not all(self.affordable(job_id) for job_id in running):
            return False
        self.proxy.cut()
        self.pause(self.rng.uniform(0.5, 3))
        self.proxy.restore()
        # A cut longer than the lease's slack may cost the running jobs an attempt.
        for job_id in running:
            self.spent[job_id] += 1
        say(f"cut the database connection (running jobs {[j[:8] for j in running]})")
        return True

    def deliver(self, kinds: dict[str, int]) -> None:
        """One fault of a kind drawn by weight; another kind when it has no target."""
        names = list(kinds)
        order = self.rng.choices(names, weights=[kinds[n] for n in names], k=1)
        order += [n for n in ("worker_sigterm", "cancel") if n in kinds and n != order[0]]
        for kind in order:
            fault: Callable[[], bool] = getattr(self, kind)
            if fault():
                self.kills[kind] += 1
                return
        self.skipped += 1

    def all_ended(self) -> bool:
        return all(self.client.job(j)["status"] in TERMINAL for j in self.job_ids)


# ------------------------------------------------------------------------ the checks

def _same_evaluation(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The same predictions (confusion matrix) and the same loss, up to float noise."""
    return (a["classes"] == b["classes"] and a["confusion"] == b["confusion"]
            and abs(a["accuracy"] - b["accuracy"]) < 1e-9
            and abs(a["loss"] - b["loss"]) <= 1e-4 * max(1.0, abs(b["loss"])))


def check_checkpoint(client: Client, job: dict[str, Any], dataset: Path, tmp: Path
                     ) -> str | None:
    """What is wrong with a succeeded job's final checkpoint, or None."""
    from app.engine import Predictor, load_checkpoint

    stored = client.evaluation(job["id"])
    path = client.download_checkpoint(job["id"], tmp / f"{job['id']}.pt")
    try:
        held = load_checkpoint(path).get("evaluation")
        again, _ = Predictor(path, device="cpu", runtime="torch").evaluate_folder(dataset)
    except Exception as exc:
        return f"{job['id']}: checkpoint does not load ({exc})"
    finally:
        path.unlink(missing_ok=True)
    if held is None or not _same_evaluation(held, dict(stored)):
        return f"{job['id']}: the checkpoint's evaluation {held} != stored {stored}"
    if not _same_evaluation(again.to_dict(), dict(stored)):
        return f"{job['id']}: evaluating the checkpoint gives {again.to_dict()} != {stored}"
    return None


def check_jobs(chaos: Chaos, dataset: Path, tmp: Path) -> dict[str, list[str]]:
    """The invariants about the jobs: each name → what broke it (empty: it held)."""
    c = chaos.client
    broken: dict[str, list[str]] = {k: [] for k in (
        "terminal", "succeeded", "cancel_wins", "epoch_rows", "checkpoint", "attempts")}
    for job_id in chaos.job_ids:
        job: dict[str, Any] = dict(c.job(job_id))
        status, short = job["status"], f"{job_id} ({job['status']}, {job.get('error_kind')})"
        if status not in TERMINAL:
            broken["terminal"].append(short)
        if job_id in chaos.cancels and status != "cancelled":
            broken["cancel_wins"].append(f"{short}: cancel accepted, ended {status}")
        if job_id not in chaos.cancels and status != "succeeded":
            broken["succeeded"].append(f"{short}: {job.get('error')}")
        allowed = 1 + chaos.spent[job_id]
        if job["attempt"] > min(job["max_attempts"], allowed):
            broken["attempts"].append(
                f"{job_id}: attempt {job['attempt']}, max {job['max_attempts']}, "
                f"at most {allowed} allowed by the faults it took")
        if status != "succeeded":
            continue
        epochs, wanted = [m["epoch"] for m in c.metrics(job_id)], job["progress"]["epochs"]
        latest = (job["latest_metrics"] or {}).get("epoch")
        if epochs != list(range(1, wanted + 1)) or latest != wanted:
            broken["epoch_rows"].append(f"{job_id}: metric rows for epochs {epochs}, "
                                        f"latest_metrics {latest}, epochs {wanted}")
        if (problem := check_checkpoint(c, job, dataset, tmp)) is not None:
            broken["checkpoint"].append(problem)
    return broken


def check_processes(chaos: Chaos) -> list[str]:
    """Training processes left once every job ended (the workers still up): they get a few
    seconds to exit, as a finished run does after its last event."""
    def leftovers() -> list[str]:
        return [f"{t.pid} (job {t.job_id}, worker {t.worker})" for t in chaos.trainings()
                if chaos.client.job(t.job_id)["status"] in TERMINAL]

    deadline = time.monotonic() + 15
    while (left := leftovers()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [f"training process still running after its job ended: {p}" for p in left]


def check_nothing_left(data_dir: Path) -> list[str]:
    """Once the stack is stopped: nothing of the run still running (a killed worker's
    training dies with it, its DataLoader workers with the training)."""
    deadline = time.monotonic() + 15
    while (left := processes_of_run(data_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [f"left running: {p}" for p in left]


# ------------------------------------------------------------------------ stacks

@contextmanager
def stack_of(kind: str, tmp: Path, **env: str) -> Iterator[tuple[Stack, Proxy | None,
                                                                 PrivateRedis | None]]:
    """The service without workers: embedded, or Postgres (behind a proxy) + Redis."""
    if kind == "embedded":
        with running_stack(tmp, worker=False, **env) as stack:
            yield stack, None, None
        return
    from sqlalchemy.engine import make_url

    with ExitStack() as cleanup:
        server = cleanup.enter_context(postgres_server(os.environ.get("DATABASE_URL")))
        real = make_url(cleanup.enter_context(postgres_database(server)))
        proxy = Proxy((real.host or "127.0.0.1", real.port or 5432))
        cleanup.callback(proxy.cut)
        redis = PrivateRedis(tmp)
        redis.start()
        cleanup.callback(redis.kill)
        db_url = real.set(host="127.0.0.1", port=proxy.port).render_as_string(
            hide_password=False)
        stack = cleanup.enter_context(running_stack(tmp, db_url=db_url, broker=redis.url,
                                                    worker=False, **env))
        yield stack, proxy, redis


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    started = time.monotonic()
    rng = random.Random(args.seed)
    dataset = write_color_dataset(tmp / "colors", train=args.train_images, test=4,
                                  seed=args.seed)
    kinds = {k: w for k, w in FAULTS.items()
             if args.stack == "postgres" or k not in SERVER_FAULTS}
    # One thread per process: two trainings on a small machine, not four threads fighting
    # over two cores. A queued job whose message a broker restart lost is sent again after
    # 10 s, not 300, so that the run ends within its deadline.
    env = {"MAX_ATTEMPTS": str(MAX_ATTEMPTS), "OMP_NUM_THREADS": "1",
           "QUEUED_RESEND_SECONDS": "10"}
    with stack_of(args.stack, tmp, **env) as (stack, proxy, redis), \
            PatientClient(stack.url, timeout=60) as client:
        data_dir = Path(stack.env["DATA_DIR"]).resolve()
        ds = client.upload(dataset)["id"]
        # Queued before the workers start (and while they are killed): queue_anyway.
        job_ids = [client.submit(ds, **TINY, epochs=args.epochs, seed=i,
                                 queue_anyway=True)["id"]
                   for i in range(args.jobs)]
        chaos = Chaos(stack, client, rng, data_dir, job_ids, redis=redis, proxy=proxy)
        for name in WORKERS:
            chaos.start_worker(name)
        say(f"{args.jobs} jobs of {args.epochs} epochs on {args.stack}; {args.kills} faults")
        end = time.monotonic() + args.duration
        while (sum(chaos.kills.values()) < args.kills and not chaos.all_ended()
               and time.monotonic() < end):
            if rng.random() >= ANYTIME:
                chaos.await_training(timeout=max(0.0, end - time.monotonic()))
            chaos.pause(rng.uniform(0.3, 2.5))
            chaos.deliver(kinds)
        faults_seconds = time.monotonic() - started
        for name in list(chaos.restart_at):  # the operator starts every worker now
            chaos.restart_at[name] = 0
        deadline = time.monotonic() + args.deadline
        while not chaos.all_ended() and time.monotonic() < deadline:
            chaos.pause(0.5)
        say("checking")
        broken = check_jobs(chaos, dataset, tmp)
        broken["no_stray_processes"] = check_processes(chaos)
        statuses = Counter(client.job(j)["status"] for j in job_ids)
    broken["no_stray_processes"] += check_nothing_left(data_dir)
    broken["no_temp_files"] = temp_files(data_dir)
    return {
        "seed": args.seed, "stack": args.stack, "jobs": args.jobs, "epochs": args.epochs,
        "kills_requested": args.kills, "kills": dict(sorted(chaos.kills.items())),
        "at_checkpoint": chaos.at_checkpoint, "skipped": chaos.skipped,
        "cancelled": len(chaos.cancels), "statuses": dict(sorted(statuses.items())),
        "anomalies": chaos.anomalies,
        "seconds": {"faults": round(faults_seconds, 1),
                    "total": round(time.monotonic() - started, 1)},
        "invariants": {name: {"held": not failures, "failures": failures[:10]}
                       for name, failures in broken.items()},
        "held": not any(broken.values()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kills", type=int, default=20, help="faults to deliver")
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--epochs", type=int, default=8, help="epochs of each job")
    p.add_argument("--train-images", type=int, default=16, help="per class")
    p.add_argument("--stack", choices=("embedded", "postgres"), default="embedded")
    p.add_argument("--duration", type=float, default=300,
                   help="seconds at most of delivering faults")
    p.add_argument("--deadline", type=float, default=180,
                   help="seconds after the last fault for every job to end")
    p.add_argument("--keep", action="store_true", help="keep the run's folder (logs, data)")
    args = p.parse_args(argv)
    # SIGTERM (a timeout, a CI job cancelled) stops the stack and drops its database too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="hotdog-chaos-"))
    try:
        result = run(args, tmp)
    except Exception as exc:  # kept: its logs say why
        say(f"the harness failed: {exc!r}; the run's folder: {tmp}")
        return 2
    print(json.dumps(result), flush=True)
    if args.keep:
        say(f"the run's folder: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if result["held"] else 1


if __name__ == "__main__":
    sys.exit(main())
