"""Running the service: ``hotdog serve``, ``worker``, ``migrate``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys

from app.cli.exit_codes import EXIT_OK
from app.cli.options import AddCommand
from app.cli.output import emit_json
from app.core.config import get_settings, is_loopback
from app.core.keys import SCOPES, entry_line, new_key, ordered, parse_scopes

log = logging.getLogger("hotdog")


def warn_if_exposed(host: str) -> None:
    """Serving beyond this machine without a key lets anyone upload, train and delete."""
    settings = get_settings()
    if not is_loopback(host) and not (settings.api_key or settings.api_keys):
        log.warning("!" * 78)
        log.warning("serving on %s WITHOUT an API key: anyone who can reach this port can "
                    "upload data, start jobs and delete datasets. Set API_KEY.", host)
        log.warning("!" * 78)


def redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def cmd_migrate(args: argparse.Namespace) -> int:
    from app.db.session import downgrade, upgrade

    url = get_settings().db_url
    if args.downgrade:
        downgrade(url, args.downgrade)
    else:
        upgrade(url, args.revision)
    target = args.downgrade or args.revision
    if args.json:
        emit_json({"database": redacted(url), "revision": target})
    else:
        print(f"database {redacted(url)} migrated to {target}")
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    if args.json:  # the training processes it starts log JSON too
        os.environ["LOG_FORMAT"] = "json"
    if args.per_gpu:
        return _per_gpu_workers(args)
    import torch

    from app.jobs.broker import celery_app, ensure_broker_folders
    from app.jobs.queues import worker_queues

    settings = get_settings()
    ensure_broker_folders(settings)
    has_gpu = torch.cuda.is_available()
    queues = (args.queue.split(",") if args.queue
              else worker_queues(settings.training_queue, has_gpu=has_gpu))
    print(f"worker ({'GPU' if has_gpu else 'CPU only'}) on queues {', '.join(queues)}, broker "
          f"{redacted(settings.broker)}, database {redacted(settings.db_url)}", flush=True)
    # Thread pool: the task only watches its training process (a subprocess of its own), and
    # running it in this process lets a shutdown stop that training and hand the job back.
    celery_app.worker_main([
        "worker", "-Q", ",".join(queues), "-c", str(args.concurrency), "--pool", "threads",
        "-l", args.loglevel, *(["-n", args.name] if args.name else []),
    ])
    return EXIT_OK


def _per_gpu_workers(args: argparse.Namespace) -> int:
    """One worker process per GPU, each seeing only its own (CUDA_VISIBLE_DEVICES), so that
    a machine's GPUs train as many jobs at once. Signals are passed on to every worker; this
    returns when all have stopped."""
    if args.per_gpu == "all":
        import torch

        devices = [str(i) for i in range(torch.cuda.device_count())]
        if not devices:
            raise ValueError("--per-gpu all: this machine has no CUDA device")
    else:
        devices = [d.strip() for d in args.per_gpu.split(",") if d.strip()]
    passed = ["--concurrency", "1", "--loglevel", args.loglevel,
              *(["--queue", args.queue] if args.queue else []), *(["--json"] if args.json else [])]
    procs = [subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker", "--name", f"gpu{d}@%h", *passed],
        env={**os.environ, "CUDA_VISIBLE_DEVICES": d}) for d in devices]
    print(f"{len(procs)} workers, one per GPU ({', '.join(devices)})", flush=True)

    sent: set[int] = set()

    def forward(signum: int, _frame: object) -> None:
        sent.add(signum)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    # A worker that the passed-on signal ended (before it could handle it) stopped as asked.
    codes = [0 if -code in sent else code for code in (proc.wait() for proc in procs)]
    return max(codes, key=abs)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    from app.api.app import create_app, keep_temp_files_in

    logging.getLogger().setLevel(logging.INFO)
    # The app knows where it listens: the Host names it answers (ALLOWED_HOSTS) follow.
    settings = get_settings()
    settings = settings.model_copy(update={"host": args.host or settings.host})
    warn_if_exposed(settings.host)
    keep_temp_files_in(settings.data_dir)
    # JSON logs: uvicorn's loggers go through ours (log_config=None) instead of its own text.
    json_logs = args.json or settings.log_format == "json"
    uvicorn.run(create_app(settings), host=settings.host, port=args.port, log_level=args.log_level,
                proxy_headers=True, timeout_graceful_shutdown=10,
                log_config=None if json_logs else LOGGING_CONFIG)
    return EXIT_OK


def cmd_keys(args: argparse.Namespace) -> int:
    """``keys generate``: a new random key and its API_KEYS entry. Nothing is stored: the
    operator adds the entry to the service's settings and gives the key to its user."""
    scopes = parse_scopes(args.scopes, "--scopes")
    key = new_key()
    entry = entry_line(key, scopes)
    if args.json:
        emit_json({"key": key, "scopes": ordered(scopes), "api_keys_entry": entry})
        return EXIT_OK
    print(f"a new API key with the scopes {', '.join(ordered(scopes))} (give it to its user; "
          "it is stored nowhere):")
    print(f"  {key}")
    print("add this entry to API_KEYS (entries are separated by ';'), then restart the API:")
    print(f"  API_KEYS={entry}")
    print("e.g. in .env for docker compose; in a shell, quote the value: "
          f"API_KEYS='...;{entry}'")
    return EXIT_OK


def register(command: AddCommand) -> None:
    p = command("migrate", cmd_migrate, "create or upgrade the service's database schema "
                "(DATABASE_URL, default SQLite in DATA_DIR)",
                "examples:\n  hotdog migrate\n"
                "  DATABASE_URL=postgresql://u@db/hotdog hotdog migrate\n"
                "  hotdog migrate --downgrade base\n\n")
    p.add_argument("--revision", default="head", help="upgrade to this revision")
    p.add_argument("--downgrade", metavar="REVISION", default=None,
                   help="downgrade to this revision instead ('base' drops every table)")

    p = command("worker", cmd_worker, "run a Celery worker that trains queued jobs "
                "(BROKER_URL, DATABASE_URL, DATA_DIR)",
                "examples:\n  hotdog worker\n"
                "  hotdog worker --per-gpu all      # one worker per GPU of this machine\n"
                "  BROKER_URL=redis://localhost:6379/0 DATABASE_URL=postgresql://u@db/hotdog "
                "hotdog worker\n\n", json_logs=True)
    p.add_argument("--queue", default=None,
                   help="queues to consume, comma-separated (default: TRAINING_QUEUE and its "
                   ".gpu or .cpu queue, by whether this machine has a GPU)")
    p.add_argument("--per-gpu", metavar="all|IDS", default=None,
                   help="start one worker per GPU ('all', or ids like 0,1), each seeing only "
                   "its own GPU (CUDA_VISIBLE_DEVICES)")
    p.add_argument("--concurrency", type=int, default=1,
                   help="jobs trained at once; one per GPU is the rule")
    p.add_argument("--name", default=None, help="Celery node name, e.g. gpu0@%%h")
    p.add_argument("--loglevel", default="info")

    p = command("serve", cmd_serve, "run the HTTP API (DATABASE_URL, BROKER_URL, DATA_DIR; "
                "run `hotdog migrate` first)",
                "examples:\n  hotdog serve\n  hotdog serve --host 0.0.0.0 --port 8080\n"
                "  LOG_FORMAT=json hotdog serve   # one JSON object per log line\n\n",
                json_logs=True)
    p.add_argument("--host", default=None, help="address to listen on (default: HOST, "
                   "127.0.0.1); ALLOWED_HOSTS defaults from it")
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    p.add_argument("--log-level", default="info")

    p = command("keys", cmd_keys, "make an API key with scopes (predict, read, train, admin) "
                "for API_KEYS",
                "examples:\n  hotdog keys generate --scopes predict        # a phone app\n"
                "  hotdog keys generate --scopes read,train      # a data scientist\n"
                "  hotdog keys generate --scopes read,train,admin --json\n\n")
    p.add_argument("action", choices=["generate"], help="generate: print a new random key and "
                   "the API_KEYS entry to add")
    p.add_argument("--scopes", required=True, metavar="SCOPE[,SCOPE...]",
                   help=f"what the key may do: {', '.join(SCOPES)} (see the README's scopes "
                   "table)")
