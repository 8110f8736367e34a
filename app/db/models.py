"""Tables: datasets, jobs (the source of truth for job state), per-epoch metrics, evaluations,
workers, and the history of the active model (activations)."""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class JobKind(str, enum.Enum):
    """What a job does: ``train`` a model (its checkpoint is a model), ``evaluate`` one
    (``jobs.model_id``) on the test split of its dataset (its evaluation row is the result),
    ``predict``: classify a batch of photos with one (an uploaded zip's, in the job's own
    folder, or a split of its dataset; its results file is the result), or ``review`` the
    labels of the training images of a model's dataset (its result is
    ``label_review.json`` in its folder). All have the same life cycle: queue, worker,
    lease, cancel, progress, limits."""

    TRAIN = "train"
    EVALUATE = "evaluate"
    PREDICT = "predict"
    REVIEW = "review"


class ReportStatus(str, enum.Enum):
    """Where a dataset's report (duplicates, leakage, image issues) stands: computed in the
    background after the upload; ``failed`` says why in ``report_error``."""

    PENDING = "pending"
    RUNNING = "running"
    READY = "ready"
    FAILED = "failed"


class ErrorKind(str, enum.Enum):
    """Why a job ended other than ``succeeded`` (``jobs.error_kind``); ``error`` says more.

    Clients branch on this, never on the error text."""

    WEIGHTS_MISSING = "weights_missing"  # no ImageNet weights on the worker
    OUT_OF_MEMORY = "out_of_memory"  # the job does not fit: lower batch_size or image_size
    BAD_DATASET = "bad_dataset"  # the dataset's files are unusable (missing, undecodable)
    BAD_CHECKPOINT = "bad_checkpoint"  # a job:<id> start whose model is gone or unreadable
    BAD_PARAMS = "bad_params"  # parameters the engine refused
    NOT_ENOUGH_DEVICES = "not_enough_devices"  # more GPUs asked for than the worker has
    CRASHED = "crashed"  # the training process died every attempt
    STALLED = "stalled"  # the training process fell silent (STALL_SECONDS) every attempt
    TIMEOUT = "timeout"  # the job ran longer than MAX_JOB_SECONDS
    QUEUE_UNREACHABLE = "queue_unreachable"  # the broker refused the job at submission
    CANCELLED_BY_USER = "cancelled_by_user"


def _now() -> Any:
    return func.now()


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _created() -> Any:
    # Set in Python for microsecond order (SQLite's CURRENT_TIMESTAMP has whole seconds).
    return mapped_column(UTCDateTime, default=_utcnow, server_default=_now())


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    classes: Mapped[list[Any]]
    counts: Mapped[dict[str, Any]]
    warnings: Mapped[list[Any]]
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = _created()
    # Deleting a dataset removes its files and hides it; the row stays for its jobs' history.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Its report (report.json in its folder): status, why it failed, when the computation in
    # progress started (a stale one is taken up again) and how many times it was started.
    report_status: Mapped[ReportStatus] = mapped_column(
        Enum(ReportStatus, native_enum=False, length=16, validate_strings=True,
             values_callable=lambda e: [m.value for m in e]),
        default=ReportStatus.PENDING, server_default=ReportStatus.PENDING.value)
    report_error: Mapped[str | None] = mapped_column(Text)
    report_heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    report_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # A relabelled version: the dataset it was made from, and the changes (the parent's image
    # ids: new class or "drop").
    parent_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), index=True)
    changes: Mapped[dict[str, Any] | None]

    jobs: Mapped[list[Job]] = relationship(back_populates="dataset")


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # None only for a predict job of uploaded photos (they are in the job's own folder).
    dataset_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="RESTRICT"), index=True
    )
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, native_enum=False, length=16, validate_strings=True,
             values_callable=lambda e: [m.value for m in e]),
        index=True,
    )
    kind: Mapped[JobKind] = mapped_column(
        Enum(JobKind, native_enum=False, length=16, validate_strings=True,
             values_callable=lambda e: [m.value for m in e]),
        default=JobKind.TRAIN, server_default=JobKind.TRAIN.value)
    # An evaluate or predict job: the model (a train job's id) it uses; a review job: the
    # training job whose dataset's labels it reviews.
    model_id: Mapped[str | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    params: Mapped[dict[str, Any]]
    epoch: Mapped[int] = mapped_column(Integer, default=0)  # epochs finished
    # How far the epoch in progress is (0..1), updated about once a second while training.
    epoch_fraction: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    epochs: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    # When the job's message was last sent (NULL: when it was created). A queued job not
    # claimed long after is sent again: a broker that restarted may have lost the message.
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    # Why the job ended when it did not succeed (ErrorKind's values); NULL otherwise.
    error_kind: Mapped[str | None] = mapped_column(String(32))
    checkpoint_path: Mapped[str | None] = mapped_column(String(1000))
    # The epoch whose model the checkpoint holds (the best on the validation split, or the
    # last), once the job has succeeded.
    selected_epoch: Mapped[int | None] = mapped_column(Integer)
    # What a user should know about how it ended, e.g. that early stopping ended it.
    note: Mapped[str | None] = mapped_column(Text)
    # Exports written when the job succeeded, by format: {"onnx": {"file", "max_abs_diff",
    # "images", "seconds"}} or {"onnx": {"error"}} when it was discarded.
    exports: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = _created()
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The active model for /predict is the succeeded job activated last (else the newest);
    # the activations table is the history of these changes.
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # DELETE /jobs/{id}: its files are gone, the row stays for its history (metrics,
    # evaluation), hidden from the job list and unusable as a model or a job:<id> start.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Its model files were removed (DELETE ?files_only=true, or the KEEP_MODELS sweep); the
    # row and the job's log stay.
    files_removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A two-class model's decision rule, set at activation: /predict answers
    # ``decision_class`` when its probability is at least ``decision_threshold``, the other
    # class otherwise (NULL: the most probable class).
    decision_threshold: Mapped[float | None] = mapped_column(Float)
    decision_class: Mapped[str | None] = mapped_column(String(200))

    dataset: Mapped[Dataset | None] = relationship(back_populates="jobs")
    metrics: Mapped[list[EpochMetric]] = relationship(
        back_populates="job", order_by="EpochMetric.epoch", cascade="all, delete-orphan"
    )
    evaluation: Mapped[Evaluation | None] = relationship(
        back_populates="job", cascade="all, delete-orphan"
    )

    def model_problem(self) -> str | None:
        """Why this job has no model to use (predict, evaluate, review, start another job
        from), in a sentence; None when it has one."""
        if self.kind is not JobKind.TRAIN:
            return f"job {self.id} is a {self.kind.value} job, not a model"
        if self.status is not JobStatus.SUCCEEDED or not self.checkpoint_path:
            return (f"job {self.id} is {self.status.value}; only a succeeded training job "
                    "has a model")
        if self.deleted_at is not None:
            return f"job {self.id} was deleted; its model is gone"
        if self.files_removed_at is not None:
            return (f"the model files of job {self.id} were removed (DELETE ?files_only=true, "
                    "or KEEP_MODELS retention); its history stays")
        return None


class EpochMetric(Base):
    __tablename__ = "epoch_metrics"
    # A redelivered or resumed job must never record an epoch twice.
    __table_args__ = (UniqueConstraint("job_id", "epoch", name="uq_epoch_metrics_job_epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    train_loss: Mapped[float] = mapped_column(Float)
    train_acc: Mapped[float] = mapped_column(Float)
    test_loss: Mapped[float] = mapped_column(Float)
    test_acc: Mapped[float] = mapped_column(Float)
    images_per_s: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    # On the job's validation split; NULL when it has none.
    val_loss: Mapped[float | None] = mapped_column(Float)
    val_acc: Mapped[float | None] = mapped_column(Float)
    val_macro_f1: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = _created()

    job: Mapped[Job] = relationship(back_populates="metrics")


class Evaluation(Base):
    __tablename__ = "evaluations"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    accuracy: Mapped[float] = mapped_column(Float)
    loss: Mapped[float] = mapped_column(Float)
    classes: Mapped[list[Any]]
    confusion: Mapped[list[Any]]
    per_class: Mapped[list[Any]]
    # The temperature fitted on the validation split and the test ECE before and after it
    # (app.engine.calibrate.calibration_report); NULL for jobs from before calibration.
    calibration: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = _created()

    job: Mapped[Job] = relationship(back_populates="evaluation")


class ActivationAction(str, enum.Enum):
    ACTIVATE = "activate"  # POST /models/{id}/activate: gated, or forced
    ROLLBACK = "rollback"  # POST /models/rollback: undoes the newest activation not undone


class Activation(Base):
    """One change of the active model, as it happened: who made it and when, the model made
    active and the one it replaced, and how they compared on the gate's metric."""

    __tablename__ = "activations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    action: Mapped[ActivationAction] = mapped_column(
        Enum(ActivationAction, native_enum=False, length=16, validate_strings=True,
             values_callable=lambda e: [m.value for m in e]))
    model_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"),
                                          index=True)
    # The model /predict served before (None: this model already was the default).
    previous_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    # A rollback: the activation it undid.
    undoes_id: Mapped[int | None] = mapped_column(
        ForeignKey("activations.id", ondelete="SET NULL"))
    # The comparison: the gate's metric, the dataset whose test split both were scored on,
    # and the two scores (None where there was nothing to compare).
    metric: Mapped[str | None] = mapped_column(String(16))
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    model_score: Mapped[float | None] = mapped_column(Float)
    previous_score: Mapped[float | None] = mapped_column(Float)
    forced: Mapped[bool] = mapped_column(Boolean, default=False)  # force=true overrode the gate
    actor: Mapped[str] = mapped_column(String(200))  # "key:<fingerprint>" or "anonymous"
    client: Mapped[str | None] = mapped_column(String(200))  # the request's client address
    note: Mapped[str] = mapped_column(Text)  # why it was allowed, in words
    created_at: Mapped[datetime] = _created()


class Worker(Base):
    """A worker process as it last described itself; it renews ``last_seen`` every few
    seconds while it runs (``worker.presence``), so the API can tell which routes some live
    worker serves and whether any of them has the ImageNet weights."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)  # host:pid, as jobs.worker
    kind: Mapped[str] = mapped_column(String(8))  # "gpu" or "cpu"
    gpus: Mapped[int] = mapped_column(Integer)
    queues: Mapped[list[Any]]  # the broker queues it takes jobs from
    version: Mapped[str] = mapped_column(String(40))
    has_imagenet: Mapped[bool] = mapped_column(Boolean)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # Set when it shut down cleanly: it is gone at once, not WORKER_SEEN_SECONDS later.
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
