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


class JobRequest(BaseModel):
    """A fine-tune job. Every field but ``dataset_id`` has the recipe's default; ``lr`` and
    ``head_lr_mult`` default by ``init`` (pretrained: 0.0064 and 10; scratch: 0.064 and 1)."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(min_length=1, max_length=64)
    queue_anyway: bool = Field(
        False, description="queue the job even when no live worker would take it now (no "
        "worker for its queue, or none with the ImageNet weights for an `imagenet` start); "
        "it waits until one starts. Without it such a job is refused with 409")

    def train_config(self) -> TrainConfig:
        """The engine's config as asked for (``jobs.service.submit`` fills in the defaults
        that depend on ``init`` and checks the ranges)."""
        return TrainConfig(**self.model_dump(exclude={"dataset_id", "queue_anyway"}))


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
    kind: Literal["train", "evaluate"] = Field(
        "train", description="train: fine-tunes a model (the job id is then the model's id); "
        "evaluate: scores the model `model_id` on the test split of `dataset_id` (POST "
        "/models/{id}/evaluate); its result is GET /jobs/{id}/evaluation")
    model_id: str | None = Field(None, description="an evaluate job's model")
    dataset_id: str
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


class EvaluateRequest(BaseModel):
    """Score a model on the test split of a dataset with the same classes."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(min_length=1, max_length=64)
    queue_anyway: bool = Field(
        False, description="queue the job even when no live worker would take it now")


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


class PredictionOut(BaseModel):
    filename: str
    label: str
    probabilities: dict[str, float]


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
    predictions: list[PredictionOut]


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


_ERROR_TEXT = {
    400: "the body is malformed (not JSON, broken multipart)",
    401: "the API key is missing or wrong (when API_KEY is set)",
    404: "no such dataset, job or model",
    409: "not possible in the resource's state (e.g. a job that has not succeeded), no "
         "live worker would take the job, or the promotion gate refused an activation",
    413: "the request body is over its limit",
    415: "a body of a content type the endpoint does not take (POST /predict: a form or "
         "one image/jpeg, image/png or image/webp)",
    422: "invalid parameters or unusable content (the detail names them)",
    429: "too many jobs queued or running; retry after Retry-After seconds",
    503: "overloaded or a dependency is unreachable; retry after Retry-After seconds",
    507: "not enough free storage for the upload; retry later",
}
# Every route documents the errors the API can answer (the same JSON shape for all).
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text} for code, text in _ERROR_TEXT.items()}


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}
