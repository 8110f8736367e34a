"""A client of a running hotdog service: :class:`Client`, and the ``hotdog`` commands that
use it (upload, submit, watch, jobs, cancel, classify).

``--url`` (or ``HOTDOG_URL``) says where the service is, default ``http://127.0.0.1:8000``
(what ``make run`` starts); ``--api-key`` (or ``HOTDOG_API_KEY``) when it needs a key.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = ("succeeded", "failed", "cancelled")


class ServiceError(RuntimeError):
    """The service answered with an error; ``status`` is its HTTP status."""

    def __init__(self, status: int, detail: Any) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"{status}: {_detail_text(detail)}")


def _detail_text(detail: Any) -> str:
    if isinstance(detail, list):  # FastAPI validation errors
        return "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', [])[1:]) or 'request'}: {e.get('msg')}"
            for e in detail if isinstance(e, dict)
        ) or str(detail)
    return str(detail)


class Client:
    def __init__(self, url: str = DEFAULT_URL, *, api_key: str | None = None,
                 timeout: float = 600.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ConnectionError(
                f"cannot reach the hotdog service at {self.url} ({exc}); start it with "
                "`make run` or `hotdog serve`, or pass --url"
            ) from exc
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise ServiceError(r.status_code, detail)
        return r

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    # -- the API, one method per endpoint
    def upload(self, source: str | Path, *, name: str | None = None,
               progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Upload a dataset zip, or a folder (zipped on the fly). The file is streamed, not
        read into memory; ``progress(bytes_sent, total)`` is called as it goes."""
        source = Path(source)
        with tempfile.TemporaryDirectory(prefix="hotdog-upload-") as tmp:
            if source.is_dir():
                from app.datasets.archive import zip_dataset

                archive, filename = zip_dataset(source, Path(tmp) / "dataset.zip"), \
                    source.name + ".zip"
            else:
                archive, filename = source, source.name
            form = {"name": name} if name else {}
            with open(archive, "rb") as fh:
                body = _ReadProgress(fh, progress) if progress is not None else fh
                return self.json("POST", "/datasets", data=form,  # type: ignore[no-any-return]
                                 files={"file": (filename, body, "application/zip")})

    def datasets(self) -> list[dict[str, Any]]:
        return self.json("GET", "/datasets")  # type: ignore[no-any-return]

    def submit(self, dataset_id: str, **params: Any) -> dict[str, Any]:
        body = {"dataset_id": dataset_id, **{k: v for k, v in params.items() if v is not None}}
        return self.json("POST", "/jobs", json=body)  # type: ignore[no-any-return]

    def job(self, job_id: str) -> dict[str, Any]:
        return self.json("GET", f"/jobs/{job_id}")  # type: ignore[no-any-return]

    def jobs(self, **filters: Any) -> list[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v is not None}
        return self.json("GET", "/jobs", params=params)  # type: ignore[no-any-return]

    def metrics(self, job_id: str) -> list[dict[str, Any]]:
        return self.json("GET", f"/jobs/{job_id}/metrics")  # type: ignore[no-any-return]

    def evaluation(self, job_id: str) -> dict[str, Any]:
        return self.json("GET", f"/jobs/{job_id}/evaluation")  # type: ignore[no-any-return]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.json("POST", f"/jobs/{job_id}/cancel")  # type: ignore[no-any-return]

    def download_checkpoint(self, job_id: str, out: str | Path) -> Path:
        return self._download(f"/jobs/{job_id}/checkpoint", out)

    def download_export(self, job_id: str, out: str | Path, fmt: str = "onnx") -> Path:
        """The job's model as ONNX (verified by the worker) or TorchScript."""
        return self._download(f"/jobs/{job_id}/export", out, params={"format": fmt})

    def _download(self, path: str, out: str | Path, params: dict[str, str] | None = None
                  ) -> Path:
        out = Path(out)
        tmp = out.with_name(out.name + ".part")
        with self.http.stream("GET", path, params=params) as r:
            if r.status_code >= 400:
                r.read()
                raise ServiceError(r.status_code, r.json().get("detail", r.text))
            with open(tmp, "wb") as fh:
                for chunk in r.iter_bytes():
                    fh.write(chunk)
        tmp.replace(out)
        return out

    def models(self) -> list[dict[str, Any]]:
        return self.json("GET", "/models")  # type: ignore[no-any-return]

    def activate(self, job_id: str) -> dict[str, Any]:
        return self.json("POST", f"/models/{job_id}/activate")  # type: ignore[no-any-return]

    def predict(self, images: Sequence[str | Path], *, model: str | None = None
                ) -> dict[str, Any]:
        files = [("file", (Path(p).name, Path(p).read_bytes(), "application/octet-stream"))
                 for p in images]
        return self.json("POST", "/predict", files=files,  # type: ignore[no-any-return]
                         data={"model": model} if model else {})

    def watch(self, job_id: str, *, interval: float = 1.0,
              on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll until the job ends; returns its final state."""
        while True:
            job = self.job(job_id)
            if on_update is not None:
                on_update(job)
            if job["status"] in TERMINAL:
                return job
            time.sleep(interval)


class _ReadProgress:
    """A binary file that reports how far it has been read: httpx streams a multipart file
    by reading it in chunks, so this is an upload's progress. Length and position come from
    the file itself (httpx sends a Content-Length)."""

    def __init__(self, fh: BinaryIO, progress: Callable[[int, int], None]) -> None:
        self.fh = fh
        self.progress = progress
        self.total = os.fstat(fh.fileno()).st_size

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        self.progress(self.fh.tell(), self.total)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.fh.seek(offset, whence)

    def tell(self) -> int:
        return self.fh.tell()

    def fileno(self) -> int:
        return self.fh.fileno()


# ------------------------------------------------------------------------ commands
def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, api_key=args.api_key)


def _print_dataset(ds: dict[str, Any]) -> None:
    print(f"dataset {ds['id']} ({ds['name']}): classes {', '.join(ds['classes'])}")
    for split, per in ds["counts"].items():
        print(f"  {split}: " + ", ".join(f"{c} {n}" for c, n in per.items()))
    for w in ds.get("warnings", []):
        print(f"  warning: {w}")


def progress_bar(**kwargs: Any) -> Any:
    """A tqdm bar on stderr, shown when stderr is a terminal (``--json`` or not: stdout
    stays clean for the JSON)."""
    from tqdm import tqdm

    return tqdm(disable=not sys.stderr.isatty(), file=sys.stderr, dynamic_ncols=True,
                leave=False, **kwargs)


def cmd_upload(args: argparse.Namespace, emit: Callable[[Any], None]) -> int:
    with _client(args) as c, progress_bar(unit="B", unit_scale=True, unit_divisor=1024,
                                          desc="uploading") as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)
            if done >= total:  # the service now unpacks and decodes every image
                bar.set_description("validating")

        ds = c.upload(args.source, name=args.name, progress=progress)
    if args.json:
        emit(ds)
    else:
        _print_dataset(ds)
        print(f"next: hotdog submit {ds['id']} --watch")
    return 0


def _params(args: argparse.Namespace) -> dict[str, Any]:
    names = ("init", "epochs", "batch_size", "lr", "head_lr_mult", "weight_decay", "momentum",
             "image_size", "seed", "precision", "gpus")
    return {n: getattr(args, n) for n in names}


def cmd_submit(args: argparse.Namespace, emit: Callable[[Any], None]) -> int:
    with _client(args) as c:
        job = c.submit(args.dataset_id, **_params(args))
        if not args.json:
            print(f"job {job['id']} {job['status']}")
        if args.watch:
            return _watch(c, job["id"], args, emit)
    if args.json:
        emit(job)
    return 0


def cmd_watch(args: argparse.Namespace, emit: Callable[[Any], None]) -> int:
    with _client(args) as c:
        return _watch(c, args.job_id, args, emit)


def _watch(c: Client, job_id: str, args: argparse.Namespace, emit: Callable[[Any], None]
           ) -> int:
    show = not args.json
    bar = progress_bar(total=1000, bar_format="{l_bar}{bar}| {postfix}")
    printed = 0

    def update(job: dict[str, Any]) -> None:
        nonlocal printed
        p = job["progress"]
        bar.n = int(p["fraction"] * 1000)
        bar.set_description(f"{job['status']} epoch {min(p['epoch'] + 1, p['epochs'])}"
                            f"/{p['epochs']}")
        eta = p.get("eta_seconds")
        bar.set_postfix_str(f"eta {eta:.0f}s" if eta is not None else "")
        if show and p["epoch"] > printed:
            if printed == 0:
                bar.write(f"{'epoch':>5} {'train loss':>10} {'train acc':>9} {'test loss':>9} "
                          f"{'test acc':>8} {'img/s':>7} {'sec':>6}")
            for m in c.metrics(job_id)[printed:]:
                bar.write(f"{m['epoch']:>5} {m['train_loss']:>10.4f} {m['train_acc']:>9.3f} "
                          f"{m['test_loss']:>9.4f} {m['test_acc']:>8.3f} "
                          f"{m['images_per_s']:>7.1f} {m['seconds']:>6.1f}")
                printed = m["epoch"]

    try:
        job = c.watch(job_id, interval=args.interval, on_update=update)
    finally:
        bar.close()
    if args.json:
        emit(job)
    elif job["status"] == "succeeded":
        best = job.get("best_metrics") or {}
        print(f"job {job_id} succeeded: test accuracy {job['latest_metrics']['test_acc']:.3f}"
              f" (best {best.get('test_acc', float('nan')):.3f} at epoch {best.get('epoch')})")
        print(f"next: hotdog classify --model {job_id} PHOTO")
    else:
        print(f"job {job_id} {job['status']}" + (f": {job['error']}" if job["error"] else ""))
    return job_exit_code(job)


def job_exit_code(job: dict[str, Any]) -> int:
    """0 when the job succeeded; 4 when it failed for want of ImageNet weights; else 1."""
    from app.cli import EXIT_FAILED, EXIT_OK, EXIT_WEIGHTS

    if job["status"] == "succeeded":
        return EXIT_OK
    if job["status"] == "failed" and (job.get("error") or "").startswith(
            "PretrainedWeightsMissing"):
        return EXIT_WEIGHTS
    return EXIT_FAILED


def cmd_jobs(args: argparse.Namespace, emit: Callable[[Any], None]) -> int:
    with _client(args) as c:
        rows = c.jobs(status=args.status)
    if args.json:
        emit({"jobs": rows})
        return 0
    print(f"{'id':<32} {'status':<9} {'epoch':>7} {'test acc':>8}  created")
    for j in rows:
        acc = (j.get("latest_metrics") or {}).get("test_acc")
        epoch = f"{j['progress']['epoch']}/{j['progress']['epochs']}"
        acc_text = "" if acc is None else f"{acc:.3f}"
        print(f"{j['id']:<32} {j['status']:<9} {epoch:>7} {acc_text:>8}  {j['created_at'][:19]}")
    return 0


def cmd_cancel(args: argparse.Namespace, emit: Callable[[Any], None]) -> int:
    with _client(args) as c:
        job = c.cancel(args.job_id)
    if args.json:
        emit(job)
    else:
        state = "cancel requested" if job["status"] == "running" else job["status"]
        print(f"job {job['id']} {state}")
    return 0


def cmd_classify(args: argparse.Namespace, emit: Callable[[Any], None]) -> int:
    with _client(args) as c:
        out = c.predict(args.images, model=args.model)
    if args.json:
        emit(out)
    else:
        for p in out["predictions"]:
            print(f"{p['filename']}\t{p['label']}\t{p['probabilities'][p['label']]:.4f}")
    return 0


def add_commands(command: Callable[..., argparse.ArgumentParser],
                 run: Callable[[Callable[..., int]], Callable[[argparse.Namespace], int]]
                 ) -> None:
    """Register the client commands on the ``hotdog`` parser (see app.cli)."""

    def client_command(name: str, func: Callable[..., int], help: str, epilog: str
                       ) -> argparse.ArgumentParser:
        p = command(name, run(func), help, epilog)
        p.add_argument("--url", default=os.environ.get("HOTDOG_URL", DEFAULT_URL),
                       help="the service (env HOTDOG_URL)")
        p.add_argument("--api-key", default=os.environ.get("HOTDOG_API_KEY"),
                       help="API key, when the service has one (env HOTDOG_API_KEY)")
        return p

    p = client_command("upload", cmd_upload, "upload a dataset (zip or folder) to the service",
                       "examples:\n  hotdog demo-data data/demo --zip\n"
                       "  hotdog upload data/demo.zip\n  hotdog upload data/demo --name demo\n\n")
    p.add_argument("source", metavar="ZIP_OR_FOLDER")
    p.add_argument("--name", default=None)
    p.set_defaults(unusable_422=True)  # a refused dataset is unusable input (exit 3)

    p = client_command("submit", cmd_submit, "start a fine-tune job on an uploaded dataset",
                       "examples:\n  hotdog submit DATASET_ID --watch\n"
                       "  hotdog submit DATASET_ID --init scratch --image-size 64 --epochs 8 "
                       "--batch-size 16 --lr 0.05\n\n")
    p.add_argument("dataset_id", metavar="DATASET_ID")
    p.add_argument("--init", default=None, help="imagenet (default), scratch or job:<id>")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--head-lr-mult", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--momentum", type=float, default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--precision", default=None, choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--gpus", type=int, default=None,
                   help="GPUs to train on, one process each (default 1; 0: all of the worker's)")
    p.add_argument("--watch", action="store_true", help="then show progress until it ends")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls")

    p = client_command("watch", cmd_watch, "show a job's progress until it ends (exit 0 when "
                       "it succeeded)", "examples:\n  hotdog watch JOB_ID\n\n")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls")

    p = client_command("jobs", cmd_jobs, "list the service's jobs, newest first",
                       "examples:\n  hotdog jobs\n  hotdog jobs --status running\n\n")
    p.add_argument("--status", default=None,
                   choices=("queued", "running", "succeeded", "failed", "cancelled"))

    p = client_command("cancel", cmd_cancel, "cancel a queued or running job",
                       "examples:\n  hotdog cancel JOB_ID\n\n")
    p.add_argument("job_id", metavar="JOB_ID")

    p = client_command("classify", cmd_classify, "classify photos with the service's model",
                       "examples:\n  hotdog classify lunch.jpg dinner.png\n"
                       "  hotdog classify lunch.jpg --model JOB_ID --json\n\n")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("--model", default=None, help="job id (default: the active model)")
    p.set_defaults(unusable_422=True)  # a file that is no image is unusable input (exit 3)
