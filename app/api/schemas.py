"""Request and response bodies of the HTTP API (they also make the OpenAPI docs)."""

from __future__ import annotations

import re
from datetime import datetime
from types import NoneType
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args, get_type_hints

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model

from app.db.models import ErrorKind
from app.engine.config import INIT_IMAGENET, INIT_SCRATCH, Param, TrainConfig, params
from app.jobs.service import JOB_INIT_PATTERN

MAX_OFFSET = 10**9  # beyond any real list; larger values overflow the databases' integers


class DatasetOut(BaseModel):
    id: str
    name: str
    classes: list[str]
    counts: dict[str, dict[str, int]] = Field(
        description="images per split and class: {train: {class: n}, test: {class: n}}, and "
        "val when the dataset has a val/ folder (its validation split)"
    )
    warnings: list[str]
    size_bytes: int
    created_at: datetime
    report_status: Literal["pending", "running", "ready", "failed"] = Field(
        description="its report (GET /datasets/{id}/report), computed in the background")
    report_error: str | None = None
    parent_id: str | None = Field(
        None, description="the dataset this version was relabelled from")
    changes: dict[str, str] | None = Field(
        None, description="a relabelled version's changes: parent's image id -> class or "
        "\"drop\"")


class ReportOut(BaseModel):
    """A dataset's report. 202 while it is pending or running (``report`` null), 200 once
    it is ready (or failed: ``error`` says why)."""

    dataset_id: str
    status: Literal["pending", "running", "ready", "failed"]
    error: str | None = None
    report: dict[str, Any] | None = Field(
        None, description="summary, counts, thresholds, duplicate/leakage groups, image "
        "issues; every image as {image_id, split, label, path} (path: as uploaded)")


class RelabelRequest(BaseModel):
    """A new version of the dataset with these changes (the old one is never modified)."""

    model_config = ConfigDict(extra="forbid")

    changes: dict[str, str] = Field(
        description="image id -> an existing class, or \"drop\" to leave it out")
    name: str | None = Field(None, max_length=200)


class JobRequest(BaseModel):
    """A fine-tune job. Every field but ``dataset_id`` has the recipe's default; ``lr`` and
    ``head_lr_mult`` default by ``init`` (pretrained: 0.0064 and 10; scratch: 0.064 and 1)."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(min_length=1, max_length=64)
    queue_anyway: bool = Field(
        False, description="queue the job even when no live worker would take it now (no "
        "worker for its queue, or none with the ImageNet weights for an `imagenet` start); "
        "it waits until one starts. Without it such a job is refused with 409")
    review_labels: bool = Field(
        False, description="when the training succeeds, review its training images' labels "
        "in a follow-up job (kind `review`): likely mislabeled images and outliers, at GET "
        "/jobs/{id}/label-review")

    def train_config(self) -> TrainConfig:
        """The engine's config as asked for (``jobs.service.submit`` fills in the defaults
        that depend on ``init`` and checks the ranges)."""
        return TrainConfig(**self.model_dump(exclude={"dataset_id", "queue_anyway",
                                                      "review_labels"}))


def _full_match(pattern: str, message: str) -> Any:
    """A string validator for ``pattern`` as a whole: JSON Schema's and pydantic's
    ``pattern`` search, and ``$`` lets a trailing newline through."""

    def check(value: str) -> str:
        if not re.fullmatch(pattern, value):
            raise ValueError(message)
        return value

    return AfterValidator(check)


def _bound(value: float | None, kind: type) -> float | None:
    # An int field shows int bounds in the schema (minimum: 1, not 1.0).
    return int(value) if value is not None and kind is int else value


def _job_field(name: str, kind: Any, default: Any, param: Param) -> tuple[Any, Any]:
    """A request field from a TrainConfig field: its type, default, range and help."""
    pattern = JOB_INIT_PATTERN if name == "init" else param.pattern
    base = kind if not param.optional else next(a for a in get_args(kind) if a is not NoneType)
    if param.choices is not None:
        kind = Literal[param.choices]
    elif pattern is not None:
        message = (f"{name} must be 'imagenet', 'scratch' or 'job:<job id>'" if name == "init"
                   else f"{name} must match {pattern}")
        kind = Annotated[kind, _full_match(pattern, message)]
    extra: dict[str, Any] = {}
    if pattern is not None:
        extra["pattern"] = f"^(?:{pattern})$"
    if param.optional:  # None means "the default for this init": say what it becomes
        extra["x-default-by-init"] = {
            init: getattr(TrainConfig(init=init).resolved(), name)
            for init in (INIT_IMAGENET, INIT_SCRATCH)}
    field = Field(
        default, description=param.help, ge=_bound(param.ge, base), gt=_bound(param.gt, base),
        le=_bound(param.le, base), lt=_bound(param.lt, base), json_schema_extra=extra or None)
    return kind, field


def _job_create() -> type[JobRequest]:
    """``JobRequest`` with a field per TrainConfig parameter offered on the API: a parameter
    added to TrainConfig appears here, in the OpenAPI schema and in the web page's form."""
    hints = get_type_hints(TrainConfig)
    fields = {f.name: _job_field(f.name, hints[f.name], f.default, p)
              for f, p in params("api")}
    model: type[JobRequest] = create_model(  # type: ignore[call-overload]
        "JobCreate", __base__=JobRequest, __module__=__name__, **fields)
    return model


if TYPE_CHECKING:
    JobCreate = JobRequest  # what type checkers see: the fields are made at import
else:
    JobCreate = _job_create()


class Progress(BaseModel):
    epoch: int = Field(description="epochs finished")
    epochs: int
    fraction: float = Field(description="0..1 of the whole job, within-epoch included")
    eta_seconds: float | None = Field(description="estimated seconds left, from epoch times")


class EpochOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    epoch: int = Field(description="1-based")
    train_loss: float = Field(description="mean cross-entropy over the epoch's training pass")
    train_acc: float = Field(description="accuracy on the (augmented) training images")
    val_loss: float | None = Field(
        None, description="mean cross-entropy on the validation split (null without one)")
    val_acc: float | None = Field(None, description="accuracy on the validation split")
    val_macro_f1: float | None = Field(None, description="macro F1 on the validation split")
    test_loss: float = Field(description="mean cross-entropy on the test split (reported, "
                             "never used to choose anything)")
    test_acc: float = Field(description="accuracy on the test split")
    images_per_s: float = Field(description="training images per second, loading included")
    seconds: float = Field(description="the whole epoch: training pass and evaluation")


class JobOut(BaseModel):
    id: str
    kind: Literal["train", "evaluate", "predict", "review"] = Field(
        "train", description="train: fine-tunes a model (the job id is then the model's id); "
        "evaluate: scores the model `model_id` on the test split of `dataset_id` (POST "
        "/models/{id}/evaluate); its result is GET /jobs/{id}/evaluation; predict: "
        "classifies a batch of photos with the model `model_id` (POST /predictions); its "
        "result is GET /predictions/{id}/results; review: reviews the labels of the training "
        "images of `model_id`'s dataset (POST /jobs/{id}/review); its result is GET "
        "/jobs/{id}/label-review")
    model_id: str | None = Field(None, description="an evaluate, predict or review job's "
                                 "model")
    dataset_id: str | None = Field(description="null only for a predict job of uploaded "
                                   "photos")
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    params: dict[str, Any]
    progress: Progress
    latest_metrics: EpochOut | None
    best_metrics: EpochOut | None = Field(description=(
        "the kept model's epoch (selected_epoch): its validation and test figures. While "
        "the job runs: the epoch it would keep now (the best on the validation split by "
        "select_metric, or the last). Never chosen by test accuracy"))
    selected_epoch: int | None = Field(
        None, description="the epoch whose model the job kept, once it succeeded: "
        "/predict, exports, downloads and the evaluation use that model")
    note: str | None = Field(
        None, description="how the job ended when that needs saying, e.g. that early "
        "stopping ended it before its last epoch")
    attempt: int
    max_attempts: int
    worker: str | None = Field(description="the worker running it (host:pid), while running")
    cancel_requested: bool
    error: str | None
    error_kind: str | None = Field(
        None, description="why the job ended when it did not succeed, for clients to branch "
        "on (the error text may change): " + ", ".join(k.value for k in ErrorKind))
    exports: dict[str, Any] = Field(
        default_factory=dict,
        description="exports written when the job succeeded, by format: the ONNX file's "
        "verification (max_abs_diff against PyTorch on `images` test images), or the "
        "`error` that made the worker discard it")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    waiting_for: str | None = Field(
        None, description="a queued job that no live worker would take: the worker it "
        "waits for, e.g. 'a worker with a GPU (none is running)'; null otherwise")
    deleted_at: datetime | None = Field(
        None, description="when DELETE /jobs/{id} removed its files (its history stays)")
    files_removed_at: datetime | None = Field(
        None, description="when its model files were removed (DELETE ?files_only=true, "
        "KEEP_MODELS retention, or the deletion); its row, metrics and log stay")


class WorkerOut(BaseModel):
    name: str = Field(description="host:pid, as a running job's `worker`")
    kind: Literal["gpu", "cpu"]
    gpus: int
    queues: list[str] = Field(description="the broker queues it takes jobs from")
    version: str
    has_imagenet: bool = Field(description="whether it has the ImageNet weights file, so "
                               "that it can run `init: imagenet` jobs")
    started_at: datetime
    last_seen: datetime
    stopped_at: datetime | None = Field(description="when it shut down cleanly")
    alive: bool = Field(description="seen within WORKER_SEEN_SECONDS and not stopped")


class ClassReportOut(BaseModel):
    label: str
    precision: float
    recall: float
    f1: float
    support: int


class CalibrationOut(BaseModel):
    calibrated: bool = Field(description="false without a validation split (temperature 1)")
    temperature: float = Field(description="probabilities = softmax(logits / temperature)")
    bins: int = Field(description="confidence bins of the expected calibration error")
    ece_before: float = Field(description="expected calibration error on test, plain softmax")
    ece_after: float = Field(description="expected calibration error on test, calibrated")
    val_images: int = Field(description="validation images the temperature was fitted on")


class EvaluationOut(BaseModel):
    job_id: str
    accuracy: float
    loss: float
    classes: list[str]
    confusion: list[list[int]] = Field(description="confusion[i][j]: true class i predicted j")
    per_class: list[ClassReportOut]
    calibration: CalibrationOut | None = Field(
        None, description="the temperature fitted on the validation split and the test "
        "split's expected calibration error before and after it (null for jobs from "
        "before calibration)")
    macro_f1: float = Field(description="the mean of the classes' F1")
    balanced_accuracy: float = Field(
        description="the mean of the classes' recall (those with test images): accuracy as "
        "if every class were equally frequent")


class ModelOut(BaseModel):
    id: str = Field(description="the job id; pass it as `model` to /predict")
    dataset_id: str
    classes: list[str]
    image_size: int
    accuracy: float | None = Field(description="on its dataset's test split")
    macro_f1: float | None = Field(None, description="the mean of the per-class F1 on its "
                                   "dataset's test split")
    active: bool
    finished_at: datetime | None
    serving: dict[str, Any] | None = Field(
        None, description="when this API process has the model loaded: the `runtime` "
        "serving it, its `precision` and measured `images_per_second`, each runtime's "
        "measurement or why it is not used (`runtimes`), and `measuring` (still under way)")
    decision: DecisionOut | None = Field(
        None, description="a two-class model's decision threshold, set at activation "
        "(null: /predict answers the most probable class)")


class DecisionOut(BaseModel):
    threshold: float = Field(description="the answer is `class` when its probability is at "
                             "least this, the model's other class otherwise")
    class_: str = Field(alias="class", description="the class the threshold is on")

    model_config = ConfigDict(populate_by_name=True)


class ActivateRequest(BaseModel):
    """Optional body of POST /models/{id}/activate: the model's decision threshold. Omitted,
    the stored threshold stays; ``{"threshold": null}`` clears it."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    threshold: float | None = Field(
        None, gt=0, lt=1, description="two-class models only: answer `class` when its "
        "probability is at least this")
    class_: str | None = Field(
        None, alias="class", min_length=1, max_length=200,
        description="the class the threshold is on (default: the model's first class)")


class EvaluateRequest(BaseModel):
    """Score a model on the test split of a dataset with the same classes."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(min_length=1, max_length=64)
    queue_anyway: bool = Field(
        False, description="queue the job even when no live worker would take it now")


class ReviewRequest(BaseModel):
    """Review the labels of a succeeded training job's training images."""

    model_config = ConfigDict(extra="forbid")

    queue_anyway: bool = Field(
        False, description="queue the job even when no live worker would take it now")


class LabelIssueOut(BaseModel):
    image_id: int = Field(description="the image's id in its dataset (ImageFolder order)")
    split: str
    label: str = Field(description="its given class (the folder it is in)")
    path: str = Field(description="its path in the uploaded zip")
    suggested: str = Field(description="the class an out-of-sample classifier finds likeliest")
    confidence: float = Field(description="that classifier's probability of `suggested`")
    rank: int = Field(description="1: the likeliest to be mislabeled")


class OutlierOut(BaseModel):
    image_id: int
    split: str
    label: str
    path: str
    score: float = Field(description="cleanlab's outlier score in (0, 1]: the lower, the "
                         "more unlike the other training images")


class LabelReviewOut(BaseModel):
    job_id: str = Field(description="the review job (follow it, or cancel it, at /jobs/{id})")
    dataset_id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    backbone: str = Field(description="whose embeddings the review used: the model's "
                          "starting backbone (imagenet, job:<id>) or the fine-tuned one (a "
                          "model trained from scratch); empty until it succeeded")
    issues: list[LabelIssueOut] = Field(description="likely mislabeled training images, the "
                                        "likeliest first (empty until it succeeded)")
    outliers: list[OutlierOut] = Field(description="training images unlike the others, the "
                                       "most unusual first")


class ModelEvaluationOut(BaseModel):
    model_id: str
    dataset_id: str = Field(description="the dataset whose test split it was scored on")
    job_id: str = Field(description="the job that computed it: the model's own training "
                        "job, or an evaluate job")
    source: Literal["training", "evaluation"]
    accuracy: float
    macro_f1: float
    loss: float
    classes: list[str]
    confusion: list[list[int]] = Field(description="confusion[i][j]: true class i predicted j")
    per_class: list[ClassReportOut]
    created_at: datetime | None = Field(description="when the job that computed it ended")


class ComparisonOut(BaseModel):
    metric: Literal["macro_f1", "accuracy"]
    dataset_id: str | None = Field(description="the dataset whose test split both were "
                                   "scored on; null when none could be chosen")
    candidate_id: str
    active_id: str
    candidate: float | None = Field(description="the candidate's score; null: not evaluated")
    active: float | None = Field(description="the active model's score; null: not evaluated")


class ActivationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    action: Literal["activate", "rollback"]
    model_id: str = Field(description="the model made active")
    previous_id: str | None = Field(description="the model active before (null: this one "
                                    "already was the default)")
    undoes_id: int | None = Field(description="a rollback: the activation it undid")
    metric: str | None
    dataset_id: str | None = Field(description="where both were scored")
    model_score: float | None
    previous_score: float | None
    forced: bool = Field(description="force=true overrode a refusal of the gate")
    actor: str = Field(description="`key:<fingerprint>` (the API key's SHA-256, first 12 hex "
                       "digits) or `anonymous`")
    client: str | None = Field(description="the client's address")
    note: str
    created_at: datetime


class HeatmapOut(BaseModel):
    grid: list[list[float]] = Field(description="Grad-CAM on layer4, rows top to bottom, "
                                    "normalised to a maximum of 1")
    box: list[int] = Field(description="[x0, y0, x1, y1]: the original photo's pixels the "
                           "grid covers")
    rows: int
    cols: int


class ExplanationOut(BaseModel):
    class_: str = Field(alias="class", description="the class explained")
    size: list[int] = Field(description="the original photo's [width, height]")
    crop: Literal["center", "full"]
    crop_box: list[int] = Field(description="[x0, y0, x1, y1] in original pixels: what the "
                                "model's input kept (CenterCrop's box; the photo for crop=full)")
    heatmap: HeatmapOut
    peak: list[int] | None = Field(description="[x, y] of the heatmap's maximum, in original "
                                   "pixels (null: empty heatmap)")
    crop_coverage: float | None = Field(
        description="the heatmap's share inside crop_box, the heatmap being computed on the "
        "whole photo")
    warning: str | None
    overlay_png: str | None = Field(None, description="base64 PNG: the photo, the heatmap, "
                                    "the crop box and the peak")

    model_config = ConfigDict(populate_by_name=True)


class PredictionOut(BaseModel):
    filename: str
    label: str
    probabilities: dict[str, float] = Field(
        description="every class in the model's order; with top_k, the k most probable, most "
        "probable first")
    explanation: ExplanationOut | None = Field(None, description="with explain=true")


class PredictOut(BaseModel):
    model: str
    runtime: Literal["torch", "compiled", "onnx", "onnx_int8"] = Field(
        description="what computed the predictions: eager PyTorch, compiled PyTorch "
        "(torch.compile), ONNX Runtime (fp32) or ONNX Runtime INT8")
    images_per_second: float | None = Field(
        None, description="that runtime's batched speed as measured when the model was "
        "loaded (null while it is being measured)")
    calibrated: bool = Field(
        description="whether the probabilities are calibrated: softmax(logits / temperature) "
        "with a temperature fitted on the model's validation split (false for a model "
        "trained without one: plain softmax)")
    temperature: float = Field(description="the temperature applied (1 when not calibrated)")
    crop: Literal["center", "full"] = Field(
        "center", description="center: Resize + CenterCrop (the recipe); full: the whole photo "
        "resized to the model's square input")
    decision: DecisionOut | None = Field(
        None, description="the model's decision threshold, when it has one: labels follow it")
    predictions: list[PredictionOut]


class PredictionsFromDataset(BaseModel):
    """Classify the images of one split of a stored dataset (its labels are not used)."""

    model_config = ConfigDict(extra="forbid")
    dataset_id: str = Field(min_length=1, max_length=64)
    split: Literal["train", "val", "test"] = "test"
    model: str | None = Field(None, min_length=1, max_length=64,
                              description="job id; default: the active model (recorded)")
    queue_anyway: bool = Field(False, description="queue it even when no running worker "
                               "would take it now")
    coverage: bool = Field(False, description="also give each photo its crop_coverage: the "
                           "share of the Grad-CAM evidence for its label inside the centre "
                           "crop the model sees (a heatmap per photo: several times slower)")


class BatchSummaryOut(BaseModel):
    photos: int
    predicted: int = Field(description="photos classified")
    failed: int = Field(description="photos that did not decode (each has its `error` in "
                        "the results)")
    labels: dict[str, int] = Field(description="photos by predicted label")
    runtime: str | None = Field(None, description="what computed them: onnx or torch")
    device: str | None = Field(None, description="where: cpu, cuda, cuda:N")
    seconds: float | None = Field(None, description="the worker's time for the whole job, "
                                  "model loading included")


class PredictionJobOut(BaseModel):
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    model_id: str = Field(description="the model that classifies the photos (the active "
                          "one at submission when none was named)")
    source: Literal["upload", "dataset"]
    dataset_id: str | None = Field(description="source dataset: the dataset whose split "
                                   "is classified")
    split: str | None
    coverage: bool = Field(False, description="its rows have crop_coverage (asked for at "
                           "submission)")
    photos: int = Field(description="photos in the job")
    done: int = Field(description="photos classified so far")
    fraction: float
    ignored: int = Field(0, description="files of the zip that are not images by their name "
                         "(not classified)")
    summary: BatchSummaryOut | None = Field(
        None, description="once it succeeded: photos classified and failed, by label")
    results: str | None = Field(None, description="once it succeeded: where the results are")
    attempt: int
    cancel_requested: bool
    error: str | None
    error_kind: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    waiting_for: str | None = None


class ErrorOut(BaseModel):
    detail: str | list[dict[str, Any]] = Field(
        description="what is wrong: a sentence, or FastAPI's list of invalid fields")
    kind: str | None = Field(
        None, description="for clients to branch on (the detail's words may change), on a "
        "409 from POST /jobs: `no_live_worker` (no running worker takes the job) or "
        "`weights_missing` (none of them has the ImageNet weights); from POST "
        "/models/{id}/activate: `promotion_refused` (the candidate scores lower), "
        "`against_required` (models of different datasets) or `evaluation_missing`")
    comparison: ComparisonOut | None = Field(
        None, description="a refused activation: both models' scores")
    scopes: list[str] | None = Field(
        None, description="a 403 `scope_missing`: the scopes of which the key needs one")
    used_by: list[str] | None = Field(
        None, description="a refused DELETE /jobs/{id} (`kind` `active_model` or "
        "`model_in_use`): the job(s) that hold it")


_ERROR_TEXT = {
    400: "the body is malformed (not JSON, broken multipart)",
    401: "the API key is missing or wrong (when API_KEY or API_KEYS is set)",
    403: "the API key lacks the scope this operation needs (`kind`: `scope_missing`, "
         "`scopes`: the ones that would do), or a cross-site request was refused",
    404: "no such dataset, job or model",
    408: "the request body stalled: no bytes for REQUEST_BODY_IDLE_SECONDS (the connection "
         "is closed)",
    409: "not possible in the resource's state (e.g. a job that has not succeeded), no "
         "live worker would take the job, or the promotion gate refused an activation",
    413: "the request body is over its limit",
    415: "a body of a content type the endpoint does not take (POST /predict: a form or "
         "one photo as image/jpeg, png, webp, gif, bmp, tiff or application/octet-stream)",
    422: "invalid parameters or unusable content (the detail names them)",
    429: "too many jobs queued or running; retry after Retry-After seconds",
    503: "overloaded or a dependency is unreachable; retry after Retry-After seconds",
    507: "not enough free storage for the upload; retry later",
}
# Every route documents the errors the API can answer (the same JSON shape for all).
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text} for code, text in _ERROR_TEXT.items()}


class ScopeRuleOut(BaseModel):
    methods: list[str] | None = Field(description="the HTTP methods it covers (null: all)")
    path: str = Field(description="a regular expression the whole path must match")
    scopes: list[str] | None = Field(description="one of these is needed ([]: any valid key; "
                                     "null: no key)")


class KeyOut(BaseModel):
    scopes: list[str] = Field(description="what this key may do: `predict`, `read`, `train`, "
                              "`admin` (every scope when the service has no key)")
    key_required: bool = Field(description="whether the service needs a key at all")
    actor: str = Field(description="`key:<fingerprint>` (as the activation history records "
                       "it), or `anonymous` when the service has no key")
    rules: list[ScopeRuleOut] = Field(description="which scope each request needs: the first "
                                      "rule whose methods and path match decides")


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}


class StorageItem(BaseModel):
    kind: Literal["dataset", "job"]
    id: str
    name: str = Field(description="a dataset's name; for a job, what it holds and its status")
    bytes: int
    by_category: dict[str, int] = Field(description="its bytes by category (see categories)")
    status: str | None = Field(None, description="a job's status")
    created_at: datetime | None = None
    protected: str | None = Field(
        None, description="why DELETE would be refused now (queued or running, the active "
        "model, used by a live job); null: it can be deleted")
    deleted: bool = False
    files_removed: bool = False


class StorageOut(BaseModel):
    free_bytes: int = Field(description="free space on DATA_DIR's file system")
    total_bytes: int = Field(description="the size of DATA_DIR's file system")
    used_bytes: int = Field(description="every file under DATA_DIR")
    categories: dict[str, int] = Field(
        description="bytes under DATA_DIR by category: datasets, checkpoints (model.pt and "
        "the per-epoch last.pt/best.pt), exports (ONNX, TorchScript), logs (per-job logs), "
        "temporary (uploads in progress or left by a crash), database (SQLite), other")
    datasets: int = Field(description="datasets with files")
    jobs_with_files: int = Field(description="jobs whose folder holds more than a log")
    biggest: list[StorageItem] = Field(description="the biggest datasets and jobs, biggest first")
