"""``hotdog demo``: the seed's experiment in one command. The same synthetic hotdog /
not-hotdog data is trained twice, fine-tuned from a pretrained backbone (new head at 10x the
backbone's lr) and from scratch (a larger lr, one multiplier), through a running service
when one answers (upload, submit, watch) or in this process through the engine. It reports
each epoch of both runs through the output object it is given and draws their curves to a
PNG. The command itself is ``app.cli.demo``.

Offline there are no ImageNet weights. The fine-tune side then starts from a model trained
first, from scratch, on a different synthetic task (which food is on the table, several
kinds, no hotdogs): a stand-in for ImageNet pretraining, and the output says so.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from app.client import TERMINAL, Client, Dataset, EpochRecord, Job, ParamValue, ServiceError
from app.db.models import ErrorKind
from app.engine.config import INIT_IMAGENET, INIT_SCRATCH, TrainConfig, params

FINE_TUNE, SCRATCH, PRETEXT = "fine-tune", "scratch", "pretext"
START_CHOICES = ("auto", "imagenet", "pretext")
MODE_CHOICES = ("auto", "service", "local")
PRETEXT_FOODS = ("pizza", "salad", "fruit", "donut", "berries", "broccoli")
# DemoConfig's fields that are TrainConfig's parameters (same meaning, same ranges).
TRAIN_PARAMS = ("epochs", "image_size", "batch_size", "seed")


class DemoFailed(RuntimeError):
    """A run of the experiment did not succeed (the message says which and why)."""


class ProgressBar(Protocol):
    n: float

    def update(self, n: float = 1) -> None: ...
    def set_description(self, desc: str | None = None, refresh: bool = True) -> None: ...
    def refresh(self) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> ProgressBar: ...
    def __exit__(self, *exc: object) -> None: ...


class DemoOutput(Protocol):
    """Where the experiment reports (the command line's ``app.cli.output.Output``)."""

    def say(self, message: str) -> None: ...
    def bar(self, **kwargs: Any) -> ProgressBar: ...
    def epoch(self, run: str, metrics: Mapping[str, Any]) -> None: ...


_TRAIN_DEFAULTS = TrainConfig()


@dataclass(frozen=True)
class DemoConfig:
    """The experiment's size. The defaults take about 70 s on an idle 2-core CPU (the
    README's picture), offline, the other-task model included."""

    out: Path = Path("data/demo-run")
    # Smaller than TrainConfig's (d2l's) defaults, so that the demo is quick on a CPU.
    epochs: int = 8
    image_size: int = 64
    batch_size: int = 16
    # Few labelled photos, as in d2l's motivation: where a pretrained backbone matters most.
    train_per_class: int = 30
    test_per_class: int = 75
    pretext_epochs: int = 8
    pretext_per_class: int = 60  # training images per food; a third more for its test split
    seed: int = _TRAIN_DEFAULTS.seed
    start: str = "auto"  # the fine-tune's start: auto (ImageNet if available), imagenet, pretext
    png: Path | None = None  # default: out/curves.png
    # > 0: the label-noise experiment instead (run_label_noise): this share of the training
    # labels flipped, the drop in test accuracy, a label review, relabelling, retraining.
    label_noise: float = 0.0

    def __post_init__(self) -> None:
        ranges = {f.name: p for f, p in params()}
        problems = [ranges[name].problem(name, getattr(self, name)) for name in TRAIN_PARAMS]
        problems.append(ranges["epochs"].problem("pretext_epochs", self.pretext_epochs))
        if min(self.train_per_class, self.test_per_class, self.pretext_per_class) < 1:
            problems.append("image counts must be at least 1")
        if not 0 <= self.label_noise <= 0.5:
            problems.append(f"label_noise must be in [0, 0.5], got {self.label_noise:g}")
        if self.start not in START_CHOICES:
            problems.append(f"start must be one of {', '.join(START_CHOICES)}")
        found = [p for p in problems if p]
        if found:
            raise ValueError("; ".join(found))

    @property
    def png_path(self) -> Path:
        return self.png or self.out / "curves.png"

    @property
    def sides(self) -> tuple[int, int]:
        """Generated photos' side range: enough pixels for the crops at this image size,
        no more (drawing and decoding large photos for 64 px training only costs time)."""
        low = max(self.image_size, min(160, 2 * self.image_size))
        return low, max(low, min(512, 4 * self.image_size))

    def train_params(self) -> dict[str, Any]:
        """What both runs share (the init-dependent lr and head multiplier are defaulted). As
        in d2l's lecture, each run trains on all of train and is compared on test epoch by
        epoch: no validation split is carved (the last epoch is kept)."""
        return {**{name: getattr(self, name) for name in TRAIN_PARAMS}, "val_fraction": 0.0}


@dataclass
class Run:
    """One training run of the experiment and its per-epoch metrics."""

    name: str
    init: str
    lr: float
    head_lr_mult: float
    history: list[dict[str, Any]] = field(default_factory=list)
    job_id: str | None = None
    checkpoint: str | None = None

    @property
    def test_acc(self) -> float:
        return float(self.history[-1]["test_acc"]) if self.history else math.nan


@dataclass
class DemoResult:
    mode: str  # "local" or "service"
    dataset: str
    fine_tune: Run
    scratch: Run
    pretext: Run | None
    note: str | None
    png: Path

    def rows(self) -> list[dict[str, Any]]:
        """Per epoch, both runs' train loss and test accuracy (None where a run has none)."""
        by_epoch: dict[int, dict[str, Any]] = {}
        for key, run in (("fine_tune", self.fine_tune), ("scratch", self.scratch)):
            for m in run.history:
                row = by_epoch.setdefault(int(m["epoch"]), {
                    "epoch": int(m["epoch"]), "fine_tune_train_loss": None,
                    "fine_tune_test_acc": None, "scratch_train_loss": None,
                    "scratch_test_acc": None})
                row[f"{key}_train_loss"] = m["train_loss"]
                row[f"{key}_test_acc"] = m["test_acc"]
        return [by_epoch[e] for e in sorted(by_epoch)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "dataset": self.dataset, "note": self.note, "png": str(self.png),
            "fine_tune": asdict(self.fine_tune), "scratch": asdict(self.scratch),
            "pretext": asdict(self.pretext) if self.pretext else None, "table": self.rows(),
        }


# ------------------------------------------------------------------------------ data
def hotdog_data(cfg: DemoConfig, out: DemoOutput) -> Path:
    """The hotdog / not-hotdog set of this size, generated once under ``cfg.out``."""
    from app.datasets.synthetic import generate_demo_dataset

    low, high = cfg.sides
    path = cfg.out / f"hotdog-{cfg.train_per_class}x{cfg.test_per_class}-{low}px-s{cfg.seed}"
    return _generated(path, "hotdog / not-hotdog photos", out, 2 * (
        cfg.train_per_class + cfg.test_per_class), lambda progress: generate_demo_dataset(
            path, train_per_class=cfg.train_per_class, test_per_class=cfg.test_per_class,
            seed=cfg.seed, min_side=low, max_side=high, progress=progress))


def pretext_data(cfg: DemoConfig, out: DemoOutput) -> Path:
    """The other task: which of several foods (no hotdogs) is on the table."""
    from app.datasets.synthetic import generate_food_dataset

    low, high = cfg.sides
    train, test = cfg.pretext_per_class, max(1, cfg.pretext_per_class // 3)
    path = cfg.out / f"foods-{train}x{test}-{low}px-s{cfg.seed}"
    return _generated(path, f"photos of {len(PRETEXT_FOODS)} other foods", out,
                      len(PRETEXT_FOODS) * (train + test), lambda progress: generate_food_dataset(
                          path, foods=PRETEXT_FOODS, train_per_class=train, test_per_class=test,
                          seed=cfg.seed, min_side=low, max_side=high, progress=progress))


def _generated(path: Path, what: str, out: DemoOutput, total: int,
               generate: Callable[[Callable[[int, int], None]], object]) -> Path:
    if (path / "train").is_dir() and (path / "test").is_dir():
        out.say(f"using the {what} in {path}")
        return path
    out.say(f"generating {total} synthetic {what} in {path}")
    with out.bar(total=total, unit="img", desc="generating") as bar:
        generate(lambda done, _total: bar.update(done - bar.n))
    return path


def pretext_note(reason: str | None) -> str:
    why = f"No ImageNet weights here ({reason}), so the" if reason else "The"
    foods = ", ".join(PRETEXT_FOODS)
    return (f"{why} fine-tune side starts from a ResNet-18 trained first, from scratch, on a "
            f"different synthetic task ({len(PRETEXT_FOODS)} classes of other food: {foods}; "
            "no hotdogs), not from ImageNet. It shows what a pretrained backbone buys on a "
            "small scale; with ImageNet weights the gap is larger.")


# ------------------------------------------------------------------------- in-process
def run_local(cfg: DemoConfig, out: DemoOutput) -> DemoResult:
    """Both runs through the engine in this process."""
    data = hotdog_data(cfg, out)
    init, note, pretext = _local_start(cfg, out)
    params = cfg.train_params()
    fine = _local_run(FINE_TUNE, data, TrainConfig(init=init, **params),
                      cfg.out / "fine-tune.pt", out)
    scratch = _local_run(SCRATCH, data, TrainConfig(init=INIT_SCRATCH, **params),
                         cfg.out / "scratch.pt", out)
    return _finish(DemoResult("local", str(data), fine, scratch, pretext, note, cfg.png_path))


def _local_start(cfg: DemoConfig, out: DemoOutput) -> tuple[str, str | None, Run | None]:
    """Where the fine-tune starts: ImageNet weights, or (without them, or asked to) the
    other-task model, trained here first; the note that says so, and that run."""
    from app.engine.errors import PretrainedWeightsMissing
    from app.engine.model import load_imagenet_state_dict

    note: str | None = None
    if cfg.start == "pretext":
        note = pretext_note(None)
    else:
        try:
            load_imagenet_state_dict()
        except PretrainedWeightsMissing as exc:
            if cfg.start == "imagenet":
                raise
            note = pretext_note(_short_reason(str(exc)))
    if note is None:
        return INIT_IMAGENET, None, None
    out.say(note)
    foods = pretext_data(cfg, out)
    ckpt = cfg.out / f"pretext-{cfg.image_size}px-{cfg.pretext_epochs}ep-s{cfg.seed}.pt"
    pretext = _local_run(PRETEXT, foods, TrainConfig(
        init=INIT_SCRATCH, **{**cfg.train_params(), "epochs": cfg.pretext_epochs}), ckpt, out,
        reuse=True)
    return str(ckpt), note, pretext


def _local_run(name: str, data: Path, config: TrainConfig, ckpt: Path, out: DemoOutput,
               reuse: bool = False) -> Run:
    from app.engine import Callback, EpochMetrics, fit, load_checkpoint
    from app.engine.callback import BatchProgress, StartInfo

    cfg = config.resolved()
    assert cfg.lr is not None and cfg.head_lr_mult is not None  # resolved() fills them
    run = Run(name, cfg.init, cfg.lr, cfg.head_lr_mult, checkpoint=str(ckpt))
    if reuse and ckpt.is_file():
        run.history = list(load_checkpoint(ckpt).get("history", []))
        out.say(f"{name}: reusing {ckpt} (test accuracy {run.test_acc:.3f})")
        return run
    out.say(f"{name}: training from {describe_init(cfg.init)}, lr {cfg.lr:g}, "
            f"head x{cfg.head_lr_mult:g}, {cfg.epochs} epoch{'s' if cfg.epochs > 1 else ''}")

    class Progress(Callback):
        bar: ProgressBar | None = None

        def on_start(self, info: StartInfo) -> None:
            self.bar = out.bar(total=info.batches_per_epoch * info.epochs, unit="batch",
                               desc=name)

        def on_batch(self, progress: BatchProgress) -> None:
            if self.bar is not None:
                self.bar.set_description(f"{name} epoch {progress.epoch}/{progress.epochs}")
                self.bar.update(1)

        def on_epoch(self, m: EpochMetrics) -> None:
            run.history.append(m.to_dict())
            out.epoch(name, run.history[-1])

    progress = Progress()
    try:
        fit(data, cfg, ckpt, callback=progress)
    finally:
        if progress.bar is not None:
            progress.bar.close()
    return run


def describe_init(init: str) -> str:
    if init == INIT_IMAGENET:
        return "ImageNet weights"
    if init == INIT_SCRATCH:
        return "random weights (scratch)"
    if init.startswith("job:"):
        return f"the model of job {init[4:]}"
    return f"the checkpoint {init}"


def _short_reason(message: str) -> str:
    # For the note only (never to decide anything): "[PretrainedWeightsMissing: ]ImageNet
    # weights for ResNet-18 are not available: REASON. Provide them by ..."
    reason = message.split("not available: ", 1)[-1]
    return reason.split(". Provide", 1)[0]


# -------------------------------------------------------------------------- service
class _ServiceRuns:
    """The experiment's jobs on a service: the scratch run, and the fine-tune, or first the
    other-task (pretext) job that the fine-tune then starts from."""

    def __init__(self, cfg: DemoConfig, client: Client, out: DemoOutput) -> None:
        self.cfg, self.client, self.out = cfg, client, out
        self.params: dict[str, ParamValue] = cfg.train_params()
        self.dataset = _upload(client, hotdog_data(cfg, out), out)
        self.jobs: dict[str, Job] = {SCRATCH: self.submit(self.dataset, INIT_SCRATCH)}
        self.note: str | None = None
        self.reported: dict[str, int] = {}

    def submit(self, dataset: Dataset, init: str, epochs: int | None = None) -> Job:
        return self.client.submit(dataset["id"], **{
            **self.params, "init": init, "epochs": epochs or self.cfg.epochs})

    def start_imagenet(self) -> None:
        """The fine-tune from ImageNet weights. The service refuses it when none of its
        running workers has them: then the pretext route (or, asked for imagenet, the
        error)."""
        try:
            self.jobs[FINE_TUNE] = self.submit(self.dataset, INIT_IMAGENET)
        except ServiceError as exc:
            if exc.kind != ErrorKind.WEIGHTS_MISSING:
                raise
            if self.cfg.start == "imagenet":
                from app.engine.errors import PretrainedWeightsMissing

                raise PretrainedWeightsMissing(f"{FINE_TUNE} job refused: {exc.detail}") from exc
            self.start_pretext("no running worker of the service has them")

    def start_pretext(self, reason: str | None) -> None:
        self.note = pretext_note(reason)
        self.out.say(self.note)
        foods = _upload(self.client, pretext_data(self.cfg, self.out), self.out)
        self.jobs[PRETEXT] = self.submit(foods, INIT_SCRATCH, self.cfg.pretext_epochs)

    def step(self) -> bool:
        """Refresh the jobs and start what is due; True when every run has ended."""
        self.jobs = {name: self.client.job(j["id"]) for name, j in self.jobs.items()}
        self.report_epochs()
        fine, pre = self.jobs.get(FINE_TUNE), self.jobs.get(PRETEXT)
        if (fine is not None and fine["status"] == "failed"
                and fine.get("error_kind") == ErrorKind.WEIGHTS_MISSING):
            if self.cfg.start == "imagenet":
                from app.engine.errors import PretrainedWeightsMissing

                raise PretrainedWeightsMissing(
                    f"{FINE_TUNE} job {fine['id']} failed: {fine['error']}")
            del self.jobs[FINE_TUNE]
            self.start_pretext(_short_reason(fine["error"] or ""))
            return False
        if pre is not None and fine is None and pre["status"] == "succeeded":
            self.jobs[FINE_TUNE] = self.submit(self.dataset, f"job:{pre['id']}")
            self.out.say(f"{FINE_TUNE}: job {self.jobs[FINE_TUNE]['id']} starts from the "
                         f"{PRETEXT} job {pre['id']}")
            return False
        for name, job in self.jobs.items():
            if job["status"] in ("failed", "cancelled"):
                raise DemoFailed(f"{name} job {job['id']} {job['status']}"
                                 + (f": {job['error']}" if job.get("error") else ""))
        return FINE_TUNE in self.jobs and all(
            j["status"] in TERMINAL for j in self.jobs.values())

    def report_epochs(self) -> None:
        for name, job in self.jobs.items():
            seen = self.reported.get(job["id"], 0)
            if job["progress"]["epoch"] > seen:
                for m in self.client.metrics(job["id"])[seen:]:
                    self.out.epoch(name, m)
                    self.reported[job["id"]] = m["epoch"]

    def show(self, bar: ProgressBar) -> None:
        jobs = self.jobs.values()
        done = sum(j["progress"]["fraction"] * j["progress"]["epochs"] for j in jobs)
        bar.n = int(1000 * done / (sum(j["progress"]["epochs"] for j in jobs) or 1))
        bar.set_description(" · ".join(
            f"{name} {j['status']} {j['progress']['epoch']}/{j['progress']['epochs']}"
            for name, j in self.jobs.items()))
        bar.refresh()


def run_service(cfg: DemoConfig, client: Client, out: DemoOutput, *, interval: float = 1.0
                ) -> DemoResult:
    """Both runs as jobs of the service at ``client``: upload, submit, watch."""
    runs = _ServiceRuns(cfg, client, out)
    if cfg.start == "pretext":
        runs.start_pretext(None)
    else:
        runs.start_imagenet()
    out.say("jobs submitted: " + ", ".join(f"{k} {j['id']}" for k, j in runs.jobs.items()))
    with out.bar(total=1000, bar_format="{l_bar}{bar}| {postfix}") as bar:
        while not runs.step():
            runs.show(bar)
            time.sleep(interval)
    done = {name: _service_run(client, name, job) for name, job in runs.jobs.items()}
    return _finish(DemoResult("service", runs.dataset["id"], done[FINE_TUNE], done[SCRATCH],
                              done.get(PRETEXT), runs.note, cfg.png_path))


def _upload(client: Client, data: Path, out: DemoOutput) -> Dataset:
    from app.datasets.archive import zip_dataset

    archive = data.with_name(data.name + ".zip")
    if not archive.is_file():
        zip_dataset(data, archive)
    with out.bar(total=archive.stat().st_size, unit="B", unit_scale=True,
                 desc=f"uploading {archive.name}") as bar:
        ds = client.upload(archive, progress=lambda done, _total: bar.update(done - bar.n))
    out.say(f"uploaded {archive.name}: dataset {ds['id']}")
    return ds


def _service_run(client: Client, name: str, job: Job) -> Run:
    p = job["params"]
    history: list[EpochRecord] = client.metrics(job["id"])
    return Run(name, p["init"], float(p["lr"]), float(p["head_lr_mult"]),
               history=[dict(m) for m in history], job_id=job["id"])


# ---------------------------------------------------------------------- label noise
CLEAN, NOISY, RELABELLED = "clean", "noisy", "relabelled"


@dataclass
class NoiseResult:
    """``hotdog demo --label-noise``: the fine-tune on the clean labels, on the noisy ones,
    and on the noisy ones relabelled as the label review suggested; and how well the review
    found the flipped images (whose truth the experiment knows)."""

    dataset: str
    label_noise: float
    runs: list[Run]  # clean, noisy, relabelled
    flipped: int  # training images whose label was flipped
    flagged: int  # images the review flagged (and the relabelled copy moved)
    found: int  # flagged images that were flipped
    precision_at_k: float  # of the review's top k, k = flipped
    backbone: str
    review_seconds: float
    relabelled_correctly: int  # flagged flipped images moved back to their true class
    note: str | None

    @property
    def precision(self) -> float:
        return self.found / self.flagged if self.flagged else 0.0

    @property
    def recall(self) -> float:
        return self.found / self.flipped if self.flipped else 0.0

    def rows(self) -> list[dict[str, Any]]:
        """Per epoch, each run's test accuracy (None where a run has none)."""
        epochs = sorted({int(m["epoch"]) for r in self.runs for m in r.history})
        return [{"epoch": e, **{f"{r.name}_test_acc": next(
            (float(m["test_acc"]) for m in r.history if int(m["epoch"]) == e), None)
            for r in self.runs}} for e in epochs]

    def to_dict(self) -> dict[str, Any]:
        return {"mode": "local", "dataset": self.dataset, "label_noise": self.label_noise,
                "note": self.note, "runs": {r.name: asdict(r) for r in self.runs},
                "test_acc": {r.name: r.test_acc for r in self.runs},
                "review": {"flipped": self.flipped, "flagged": self.flagged,
                           "found": self.found, "precision": self.precision,
                           "recall": self.recall, "precision_at_k": self.precision_at_k,
                           "relabelled_correctly": self.relabelled_correctly,
                           "backbone": self.backbone, "seconds": self.review_seconds},
                "table": self.rows()}


def run_label_noise(cfg: DemoConfig, out: DemoOutput) -> NoiseResult:
    """In this process: flip ``cfg.label_noise`` of the training labels (seeded) in a copy
    of the data, fine-tune on the clean and on the noisy copy, review the noisy labels with
    the fine-tune's starting backbone, relabel what the review flagged (a new copy, the
    suggested classes), and fine-tune on that."""
    import shutil

    from app.datasets.label_noise import flip_labels, relabelled_copy
    from app.engine.catalogue import catalogue
    from app.engine.review import (
        ReviewConfig,
        choose_backbone,
        precision_recall_at,
        review_labels,
    )

    data = hotdog_data(cfg, out)
    init, note, _pretext = _local_start(cfg, out)
    params = cfg.train_params()
    pct = round(100 * cfg.label_noise)
    noisy, fixed = cfg.out / f"{data.name}-noise{pct}", cfg.out / f"{data.name}-noise{pct}-fixed"
    for old in (noisy, fixed):  # each run flips and relabels afresh
        shutil.rmtree(old, ignore_errors=True)
    truth = flip_labels(data, noisy, fraction=cfg.label_noise, seed=cfg.seed)
    out.say(f"flipped the labels of {len(truth)} training images ({pct} %) in {noisy}")
    clean = _local_run(CLEAN, data, TrainConfig(init=init, **params), cfg.out / "clean.pt", out)
    noisy_ckpt = cfg.out / "noisy.pt"
    dirty = _local_run(NOISY, noisy, TrainConfig(init=init, **params), noisy_ckpt, out)
    backbone = choose_backbone(noisy_ckpt, start=init, seed=cfg.seed)
    out.say(f"reviewing the noisy labels (backbone: {backbone.description})")
    review = review_labels(noisy, backbone, ReviewConfig(seed=cfg.seed))
    entries = catalogue(noisy)
    flipped = {e.id for e in entries if e.path in truth}
    flagged = {i.image_id for i in review.issues}
    at_k, _ = precision_recall_at(review.ranking, flipped)
    changes = {entries[i.image_id].path: i.suggested for i in review.issues}
    back = sum(1 for path, cls in changes.items() if truth.get(path) == cls)
    relabelled_copy(noisy, fixed, changes)
    out.say(f"the review flagged {len(flagged)} images, {len(flagged & flipped)} of them "
            f"flipped; relabelled them as suggested in {fixed}")
    relabelled = _local_run(RELABELLED, fixed, TrainConfig(init=init, **params),
                            cfg.out / "relabelled.pt", out)
    return NoiseResult(str(data), cfg.label_noise, [clean, dirty, relabelled], len(flipped),
                       len(flagged), len(flagged & flipped), at_k, review.backbone,
                       sum(review.seconds.values()), back, note)


# --------------------------------------------------------------------------- results
def _finish(result: DemoResult) -> DemoResult:
    write_curves(result)
    return result


def write_curves(result: DemoResult) -> Path:
    """Train loss and test accuracy per epoch, fine-tune and scratch, as one PNG."""
    from app.plot import Panel, Series, render, save_png

    def series(key: str) -> list[Series]:
        return [Series(f"{run.name} ({_short_init(run)}, lr {run.lr:g}, head x"
                       f"{run.head_lr_mult:g})",
                       [(float(m["epoch"]), float(m[key])) for m in run.history])
                for run in (result.fine_tune, result.scratch)]

    accs = [float(m["test_acc"]) for r in (result.fine_tune, result.scratch) for m in r.history]
    low = math.floor(min(accs, default=0.0) * 10) / 10
    image = render([
        Panel("training loss", "epoch", "train loss (cross-entropy)", series("train_loss")),
        Panel("test accuracy", "epoch", "test accuracy", series("test_acc"),
              y_range=(min(low, 0.5), 1.0)),
    ], title="hotdog / not-hotdog: fine-tuning a pretrained ResNet-18 vs training from scratch")
    return save_png(image, result.png)


def _short_init(run: Run) -> str:
    if run.init == INIT_IMAGENET:
        return "from ImageNet"
    if run.init == INIT_SCRATCH:
        return "from scratch"
    return "from the other-task model"
