"""A running service, through app.client: ``hotdog upload``, ``submit``, ``watch``,
``jobs``, ``cancel``, ``classify`` (photos, or a folder or zip of them: in requests, or as a
batch job), the batch jobs: ``predictions``, ``prediction``, the models: ``models``,
``activate``, ``rollback``, ``history``, ``evaluate-model``, the data: ``report``,
``relabel``, and ``review`` (a label review job).

``--url`` (or ``HOTDOG_URL``) says where the service is, default ``http://127.0.0.1:8000``
(what ``make run`` starts); ``--api-key`` (or ``HOTDOG_API_KEY``) when it needs a key.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from app.cli.exit_codes import EXIT_FAILED, EXIT_OK, job_exit_code
from app.cli.local import (
    add_explain_options,
    explanation_text,
    probabilities_text,
    write_overlays,
)
from app.cli.options import AddCommand, add_train_options, client_commands, given
from app.cli.output import EpochTable, emit_json, emit_listing, progress_bar
from app.client import (
    JOB_STATUSES,
    TERMINAL,
    Activation,
    Client,
    Dataset,
    Job,
    LabelReview,
    Prediction,
    PredictionJob,
    ReportGroup,
    ServiceError,
)
from app.engine.batch import csv_lines, photos_in
from app.engine.errors import DatasetError
from app.engine.images import is_image_file


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, api_key=args.api_key)


def print_dataset(ds: Dataset) -> None:
    print(f"dataset {ds['id']} ({ds['name']}): classes {', '.join(ds['classes'])}")
    for split, per in ds["counts"].items():
        print(f"  {split}: " + ", ".join(f"{c} {n}" for c, n in per.items()))
    for w in ds.get("warnings", []):
        print(f"  warning: {w}")


def cmd_upload(args: argparse.Namespace) -> int:
    with _client(args) as c, progress_bar(unit="B", unit_scale=True, unit_divisor=1024,
                                          desc="uploading") as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)
            if done >= total:  # the service now unpacks and decodes every image
                bar.set_description("validating")

        ds = c.upload(args.source, name=args.name, progress=progress)
    if args.json:
        emit_json(ds)
    else:
        print_dataset(ds)
        print(f"next: hotdog submit {ds['id']} --watch")
    return EXIT_OK


def cmd_submit(args: argparse.Namespace) -> int:
    with _client(args) as c:
        job = c.submit(args.dataset_id, **given(args, "api"),
                       queue_anyway=True if args.queue_anyway else None,
                       review_labels=True if args.review_labels else None)
        if not args.json:
            print(f"job {job['id']} {job['status']}")
        if args.watch:
            return _watch(c, job["id"], args)
    if args.json:
        emit_json(job)
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    with _client(args) as c:
        return _watch(c, args.job_id, args)


def _watch(c: Client, job_id: str, args: argparse.Namespace) -> int:
    bar = progress_bar(total=1000, bar_format="{l_bar}{bar}| {postfix}")
    table = EpochTable()
    printed = 0

    def update(job: Job) -> None:
        nonlocal printed
        p = job["progress"]
        bar.n = int(p["fraction"] * 1000)
        bar.set_description(f"{job['status']} epoch {min(p['epoch'] + 1, p['epochs'])}"
                            f"/{p['epochs']}")
        eta = p.get("eta_seconds")
        bar.set_postfix_str(f"eta {eta:.0f}s" if eta is not None else "")
        if not args.json and p["epoch"] > printed:
            for m in c.metrics(job_id)[printed:]:
                table.add(m)
                printed = m["epoch"]

    try:
        job = c.watch(job_id, interval=args.interval, on_update=update)
    finally:
        bar.close()
    if args.json:
        emit_json(job)
    elif job["status"] == "succeeded" and job.get("kind") == "evaluate":
        ev = c.evaluation(job_id)
        print(f"job {job_id} succeeded: job {job['model_id']} on dataset {job['dataset_id']}: "
              f"accuracy {ev['accuracy']:.3f}, macro F1 {ev['macro_f1']:.3f}")
    elif job["status"] == "succeeded" and job.get("kind") == "review":
        print(f"job {job_id} succeeded: {job.get('note') or 'label review done'}")
        print(f"next: hotdog review {job_id}")
    elif job["status"] == "succeeded":
        print(f"job {job_id} succeeded: {kept_text(job)}")
        if job.get("note"):
            print(f"note: {job['note']}")
        print(f"next: hotdog classify --model {job_id} PHOTO")
    else:
        print(f"job {job_id} {job['status']}" + (f": {job['error']}" if job["error"] else ""))
    return job_exit_code(job)


def kept_text(job: Job) -> str:
    """The kept model in words: its epoch, how it was chosen, its validation and test
    accuracy (the test figure is reported, it chose nothing)."""
    kept = job["best_metrics"]
    if kept is None:
        return "no epoch recorded"
    how = ("the best " + job["params"].get("select_metric", "val_loss") + " on the validation "
           "split" if kept["val_acc"] is not None and job["params"].get("select") != "last"
           else "the last epoch")
    val = "" if kept["val_acc"] is None else f"validation accuracy {kept['val_acc']:.3f}, "
    return (f"kept the model of epoch {kept['epoch']} ({how}): {val}test accuracy "
            f"{kept['test_acc'] if kept['test_acc'] is not None else math.nan:.3f}")


def cmd_jobs(args: argparse.Namespace) -> int:
    with _client(args) as c:
        rows = c.jobs(status=args.status)
    emit_listing(args.json, "jobs", rows,
                 f"{'id':<32} {'status':<9} {'epoch':>7} {'test acc':>8}  created", _job_line)
    return EXIT_OK


def _job_line(j: Job) -> str:
    latest = j["latest_metrics"]
    acc_text = "" if latest is None else f"{latest['test_acc']:.3f}"
    epoch = f"{j['progress']['epoch']}/{j['progress']['epochs']}"
    return f"{j['id']:<32} {j['status']:<9} {epoch:>7} {acc_text:>8}  {j['created_at'][:19]}"


def cmd_workers(args: argparse.Namespace) -> int:
    with _client(args) as c:
        rows = c.workers()
    emit_listing(args.json, "workers", rows,
                 f"{'name':<32} {'alive':<5} {'kind':<4} {'gpus':>4} {'imagenet':<8}  queues",
                 lambda w: f"{w['name']:<32} {'yes' if w['alive'] else 'no':<5} {w['kind']:<4} "
                 f"{w['gpus']:>4} {'yes' if w['has_imagenet'] else 'no':<8}  "
                 f"{', '.join(w['queues'])}")
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as c:
        job = c.cancel(args.job_id)
    if args.json:
        emit_json(job)
    else:
        state = "cancel requested" if job["status"] == "running" else job["status"]
        print(f"job {job['id']} {state}")
    return EXIT_OK


def cmd_classify(args: argparse.Namespace) -> int:
    if len(args.images) == 1 and _is_collection(Path(args.images[0])):
        return classify_collection(args, Path(args.images[0]))
    if args.coverage:
        raise ValueError("--coverage is for a folder or zip of photos; for photos, --explain "
                         "OUTDIR gives each one's crop_coverage with its heatmap")
    with _client(args) as c:
        out = c.predict(args.images, model=args.model, explain=args.explain is not None,
                        top_k=args.top_k, crop=args.crop)
    written: list[Path | None] = [None] * len(out["predictions"])
    if args.explain:
        written = list(write_overlays(out["predictions"], args.images, args.explain))
    if args.json:
        emit_json(out)
    else:
        for p, path in zip(out["predictions"], written, strict=True):
            print(f"{p['filename']}: {p['label']}  ({probabilities_text(p['probabilities'])})")
            explanation = p.get("explanation")
            if path is not None and explanation:
                print(f"  {explanation_text(explanation)}; overlay {path}")
    return EXIT_OK


# ------------------------------------------------------- a folder or zip of photos

# Photos per /predict request (the service's PREDICT_MAX_FILES, by default) and the bytes of
# one request's photos (PREDICT_MAX_BYTES is 64 MiB by default): a folder is sent in pieces.
PER_REQUEST = 64
REQUEST_BYTES = 32 << 20
# More photos than this go to the service as one batch job (POST /predictions), not requests.
BATCH_OVER = int(os.environ.get("HOTDOG_BATCH_OVER") or 256)


def _is_collection(path: Path) -> bool:
    return path.is_dir() or (path.suffix.lower() == ".zip" and path.is_file())


def _zip_photos(path: Path) -> list[str]:
    """The photos of a zip, by their paths in it (as the service finds them)."""
    with zipfile.ZipFile(path) as zf:
        names = [i.filename for i in zf.infolist() if not i.is_dir()]
    return sorted(n for n in names if is_image_file(Path(n)) and not any(
        part.startswith(".") or part == "__MACOSX" for part in PurePosixPath(n).parts))


class _Photos:
    """The photos of a folder or zip, by name, read one at a time."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.zip = zipfile.ZipFile(source) if source.is_file() else None
        self.paths: dict[str, Path] = {}
        if self.zip is not None:
            self.names = _zip_photos(source)
        else:
            photos, _ = photos_in(source)
            self.paths = {p.name: p.path for p in photos}
            self.names = list(self.paths)

    def size(self, name: str) -> int:
        return (self.zip.getinfo(name).file_size if self.zip is not None
                else self.paths[name].stat().st_size)

    def read(self, name: str) -> bytes:
        return self.zip.read(name) if self.zip is not None else self.paths[name].read_bytes()

    def pieces(self, per_request: int) -> Iterator[list[str]]:
        """The names in requests of at most ``per_request`` photos and REQUEST_BYTES."""
        piece: list[str] = []
        size = 0
        for name in self.names:
            n = self.size(name)
            if piece and (len(piece) >= per_request or size + n > REQUEST_BYTES):
                yield piece
                piece, size = [], 0
            piece.append(name)
            size += n
        if piece:
            yield piece


def _in_requests(c: Client, photos: _Photos, args: argparse.Namespace
                 ) -> tuple[str, list[str], list[dict[str, Any]]]:
    """Every photo through /predict, a request per piece; a piece refused for a photo that
    does not decode is sent again photo by photo, so that only that photo's row has an
    error. Returns the model (the first answer's, then named in every request: an
    activation meanwhile does not mix two models), its classes and the rows."""
    model: str | None = args.model
    classes: list[str] = []
    rows: list[dict[str, Any]] = []
    bar = progress_bar(total=len(photos.names), desc="classifying", unit="photo")
    try:
        for piece in photos.pieces(args.per_request):
            try:
                out = c.predict_files([(n, photos.read(n)) for n in piece], model=model)
                answers: list[tuple[str, Prediction | None, str | None]] = [
                    (n, p, None) for n, p in zip(piece, out["predictions"], strict=True)]
            except ServiceError as exc:
                if exc.status != 422:
                    raise
                answers = []
                for name in piece:
                    try:
                        out = c.predict_files([(name, photos.read(name))], model=model)
                        answers.append((name, out["predictions"][0], None))
                    except ServiceError as one:
                        if one.status != 422:
                            raise
                        answers.append((name, None, str(one.detail)))
            for name, p, error in answers:
                if p is not None:
                    model = model or out["model"]
                    classes = classes or list(p["probabilities"])
                rows.append({"filename": name, "label": p["label"] if p else None,
                             "probabilities": p["probabilities"] if p else None,
                             "error": error})
            bar.update(len(piece))
    finally:
        bar.close()
    return model or "", classes, rows


def _as_batch_job(c: Client, source: Path, args: argparse.Namespace) -> PredictionJob:
    """One batch job for all the photos (uploaded as a zip), watched until it ends."""
    job = c.submit_predictions(source, model=args.model, queue_anyway=args.queue_anyway,
                               coverage=args.coverage)
    print(f"batch job {job['id']}: {job['photos']} photos, model {job['model_id']}",
          file=sys.stderr)
    return _watch_prediction(c, job["id"], args.interval)


def _watch_prediction(c: Client, job_id: str, interval: float) -> PredictionJob:
    bar = progress_bar(desc="queued", unit="photo")

    def update(j: PredictionJob) -> None:
        bar.total = j["photos"]
        bar.n = j["done"]
        bar.set_description(j["status"])
        bar.refresh()

    try:
        return c.watch_prediction(job_id, interval=interval, on_update=update)
    finally:
        bar.close()


class _Output:
    """Where the CSV goes: ``--out`` (a temp name renamed once complete), else stdout."""

    def __init__(self, out: str | None) -> None:
        self.out = Path(out) if out else None
        self.tmp: Path | None = None

    def __enter__(self) -> IO[bytes]:
        if self.out is None:
            return sys.stdout.buffer
        fd, tmp = tempfile.mkstemp(prefix=f".{self.out.name}.", suffix=".part",
                                   dir=self.out.parent or ".")
        self.tmp = Path(tmp)
        self.fh = os.fdopen(fd, "wb")
        return self.fh

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self.out is None:
            sys.stdout.flush()
            return
        assert self.tmp is not None
        self.fh.close()
        if exc_type is None:
            self.tmp.replace(self.out)
        else:
            self.tmp.unlink(missing_ok=True)


def classify_collection(args: argparse.Namespace, source: Path) -> int:
    """``hotdog classify DIR_OR_ZIP``: every photo in it (any folder layout), as CSV rows
    (filename, label, p_<class>..., error) on stdout or in ``--out``. Up to ``--batch-over``
    photos go through /predict in requests of ``--per-request``; more go as one batch job."""
    photos = _Photos(source)
    if not photos.names:
        raise DatasetError(f"{source}: no photos (files named .jpg, .jpeg, .png, .gif, .bmp, "
                           ".tif(f) or .webp)")
    to_json = args.json and not args.out
    with _client(args) as c:
        if len(photos.names) > args.batch_over or args.coverage:
            job = _as_batch_job(c, source, args)
            if job["status"] != "succeeded":
                print(f"batch job {job['id']} {job['status']}"
                      + (f": {job['error']}" if job["error"] else ""), file=sys.stderr)
                if args.json:
                    emit_json({"job": job})
                return EXIT_FAILED
            summary = job["summary"]
            result: dict[str, Any] = {
                "model": job["model_id"], "job": job["id"], "photos": job["photos"],
                "failed": summary["failed"] if summary else None}
            if to_json:
                import json

                with c.prediction_results(job["id"], "jsonl") as chunks:
                    text = b"".join(chunks).decode()
                result["predictions"] = [json.loads(line) for line in text.splitlines()
                                         if line.strip()]
            else:
                with c.prediction_results(job["id"], "csv") as chunks, \
                        _Output(args.out) as out:
                    for chunk in chunks:
                        out.write(chunk)
        else:
            model, classes, rows = _in_requests(c, photos, args)
            result = {"model": model, "job": None, "photos": len(rows),
                      "failed": sum(1 for r in rows if r["error"])}
            if to_json:
                result["predictions"] = rows
            else:
                with _Output(args.out) as out:
                    for line in csv_lines(rows, classes):
                        out.write(line.encode())
    if args.json:
        emit_json({**result, "out": args.out})
    elif result["failed"]:
        print(f"{result['failed']} of {result['photos']} photos did not decode (see the error "
              "column)", file=sys.stderr)
    return EXIT_OK


def _prediction_line(j: PredictionJob) -> str:
    source = (f"dataset {j['dataset_id']} ({j['split']})" if j["source"] == "dataset"
              else "upload")
    return (f"{j['id']:<32} {j['status']:<9} {j['done']:>6}/{j['photos']:<6} {source:<44} "
            f"{j['model_id']:<32} {j['created_at'][:19]}")


def cmd_predictions(args: argparse.Namespace) -> int:
    with _client(args) as c:
        rows = c.predictions()
    emit_listing(args.json, "predictions", rows,
                 f"{'id':<32} {'status':<9} {'photos':>13} {'source':<44} {'model':<32} created",
                 _prediction_line)
    return EXIT_OK


def cmd_prediction(args: argparse.Namespace) -> int:
    with _client(args) as c:
        job = (_watch_prediction(c, args.job_id, args.interval) if args.wait
               else c.prediction(args.job_id))
        if args.results:
            with c.prediction_results(args.job_id, args.results) as chunks, \
                    _Output(args.out) as out:
                for chunk in chunks:
                    out.write(chunk)
            return EXIT_OK
    if args.json:
        emit_json(job)
        return EXIT_OK if job["status"] != "failed" else EXIT_FAILED
    print(f"batch job {job['id']}: {job['status']}, {job['done']} of {job['photos']} photos, "
          f"model {job['model_id']}" + (f": {job['error']}" if job["error"] else ""))
    summary = job["summary"]
    if summary:
        print(f"  {summary['predicted']} classified ("
              + ", ".join(f"{k} {v}" for k, v in summary["labels"].items())
              + f"), {summary['failed']} did not decode; {summary['runtime']} on "
              f"{summary['device']}, {summary['seconds']} s")
        print(f"next: hotdog prediction {job['id']} --results csv --out predictions.csv")
    return EXIT_OK if job["status"] != "failed" else EXIT_FAILED


def _score(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"


def cmd_models(args: argparse.Namespace) -> int:
    with _client(args) as c:
        rows = c.models()
    emit_listing(args.json, "models", rows,
                 f"{'id':<32} {'active':<6} {'dataset':<32} {'accuracy':>8} {'macro F1':>8}  "
                 "finished",
                 lambda m: f"{m['id']:<32} {'yes' if m['active'] else '':<6} "
                 f"{m['dataset_id']:<32} {_score(m['accuracy']):>8} "
                 f"{_score(m.get('macro_f1')):>8}  {(m['finished_at'] or '')[:19]}")
    return EXIT_OK


def cmd_activate(args: argparse.Namespace) -> int:
    with _client(args) as c:
        model = c.activate(args.job_id, force=args.force, against=args.against,
                           threshold=args.threshold, threshold_class=args.threshold_class)
        record = c.history(limit=1)
    if args.json:
        emit_json({"model": model, "activation": record[0] if record else None})
    else:
        print(f"job {model['id']} is the active model")
        if record and record[0]["model_id"] == model["id"]:
            print(f"  {record[0]['note']}")
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    with _client(args) as c:
        record = c.rollback()
    if args.json:
        emit_json(record)
    else:
        print(f"job {record['model_id']} is the active model again "
              f"(undid activation {record['undoes_id']}, job {record['previous_id']})")
    return EXIT_OK


def _activation_line(a: Activation) -> str:
    scores = (f"{a['metric']} {_score(a['model_score']) or 'n/a'} vs "
              f"{_score(a['previous_score']) or 'n/a'}" if a["metric"] else "")
    return (f"{a['id']:>4} {a['created_at'][:19]} {a['action']:<8} {a['model_id']:<32} "
            f"{(a['previous_id'] or ''):<32} {scores:<24} {'yes' if a['forced'] else '':<6} "
            f"{a['actor']}" + (f" ({a['client']})" if a["client"] else ""))


def cmd_history(args: argparse.Namespace) -> int:
    with _client(args) as c:
        rows = c.history(limit=args.limit)
    emit_listing(args.json, "history", rows,
                 f"{'#':>4} {'when':<19} {'action':<8} {'model':<32} {'replaced':<32} "
                 f"{'scores':<24} {'forced':<6} who", _activation_line)
    return EXIT_OK


def cmd_evaluate_model(args: argparse.Namespace) -> int:
    with _client(args) as c:
        job = c.evaluate_model(args.job_id, args.dataset_id, queue_anyway=args.queue_anyway)
        if not args.json:
            print(f"evaluation job {job['id']} {job['status']}")
        bar = progress_bar(total=1000, bar_format="{l_bar}{bar}|")

        def update(j: Job) -> None:
            bar.n = int(j["progress"]["fraction"] * 1000)
            bar.set_description(j["status"])

        try:
            job = c.watch(job["id"], interval=args.interval, on_update=update)
        finally:
            bar.close()
        evaluation = c.evaluation(job["id"]) if job["status"] == "succeeded" else None
    if args.json:
        emit_json({"job": job, "evaluation": evaluation})
    elif evaluation is not None:
        print(f"job {args.job_id} on dataset {args.dataset_id} (test split): accuracy "
              f"{evaluation['accuracy']:.3f}, macro F1 {evaluation['macro_f1']:.3f}")
        for r in evaluation["per_class"]:
            print(f"  {r['label']}: precision {r['precision']:.3f} recall {r['recall']:.3f} "
                  f"F1 {r['f1']:.3f} ({r['support']} images)")
        print(f"next: hotdog activate {args.job_id} --against {args.dataset_id}")
    else:
        print(f"evaluation job {job['id']} {job['status']}"
              + (f": {job['error']}" if job["error"] else ""))
    return job_exit_code(job)


def _image_text(img: dict[str, Any]) -> str:
    return f"{img['path']} (#{img['image_id']} {img['split']}/{img['label']})"


def _group_text(g: ReportGroup) -> str:
    how = "same pixels" if g["kind"] == "exact" else "near duplicates"
    conflict = ", CLASSES DIFFER" if g["label_conflict"] else ""
    return f"  {g['scope']} ({how}{conflict}): " + " = ".join(
        _image_text(dict(i)) for i in g["images"])


def print_report(dataset_id: str, report: dict[str, Any]) -> None:
    s = report["summary"]
    print(f"dataset {dataset_id}: {s['images']} images")
    for split, per in report["counts"].items():
        ratio = s["imbalance"].get(split)
        print(f"  {split}: " + ", ".join(f"{c} {n}" for c, n in per.items())
              + (f" (imbalance {ratio:g}x)" if ratio is not None else " (a class is empty)"))
    print(f"leakage: {s['leaked_images']} image(s) of val/test also in another split "
          f"({s['leakage_groups']} group(s)); same photo under two classes: "
          f"{s['label_conflicts']}")
    if report.get("near_duplicates_skipped"):
        print("  (near duplicates not searched: the dataset has more images than "
              "REPORT_NEAR_MAX_IMAGES)")
    groups: list[ReportGroup] = report["groups"]
    order = {"leakage": 0}
    for g in sorted(groups, key=lambda g: (order.get(g["scope"], 1), not g["label_conflict"])):
        print(_group_text(g))
    issues = {k: v for k, v in s["issues"].items() if v}
    print("image issues: " + (", ".join(f"{k} {v}" for k, v in issues.items()) or "none"))
    for item in report["image_issues"]:
        print(f"  {', '.join(item['issues'])}: {_image_text(item)} "
              f"{item['width']}x{item['height']}")
    for item in report["unreadable"]:
        print(f"  unreadable: {_image_text(item)}: {item['error']}")


def cmd_report(args: argparse.Namespace) -> int:
    with _client(args) as c:
        out = c.wait_report(args.dataset_id, interval=args.interval, timeout=args.timeout)
    if args.json:
        emit_json(out)
    elif out["report"] is not None:
        print_report(args.dataset_id, out["report"])
    else:
        print(f"dataset {args.dataset_id}: the report {out['status']}: {out['error']}")
    return EXIT_OK if out["status"] == "ready" else EXIT_FAILED


def read_changes(path: Path) -> dict[str, str]:
    """image_id,new_class rows (a header row is optional; new_class may be ``drop``)."""
    changes: dict[str, str] = {}
    with open(path, newline="") as fh:
        for n, row in enumerate(csv.reader(fh), start=1):
            cells = [c.strip() for c in row]
            if not any(cells) or (n == 1 and cells[0].lower() == "image_id"):
                continue
            if len(cells) < 2 or not cells[0].isdigit() or not cells[1]:
                raise ValueError(f"{path}, line {n}: expected image_id,new_class (an image "
                                 f"id from `hotdog report`, a class or drop); got {row}")
            if changes.get(cells[0], cells[1]) != cells[1]:
                raise ValueError(f"{path}, line {n}: image {cells[0]} is given twice, "
                                 "differently")
            changes[cells[0]] = cells[1]
    if not changes:
        raise ValueError(f"{path}: no changes (rows image_id,new_class)")
    return changes


def cmd_relabel(args: argparse.Namespace) -> int:
    changes = read_changes(args.changes_csv)
    with _client(args) as c:
        ds = c.relabel(args.dataset_id, changes, name=args.name)
    if args.json:
        emit_json(ds)
    else:
        print(ds["id"])
        print(f"new version of {args.dataset_id} with {len(ds['changes'] or {})} change(s)")
        print_dataset(ds)
        print(f"next: hotdog report {ds['id']}; hotdog submit {ds['id']} --watch")
    return EXIT_OK
def cmd_review(args: argparse.Namespace) -> int:
    with _client(args) as c:
        try:
            review = c.label_review(args.job_id)
        except ServiceError as exc:
            if exc.status != 404 or c.job(args.job_id)["kind"] != "train":
                raise
            job = c.review(args.job_id, queue_anyway=args.queue_anyway)
            say(args, f"label review of job {args.job_id}: job {job['id']} {job['status']}")
            review = c.label_review(job["id"])
        if review["status"] not in TERMINAL:
            say(args, f"waiting for label review job {review['job_id']} ({review['status']})")
            bar = progress_bar(total=1000, bar_format="{l_bar}{bar}|")

            def update(j: Job) -> None:
                bar.n = int(j["progress"]["fraction"] * 1000)
                bar.set_description(j["status"])

            try:
                c.watch(review["job_id"], interval=args.interval, on_update=update)
            finally:
                bar.close()
            review = c.label_review(review["job_id"])
        job = c.job(review["job_id"])
    if args.json:
        emit_json({**review, "note": job.get("note"), "error": job.get("error")})
    elif review["status"] == "succeeded":
        print_review(review, limit=args.limit)
        if job.get("note"):
            print(job["note"])
    else:
        print(f"label review job {review['job_id']} {review['status']}"
              + (f": {job['error']}" if job.get("error") else ""))
    return job_exit_code(job)


def say(args: argparse.Namespace, message: str) -> None:
    if not args.json:
        print(message, flush=True)


def print_review(review: LabelReview, *, limit: int) -> None:
    """The likely mislabeled images, the likeliest first, and the outliers: each with its
    path as uploaded (where to find it), split, given and suggested class."""
    issues, outliers = review["issues"], review["outliers"]
    print(f"label review of dataset {review['dataset_id']} (job {review['job_id']}), "
          f"backbone: {review['backbone']}")
    print(f"{len(issues)} likely mislabeled training image(s)"
          + (f", the first {limit}:" if len(issues) > limit else ":" if issues else ""))
    if issues:
        print(f"{'rank':>4} {'id':>6} {'given':<14} {'suggested':<14} {'conf':>5}  path")
    for i in issues[:limit]:
        print(f"{i['rank']:>4} {i['image_id']:>6} {i['label'][:14]:<14} "
              f"{i['suggested'][:14]:<14} {i['confidence']:>5.2f}  {i['path']}")
    print(f"{len(outliers)} outlier(s)" + (":" if outliers else ""))
    for o in outliers[:limit]:
        print(f"     {o['image_id']:>6} {o['label'][:14]:<14} {'':<14} {o['score']:>5.2f}  "
              f"{o['path']}")


def register(command: AddCommand) -> None:
    client_command = client_commands(command)
    _register_jobs(client_command)
    _register_classify(client_command)
    _register_models(client_command)
    _register_data(client_command)


def _register_jobs(client_command: AddCommand) -> None:
    p = client_command("upload", cmd_upload, "upload a dataset (zip or folder) to the service",
                       "examples:\n  hotdog demo-data data/demo --zip\n"
                       "  hotdog upload data/demo.zip\n  hotdog upload data/demo --name demo\n\n")
    p.add_argument("source", metavar="ZIP_OR_FOLDER")
    p.add_argument("--name", default=None)
    p.set_defaults(unusable_422=True)  # a refused dataset is unusable input (exit 3)

    p = client_command("submit", cmd_submit, "start a fine-tune job on an uploaded dataset; "
                       "parameters not given take the service's defaults",
                       "examples:\n  hotdog submit DATASET_ID --watch\n"
                       "  hotdog submit DATASET_ID --init scratch --image-size 64 --epochs 8 "
                       "--batch-size 16 --lr 0.05\n\n")
    p.add_argument("dataset_id", metavar="DATASET_ID")
    add_train_options(p, "api", None)
    p.add_argument("--queue-anyway", action="store_true",
                   help="queue it even when no running worker would take it now (else the "
                   "service refuses it: exit 5, or 4 for want of ImageNet weights)")
    p.add_argument("--review-labels", action="store_true",
                   help="when it succeeds, review its training images' labels in a follow-up "
                   "job (hotdog review JOB_ID shows the result)")
    p.add_argument("--watch", action="store_true", help="then show progress until it ends")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls")

    p = client_command("watch", cmd_watch, "show a job's progress until it ends (exit 0 when "
                       "it succeeded)", "examples:\n  hotdog watch JOB_ID\n\n")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls")

    p = client_command("jobs", cmd_jobs, "list the service's jobs, newest first",
                       "examples:\n  hotdog jobs\n  hotdog jobs --status running\n\n")
    p.add_argument("--status", default=None, choices=JOB_STATUSES)

    client_command("workers", cmd_workers, "list the service's workers: alive or not, GPUs, "
                   "ImageNet weights, queues", "examples:\n  hotdog workers\n\n")

    p = client_command("cancel", cmd_cancel, "cancel a queued or running job",
                       "examples:\n  hotdog cancel JOB_ID\n\n")
    p.add_argument("job_id", metavar="JOB_ID")


def _register_classify(client_command: AddCommand) -> None:
    p = client_command("classify", cmd_classify, "classify photos with the service's model "
                       "(each photo's label and every class's probability), or every photo "
                       "of a folder or zip (CSV rows)",
                       "examples:\n  hotdog classify lunch.jpg dinner.png\n"
                       "  hotdog classify lunch.jpg --model JOB_ID --json\n"
                       "  hotdog classify holiday-photos/ > predictions.csv\n"
                       "  hotdog classify photos.zip --out predictions.csv\n\n"
                       "a folder or zip (any layout) gives one CSV row per photo: filename "
                       "(its path in it), label, p_<class> for every class, error (a photo "
                       "that does not decode). Up to --batch-over photos are sent to /predict "
                       f"in requests of --per-request photos (at most {REQUEST_BYTES >> 20} MiB"
                       "); more are uploaded as one batch job (POST /predictions) that a "
                       "worker runs, and its results are streamed when it ends.\n\n")
    p.add_argument("images", metavar="IMAGE", nargs="+",
                   help="photos, or one folder or .zip of photos")
    p.add_argument("--model", default=None, help="job id (default: the active model)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="a folder or zip: write the CSV here (default: stdout)")
    p.add_argument("--batch-over", type=int, default=BATCH_OVER, metavar="N",
                   help="a folder or zip of more than N photos goes as one batch job "
                   "(default: $HOTDOG_BATCH_OVER or 256)")
    p.add_argument("--per-request", type=int, default=PER_REQUEST, metavar="N",
                   help="photos per /predict request, at most the service's PREDICT_MAX_FILES "
                   f"(default: {PER_REQUEST})")
    p.add_argument("--queue-anyway", action="store_true",
                   help="a batch job: queue it even when no running worker would take it now")
    p.add_argument("--coverage", action="store_true",
                   help="a folder or zip: add a crop_coverage column (the share of the "
                   "Grad-CAM evidence inside the centre crop the model sees; low: look at the "
                   "photo). Runs as a batch job whatever the count, several times slower")
    p.add_argument("--interval", type=float, default=1.0,
                   help="a batch job: seconds between polls")
    add_explain_options(p, "OUTDIR", "write each photo's Grad-CAM overlay (the crop box drawn) "
                        "to OUTDIR/<photo name>.png")
    p.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="only the K most probable classes")
    p.set_defaults(unusable_422=True)  # a file that is no image is unusable input (exit 3)

    client_command("predictions", cmd_predictions, "list the service's batch prediction "
                   "jobs, newest first", "examples:\n  hotdog predictions\n\n")

    p = client_command("prediction", cmd_prediction, "show a batch prediction job (photos "
                       "done, summary), or stream its results",
                       "examples:\n  hotdog prediction JOB_ID\n"
                       "  hotdog prediction JOB_ID --wait\n"
                       "  hotdog prediction JOB_ID --results csv --out predictions.csv\n"
                       "  hotdog cancel JOB_ID      # cancel it, as any job\n\n")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--wait", action="store_true", help="first wait until it ends")
    p.add_argument("--results", choices=("csv", "jsonl"), default=None,
                   help="stream its results in this format (it must have succeeded)")
    p.add_argument("--out", default=None, metavar="FILE", help="--results: write them here")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls")


def _register_models(client_command: AddCommand) -> None:
    client_command("models", cmd_models, "list the service's models (succeeded training jobs), "
                   "the active one first", "examples:\n  hotdog models\n\n")

    p = client_command(
        "activate", cmd_activate, "make a model the default of the service's /predict, if it "
        "scores at least as well as the active one (PROMOTION_METRIC) on the same test split",
        "examples:\n  hotdog activate JOB_ID\n  hotdog activate JOB_ID --against DATASET_ID\n"
        "  hotdog activate JOB_ID --force\n\na refusal (exit 1) says both scores.\n\n")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--force", action="store_true", help="activate even if the gate refuses")
    p.add_argument("--threshold", type=float, default=None, help="two-class models: answer "
                   "--threshold-class when its probability is at least this, else the other")
    p.add_argument("--threshold-class", default=None, metavar="CLASS",
                   help="the class the threshold is on (default: the model's first class)")
    p.add_argument("--against", default=None, metavar="DATASET_ID",
                   help="compare both models on this dataset's test split (each needs an "
                   "evaluation on it: hotdog evaluate-model)")

    client_command("rollback", cmd_rollback, "activate again the model the newest activation "
                   "replaced", "examples:\n  hotdog rollback\n\n")

    p = client_command("history", cmd_history, "the changes of the active model, newest first "
                       "(who, when, both models and scores)", "examples:\n  hotdog history\n\n")
    p.add_argument("--limit", type=int, default=20, help="at most this many")


def _register_data(client_command: AddCommand) -> None:
    p = client_command(
        "review", cmd_review, "review the labels of a succeeded training job's training "
        "images (a job on a worker, started if it has none), wait, and list the likely "
        "mislabeled images and the outliers with their paths as uploaded",
        "examples:\n  hotdog review JOB_ID\n  hotdog review JOB_ID --json > review.json\n"
        "  hotdog review REVIEW_JOB_ID              # a review job's result\n\nThe review "
        "embeds each training image once with the job's starting backbone (ImageNet\nor the "
        "job:<id> it started from; the fine-tuned one for a scratch start), predicts\neach "
        "image's class out of sample (k-fold logistic regression) and ranks the label\n"
        "issues with cleanlab's confident learning.\n\n")
    p.add_argument("job_id", metavar="JOB_ID", help="a training job (or a review job)")
    p.add_argument("--limit", type=int, default=50, help="list at most this many of each")
    p.add_argument("--queue-anyway", action="store_true",
                   help="queue it even when no running worker would take it now")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls")

    p = client_command("evaluate-model", cmd_evaluate_model, "score a model of the service on "
                       "a dataset's test split, as a job on a worker, and wait for it",
                       "examples:\n  hotdog evaluate-model JOB_ID DATASET_ID\n\n")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("dataset_id", metavar="DATASET_ID")
    p.add_argument("--queue-anyway", action="store_true",
                   help="queue it even when no running worker would take it now")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls")

    p = client_command("report", cmd_report, "a dataset's report: duplicates, train/test "
                       "leakage, the same photo under two classes, image issues, counts "
                       "(waits while it is computed)",
                       "examples:\n  hotdog report DATASET_ID\n"
                       "  hotdog report DATASET_ID --json\n\n"
                       "images are named by their path in the upload and their id (#N).\n\n")
    p.add_argument("dataset_id", metavar="DATASET_ID")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    p.add_argument("--timeout", type=float, default=None, help="give up after this many s")

    p = client_command("relabel", cmd_relabel, "make a new version of a dataset with some "
                       "images relabelled or dropped (the old one is kept as it is); prints "
                       "the new dataset's id",
                       "examples:\n  hotdog relabel DATASET_ID --from fixes.csv\n\n"
                       "fixes.csv has rows image_id,new_class (ids from `hotdog report`; "
                       "new_class: a class of the dataset, or drop):\n"
                       "  image_id,new_class\n  12,not-hotdog\n  40,drop\n\n")
    p.add_argument("dataset_id", metavar="DATASET_ID")
    p.add_argument("--from", dest="changes_csv", type=Path, required=True, metavar="CSV")
    p.add_argument("--name", default=None, help="the new version's name")
