"""A running service, through app.client: ``hotdog upload``, ``submit``, ``watch``,
``jobs``, ``cancel``, ``classify``, and the models: ``models``, ``activate``, ``rollback``,
``history``, ``evaluate-model``; ``review`` (a label review job).

``--url`` (or ``HOTDOG_URL``) says where the service is, default ``http://127.0.0.1:8000``
(what ``make run`` starts); ``--api-key`` (or ``HOTDOG_API_KEY``) when it needs a key.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from app.cli.exit_codes import EXIT_OK, job_exit_code
from app.cli.local import probabilities_text
from app.cli.options import AddCommand, add_service_options, add_train_options, given
from app.cli.output import EpochTable, emit_json, progress_bar
from app.client import (
    JOB_STATUSES,
    TERMINAL,
    Activation,
    Client,
    Dataset,
    Job,
    LabelReview,
    ServiceError,
)


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
    if args.json:
        emit_json({"jobs": rows})
        return EXIT_OK
    print(f"{'id':<32} {'status':<9} {'epoch':>7} {'test acc':>8}  created")
    for j in rows:
        latest = j["latest_metrics"]
        acc_text = "" if latest is None else f"{latest['test_acc']:.3f}"
        epoch = f"{j['progress']['epoch']}/{j['progress']['epochs']}"
        print(f"{j['id']:<32} {j['status']:<9} {epoch:>7} {acc_text:>8}  {j['created_at'][:19]}")
    return EXIT_OK


def cmd_workers(args: argparse.Namespace) -> int:
    with _client(args) as c:
        rows = c.workers()
    if args.json:
        emit_json({"workers": rows})
        return EXIT_OK
    print(f"{'name':<32} {'alive':<5} {'kind':<4} {'gpus':>4} {'imagenet':<8}  queues")
    for w in rows:
        print(f"{w['name']:<32} {'yes' if w['alive'] else 'no':<5} {w['kind']:<4} "
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
    with _client(args) as c:
        out = c.predict(args.images, model=args.model)
    if args.json:
        emit_json(out)
    else:
        for p in out["predictions"]:
            print(f"{p['filename']}: {p['label']}  ({probabilities_text(p['probabilities'])})")
    return EXIT_OK


def _score(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"


def cmd_models(args: argparse.Namespace) -> int:
    with _client(args) as c:
        rows = c.models()
    if args.json:
        emit_json({"models": rows})
        return EXIT_OK
    print(f"{'id':<32} {'active':<6} {'dataset':<32} {'accuracy':>8} {'macro F1':>8}  finished")
    for m in rows:
        print(f"{m['id']:<32} {'yes' if m['active'] else '':<6} {m['dataset_id']:<32} "
              f"{_score(m['accuracy']):>8} {_score(m.get('macro_f1')):>8}  "
              f"{(m['finished_at'] or '')[:19]}")
    return EXIT_OK


def cmd_activate(args: argparse.Namespace) -> int:
    with _client(args) as c:
        model = c.activate(args.job_id, force=args.force, against=args.against)
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


def print_activation(a: Activation) -> None:
    scores = (f"{a['metric']} {_score(a['model_score']) or 'n/a'} vs "
              f"{_score(a['previous_score']) or 'n/a'}" if a["metric"] else "")
    print(f"{a['id']:>4} {a['created_at'][:19]} {a['action']:<8} {a['model_id']:<32} "
          f"{(a['previous_id'] or ''):<32} {scores:<24} {'yes' if a['forced'] else '':<6} "
          f"{a['actor']}" + (f" ({a['client']})" if a["client"] else ""))


def cmd_history(args: argparse.Namespace) -> int:
    with _client(args) as c:
        rows = c.history(limit=args.limit)
    if args.json:
        emit_json({"history": rows})
        return EXIT_OK
    print(f"{'#':>4} {'when':<19} {'action':<8} {'model':<32} {'replaced':<32} "
          f"{'scores':<24} {'forced':<6} who")
    for a in rows:
        print_activation(a)
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
    def client_command(name: str, func: Callable[[argparse.Namespace], int], help: str,
                       epilog: str) -> argparse.ArgumentParser:
        p = command(name, func, help, epilog)
        add_service_options(p)
        return p

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

    p = client_command("classify", cmd_classify, "classify photos with the service's model "
                       "(each photo's label and every class's probability)",
                       "examples:\n  hotdog classify lunch.jpg dinner.png\n"
                       "  hotdog classify lunch.jpg --model JOB_ID --json\n\n")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("--model", default=None, help="job id (default: the active model)")
    p.set_defaults(unusable_422=True)  # a file that is no image is unusable input (exit 3)


    client_command("models", cmd_models, "list the service's models (succeeded training jobs), "
                   "the active one first", "examples:\n  hotdog models\n\n")

    p = client_command(
        "activate", cmd_activate, "make a model the default of the service's /predict, if it "
        "scores at least as well as the active one (PROMOTION_METRIC) on the same test split",
        "examples:\n  hotdog activate JOB_ID\n  hotdog activate JOB_ID --against DATASET_ID\n"
        "  hotdog activate JOB_ID --force\n\na refusal (exit 1) says both scores.\n\n")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--force", action="store_true", help="activate even if the gate refuses")
    p.add_argument("--against", default=None, metavar="DATASET_ID",
                   help="compare both models on this dataset's test split (each needs an "
                   "evaluation on it: hotdog evaluate-model)")

    client_command("rollback", cmd_rollback, "activate again the model the newest activation "
                   "replaced", "examples:\n  hotdog rollback\n\n")

    p = client_command("history", cmd_history, "the changes of the active model, newest first "
                       "(who, when, both models and scores)", "examples:\n  hotdog history\n\n")
    p.add_argument("--limit", type=int, default=20, help="at most this many")

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
