"""``hotdog demo``: the seed's experiment in one command. The same synthetic hotdog /
not-hotdog data is trained twice, fine-tuned from a pretrained backbone (new head at 10x the
backbone's lr) and from scratch (a larger lr, one multiplier), through a running service
when one answers (upload, submit, watch) or in this process through the engine. It prints
both runs side by side per epoch and draws their curves to a PNG.

Offline there are no ImageNet weights. The fine-tune side then starts from a model trained
first, from scratch, on a different synthetic task (which food is on the table, several
kinds, no hotdogs): a stand-in for ImageNet pretraining, and the output says so.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.client import DEFAULT_URL, TERMINAL, Client
from app.engine.config import (
    INIT_IMAGENET,
    INIT_SCRATCH,
    PRETRAINED_HEAD_LR_MULT,
    PRETRAINED_LR,
    SCRATCH_LR,
)

FINE_TUNE, SCRATCH, PRETEXT = "fine-tune", "scratch", "pretext"
START_CHOICES = ("auto", "imagenet", "pretext")
MODE_CHOICES = ("auto", "service", "local")
PRETEXT_FOODS = ("pizza", "salad", "fruit", "donut", "berries", "broccoli")


class DemoFailed(RuntimeError):
    """A run of the experiment did not succeed (the message says which and why)."""


@dataclass(frozen=True)
class DemoConfig:
    """The experiment's size. The defaults finish in a few minutes on a 2-core CPU."""

    out: Path = Path("data/demo-run")
    epochs: int = 8
    image_size: int = 64
    batch_size: int = 16
    # Few labelled photos, as in d2l's motivation: where a pretrained backbone matters most.
    train_per_class: int = 30
    test_per_class: int = 75
    pretext_epochs: int = 8
    pretext_per_class: int = 60  # training images per food; a third more for its test split
    seed: int = 0
    start: str = "auto"  # the fine-tune's start: auto (ImageNet if available), imagenet, pretext
    png: Path | None = None  # default: out/curves.png

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.epochs <= 1000 or not 1 <= self.pretext_epochs <= 1000:
            problems.append("epochs must be in 1..1000")
        if not 16 <= self.image_size <= 1024:
            problems.append(f"image size must be in 16..1024, got {self.image_size}")
        if self.batch_size < 1:
            problems.append("batch size must be at least 1")
        if min(self.train_per_class, self.test_per_class, self.pretext_per_class) < 1:
            problems.append("image counts must be at least 1")
        if self.start not in START_CHOICES:
            problems.append(f"start must be one of {', '.join(START_CHOICES)}")
        if problems:
            raise ValueError("; ".join(problems))

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
        """What both runs share (the init-dependent lr and head multiplier are defaulted)."""
        return {"epochs": self.epochs, "batch_size": self.batch_size,
                "image_size": self.image_size, "seed": self.seed}


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

    def table(self) -> str:
        def cell(value: float | None, fmt: str) -> str:
            return f"{value:{fmt}}" if value is not None else f"{'-':>{fmt[1:].split('.')[0]}}"

        lines = [f"{'':5} {FINE_TUNE:^20}  {SCRATCH:^20}",
                 f"{'epoch':>5} {'train loss':>10} {'test acc':>9}  {'train loss':>10} "
                 f"{'test acc':>9}"]
        for r in self.rows():
            lines.append(
                f"{r['epoch']:>5} {cell(r['fine_tune_train_loss'], '>10.4f')} "
                f"{cell(r['fine_tune_test_acc'], '>9.3f')}  "
                f"{cell(r['scratch_train_loss'], '>10.4f')} {cell(r['scratch_test_acc'], '>9.3f')}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "dataset": self.dataset, "note": self.note, "png": str(self.png),
            "fine_tune": asdict(self.fine_tune), "scratch": asdict(self.scratch),
            "pretext": asdict(self.pretext) if self.pretext else None, "table": self.rows(),
        }


class Output:
    """Where the demo talks: messages (stdout, or stderr when stdout is for JSON) and
    progress bars (stderr, when it is a terminal)."""

    def __init__(self, *, json_mode: bool = False, bars: bool | None = None) -> None:
        self.stream = sys.stderr if json_mode else sys.stdout
        self.bars = sys.stderr.isatty() if bars is None else bars

    def say(self, message: str) -> None:
        print(message, file=self.stream, flush=True)

    def bar(self, **kwargs: Any) -> Any:
        from tqdm import tqdm

        return tqdm(disable=not self.bars, file=sys.stderr, dynamic_ncols=True, leave=False,
                    **kwargs)


# ------------------------------------------------------------------------------ data
def hotdog_data(cfg: DemoConfig, out: Output) -> Path:
    """The hotdog / not-hotdog set of this size, generated once under ``cfg.out``."""
    from app.demo_data import generate_demo_dataset

    low, high = cfg.sides
    path = cfg.out / f"hotdog-{cfg.train_per_class}x{cfg.test_per_class}-{low}px-s{cfg.seed}"
    return _generated(path, "hotdog / not-hotdog photos", out, 2 * (
        cfg.train_per_class + cfg.test_per_class), lambda progress: generate_demo_dataset(
            path, train_per_class=cfg.train_per_class, test_per_class=cfg.test_per_class,
            seed=cfg.seed, min_side=low, max_side=high, progress=progress))


def pretext_data(cfg: DemoConfig, out: Output) -> Path:
    """The other task: which of several foods (no hotdogs) is on the table."""
    from app.demo_data import generate_food_dataset

    low, high = cfg.sides
    train, test = cfg.pretext_per_class, max(1, cfg.pretext_per_class // 3)
    path = cfg.out / f"foods-{train}x{test}-{low}px-s{cfg.seed}"
    return _generated(path, f"photos of {len(PRETEXT_FOODS)} other foods", out,
                      len(PRETEXT_FOODS) * (train + test), lambda progress: generate_food_dataset(
                          path, foods=PRETEXT_FOODS, train_per_class=train, test_per_class=test,
                          seed=cfg.seed, min_side=low, max_side=high, progress=progress))


def _generated(path: Path, what: str, out: Output, total: int,
               generate: Callable[[Callable[[int, int], None]], Any]) -> Path:
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
def run_local(cfg: DemoConfig, out: Output) -> DemoResult:
    """Both runs through the engine in this process."""
    from app.engine import TrainConfig
    from app.engine.model import PretrainedWeightsMissing, load_imagenet_state_dict

    data = hotdog_data(cfg, out)
    note: str | None = None
    init = INIT_IMAGENET
    if cfg.start == "pretext":
        note = pretext_note(None)
    else:
        try:
            load_imagenet_state_dict()
        except PretrainedWeightsMissing as exc:
            if cfg.start == "imagenet":
                raise
            note = pretext_note(_short_reason(str(exc)))
    pretext: Run | None = None
    if note is not None:
        out.say(note)
        foods = pretext_data(cfg, out)
        ckpt = cfg.out / f"pretext-{cfg.image_size}px-{cfg.pretext_epochs}ep-s{cfg.seed}.pt"
        pretext = _local_run(PRETEXT, foods, TrainConfig(
            init=INIT_SCRATCH, epochs=cfg.pretext_epochs, batch_size=cfg.batch_size,
            image_size=cfg.image_size, seed=cfg.seed), ckpt, out, reuse=True)
        init = str(ckpt)
    params = cfg.train_params()
    fine = _local_run(FINE_TUNE, data, TrainConfig(init=init, **params),
                      cfg.out / "fine-tune.pt", out)
    scratch = _local_run(SCRATCH, data, TrainConfig(init=INIT_SCRATCH, **params),
                         cfg.out / "scratch.pt", out)
    return _finish(DemoResult("local", str(data), fine, scratch, pretext, note, cfg.png_path))


def _local_run(name: str, data: Path, config: Any, ckpt: Path, out: Output,
               reuse: bool = False) -> Run:
    from app.engine import Callback, EpochMetrics, fit, load_checkpoint
    from app.engine.callback import BatchProgress, StartInfo

    cfg = config.resolved()
    run = Run(name, cfg.init, float(cfg.lr), float(cfg.head_lr_mult), checkpoint=str(ckpt))
    if reuse and ckpt.is_file():
        run.history = list(load_checkpoint(ckpt).get("history", []))
        out.say(f"{name}: reusing {ckpt} (test accuracy {run.test_acc:.3f})")
        return run
    out.say(f"{name}: training from {_describe_init(cfg.init)}, lr {cfg.lr:g}, "
            f"head x{cfg.head_lr_mult:g}, {cfg.epochs} epoch{'s' if cfg.epochs > 1 else ''}")

    class Progress(Callback):
        bar: Any = None

        def on_start(self, info: StartInfo) -> None:
            self.bar = out.bar(total=info.batches_per_epoch * info.epochs, unit="batch",
                               desc=name)

        def on_batch(self, progress: BatchProgress) -> None:
            self.bar.set_description(f"{name} epoch {progress.epoch}/{progress.epochs}")
            self.bar.update(1)

        def on_epoch(self, m: EpochMetrics) -> None:
            run.history.append(m.to_dict())
            self.bar.write(f"  {name} epoch {m.epoch}/{m.epochs}: train loss "
                           f"{m.train_loss:.4f}, test acc {m.test_acc:.3f}", file=out.stream)

    progress = Progress()
    try:
        fit(data, cfg, ckpt, callback=progress)
    finally:
        if progress.bar is not None:
            progress.bar.close()
    return run


def _describe_init(init: str) -> str:
    if init == INIT_IMAGENET:
        return "ImageNet weights"
    if init == INIT_SCRATCH:
        return "random weights (scratch)"
    if init.startswith("job:"):
        return f"the model of job {init[4:]}"
    return f"the checkpoint {init}"


def _short_reason(message: str) -> str:
    # "[PretrainedWeightsMissing: ]ImageNet weights for ResNet-18 are not available: REASON.
    # Provide them by ..."
    reason = message.split("not available: ", 1)[-1]
    return reason.split(". Provide", 1)[0]


# -------------------------------------------------------------------------- service
def service_reachable(url: str, api_key: str | None) -> bool:
    import httpx

    try:
        r = httpx.get(url.rstrip("/") + "/health", timeout=3.0,
                      headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    except httpx.HTTPError:
        return False
    return r.status_code == 200


def run_service(cfg: DemoConfig, client: Client, out: Output, *, interval: float = 1.0
                ) -> DemoResult:
    """Both runs as jobs of the service at ``client``: upload, submit, watch."""
    data = hotdog_data(cfg, out)
    dataset = _upload(client, data, out)
    params = cfg.train_params()
    jobs: dict[str, dict[str, Any]] = {
        SCRATCH: client.submit(dataset["id"], init=INIT_SCRATCH, **params)}
    note: str | None = None
    if cfg.start == "pretext":
        note = pretext_note(None)
        out.say(note)
        foods = _upload(client, pretext_data(cfg, out), out)
        jobs[PRETEXT] = client.submit(foods["id"], init=INIT_SCRATCH, **{
            **params, "epochs": cfg.pretext_epochs})
    else:
        jobs[FINE_TUNE] = client.submit(dataset["id"], init=INIT_IMAGENET, **params)
    out.say("jobs submitted: " + ", ".join(f"{k} {j['id']}" for k, j in jobs.items()))

    bar = out.bar(total=1000, bar_format="{l_bar}{bar}| {postfix}")
    reported: dict[str, int] = {}
    try:
        while True:
            jobs = {name: client.job(j["id"]) for name, j in jobs.items()}
            _show_progress(bar, jobs, client, reported, out)
            fine = jobs.get(FINE_TUNE)
            if (fine is not None and fine["status"] == "failed"
                    and "PretrainedWeightsMissing" in (fine.get("error") or "")):
                if cfg.start == "imagenet":
                    from app.engine.model import PretrainedWeightsMissing

                    raise PretrainedWeightsMissing(
                        f"{FINE_TUNE} job {fine['id']} failed: {fine['error']}")
                note = pretext_note(_short_reason(fine["error"]))
                bar.write(note, file=out.stream)
                del jobs[FINE_TUNE]
                foods = _upload(client, pretext_data(cfg, out), out)
                jobs[PRETEXT] = client.submit(foods["id"], init=INIT_SCRATCH, **{
                    **params, "epochs": cfg.pretext_epochs})
                continue
            pre = jobs.get(PRETEXT)
            if pre is not None and FINE_TUNE not in jobs and pre["status"] == "succeeded":
                jobs[FINE_TUNE] = client.submit(dataset["id"], init=f"job:{pre['id']}", **params)
                bar.write(f"{FINE_TUNE}: job {jobs[FINE_TUNE]['id']} starts from the "
                          f"{PRETEXT} job {pre['id']}", file=out.stream)
                continue
            for name, job in jobs.items():
                if job["status"] in ("failed", "cancelled"):
                    raise DemoFailed(f"{name} job {job['id']} {job['status']}"
                                     + (f": {job['error']}" if job.get("error") else ""))
            if FINE_TUNE in jobs and all(j["status"] in TERMINAL for j in jobs.values()):
                break
            time.sleep(interval)
    finally:
        bar.close()
    runs = {name: _service_run(client, name, job) for name, job in jobs.items()}
    return _finish(DemoResult("service", dataset["id"], runs[FINE_TUNE], runs[SCRATCH],
                              runs.get(PRETEXT), note, cfg.png_path))


def _upload(client: Client, data: Path, out: Output) -> dict[str, Any]:
    from app.demo_data import zip_dataset

    archive = data.with_name(data.name + ".zip")
    if not archive.is_file():
        zip_dataset(data, archive)
    with out.bar(total=archive.stat().st_size, unit="B", unit_scale=True,
                 desc=f"uploading {archive.name}") as bar:
        ds = client.upload(archive, progress=lambda done, _total: bar.update(done - bar.n))
    out.say(f"uploaded {archive.name}: dataset {ds['id']}")
    return ds


def _show_progress(bar: Any, jobs: dict[str, dict[str, Any]], client: Client,
                   reported: dict[str, int], out: Output) -> None:
    done = sum(j["progress"]["fraction"] * j["progress"]["epochs"] for j in jobs.values())
    total = sum(j["progress"]["epochs"] for j in jobs.values()) or 1
    bar.n = int(1000 * done / total)
    bar.set_description(" · ".join(
        f"{name} {j['status']} {j['progress']['epoch']}/{j['progress']['epochs']}"
        for name, j in jobs.items()))
    bar.refresh()
    for name, job in jobs.items():
        seen = reported.get(job["id"], 0)
        if job["progress"]["epoch"] > seen:
            for m in client.metrics(job["id"])[seen:]:
                bar.write(f"  {name} epoch {m['epoch']}/{job['progress']['epochs']}: train loss "
                          f"{m['train_loss']:.4f}, test acc {m['test_acc']:.3f}",
                          file=out.stream)
                reported[job["id"]] = m["epoch"]


def _service_run(client: Client, name: str, job: dict[str, Any]) -> Run:
    p = job["params"]
    return Run(name, p["init"], float(p["lr"]), float(p["head_lr_mult"]),
               history=client.metrics(job["id"]), job_id=job["id"])


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


def print_result(result: DemoResult, out: Output) -> None:
    fine, scratch = result.fine_tune, result.scratch
    out.say("")
    if result.note:
        out.say(f"note: {result.note}")
    out.say(f"{FINE_TUNE}: from {_describe_init(fine.init)}"
            + (f" (job {fine.job_id})" if fine.job_id else "")
            + f", lr {fine.lr:g}, new head at x{fine.head_lr_mult:g}")
    out.say(f"{SCRATCH}:   from {_describe_init(scratch.init)}"
            + (f" (job {scratch.job_id})" if scratch.job_id else "")
            + f", lr {scratch.lr:g}, head x{scratch.head_lr_mult:g}")
    out.say(result.table())
    out.say(f"final test accuracy: {FINE_TUNE} {fine.test_acc:.3f}, "
            f"{SCRATCH} {scratch.test_acc:.3f}")
    out.say(f"curves written to {result.png}")


# ------------------------------------------------------------------------------ CLI
def _epilog() -> str:
    return f"""examples:
  hotdog demo                          # service at $HOTDOG_URL if it answers, else in-process
  hotdog demo --mode local --epochs 12 --image-size 96 --out data/demo-big
  hotdog demo --url http://gpu-box:8000 --image-size 224 --epochs 5 --batch-size 128
  hotdog demo --json > demo.json       # the table and both runs as JSON; progress on stderr

Both runs see the same data, epochs, batch and seed. The fine-tune trains the pretrained
backbone at lr {PRETRAINED_LR:g} and its new, random head {PRETRAINED_HEAD_LR_MULT:g}x faster (it
must move further); from scratch every layer is random, so all train at one larger rate,
{SCRATCH_LR:g} (a 10x head diverges there).
Without ImageNet weights the fine-tune starts from a model trained first on a different
synthetic task (--start pretext forces this). Generated data, checkpoints and curves.png go
to --out; a second run reuses the data.

"""


def add_command(command: Callable[..., argparse.ArgumentParser],
                run: Callable[[Callable[..., int]], Callable[[argparse.Namespace], int]]
                ) -> None:
    """Register ``hotdog demo`` on the parser (see app.cli)."""
    p = command("demo", run(cmd_demo), "the seed's experiment: fine-tune vs from scratch on "
                "synthetic hotdog photos, side by side, with a PNG of both curves", _epilog())
    data_dir = Path(os.environ.get("DATA_DIR", "data"))
    d = DemoConfig()
    p.add_argument("--out", type=Path, default=data_dir / "demo-run",
                   help="folder for the generated data, checkpoints and curves.png")
    p.add_argument("--png", type=Path, default=None, help="write the curves here instead "
                   "of OUT/curves.png")
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs of each run")
    p.add_argument("--image-size", type=int, default=d.image_size,
                   help="training crop size S (d2l: 224)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="(d2l: 128)")
    p.add_argument("--train-per-class", type=int, default=d.train_per_class,
                   help="generated training photos per class")
    p.add_argument("--test-per-class", type=int, default=d.test_per_class,
                   help="generated test photos per class")
    p.add_argument("--pretext-epochs", type=int, default=d.pretext_epochs,
                   help="epochs of the other-task model, when there are no ImageNet weights")
    p.add_argument("--pretext-per-class", type=int, default=d.pretext_per_class,
                   help="its training images per food")
    p.add_argument("--seed", type=int, default=d.seed, help="of the data and both runs")
    p.add_argument("--start", choices=START_CHOICES, default=d.start,
                   help="the fine-tune's start: ImageNet when available (auto), ImageNet or "
                   "fail (imagenet), or the other-task model (pretext)")
    p.add_argument("--mode", choices=MODE_CHOICES, default="auto",
                   help="service: through the service at --url; local: in this process; "
                   "auto: the service if it answers, else local")
    p.add_argument("--url", default=os.environ.get("HOTDOG_URL", DEFAULT_URL),
                   help="the service (env HOTDOG_URL)")
    p.add_argument("--api-key", default=os.environ.get("HOTDOG_API_KEY"),
                   help="API key, when the service has one (env HOTDOG_API_KEY)")
    p.add_argument("--interval", type=float, default=1.0,
                   help="seconds between polls of the service")


def cmd_demo(args: argparse.Namespace, emit: Callable[[Any], None]) -> int:
    cfg = DemoConfig(
        out=args.out, epochs=args.epochs, image_size=args.image_size, batch_size=args.batch_size,
        train_per_class=args.train_per_class, test_per_class=args.test_per_class,
        pretext_epochs=args.pretext_epochs, pretext_per_class=args.pretext_per_class,
        seed=args.seed, start=args.start, png=args.png,
    )
    out = Output(json_mode=args.json)
    mode = args.mode
    if mode == "auto":
        mode = "service" if service_reachable(args.url, args.api_key) else "local"
        if mode == "local":
            out.say(f"no hotdog service answers at {args.url}: training in this process")
    if mode == "service":
        out.say(f"using the hotdog service at {args.url}")
        with Client(args.url, api_key=args.api_key) as client:
            result = run_service(cfg, client, out, interval=args.interval)
    else:
        result = run_local(cfg, out)
    if args.json:
        emit(result.to_dict())
    else:
        print_result(result, out)
    return 0
