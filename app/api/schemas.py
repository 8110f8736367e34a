"""Request and response bodies of the HTTP API (they also make the OpenAPI docs)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.engine.config import MAX_GPUS, TrainConfig

INIT_PATTERN = re.compile(r"^(imagenet|scratch|job:[0-9a-f]{32})$")


class DatasetOut(BaseModel):
    id: str
    name: str
    classes: list[str]
    counts: dict[str, dict[str, int]] = Field(
        description="images per split and class: {train: {class: n}, test: {class: n}}"
    )
    warnings: list[str]
    size_bytes: int
    created_at: datetime


class JobCreate(BaseModel):
    """A fine-tune job. Every field but ``dataset_id`` has the recipe's default; ``lr`` and
    ``head_lr_mult`` default by ``init`` (pretrained: 0.0064 and 10; scratch: 0.064 and 1)."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(min_length=1, max_length=64)
    init: str = Field(
        "imagenet",
        json_schema_extra={"pattern": INIT_PATTERN.pattern},
        description="'imagenet' (pretrained backbone), 'scratch', or 'job:<id>' to start "
        "from an earlier succeeded job's model",
    )
    epochs: int = Field(5, ge=1, le=1000)
    batch_size: int = Field(128, ge=1, le=4096)
    lr: float | None = Field(None, gt=0, le=10, description="backbone learning rate")
    head_lr_mult: float | None = Field(None, gt=0, le=1000)
    weight_decay: float = Field(1e-3, ge=0, le=1)
    momentum: float = Field(0.0, ge=0, lt=1)
    image_size: int = Field(224, ge=16, le=1024)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gpus: int = Field(
        1, ge=0, le=MAX_GPUS,
        description="GPUs to train on, one process each (DDP); 0: all of the worker's. "
        "batch_size stays the global batch (split across the GPUs). A worker with fewer "
        "GPUs fails the job at once; a worker without GPUs runs 0 or 1 as one CPU process")

    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="cuda: only a worker with a GPU takes the job; cpu: only a "
        "CPU-only worker; auto: any worker, training on its GPU if it has one")

    @field_validator("init")
    @classmethod
    def _init(cls, v: str) -> str:
        if not INIT_PATTERN.match(v):
            raise ValueError("init must be 'imagenet', 'scratch' or 'job:<job id>'")
        return v

    def train_config(self) -> TrainConfig:
        """The engine's config with init-dependent defaults filled in (init kept as given)."""
        fields = self.model_dump(exclude={"dataset_id"})
        return TrainConfig(**fields).resolved()


class Progress(BaseModel):
    epoch: int = Field(description="epochs finished")
    epochs: int
    fraction: float = Field(description="0..1 of the whole job, within-epoch included")
    eta_seconds: float | None = Field(description="estimated seconds left, from epoch times")


class EpochOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    epoch: int
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    images_per_s: float
    seconds: float


class JobOut(BaseModel):
    id: str
    dataset_id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    params: dict[str, Any]
    progress: Progress
    latest_metrics: EpochOut | None
    best_metrics: EpochOut | None = Field(description="the epoch with the best test accuracy")
    attempt: int
    max_attempts: int
    worker: str | None = Field(description="the worker running it (host:pid), while running")
    cancel_requested: bool
    error: str | None
    exports: dict[str, Any] = Field(
        default_factory=dict,
        description="exports written when the job succeeded, by format: the ONNX file's "
        "verification (max_abs_diff against PyTorch on `images` test images), or the "
        "`error` that made the worker discard it")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None


class ClassReportOut(BaseModel):
    label: str
    precision: float
    recall: float
    f1: float
    support: int


class EvaluationOut(BaseModel):
    job_id: str
    accuracy: float
    loss: float
    classes: list[str]
    confusion: list[list[int]] = Field(description="confusion[i][j]: true class i predicted j")
    per_class: list[ClassReportOut]
    macro_f1: float


class ModelOut(BaseModel):
    id: str = Field(description="the job id; pass it as `model` to /predict")
    dataset_id: str
    classes: list[str]
    image_size: int
    accuracy: float | None
    active: bool
    finished_at: datetime | None


class PredictionOut(BaseModel):
    filename: str
    label: str
    probabilities: dict[str, float]


class PredictOut(BaseModel):
    model: str
    runtime: Literal["torch", "onnx"] = Field(
        description="what computed the predictions: ONNX Runtime or eager PyTorch")
    predictions: list[PredictionOut]


class ErrorOut(BaseModel):
    detail: str | list[dict[str, Any]] = Field(
        description="what is wrong: a sentence, or FastAPI's list of invalid fields")


_ERROR_TEXT = {
    400: "the body is malformed (not JSON, broken multipart)",
    401: "the API key is missing or wrong (when API_KEY is set)",
    404: "no such dataset, job or model",
    409: "not possible in the resource's state (e.g. a job that has not succeeded)",
    413: "the request body is over its limit",
    422: "invalid parameters or unusable content (the detail names them)",
    429: "too many jobs queued or running; retry after Retry-After seconds",
    503: "overloaded or a dependency is unreachable; retry after Retry-After seconds",
}
# Every route documents the errors the API can answer (the same JSON shape for all).
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text} for code, text in _ERROR_TEXT.items()}


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}
