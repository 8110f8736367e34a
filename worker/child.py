"""The training process of one job: ``python -m worker.child SPEC.json``.

The worker starts it as a plain subprocess (Celery's prefork children are daemonic and may
not start DataLoader processes themselves; a process of its own also frees all GPU memory
when the job ends and gives cancellation something to signal). It reports on stdout, one
event of :mod:`worker.protocol` per line: ``Start`` (then, resuming, an ``Epoch`` for each
epoch its checkpoint holds), ``Progress`` (at most once a second), ``Epoch`` and
``Checkpoint`` as it goes, then exactly one of ``Done``, ``Cancelled`` or ``Error``.

SIGTERM asks it to stop between batches (cancellation). Logs go to stderr.

``python -m worker.child --spare`` is a process started ahead of its job (a predict job's,
see worker.runner.SpareProcess): it imports everything, then reads its job from stdin (one
JSON line: the spec file and the job's environment) and runs it as above.

A job on several GPUs runs ``python -m torch.distributed.run ... -m worker.child SPEC.json``:
every rank runs this module, rank 0 alone writes events (on the stdout they all share) and
the ONNX export; torchrun forwards SIGTERM to every rank and they stop at the same batch.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch

from app.core import joblog
from app.core.logs import adopt_job_from_environment, configure_logging
from app.db.models import ErrorKind
from app.engine import (
    BatchProgress,
    Callback,
    CheckpointError,
    DatasetError,
    EpochMetrics,
    ImageDecodeError,
    Predictor,
    PretrainedWeightsMissing,
    StartInfo,
    TrainConfig,
    TrainingCancelled,
    fit,
    load_image_folder,
)
from app.engine.batch import Progress as BatchRunProgress
from app.engine.batch import ResultsWriter, dataset_photos, photos_in, predict_photos
from app.engine.explain import Explainer
from app.engine.export import exports_for_job, onnxruntime_available
from app.engine.predict import choose_runtime
from worker import protocol as ev

EXIT_OK, EXIT_ERROR, EXIT_CANCELLED = 0, 1, 3
# The errors that fail a job at once (another attempt would fail the same way), and what
# kind each is; the first match counts, so subclasses of ValueError come before it.
USER_ERRORS: tuple[tuple[type[Exception], ErrorKind], ...] = (
    (PretrainedWeightsMissing, ErrorKind.WEIGHTS_MISSING),
    (DatasetError, ErrorKind.BAD_DATASET),
    (ImageDecodeError, ErrorKind.BAD_DATASET),
    (CheckpointError, ErrorKind.BAD_CHECKPOINT),
    (ValueError, ErrorKind.BAD_PARAMS),
)


def _rank() -> int:
    """This process's rank under torchrun; 0 for the plain single process."""
    return int(os.environ.get("RANK", "0") or 0)


def emit(event: ev.Event) -> None:
    if _rank() != 0:  # several processes: rank 0 speaks for all
        return
    sys.stdout.write(ev.encode(event) + "\n")
    sys.stdout.flush()


PROGRESS_INTERVAL = 1.0  # seconds between progress events
# Fault tests: a fault the training process acts out on itself. "kill-after-checkpoint:N":
# SIGKILL right after epoch N's checkpoint is written (where a kill is most likely to lose
# an epoch); "hang-after-checkpoint:N": hang there, deaf to SIGTERM; "wait-after-training:
# PATH": after the last epoch, before the export, wait until the file PATH exists;
# "wait-before-evaluation:PATH": an evaluate job's, after Start, until PATH exists;
# "wait-before-predictions:PATH": a predict job's, likewise.
FAULT_ENV = "HOTDOG_TEST_FAULT"


def act_out_fault(point: str, arg: str = "") -> None:
    """The fault ``$HOTDOG_TEST_FAULT`` asks for at ``point`` (with ``arg``, the epoch)."""
    action, _, at = os.environ.get(FAULT_ENV, "").partition(":")
    if action == f"kill-{point}" and at == arg:
        os.kill(os.getpid(), signal.SIGKILL)
    while action == f"hang-{point}" and at == arg:
        time.sleep(3600)
    while action == f"wait-{point}" and not Path(at).exists():
        time.sleep(0.05)


class Reporter(Callback):
    def __init__(self) -> None:
        self.stop_requested = False
        self.last_progress = 0.0

    def on_start(self, info: StartInfo) -> None:
        self.last_progress = time.monotonic()
        emit(ev.Start(classes=info.classes, train_count=info.train_count,
                   test_count=info.test_count, device=info.device, precision=info.precision,
                   start_epoch=info.start_epoch, epochs=info.epochs,
                   batches_per_epoch=info.batches_per_epoch, world_size=info.world_size,
                   val_count=info.val_count))
        # The epochs the checkpoint holds, again: one whose report died with a killed worker
        # (or the pipe) is recorded now; the worker ignores those it already has.
        for metrics in info.history:
            emit(ev.Epoch(metrics=metrics))

    def on_batch(self, progress: BatchProgress) -> None:
        now = time.monotonic()
        if now - self.last_progress >= PROGRESS_INTERVAL and progress.batch < progress.batches:
            self.last_progress = now
            emit(ev.Progress(epoch=progress.epoch, fraction=progress.batch / progress.batches))

    def on_epoch(self, metrics: EpochMetrics) -> None:
        emit(ev.Epoch(metrics=metrics))

    def on_checkpoint(self, path: Path, epoch: int) -> None:
        emit(ev.Checkpoint(epoch=epoch, path=str(path)))
        act_out_fault("after-checkpoint", str(epoch))

    def should_stop(self) -> bool:
        return self.stop_requested


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's refusal (ENOMEM)."""
    text = str(exc)
    return (isinstance(exc, (torch.OutOfMemoryError, MemoryError))
            or "can't allocate memory" in text or "Cannot allocate memory" in text)


def out_of_memory_message(exc: BaseException, config: TrainConfig) -> str:
    first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return (f"out of memory on the worker ({first[:300]}); this job does not fit: lower "
            f"batch_size (now {config.batch_size}) or image_size (now {config.image_size})")


def job_failure(exc: Exception, config: dict[str, Any]) -> ev.Error | None:
    """The ``Error`` that fails the job at once for ``exc``; None when another attempt could
    go better (the process then crashes and the worker retries it). ``config``: the spec's
    fields, parsed only for the out-of-memory advice (they may be what was refused)."""
    for cls, kind in USER_ERRORS:
        if isinstance(exc, cls):
            return ev.Error(kind=kind, exception=type(exc).__name__, message=str(exc))
    # The same job would run out of memory again on every attempt: fail it now, saying
    # what to change, instead of crashing into a retry.
    if is_out_of_memory(exc):
        return ev.Error(kind=ErrorKind.OUT_OF_MEMORY, exception="OutOfMemory",
                     message=out_of_memory_message(exc, TrainConfig.from_dict(config)))
    return None


def listening_reporter() -> Reporter:
    """The reporter, told by SIGTERM to stop (between batches). Ctrl-C in a terminal reaches
    the whole process group: the worker decides what happens to this job (it stops it and
    hands it back), so the process ignores it."""
    reporter = Reporter()

    def on_term(_signum: int, _frame: object) -> None:
        reporter.stop_requested = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return reporter


def run(spec: dict[str, Any]) -> int:
    """``spec``: data_dir, out, epoch_checkpoint, config (TrainConfig fields), resume_from,
    export_onnx and export_int8 (default true); with ``evaluate`` (a model file),
    :func:`evaluate` instead."""
    if spec.get("evaluate"):
        return evaluate(spec)
    if spec.get("predict"):
        return predict(spec)
    if spec.get("review"):
        return review(spec)
    reporter = listening_reporter()
    resume = spec.get("resume_from")
    try:
        result = fit(
            spec["data_dir"], TrainConfig.from_dict(spec["config"]), spec["out"],
            callback=reporter, epoch_checkpoint=spec["epoch_checkpoint"],
            resume_from=resume if resume and Path(resume).is_file() else None,
        )
    except TrainingCancelled:
        emit(ev.Cancelled())
        return EXIT_CANCELLED
    except (ValueError, RuntimeError, MemoryError) as exc:
        return _failed(exc, spec)
    assert result.evaluation is not None
    if _rank() != 0:  # rank 0 wrote the checkpoint and exports it
        return EXIT_OK
    act_out_fault("after-training")
    exports: dict[str, Any] = {}
    if spec.get("export_onnx", True):
        # Verified against PyTorch on the test images (INT8: against the fp32 export), or
        # discarded with the reason: the job succeeds either way, and prediction uses what
        # was kept.
        exports = exports_for_job(result.checkpoint, spec["data_dir"],
                                  int8=spec.get("export_int8", True))
    assert result.selected_epoch is not None
    emit(ev.Done(checkpoint=str(result.checkpoint), test_acc=result.test_acc,
              evaluation=result.evaluation.to_dict(), exports=exports,
              selected_epoch=result.selected_epoch, note=result.note))
    return EXIT_OK


def _failed(exc: Exception, spec: dict[str, Any]) -> int:
    """A job's failure said as its error event (exit code EXIT_ERROR); anything that is not
    the job's failure (a bug) is raised again."""
    error = job_failure(exc, spec["config"])
    if error is None:
        raise exc
    logging.getLogger(__name__).error("the job failed (%s): %s", error.kind.value, error.text)
    emit(error)
    return EXIT_ERROR


def evaluate(spec: dict[str, Any]) -> int:
    """An evaluate job: the model ``spec["evaluate"]`` scored on the test split of
    ``spec["data_dir"]``. It says ``Start`` (one epoch: the test split), ``Progress``, then
    ``Done`` with the evaluation (no checkpoint of its own, no exports); cancel and errors
    as in training."""
    reporter = listening_reporter()
    config = TrainConfig.from_dict(spec["config"])
    try:
        predictor = Predictor(spec["evaluate"], device=config.device,
                              precision=config.precision)
        images = len(load_image_folder(spec["data_dir"]).test)
        emit(ev.Start(classes=predictor.classes, train_count=0, test_count=images,
                      device=str(predictor.plan.device), precision=predictor.precision,
                      start_epoch=0, epochs=1, world_size=1,
                      batches_per_epoch=-(-images // config.batch_size), val_count=0))
        act_out_fault("before-evaluation")
        evaluation, _ = predictor.evaluate_folder(spec["data_dir"], batch_size=config.batch_size,
                                                  callback=reporter)
    except TrainingCancelled:
        emit(ev.Cancelled())
        return EXIT_CANCELLED
    except (ValueError, RuntimeError, MemoryError) as exc:
        return _failed(exc, spec)
    emit(ev.Done(checkpoint=spec["evaluate"], test_acc=evaluation.accuracy,
                 evaluation=evaluation.to_dict(), exports={}, selected_epoch=None,
                 note=None))
    return EXIT_OK


def predict(spec: dict[str, Any]) -> int:
    """A predict job: every photo of ``spec["predict"]["photos"]`` (a folder of uploaded
    photos, or with ``split`` a stored dataset's split) classified by the model
    ``spec["predict"]["model"]`` in batches, its results written to ``results`` (JSON
    lines, renamed into place when complete) and counted in ``summary``. It says ``Start``
    (one epoch: ``test_count`` photos), ``Progress`` (fraction: photos done / total), then
    ``Done`` (no evaluation, no exports; ``note``: how many photos did not decode); cancel
    (before any batch) and errors as in training."""
    reporter = listening_reporter()
    job = spec["predict"]
    config = TrainConfig.from_dict(spec["config"])
    started = time.monotonic()
    try:
        model = Path(job["model"])
        onnx_file = model.with_suffix(".onnx")
        runtime = choose_runtime(job["runtime"], onnx_file=onnx_file, device=config.device,
                                 precision=config.precision)
        predictor = Predictor(model, device=config.device, precision=config.precision,
                              runtime=runtime,
                              onnx_file=onnx_file if runtime == "onnx" else None)
        root = Path(job["photos"])
        photos = dataset_photos(root, job["split"]) if job.get("split") else photos_in(root)[0]
        batch_size = int(job["batch_size"])
        # Crop coverage: Grad-CAM needs gradients, so its own fp32 PyTorch model (whatever
        # runtime serves the probabilities).
        explainer = (Explainer(model, device=str(predictor.plan.device))
                     if job.get("coverage") else None)
        emit(ev.Start(classes=predictor.classes, train_count=0, test_count=len(photos),
                      device=str(predictor.plan.device), precision=predictor.precision,
                      start_epoch=0, epochs=1, world_size=1,
                      batches_per_epoch=-(-len(photos) // batch_size), val_count=0))
        act_out_fault("before-predictions")
        last = [time.monotonic()]

        def on_batch(progress: BatchRunProgress) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_INTERVAL and progress.done < progress.total:
                last[0] = now
                emit(ev.Progress(epoch=1, fraction=progress.done / progress.total))

        counts = BatchRunProgress(total=len(photos))
        with ResultsWriter(Path(job["results"]), coverage=explainer is not None) as out:
            out.write(predict_photos(predictor, photos, batch_size=batch_size,
                                     should_stop=reporter.should_stop, on_batch=on_batch,
                                     progress=counts, explainer=explainer))
            seconds = time.monotonic() - started
            _write_json(Path(job["summary"]), {
                "photos": counts.total, "predicted": counts.total - counts.failed,
                "failed": counts.failed, "labels": counts.labels, "runtime": runtime,
                "device": str(predictor.plan.device), "seconds": round(seconds, 3)})
            out.commit()
    except TrainingCancelled:
        emit(ev.Cancelled())
        return EXIT_CANCELLED
    except (ValueError, RuntimeError, MemoryError) as exc:
        return _failed(exc, spec)
    note = (f"{counts.failed} of {counts.total} photos did not decode (see the error column "
            "of the results)" if counts.failed else None)
    emit(ev.Done(checkpoint=str(model), test_acc=0.0, evaluation={}, exports={},
                 selected_epoch=None, note=note))
    return EXIT_OK


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def review(spec: dict[str, Any]) -> int:
    """A review job: the labels of ``spec["data_dir"]``'s training images reviewed
    (:mod:`app.engine.review`) with the backbone ``spec["review"]`` says (the model's start,
    preferred, or the model itself). It says ``Start`` (one epoch: the embedding pass over
    the training images), ``Progress``, writes the result to ``review["out"]`` (temporary
    name, then renamed), then ``Done`` naming that file, with the summary as its note;
    cancel and errors as in training."""
    from app.engine.device import plan_device
    from app.engine.review import ReviewConfig, choose_backbone, review_labels, write_review

    reporter = listening_reporter()
    config = TrainConfig.from_dict(spec["config"])
    r = spec["review"]
    try:
        settings = ReviewConfig(folds=int(r["folds"]), seed=int(r["seed"]),
                                batch_size=config.batch_size, device=config.device,
                                precision=config.precision, max_listed=int(r["max_listed"]))
        backbone = choose_backbone(r["model"], start=r["start"], start_name=r["start_name"],
                                   seed=settings.seed)
        splits = load_image_folder(spec["data_dir"])
        images = len(splits.train)
        plan = plan_device(settings.device, precision=settings.precision, workers=0)
        emit(ev.Start(classes=splits.classes, train_count=images, test_count=0,
                      device=str(plan.device), precision=plan.precision,
                      start_epoch=0, epochs=1, world_size=1,
                      batches_per_epoch=-(-images // settings.batch_size), val_count=0))
        result = review_labels(spec["data_dir"], backbone, settings, callback=reporter)
        out = write_review(result, r["out"])
    except TrainingCancelled:
        emit(ev.Cancelled())
        return EXIT_CANCELLED
    except (ValueError, RuntimeError, MemoryError) as exc:
        return _failed(exc, spec)
    note = (f"{result.flagged} of {result.images} training images flagged as likely "
            f"mislabeled, {len(result.outliers)} outliers; backbone: {result.backbone}")
    emit(ev.Done(checkpoint=str(out), test_acc=result.cv_accuracy, evaluation={}, exports={},
                 selected_epoch=None, note=note))
    return EXIT_OK


def _die_with_launcher() -> None:
    """Under torchrun: die with the launcher. The worker kills the launcher when it shuts
    down or loses the job's lease; a rank left behind would hold a GPU and write the job's
    files."""
    if "TORCHELASTIC_RUN_ID" not in os.environ and "LOCAL_RANK" not in os.environ:
        return
    from app.core.procs import die_with_parent

    die_with_parent()
    if os.getppid() == 1:  # the launcher died before the line above
        os._exit(EXIT_ERROR)


def _wait_for_job() -> list[str] | None:
    """A spare process (``--spare``, see worker.runner.SpareProcess): everything is
    imported; wait for the worker to hand over a job (one line on stdin: the spec file and
    the job's environment). None: the worker closed stdin without one (it is stopping)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C at the worker's terminal: its call
    onnxruntime_available()  # imported now, while waiting: predict jobs load ONNX models
    line = sys.stdin.readline()
    if not line.strip():
        return None
    job = json.loads(line)
    os.environ.clear()  # the environment it would have had, started for this job
    os.environ.update(job["env"])
    return [job["spec"]]


def main(argv: list[str] | None = None) -> int:
    _die_with_launcher()
    args = sys.argv[1:] if argv is None else argv
    if args == ["--spare"]:
        args = _wait_for_job() or []
        if not args:
            return EXIT_OK
    # LOG_FORMAT, and the job the worker passed down on every line (the engine's included)
    adopt_job_from_environment()
    configure_logging(logging.INFO)
    if len(args) != 1:
        print("usage: python -m worker.child SPEC.json | --spare", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    if spec.get("job_log"):  # the job's own log gets these lines too
        job_log = Path(spec["job_log"])
        joblog.install(lambda _job_id: job_log, int(spec.get("job_log_bytes") or 0))
    sys.excepthook = _log_uncaught
    return run(spec)


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
    """A crash of the training process (a bug, not the job's failure) is logged, so that
    the job's log says why its attempt died."""
    logging.getLogger(__name__).critical("the training process crashed", exc_info=(kind, exc, tb))


if __name__ == "__main__":
    sys.exit(main())
