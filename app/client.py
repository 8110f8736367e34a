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
from typing import Any, BinaryIO, Literal, NotRequired, TypedDict, TypeVar, cast, get_args

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
    report_status: Literal["pending", "running", "ready", "failed"]
    report_error: str | None
    parent_id: str | None  # a relabelled version: the dataset it was made from
    changes: dict[str, str] | None  # and its changes: parent's image id -> class | "drop"


class ReportImage(TypedDict):
    image_id: int  # its id in the dataset (GET /datasets/{id}/images/{image_id})
    split: str
    label: str
    path: str  # its path in the uploaded zip


class ReportGroup(TypedDict):
    kind: Literal["exact", "near"]  # the same decoded pixels, or perceptual hashes close
    scope: str  # train | val | test, or leakage (images in more than one split)
    splits: list[str]
    labels: list[str]
    label_conflict: bool  # the same photo under two classes
    images: list[ReportImage]


class DatasetReport(TypedDict):
    dataset_id: str
    status: Literal["pending", "running", "ready", "failed"]
    error: str | None
    # summary, counts, thresholds, groups (ReportGroup), image_issues, unreadable
    report: dict[str, Any] | None


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
    # evaluate: scores the model ``model_id``; predict: classifies photos with it; review:
    # reviews the labels of its dataset
    kind: Literal["train", "evaluate", "predict", "review"]
    model_id: str | None
    dataset_id: str | None  # None: a predict job of uploaded photos
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
    deleted_at: str | None  # DELETE /jobs/{id}: its files are gone, its history stays
    files_removed_at: str | None  # its model files were removed (files_only, KEEP_MODELS)


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


class StorageItem(TypedDict):
    kind: Literal["dataset", "job"]
    id: str
    name: str
    bytes: int
    by_category: dict[str, int]
    status: str | None  # a job's
    created_at: str | None
    protected: str | None  # why deleting it is refused now; None: it can be deleted
    deleted: bool
    files_removed: bool


class Storage(TypedDict):
    free_bytes: int  # on DATA_DIR's file system
    total_bytes: int
    used_bytes: int  # every file under DATA_DIR
    # datasets, checkpoints, exports, logs, temporary, database, other
    categories: dict[str, int]
    datasets: int
    jobs_with_files: int
    biggest: list[StorageItem]  # biggest first


class Prediction(TypedDict):
    filename: str
    label: str
    probabilities: dict[str, float]
    explanation: NotRequired[dict[str, Any] | None]  # with explain: the Grad-CAM heatmap


class Predictions(TypedDict):
    model: str
    runtime: Literal["torch", "compiled", "onnx", "onnx_int8"]
    images_per_second: float | None  # the runtime's measured batched speed
    calibrated: bool  # probabilities = softmax(logits / temperature), fitted on validation
    temperature: float  # 1 when not calibrated
    predictions: list[Prediction]


class BatchSummary(TypedDict):
    photos: int
    predicted: int
    failed: int  # photos that did not decode (their row has the error)
    labels: dict[str, int]
    runtime: str | None
    device: str | None
    seconds: float | None  # the worker's time for the whole job


class PredictionJob(TypedDict):
    """A batch prediction job (POST /predictions)."""

    id: str
    status: JobStatus
    model_id: str
    source: Literal["upload", "dataset"]
    dataset_id: str | None
    split: str | None
    coverage: bool  # its rows have crop_coverage
    photos: int
    done: int  # photos classified so far
    fraction: float
    ignored: int  # files of the zip that are not images by their name
    summary: BatchSummary | None  # once it succeeded
    results: str | None  # the path of its results, once it succeeded
    attempt: int
    cancel_requested: bool
    error: str | None
    error_kind: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    waiting_for: str | None


ResultsFormat = Literal["csv", "jsonl"]
class LabelIssue(TypedDict):
    image_id: int  # the image's id in its dataset
    split: str
    label: str  # its given class
    path: str  # as uploaded
    suggested: str  # the class an out-of-sample classifier finds likeliest
    confidence: float  # that classifier's probability of ``suggested``
    rank: int  # 1: the likeliest to be mislabeled


class Outlier(TypedDict):
    image_id: int
    split: str
    label: str
    path: str
    score: float  # cleanlab's outlier score: the lower, the more unusual


class LabelReview(TypedDict):
    job_id: str  # the review job
    dataset_id: str
    status: JobStatus
    backbone: str  # empty until it succeeded
    issues: list[LabelIssue]  # the likeliest mislabeled first
    outliers: list[Outlier]  # the most unusual first


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

    def dataset(self, dataset_id: str) -> Dataset:
        return cast(Dataset, self._json("GET", f"/datasets/{dataset_id}"))

    def report(self, dataset_id: str) -> DatasetReport:
        """The dataset's report (``report`` None while pending or running)."""
        return cast(DatasetReport, self._json("GET", f"/datasets/{dataset_id}/report"))

    def wait_report(self, dataset_id: str, *, interval: float = 1.0,
                    timeout: float | None = None) -> DatasetReport:
        """Poll until the report is ready or failed (TimeoutError after ``timeout`` s)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            out = self.report(dataset_id)
            if out["status"] in ("ready", "failed"):
                return out
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"dataset {dataset_id}'s report is still {out['status']} "
                                   f"after {timeout} s")
            time.sleep(interval)

    def thumbnail(self, dataset_id: str, image_id: int, *, size: int = 128) -> bytes:
        """Image ``image_id`` of the dataset as a JPEG fitted in ``size`` x ``size``."""
        return self.request("GET", f"/datasets/{dataset_id}/images/{image_id}",
                            params={"size": size}).content

    def relabel(self, dataset_id: str, changes: Mapping[str, str] | Mapping[int, str], *,
                name: str | None = None) -> Dataset:
        """A new version of the dataset: ``changes`` maps image ids to a class or
        ``"drop"``. The old version is not modified."""
        body: dict[str, Any] = {"changes": {str(k): v for k, v in changes.items()}}
        if name is not None:
            body["name"] = name
        return cast(Dataset, self._json("POST", f"/datasets/{dataset_id}/relabel", json=body))

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

    def delete_job(self, job_id: str, *, files_only: bool = False) -> None:
        """Delete the job's files and hide it (its history stays), or with ``files_only``
        free its model files and keep it listed. ServiceError 409 while it is queued or
        running, the active model, or used by a live job (``body["used_by"]``)."""
        self.request("DELETE", f"/jobs/{job_id}",
                     params={"files_only": "true"} if files_only else None)

    def delete_dataset(self, dataset_id: str) -> None:
        self.request("DELETE", f"/datasets/{dataset_id}")

    def logs(self, job_id: str, *, tail: int | None = None) -> str:
        """The job's log (its worker's and training process's lines), or its last ``tail``
        lines."""
        params = {"tail": str(tail)} if tail is not None else None
        return self.request("GET", f"/jobs/{job_id}/logs", params=params).text

    def follow_logs(self, job_id: str, *, tail: int | None = None) -> Iterator[str]:
        """The job's log as it is written, until the job ends (from its last ``tail``
        lines, else from the start)."""
        params = {"follow": "true", **({"tail": str(tail)} if tail is not None else {})}
        try:
            with self.http.stream("GET", f"/jobs/{job_id}/logs", params=params,
                                  timeout=httpx.Timeout(self.http.timeout.connect,
                                                        read=None)) as r:
                if r.status_code >= 400:
                    r.read()
                    _raise_for_status(r)
                yield from r.iter_text()
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    def storage(self, *, limit: int = 20) -> Storage:
        """What the service's DATA_DIR holds, its free space, the biggest items."""
        return cast(Storage, self._json("GET", "/storage", params={"limit": limit}))

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

    def activate(self, job_id: str, *, force: bool = False, against: str | None = None,
                 threshold: float | None = None, threshold_class: str | None = None
                 ) -> Model:
        """Make the model the default of /predict. Refused (ServiceError 409, ``kind``
        ``promotion_refused``, ``against_required`` or ``evaluation_missing``, ``body``
        with both scores) unless it scores at least as well as the active model, or
        ``force``. ``against``: compare both on this dataset's test split."""
        params: dict[str, str] = {"force": "true"} if force else {}
        if against:
            params["against"] = against
        body: dict[str, object] | None = None
        if threshold is not None:  # a two-class model's decision threshold on this class
            body = {"threshold": threshold, "class": threshold_class}
        return cast(Model, self._json("POST", f"/models/{job_id}/activate", params=params,
                                      json=body))

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

    def review(self, job_id: str, *, queue_anyway: bool = False) -> Job:
        """Start a job that reviews the labels of a succeeded training job's training
        images (ServiceError 409 when it has not succeeded, or a review is running)."""
        body = {"queue_anyway": True} if queue_anyway else {}
        return cast(Job, self._json("POST", f"/jobs/{job_id}/review", json=body))

    def label_review(self, job_id: str) -> LabelReview:
        """The newest label review of a training job (or the review job ``job_id``); its
        lists are empty until it succeeded (ServiceError 404 when there is none)."""
        return cast(LabelReview, self._json("GET", f"/jobs/{job_id}/label-review"))

    def model_evaluations(self, job_id: str) -> list[ModelEvaluation]:
        return cast(list[ModelEvaluation], self._json("GET", f"/models/{job_id}/evaluations"))

    def predict(self, images: Sequence[str | Path], *, model: str | None = None,
                explain: bool = False, explain_class: str | None = None,
                top_k: int | None = None, crop: str | None = None) -> Predictions:
        """``explain``: each prediction carries its Grad-CAM ``explanation`` (the overlay
        PNG in base64 among it); ``crop="full"``: the whole photo, not the centre crop."""
        files = [("file", (Path(p).name, Path(p).read_bytes(), "application/octet-stream"))
                 for p in images]
        data: dict[str, str] = {"model": model} if model else {}
        if explain:
            data["explain"] = "true"
        for key, value in (("explain_class", explain_class), ("top_k", top_k), ("crop", crop)):
            if value is not None:
                data[key] = str(value)
        return cast(Predictions, self._json("POST", "/predict", files=files, data=data))

    def predict_files(self, files: Sequence[tuple[str, bytes]], *, model: str | None = None
                      ) -> Predictions:
        """/predict on photos given as (filename, bytes): one request."""
        parts = [("file", (name, data, "application/octet-stream")) for name, data in files]
        return cast(Predictions, self._json("POST", "/predict", files=parts,
                                            data={"model": model} if model else {}))

    def submit_predictions(self, source: str | Path, *, model: str | None = None,
                           queue_anyway: bool = False, coverage: bool = False,
                           progress: Callable[[int, int], None] | None = None
                           ) -> PredictionJob:
        """A batch prediction job for a zip of photos, or a folder (its photos zipped on the
        fly, by their paths in it). The zip is streamed; ``progress(bytes_sent, total)``.
        ``coverage``: each row also gets its crop coverage (slower)."""
        source = Path(source)
        with tempfile.TemporaryDirectory(prefix="hotdog-photos-") as tmp:
            archive = (zip_photos(source, Path(tmp) / "photos.zip") if source.is_dir()
                       else source)
            form: dict[str, str] = {"model": model} if model else {}
            if queue_anyway:
                form["queue_anyway"] = "true"
            if coverage:
                form["coverage"] = "true"
            with open(archive, "rb") as fh:
                body = _ReadProgress(fh, progress) if progress is not None else fh
                return cast(PredictionJob, self._json(
                    "POST", "/predictions", data=form,
                    files={"file": (archive.name, body, "application/zip")}))

    def submit_dataset_predictions(self, dataset_id: str, *, split: str = "test",
                                   model: str | None = None, queue_anyway: bool = False,
                                   coverage: bool = False) -> PredictionJob:
        """A batch prediction job for one split of a stored dataset."""
        body: dict[str, Any] = {"dataset_id": dataset_id, "split": split, "coverage": coverage}
        if model:
            body["model"] = model
        if queue_anyway:
            body["queue_anyway"] = True
        return cast(PredictionJob, self._json("POST", "/predictions", json=body))

    def prediction(self, job_id: str) -> PredictionJob:
        return cast(PredictionJob, self._json("GET", f"/predictions/{job_id}"))

    def predictions(self) -> list[PredictionJob]:
        """The batch prediction jobs, newest first."""
        return cast(list[PredictionJob], self._json("GET", "/predictions"))

    def cancel_prediction(self, job_id: str) -> PredictionJob:
        return cast(PredictionJob, self._json("POST", f"/predictions/{job_id}/cancel"))

    @contextmanager
    def prediction_results(self, job_id: str, fmt: ResultsFormat = "csv"
                           ) -> Iterator[Iterator[bytes]]:
        """The results of a succeeded batch job as they stream in (ServiceError 409 until
        it has succeeded)."""
        with self._stream(f"/predictions/{job_id}/results", {"format": fmt}) as r:
            yield r.iter_bytes()

    def watch_prediction(self, job_id: str, *, interval: float = 1.0,
                         on_update: Callable[[PredictionJob], None] | None = None
                         ) -> PredictionJob:
        """Poll until the batch job ends; returns its final state."""
        return _poll(lambda: self.prediction(job_id), interval, on_update)

    def watch(self, job_id: str, *, interval: float = 1.0,
              on_update: Callable[[Job], None] | None = None) -> Job:
        """Poll until the job ends; returns its final state."""
        return _poll(lambda: self.job(job_id), interval, on_update)


def zip_photos(folder: Path, out: Path) -> Path:
    """The photos under ``folder`` (any layout), stored by their paths in it."""
    import zipfile

    from app.engine.batch import photos_in

    photos, _ = photos_in(folder)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:  # photos do not deflate
        for photo in photos:
            zf.write(photo.path, photo.name)
    return out


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


_Watched = TypeVar("_Watched", bound=Mapping[str, object])


def _poll(get: Callable[[], _Watched], interval: float,
          on_update: Callable[[_Watched], None] | None) -> _Watched:
    """``get()`` every ``interval`` s (``on_update`` each answer) until it is terminal."""
    while True:
        job = get()
        if on_update is not None:
            on_update(job)
        if job["status"] in TERMINAL:
            return job
        time.sleep(interval)
