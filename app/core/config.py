"""Service settings, from environment variables. With none set, the embedded default runs:
SQLite and a file-system message broker under ``DATA_DIR``."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core.keys import KeyEntry, all_keys

JOB_LOG_NAME = "job.log"  # in each job's folder (app.core.joblog)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    data_dir: Path = Path("data")
    # e.g. postgresql://user:pass@host:5432/hotdog; default: SQLite in data_dir.
    database_url: str | None = None
    # e.g. redis://host:6379/0; default: kombu's file-system transport in data_dir (no server).
    broker_url: str | None = None
    training_queue: str = "training"
    # A worker renews its job's lease every heartbeat; a lease not renewed for this long
    # means the worker died and the job is put back for another attempt.
    job_lease_seconds: float = 120.0
    heartbeat_seconds: float = 10.0
    # How often a worker looks whether its running job was cancelled; a training process
    # that has not stopped by the next look is killed (a cancel takes about two of these).
    cancel_poll_seconds: float = 1.0
    max_attempts: int = 3
    # A queued job not claimed this long after its message was sent is sent again by a
    # worker that serves its queue (a broker restarted without persistence loses messages).
    queued_resend_seconds: float = 300.0
    # A worker renews its row in the workers table every few seconds; one not seen for this
    # long counts as gone (POST /jobs refuses a job that no live worker would take).
    worker_seen_seconds: float = 30.0
    # Longest a job may run, from its first start: then its training is killed and it ends
    # failed (error_kind timeout). The broker's visibility timeout is set above it so a long
    # job's unacknowledged message is not redelivered while it is still running.
    max_job_seconds: int = 24 * 3600
    # A training process that says nothing (no progress, no epoch) for the larger of
    # stall_seconds and stall_epochs times its last epoch's time is hung: it is killed and
    # the attempt spent (error_kind stalled once none is left).
    stall_seconds: float = 15 * 60
    stall_epochs: float = 10.0
    # Log lines of serve, worker and training processes: "text", or "json" (one object per
    # line, with job_id on every line about a job).
    log_format: Literal["text", "json"] = "text"

    # --- API
    # Where `hotdog serve` and `make run` listen (`serve --host` overrides it). The default
    # of ALLOWED_HOSTS follows it.
    host: str = "127.0.0.1"
    # Host header values the API answers, comma-separated ("*.example.com": its subdomains;
    # "*": any); any other gets 400, so a DNS-rebinding page cannot reach the API. Default:
    # the loopback names (localhost, 127.0.0.1, [::1], any port) when HOST is a loopback
    # address, any host otherwise (set it to the names clients use).
    allowed_hosts: str | None = None
    # Loaded checkpoints per second at most, process-wide: a request that needs one more
    # (a model not in the MODELS_CACHED cache) gets 503 with Retry-After.
    model_loads_per_second: int = 2
    # When set, every request but /health, /ready and the web page's files (reads, writes,
    # /docs and /metrics alike) needs ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.
    # API_KEY is one key with every scope; API_KEYS adds keys with scopes of their own:
    # ``KEY:SCOPE[,SCOPE...]`` entries separated by ``;`` (scopes: predict, read, train,
    # admin; see app.core.keys and, for what each scope allows, app.api.keys).
    api_key: str | None = None
    api_keys: str | None = None
    # Queued + running jobs at most; more get 429 with Retry-After (a burst of submissions
    # cannot pile up unbounded work).
    max_active_jobs: int = 100
    # Label reviews (app.engine.review): the cross-validation folds of the logistic
    # regression, and the likely mislabeled images and outliers a review lists at most (the
    # likeliest first; the result file and GET /jobs/{id}/label-review stay bounded).
    review_folds: Annotated[int, Field(ge=2, le=20)] = 5
    review_max_listed: Annotated[int, Field(ge=1, le=100_000)] = 1000
    max_upload_bytes: int = 2 << 30  # one dataset zip
    max_dataset_bytes: int = 8 << 30  # its extracted size
    max_dataset_files: int = 200_000
    # Class folders in one dataset (training time and the C x C confusion matrix grow with it).
    max_classes: int = 1000
    # Free space an upload must leave in DATA_DIR's file system, checked against what its zip
    # headers say it expands to and again while it is written; else 507.
    min_free_disk_bytes: int = 1 << 30
    # Uploads received and ingested at once (each holds a spooled body and an extraction); one
    # more gets 503 with Retry-After before its body is read.
    max_concurrent_uploads: int = 2
    # A request body that sends no bytes for this long gets 408 and its connection is closed:
    # a stalled client would otherwise hold an upload slot or /predict's intake for good.
    request_body_idle_seconds: Annotated[float, Field(gt=0)] = 60.0
    # Dataset reports (duplicates, leakage, image issues), computed in the API process after
    # an upload: reports computed at once, decode threads each, how long a running one may
    # stay silent before another start takes it up, starts before it is failed, and the
    # most images whose near duplicates are searched (the search is quadratic; above it,
    # exact duplicates and image issues only).
    report_workers: int = 1
    report_threads: int = 2
    report_stale_seconds: float = 120.0
    report_max_attempts: int = 3
    report_near_max_images: int = 50_000
    # Relabelled versions: the most changes one request may make.
    relabel_max_changes: int = 100_000
    # /predict: files per request, bytes per request, and the batcher that pools the images
    # of concurrent requests into one forward pass.
    predict_max_files: int = 64
    predict_max_bytes: int = 64 << 20
    predict_max_batch: int = 32
    predict_max_delay_ms: float = 2.0
    # Images waiting to be decoded or for a forward pass at most; a request beyond it gets
    # 503 with Retry-After before any of its images is decoded.
    predict_queue_images: int = 512
    # Memory of image decoding in flight in the API (predictions and upload checks share
    # it), as estimated from each image's header. None: 512 MiB, or a quarter of the machine's
    # (or container's) memory when that is less. An image that alone needs more is 422.
    decode_budget_bytes: int | None = None
    # How long a /predict request's images may wait to start decoding (for a decode thread
    # and their share of that budget) before the request gets 503 with Retry-After (upload
    # checks wait their turn), and the threads that decode them (None: one per core).
    predict_decode_wait_seconds: float = 2.0
    predict_decode_threads: int | None = None
    # Bytes of /predict requests being received or answered at once (as declared); a request
    # beyond it, or one arriving while PREDICT_QUEUE_IMAGES images wait to be decoded, gets
    # 503 with Retry-After before its body is parsed.
    predict_intake_bytes: int = 256 << 20
    # Forward passes computed at once (None: 2 on a CPU with 2+ cores, 1 on a GPU) and the
    # torch threads they share (None: torch's default, one per core).
    predict_lanes: int | None = None
    predict_threads: int | None = None
    predict_device: str = "auto"
    predict_precision: str = "auto"
    # Which runtime computes /predict: "torch" (eager PyTorch), "compiled" (torch.compile,
    # built in the background while eager serves), "onnx" (the job's verified ONNX export in
    # ONNX Runtime), "onnx_int8" (its verified INT8 model), or "auto": each runtime the model
    # has is timed when it is loaded (PREDICT_TUNE_SECONDS each, off the request path) and
    # the fastest serves.
    predict_runtime: Literal["auto", "torch", "compiled", "onnx", "onnx_int8"] = "auto"
    predict_tune_seconds: float = Field(default=1.0, gt=0, le=30)
    # Whether auto also builds the compiled PyTorch runtime (a compile costs a minute or more
    # of CPU on a small machine, once per model load).
    predict_compile: bool = True
    # Batch prediction jobs (POST /predictions): photos per job at most (an uploaded zip's
    # images, or a dataset split's), and images per forward pass on the worker. The zip
    # itself is held to the dataset uploads' limits (MAX_UPLOAD_BYTES, MAX_DATASET_BYTES,
    # MAX_DATASET_FILES, MIN_FREE_DISK_BYTES, MAX_CONCURRENT_UPLOADS).
    batch_max_photos: int = 100_000
    batch_predict_size: int = 64
    # Each worker keeps one prediction process started ahead of the next predict job (PyTorch
    # and the engine imported: seconds a job's run would otherwise pay first). It holds a few
    # hundred MB of memory while it waits; false: every job starts its own process.
    warm_predict_process: bool = True
    # /predict with explain=true (Grad-CAM heatmaps, app.engine.explain): computed outside the
    # batched fast path, with gradients, in processes of their own (app.api.explain_process).
    # Images being explained or waiting at most (a request beyond it gets 503 with
    # Retry-After; one with more images than this, 422); the processes that compute them;
    # the torch intra-op threads each uses
    # (kept low so that a burst of explanations leaves the cores to plain predictions); where
    # (an fp32 copy of each model, kept for EXPLAIN_MODELS_CACHED models).
    explain_queue_images: Annotated[int, Field(ge=1, le=1024)] = 8
    explain_workers: Annotated[int, Field(ge=1, le=64)] = 1
    explain_threads: Annotated[int, Field(ge=1, le=256)] = 1
    explain_device: str = "cpu"
    explain_models_cached: Annotated[int, Field(ge=1, le=64)] = 2
    # The explanation processes' niceness (Linux; 0 to 19); 19 also means the SCHED_IDLE
    # class: they get the cores only when plain predictions (and everything else) leave them
    # idle, so a burst of explanations barely slows plain predictions.
    explain_nice: Annotated[int, Field(ge=0, le=19)] = 19
    # Workers export each succeeded job to ONNX (verified against PyTorch) for /predict,
    # and (with EXPORT_INT8) an INT8 model of it, verified against the fp32 export.
    export_onnx: bool = True
    export_int8: bool = True
    # A worker without CUDA runs a job that asks for N GPUs (2 <= N <= this) as N CPU
    # processes with DDP over gloo, as it would on N GPUs: for tests and development, it is
    # not faster than one process. 0: such a job fails at once (the worker has no GPUs).
    cpu_ddp_processes: int = 0
    models_cached: int = 4  # loaded models kept in memory
    # torch.compile of the training step (app/engine/compiled.py): "auto" compiles a job whose
    # training work (epochs x train images, in images at 224 px) exceeds the break-even of
    # the compile time (TRAIN_COMPILE_BREAK_EVEN; None: the default for the device type),
    # "on" every job, "off" none. A compile failure falls back to eager training.
    train_compile: Literal["auto", "on", "off"] = "auto"
    train_compile_break_even: int | None = None

    # --- Retention and storage (a worker sweeps every SWEEP_SECONDS)
    # Keep the model files of the N most recent succeeded training jobs, plus the active
    # model and every model a queued or running job starts from (job:<id>) or evaluates;
    # the sweep removes older ones' files (their rows, metrics and logs stay). None: keep all.
    keep_models: Annotated[int | None, Field(ge=0)] = None
    # How often each worker sweeps DATA_DIR: KEEP_MODELS, last.pt/best.pt of finished jobs,
    # files of deleted jobs and datasets left by a crash, stale temporary files. 0: never.
    sweep_seconds: Annotated[float, Field(ge=0)] = 300.0
    # A temporary file (.tmp, .incoming-*, DATA_DIR/tmp/*) untouched this long was left by a
    # crash: the sweep removes it.
    stale_temp_seconds: Annotated[float, Field(gt=0)] = 3600.0
    # Each job's log (its worker's and training process's lines) in its folder, at most this
    # many bytes: past it the oldest lines are dropped. 0: no per-job logs.
    job_log_bytes: Annotated[int, Field(ge=0)] = 1 << 20
    # GET /jobs/{id}/logs?follow=true streams open at once; one more gets 503.
    log_followers: Annotated[int, Field(ge=1)] = 16
    # What the promotion gate compares (POST /models/{id}/activate): a candidate replaces the
    # active model only if it scores at least as well on this, on the same test split.
    # macro_f1 (the mean of the per-class F1: an imbalanced test split cannot hide a class
    # the model misses) or accuracy.
    promotion_metric: Literal["macro_f1", "accuracy"] = "macro_f1"

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'hotdog.db').resolve()}"

    def key_entries(self) -> list[KeyEntry]:
        """Every configured key with its scopes (KeysInvalid when API_KEYS cannot be used)."""
        return all_keys(self.api_key, self.api_keys)

    @property
    def host_names(self) -> list[str]:
        """The Host header values the API answers (see ``allowed_hosts``)."""
        if self.allowed_hosts:  # (empty: unset, as compose passes an unset variable)
            return [h.strip() for h in self.allowed_hosts.split(",") if h.strip()]
        if not is_loopback(self.host):
            return ["*"]
        bound = f"[{self.host}]" if ":" in self.host else self.host
        return sorted({"localhost", "127.0.0.1", "[::1]", bound.lower()})

    @property
    def broker(self) -> str:
        # (a hostname only to keep kombu from warning that none was given)
        return self.broker_url or "filesystem://localhost/"

    @property
    def broker_folder(self) -> Path:
        return (self.data_dir / "broker").resolve()

    def dataset_dir(self, dataset_id: str) -> Path:
        return (self.data_dir / "datasets" / dataset_id).resolve()

    def job_dir(self, job_id: str) -> Path:
        return (self.data_dir / "jobs" / job_id).resolve()

    def job_log(self, job_id: str) -> Path:
        return self.job_dir(job_id) / JOB_LOG_NAME


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address to listen on) is this machine's loopback only."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def get_settings() -> Settings:
    return Settings()
