"""The ``hotdog`` command line: train, evaluate and predict with the engine; make demo data.

Every command takes ``--json`` to print one JSON object as its last line for scripts.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Exit codes (documented in --help).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2  # bad arguments or parameter values
EXIT_INPUT = 3  # unusable dataset, image or checkpoint
EXIT_WEIGHTS = 4  # ImageNet weights not available
EXIT_UNAVAILABLE = 5  # the service (or a download host) cannot be reached, or is busy
EXIT_INTERRUPTED = 130
# A service's answer, by HTTP status: bad parameters or API key, unknown or unusable input,
# try again later. A 422 is about the parameters, except for commands that set
# ``unusable_422`` (an upload's dataset, a photo to classify): then it is about the input.
SERVICE_EXIT = {422: EXIT_USAGE, 401: EXIT_USAGE, 404: EXIT_INPUT, 413: EXIT_INPUT,
                429: EXIT_UNAVAILABLE, 503: EXIT_UNAVAILABLE}

EXIT_CODES_HELP = """exit codes:
  0  success
  1  the operation failed (watch, submit --watch: the job failed or was cancelled)
  2  bad arguments or parameter values, or a missing or wrong API key
  3  unusable input (dataset, image file, checkpoint) or an unknown id
  4  ImageNet weights are not available (here, or to the service's worker)
  5  the service cannot be reached or is busy (503, 429): try again later
  130  interrupted (Ctrl-C)
"""

log = logging.getLogger("hotdog")


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def _emit_json(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, default=_json_default), flush=True)


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _progress_bar(enabled: bool, **kwargs: Any) -> Any:
    from tqdm import tqdm

    return tqdm(disable=not enabled, file=sys.stderr, dynamic_ncols=True, **kwargs)


# ---------------------------------------------------------------------------- train


def _train_epilog() -> str:
    return """examples:
  hotdog demo-data data/demo
  hotdog train data/demo --out model.pt                      # fine-tune from ImageNet
  hotdog train data/demo --out scratch.pt --init scratch     # lr 0.064, head x1
  hotdog train data/demo --out small.pt --image-size 64 --epochs 3
  hotdog train data/demo --out model.pt --epochs 10 --resume-from model.last.pt

lr and head multiplier default by --init: 0.0064 and x10 for pretrained starts (d2l's
5e-5 on a summed loss of batch 128), 0.064 and x1 from scratch.
While training, model.last.pt (next to --out) holds the last finished epoch; it is removed
when the run succeeds.
"""


def cmd_train(args: argparse.Namespace) -> int:
    from app.engine import Callback, EpochMetrics, StartInfo, TrainConfig, fit
    from app.engine.callback import BatchProgress

    config = TrainConfig(
        init=args.init,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        head_lr_mult=args.head_lr_mult,
        weight_decay=args.weight_decay,
        momentum=args.momentum,
        image_size=args.image_size,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        workers=args.workers,
    )
    out = Path(args.out)
    last = out.with_name(out.stem + ".last.pt")
    show = not args.json

    class Reporter(Callback):
        bar: Any = None

        def on_start(self, info: StartInfo) -> None:
            cfg = info.config
            if show:
                print(
                    f"training on {info.train_count} images, testing on {info.test_count}, "
                    f"classes {', '.join(info.classes)}; {info.device} {info.precision}; "
                    f"init {cfg.init}, "
                    f"lr {cfg.lr:g} (head x{cfg.head_lr_mult:g}), batch {cfg.batch_size}, "
                    f"image size {cfg.image_size}",
                    flush=True,
                )
                print(f"{'epoch':>5} {'train loss':>10} {'train acc':>9} {'test loss':>9} "
                      f"{'test acc':>8} {'img/s':>7} {'sec':>6}", flush=True)
            total = info.batches_per_epoch * (info.epochs - info.start_epoch)
            self.bar = _progress_bar(sys.stderr.isatty(), total=total, unit="batch",
                                     leave=False)

        def on_batch(self, progress: BatchProgress) -> None:
            self.bar.set_description(f"epoch {progress.epoch}/{progress.epochs}")
            self.bar.update(1)

        def on_epoch(self, m: EpochMetrics) -> None:
            if show:
                self.bar.write(
                    f"{m.epoch:>5} {m.train_loss:>10.4f} {m.train_acc:>9.3f} {m.test_loss:>9.4f} "
                    f"{m.test_acc:>8.3f} {m.images_per_s:>7.1f} {m.seconds:>6.1f}"
                )

    reporter = Reporter()
    try:
        result = fit(
            args.data_dir, config, out, callback=reporter,
            resume_from=args.resume_from, epoch_checkpoint=last,
        )
    finally:
        if reporter.bar is not None:
            reporter.bar.close()
    last.unlink(missing_ok=True)
    ev = result.evaluation
    assert ev is not None
    if args.json:
        _emit_json({
            "checkpoint": str(result.checkpoint),
            "classes": result.classes,
            "epochs": [m.to_dict() for m in result.history],
            "test_acc": result.test_acc,
            "evaluation": ev.to_dict(),
            "params": result.config.to_dict(),
        })
    else:
        print(f"test accuracy {ev.accuracy:.3f} (macro F1 {ev.macro_f1:.3f}); "
              f"checkpoint written to {result.checkpoint}")
    return EXIT_OK


# ------------------------------------------------------------------------- evaluate


def _print_evaluation(ev: Any) -> None:
    width = max(8, *(len(c) for c in ev.classes))
    print(f"accuracy {ev.accuracy:.4f} on {ev.count} images, loss {ev.loss:.4f}")
    print("confusion matrix (rows: true class, columns: predicted)")
    print(" " * width + " " + " ".join(f"{c[:width]:>{width}}" for c in ev.classes))
    for label, row in zip(ev.classes, ev.confusion, strict=True):
        print(f"{label:>{width}} " + " ".join(f"{n:>{width}}" for n in row))
    print(f"{'class':>{width}} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>7}")
    for r in ev.per_class:
        print(f"{r.label:>{width}} {r.precision:>9.3f} {r.recall:>7.3f} {r.f1:>6.3f} "
              f"{r.support:>7}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from app.engine import Predictor

    predictor = Predictor(args.checkpoint, device=args.device, precision=args.precision,
                          runtime=args.runtime)
    ev, preds = predictor.evaluate_folder(args.data_dir, split=args.split)
    if args.json:
        obj: dict[str, Any] = {"test_acc": ev.accuracy, "split": args.split, **ev.to_dict()}
        if args.per_image:
            obj["predictions"] = [p.to_dict() for p in preds]
        _emit_json(obj)
    else:
        _print_evaluation(ev)
        if args.per_image:
            for p in preds:
                print(f"{p.filename}\t{p.label}\t{p.probabilities[p.label]:.4f}")
    return EXIT_OK


# -------------------------------------------------------------------------- predict


def cmd_predict(args: argparse.Namespace) -> int:
    from app.engine import Predictor

    predictor = Predictor(args.checkpoint, device=args.device, precision=args.precision,
                          runtime=args.runtime)
    preds = predictor.predict([Path(p) for p in args.images], names=list(args.images))
    if args.json:
        _emit_json({"model": str(args.checkpoint), "predictions": [p.to_dict() for p in preds]})
    else:
        for p in preds:
            probs = "  ".join(f"{c} {v:.3f}" for c, v in p.probabilities.items())
            print(f"{p.filename}: {p.label}  ({probs})")
    return EXIT_OK


# --------------------------------------------------------------------------- export


def cmd_export(args: argparse.Namespace) -> int:
    from app.engine.checkpoint import load_checkpoint
    from app.engine.export import SUFFIXES, dataset_images, export_verified, random_images
    from app.engine.presets import Preprocessing

    ckpt_path = Path(args.checkpoint)
    pre = Preprocessing.from_dict(load_checkpoint(ckpt_path)["preprocessing"])
    out = Path(args.out) if args.out else ckpt_path.with_name(
        ckpt_path.stem + SUFFIXES[args.format])
    if args.data:
        images, on = dataset_images(ckpt_path, args.data, limit=args.verify_images), args.data
    else:
        images, on = random_images(pre, args.verify_images), "random pixels"
    record = export_verified(ckpt_path, images, out, fmt=args.format)
    if record.error:
        raise ValueError(f"{args.format} export failed: {record.error}")
    if args.json:
        _emit_json({"format": args.format, "out": str(out), "bytes": out.stat().st_size,
                    "verified_on": on, **record.to_dict()})
    else:
        print(f"wrote {out} ({args.format}, {out.stat().st_size / 1e6:.1f} MB): probabilities "
              f"equal PyTorch's within {record.max_abs_diff:.1e} on {record.images} images "
              f"({on})")
        print(f"input: uint8 RGB, N x {pre.image_size} x {pre.image_size} x 3, the shorter "
              f"side resized to {pre.resize_size} then centre-cropped; outputs: logits, "
              "probabilities")
    return EXIT_OK


# ------------------------------------------------------------------------ demo data


def cmd_demo_data(args: argparse.Namespace) -> int:
    from app.demo_data import generate_demo_dataset, zip_dataset

    out = Path(args.out)
    total = 2 * (args.train_per_class + args.test_per_class)
    with _progress_bar(sys.stderr.isatty(), total=total, unit="img",
                       desc="generating") as bar:
        def progress(done: int, _total: int) -> None:
            bar.update(done - bar.n)

        summary = generate_demo_dataset(
            out, train_per_class=args.train_per_class, test_per_class=args.test_per_class,
            seed=args.seed, progress=progress,
        )
    if args.zip:
        summary["zip"] = str(zip_dataset(out, out.with_suffix(".zip")))
    if args.json:
        _emit_json(summary)
    else:
        counts = summary["counts"]
        print(f"wrote {out}: train {counts['train']}, test {counts['test']}")
        if args.zip:
            print(f"zipped to {summary['zip']}")
    return EXIT_OK


def cmd_fetch_d2l(args: argparse.Namespace) -> int:
    from app.demo_data import fetch_d2l

    path = fetch_d2l(args.out)
    if args.json:
        _emit_json({"path": str(path)})
    else:
        print(f"d2l hotdog dataset extracted to {path}")
    return EXIT_OK


# -------------------------------------------------------------------------- migrate


def cmd_migrate(args: argparse.Namespace) -> int:
    from app.core.config import get_settings
    from app.db.session import downgrade, upgrade

    url = get_settings().db_url
    if args.downgrade:
        downgrade(url, args.downgrade)
    else:
        upgrade(url, args.revision)
    target = args.downgrade or args.revision
    if args.json:
        _emit_json({"database": _redacted(url), "revision": target})
    else:
        print(f"database {_redacted(url)} migrated to {target}")
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    from app.core.config import get_settings
    from worker.celery_app import celery_app, ensure_broker_folders

    if args.json:  # the training processes it starts log JSON too
        os.environ["LOG_FORMAT"] = "json"
    if args.per_gpu:
        return _per_gpu_workers(args)
    import torch

    from app.jobs.queues import worker_queues

    settings = get_settings()
    ensure_broker_folders(settings)
    has_gpu = torch.cuda.is_available()
    queues = (args.queue.split(",") if args.queue
              else worker_queues(settings.training_queue, has_gpu=has_gpu))
    print(f"worker ({'GPU' if has_gpu else 'CPU only'}) on queues {', '.join(queues)}, broker "
          f"{_redacted(settings.broker)}, database {_redacted(settings.db_url)}", flush=True)
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
    import signal
    import subprocess

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


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# ---------------------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.api.app import create_app, keep_temp_files_in
    from app.core.config import get_settings

    logging.getLogger().setLevel(logging.INFO)
    warn_if_exposed(args.host)
    settings = get_settings()
    keep_temp_files_in(settings.data_dir)
    # JSON logs: uvicorn's loggers go through ours (log_config=None) instead of its own text.
    json_logs = args.json or settings.log_format == "json"
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level=args.log_level,
                proxy_headers=True, timeout_graceful_shutdown=10,
                **({"log_config": None} if json_logs else {}))
    return EXIT_OK


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def warn_if_exposed(host: str) -> None:
    """Serving beyond this machine without API_KEY lets anyone upload, train and delete."""
    from app.core.config import get_settings

    if host not in LOOPBACK and not get_settings().api_key:
        log.warning("!" * 78)
        log.warning("serving on %s WITHOUT an API key: anyone who can reach this port can "
                    "upload data, start jobs and delete datasets. Set API_KEY.", host)
        log.warning("!" * 78)


def _with_emit(func: Callable[..., int]) -> Callable[[argparse.Namespace], int]:
    return lambda args: func(args, _emit_json)


# --------------------------------------------------------------------------- parser


def _runtime_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                   help="torch: eager PyTorch; onnx: ONNX Runtime on the .onnx file beside "
                   "CKPT (exported in memory when there is none)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="torch runtime: auto is bf16 autocast where the hardware runs it "
                   "natively, else fp32 (onnx always computes in fp32)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hotdog",
        description="Fine-tune a pretrained ResNet-18 on your labelled photos and classify "
        "new ones.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], help: str,
                epilog: str = "", *, json_logs: bool = False) -> argparse.ArgumentParser:
        """``json_logs``: a long-running command prints logs, not a result; its --json
        means JSON log lines."""
        p = sub.add_parser(name, help=help, description=help, epilog=epilog + EXIT_CODES_HELP,
                           formatter_class=_Formatter)
        p.add_argument("--json", action="store_true",
                       help="log one JSON object per line (as LOG_FORMAT=json does)"
                       if json_logs else "print one JSON object as the last line of output; "
                       "progress and messages go to stderr")
        p.set_defaults(func=func, json_logs=json_logs)
        return p

    p = command("train", cmd_train, "fine-tune ResNet-18 on an ImageFolder dataset",
                _train_epilog())
    p.add_argument("data_dir", metavar="DATA_DIR",
                   help="folder with train/<class>/ and test/<class>/")
    p.add_argument("--out", required=True, metavar="CKPT", help="checkpoint file to write")
    p.add_argument("--init", default="imagenet",
                   help="'imagenet', 'scratch' or the path of an earlier checkpoint")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=None,
                   help="backbone learning rate (default by init: 0.0064, scratch 0.064)")
    p.add_argument("--head-lr-mult", type=float, default=None,
                   help="head lr = lr x this (default by init: 10, scratch 1)")
    p.add_argument("--weight-decay", type=float, default=1e-3)
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None,
                   help="data loader processes (default: 0 on small CPUs, more on CUDA)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto: bf16 autocast where the hardware runs it natively, else fp32")
    p.add_argument("--resume-from", metavar="CKPT", default=None,
                   help="continue a run from its .last.pt (or any checkpoint) up to --epochs")

    p = command("evaluate", cmd_evaluate, "accuracy, confusion matrix and per-class "
                "precision/recall/F1 of a checkpoint on a dataset",
                "examples:\n  hotdog evaluate model.pt data/demo\n"
                "  hotdog evaluate model.pt data/demo --json --per-image\n\n")
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("data_dir", metavar="DATA_DIR")
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--per-image", action="store_true", help="also list every image's prediction")
    p.add_argument("--device", default="auto")
    _runtime_arguments(p)

    p = command("predict", cmd_predict, "classify photos with a checkpoint",
                "examples:\n  hotdog predict model.pt lunch.jpg dinner.png\n\n")
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("--device", default="auto")
    _runtime_arguments(p)

    p = command("export", cmd_export, "export a checkpoint for other runtimes (ONNX, "
                "TorchScript), verified against PyTorch",
                "The export takes decoded uint8 RGB crops (N x S x S x 3) and outputs logits "
                "and probabilities;\nits metadata records the classes and the resize and crop "
                "to apply first.\n\nexamples:\n  hotdog export model.pt                      "
                "# model.onnx beside it\n  hotdog export model.pt --format torchscript --out "
                "model.ts.pt\n  hotdog export model.pt --data data/demo    # verify on its "
                "test images\n\n")
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="where to write it (default: beside CKPT, .onnx / .torchscript.pt)")
    p.add_argument("--data", metavar="DATA_DIR", default=None,
                   help="verify on this dataset's test images (default: random pixels)")
    p.add_argument("--verify-images", type=int, default=64, metavar="N",
                   help="images to compare the export with PyTorch on")

    p = command("demo-data", cmd_demo_data, "write a synthetic hotdog / not-hotdog ImageFolder "
                "dataset (photo-like JPEGs)",
                "examples:\n  hotdog demo-data data/demo\n"
                "  hotdog demo-data data/tiny --train-per-class 8 --test-per-class 4 --zip\n\n")
    p.add_argument("out", metavar="OUT", help="folder to create (must not exist or be empty)")
    p.add_argument("--train-per-class", type=int, default=100)
    p.add_argument("--test-per-class", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--zip", action="store_true", help="also write OUT.zip, ready to upload")

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
    p.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    p.add_argument("--log-level", default="info")

    from app.client import add_commands
    from app.experiment import add_command as add_demo_command

    add_commands(command, _with_emit)
    add_demo_command(command, _with_emit)

    p = command("fetch-d2l", cmd_fetch_d2l, "download and verify d2l's real hotdog dataset "
                "(needs internet)", "examples:\n  hotdog fetch-d2l data/hotdog\n\n")
    p.add_argument("out", metavar="OUT")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from app.engine import (
        CheckpointError,
        DatasetError,
        ImageDecodeError,
        PretrainedWeightsMissing,
        TrainingCancelled,
    )

    parser = build_parser()
    args = parser.parse_args(argv)
    from app.client import ServiceError
    from app.core.logs import configure_logging
    from app.experiment import DemoFailed

    try:
        # LOG_FORMAT, or JSON lines for `serve --json` / `worker --json`
        configure_logging(logging.DEBUG if args.verbose else logging.WARNING,
                          "json" if getattr(args, "json_logs", False) and args.json else None)
    except ValueError as exc:
        return _fail(EXIT_USAGE, exc)
    try:
        return int(args.func(args))
    except ServiceError as exc:
        if exc.status == 422 and getattr(args, "unusable_422", False):
            return _fail(EXIT_INPUT, exc)
        return _fail(SERVICE_EXIT.get(exc.status, EXIT_FAILED), exc)
    except DemoFailed as exc:
        return _fail(EXIT_FAILED, exc)
    except KeyboardInterrupt:
        print("hotdog: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except PretrainedWeightsMissing as exc:
        return _fail(EXIT_WEIGHTS, exc)
    except (DatasetError, ImageDecodeError, CheckpointError, FileExistsError,
            FileNotFoundError) as exc:
        return _fail(EXIT_INPUT, exc)
    except (ValueError, TrainingCancelled) as exc:
        return _fail(EXIT_USAGE if isinstance(exc, ValueError) else EXIT_FAILED, exc)
    except ConnectionError as exc:
        return _fail(EXIT_UNAVAILABLE, exc)
    except OSError as exc:
        return _fail(EXIT_FAILED, exc)


def _fail(code: int, exc: BaseException) -> int:
    print(f"hotdog: error: {exc}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
