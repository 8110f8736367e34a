"""A typed client of a running hotdog service: :class:`Client`, one method per endpoint.

A plain library (no printing, no command line): answers come back as the typed dicts below,
an error answer raises :class:`ServiceError` (with its HTTP status), an unreachable service
:class:`ConnectionError`. The ``hotdog`` commands that use it live in ``app.cli.remote``.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypedDict, cast, get_args

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)
TERMINAL: tuple[JobStatus, ...] = ("succeeded", "failed", "cancelled")
# A job parameter as sent to POST /jobs (None: the service's default).
ParamValue = str | int | float | None


class Dataset(TypedDict):
    id: str
    name: str
    classes: list[str]
    counts: dict[str, dict[str, int]]  # {split: {class: images}}
    warnings: list[str]
    size_bytes: int
    created_at: str


class Progress(TypedDict):
    epoch: int  # epochs finished
    epochs: int
    fraction: float  # 0..1 of the whole job
    eta_seconds: float | None


class EpochRecord(TypedDict):
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float | None  # None: the job has no validation split
    val_acc: float | None
    val_macro_f1: float | None
    test_loss: float
    test_acc: float
    images_per_s: float
    seconds: float


class Job(TypedDict):
    id: str
    kind: Literal["train", "evaluate"]  # evaluate: scores the model ``model_id``
    model_id: str | None
    dataset_id: str
    status: JobStatus
    params: dict[str, Any]
    progress: Progress
    latest_metrics: EpochRecord | None
    # The kept model's epoch (chosen on the validation split, or the last), never the best
    # test accuracy; selected_epoch once the job succeeded.
    best_metrics: EpochRecord | None
    selected_epoch: int | None
    note: str | None  # e.g. that early stopping ended it
    attempt: int
    max_attempts: int
    worker: str | None
    cancel_requested: bool
    error: str | None
    # Why it did not succeed (app.db.models.ErrorKind's values); clients branch on this.
    error_kind: str | None
    exports: dict[str, Any]
    created_at: str
    started_at: str | None
    finished_at: str | None
    heartbeat_at: str | None
    # A queued job that no live worker would take: the worker it waits for, in words.
    waiting_for: str | None


class Worker(TypedDict):
    name: str  # host:pid
    kind: Literal["gpu", "cpu"]
    gpus: int
    queues: list[str]
    version: str
    has_imagenet: bool  # it can run init: imagenet jobs
    started_at: str
    last_seen: str
    stopped_at: str | None
    alive: bool


class ClassReport(TypedDict):
    label: str
    precision: float
    recall: float
    f1: float
    support: int


class Evaluation(TypedDict):
    job_id: str
    accuracy: float
    loss: float
    classes: list[str]
    confusion: list[list[int]]  # confusion[i][j]: true class i predicted as j
    per_class: list[ClassReport]
    macro_f1: float
    balanced_accuracy: float  # the mean of the classes' recall
    # temperature (fitted on the validation split), ece_before / ece_after on test
    calibration: dict[str, Any] | None


class Model(TypedDict):
    id: str  # the job id
    dataset_id: str
    classes: list[str]
    image_size: int
    accuracy: float | None
    macro_f1: float | None
    active: bool
    finished_at: str | None


class ModelEvaluation(TypedDict):
    model_id: str
    dataset_id: str  # scored on its test split
    job_id: str  # the model's own training job, or an evaluate job
    source: Literal["training", "evaluation"]
    accuracy: float
    macro_f1: float
    loss: float
    classes: list[str]
    confusion: list[list[int]]
    per_class: list[ClassReport]
    created_at: str | None


class Activation(TypedDict):
    id: int
    action: Literal["activate", "rollback"]
    model_id: str  # the model made active
    previous_id: str | None  # the one it replaced
    undoes_id: int | None  # a rollback: the activation it undid
    metric: str | None
    dataset_id: str | None  # where both were scored
    model_score: float | None
    previous_score: float | None
    forced: bool
    actor: str
    client: str | None
    note: str
    created_at: str


class Prediction(TypedDict):
    filename: str
    label: str
    probabilities: dict[str, float]


class Predictions(TypedDict):
    model: str
    runtime: Literal["torch", "compiled", "onnx", "onnx_int8"]
    images_per_second: float | None  # the runtime's measured batched speed
    calibrated: bool  # probabilities = softmax(logits / temperature), fitted on validation
    temperature: float  # 1 when not calibrated
    predictions: list[Prediction]


class ServiceError(RuntimeError):
    """The service answered with an error; ``status`` is its HTTP status, ``kind`` the
    refusal's kind where it gives one (POST /jobs's 409: ``no_live_worker``,
    ``weights_missing``)."""

    def __init__(self, status: int, detail: object, kind: str | None = None,
                 body: dict[str, Any] | None = None) -> None:
        self.status = status
        self.detail = detail
        self.kind = kind
        self.body = body or {}  # the whole answer, e.g. a refused activation's comparison
        super().__init__(f"{status}: {_detail_text(detail)}")


def _detail_text(detail: object) -> str:
    if isinstance(detail, list):  # FastAPI validation errors
        return "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', [])[1:]) or 'request'}: {e.get('msg')}"
            for e in detail if isinstance(e, dict)
        ) or str(detail)
    return str(detail)


def _raise_for_status(r: httpx.Response) -> None:
    if r.status_code < 400:
        return
    try:
        body = r.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ServiceError(r.status_code, r.text)
    kind = body.get("kind")
    raise ServiceError(r.status_code, body.get("detail", r.text),
                       kind if isinstance(kind, str) else None, body)


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
            raise self._unreachable(exc) from exc
        _raise_for_status(r)
        return r

    def _unreachable(self, exc: Exception) -> ConnectionError:
        return ConnectionError(f"cannot reach the hotdog service at {self.url} ({exc}); "
                               "start it with `make run` or `hotdog serve`")

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def reachable(self, timeout: float = 3.0) -> bool:
        """Whether the service answers ``/health`` with 200 (no exception either way)."""
        try:
            return self.http.get("/health", timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    # -- the API, one method per endpoint
    def upload(self, source: str | Path, *, name: str | None = None,
               progress: Callable[[int, int], None] | None = None) -> Dataset:
        """Upload a dataset zip, or a folder (zipped on the fly). The file is streamed, not
        read into memory; ``progress(bytes_sent, total)`` is called as it goes."""
        source = Path(source)
        with tempfile.TemporaryDirectory(prefix="hotdog-upload-") as tmp:
            if source.is_dir():
                from app.datasets.archive import zip_dataset

                archive = zip_dataset(source, Path(tmp) / "dataset.zip")
                filename = source.name + ".zip"
            else:
                archive, filename = source, source.name
            form = {"name": name} if name else {}
            with open(archive, "rb") as fh:
                body = _ReadProgress(fh, progress) if progress is not None else fh
                return cast(Dataset, self._json(
                    "POST", "/datasets", data=form,
                    files={"file": (filename, body, "application/zip")}))

    def datasets(self) -> list[Dataset]:
        return cast(list[Dataset], self._json("GET", "/datasets"))

    def submit(self, dataset_id: str, **params: ParamValue) -> Job:
        """Start a job; a parameter left out or ``None`` takes the service's default.
        ``queue_anyway=True`` queues it even when no live worker would take it now (without
        it, such a job is refused: ServiceError 409)."""
        body = {"dataset_id": dataset_id, **{k: v for k, v in params.items() if v is not None}}
        return cast(Job, self._json("POST", "/jobs", json=body))

    def workers(self) -> list[Worker]:
        """The workers on record, most recently seen first, with whether each is alive."""
        return cast(list[Worker], self._json("GET", "/workers"))

    def job(self, job_id: str) -> Job:
        return cast(Job, self._json("GET", f"/jobs/{job_id}"))

    def jobs(self, *, status: JobStatus | None = None, dataset_id: str | None = None
             ) -> list[Job]:
        """The jobs, newest first (optionally of one status or dataset)."""
        filters = {k: v for k, v in (("status", status), ("dataset_id", dataset_id)) if v}
        return cast(list[Job], self._json("GET", "/jobs", params=filters))

    def metrics(self, job_id: str) -> list[EpochRecord]:
        return cast(list[EpochRecord], self._json("GET", f"/jobs/{job_id}/metrics"))

    def evaluation(self, job_id: str) -> Evaluation:
        return cast(Evaluation, self._json("GET", f"/jobs/{job_id}/evaluation"))

    def cancel(self, job_id: str) -> Job:
        return cast(Job, self._json("POST", f"/jobs/{job_id}/cancel"))

    def download_checkpoint(self, job_id: str, out: str | Path) -> Path:
        return self._download(f"/jobs/{job_id}/checkpoint", out)

    def download_export(self, job_id: str, out: str | Path, fmt: str = "onnx") -> Path:
        """The job's model as ONNX (verified by the worker) or TorchScript."""
        return self._download(f"/jobs/{job_id}/export", out, params={"format": fmt})

    def _download(self, path: str, out: str | Path, params: Mapping[str, str] | None = None
                  ) -> Path:
        out = Path(out)
        tmp = out.with_name(out.name + ".part")
        with self._stream(path, params) as r, open(tmp, "wb") as fh:
            for chunk in r.iter_bytes():
                fh.write(chunk)
        tmp.replace(out)
        return out

    @contextmanager
    def _stream(self, path: str, params: Mapping[str, str] | None) -> Iterator[httpx.Response]:
        try:
            with self.http.stream("GET", path, params=params) as r:
                if r.status_code >= 400:
                    r.read()
                    _raise_for_status(r)
                yield r
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    def models(self) -> list[Model]:
        return cast(list[Model], self._json("GET", "/models"))

    def activate(self, job_id: str, *, force: bool = False, against: str | None = None
                 ) -> Model:
        """Make the model the default of /predict. Refused (ServiceError 409, ``kind``
        ``promotion_refused``, ``against_required`` or ``evaluation_missing``, ``body``
        with both scores) unless it scores at least as well as the active model, or
        ``force``. ``against``: compare both on this dataset's test split."""
        params: dict[str, str] = {"force": "true"} if force else {}
        if against:
            params["against"] = against
        return cast(Model, self._json("POST", f"/models/{job_id}/activate", params=params))

    def rollback(self) -> Activation:
        """Activate again the model the newest activation replaced (409: none left)."""
        return cast(Activation, self._json("POST", "/models/rollback"))

    def history(self, *, limit: int = 100) -> list[Activation]:
        """The changes of the active model, newest first."""
        return cast(list[Activation], self._json("GET", "/models/history",
                                                 params={"limit": limit}))

    def evaluate_model(self, job_id: str, dataset_id: str, *, queue_anyway: bool = False
                       ) -> Job:
        """Start a job that scores the model on the dataset's test split (watch it as any
        job; its result is :meth:`evaluation` of that job)."""
        body: dict[str, Any] = {"dataset_id": dataset_id}
        if queue_anyway:
            body["queue_anyway"] = True
        return cast(Job, self._json("POST", f"/models/{job_id}/evaluate", json=body))

    def model_evaluations(self, job_id: str) -> list[ModelEvaluation]:
        return cast(list[ModelEvaluation], self._json("GET", f"/models/{job_id}/evaluations"))

    def predict(self, images: Sequence[str | Path], *, model: str | None = None
                ) -> Predictions:
        files = [("file", (Path(p).name, Path(p).read_bytes(), "application/octet-stream"))
                 for p in images]
        return cast(Predictions, self._json("POST", "/predict", files=files,
                                            data={"model": model} if model else {}))

    def watch(self, job_id: str, *, interval: float = 1.0,
              on_update: Callable[[Job], None] | None = None) -> Job:
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
