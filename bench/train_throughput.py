"""Training throughput: the engine (``app.engine.fit``) against d2l's plain PyTorch loop.

What it measures
----------------
In one process, on one dataset (generated into a temporary folder, or ``--data DIR``), it
trains the same recipe twice from the same starting weights:

* **bare** - the loop as d2l writes it: ``torchvision.datasets.ImageFolder`` with the
  classic ``torchvision.transforms`` (train: ``RandomResizedCrop`` + ``RandomHorizontalFlip``
  + ``ToTensor`` + ``Normalize``; test: ``Resize`` + ``CenterCrop`` + ``ToTensor`` +
  ``Normalize``), ``DataLoader(num_workers=0)``, ResNet-18 with a Xavier-initialised
  ``Linear(512, C)`` head, SGD with a backbone and a head parameter group,
  ``CrossEntropyLoss`` and a full test-set evaluation under ``torch.no_grad()`` after every
  epoch. Contiguous memory format, fp32, every image decoded from its JPEG on every access.
  Two details follow the engine so both start and step alike: the head's bias is zeroed,
  and a last training batch of exactly one image is dropped (BatchNorm cannot train on it).
* **engine** - ``app.engine.fit`` with the equivalent ``TrainConfig`` (same init, epochs,
  batch size, lr, head multiplier, weight decay, momentum, image size, seed) on the CPU:
  images decoded once into an in-memory cache, channels_last, batched normalisation, and
  whatever precision its device plan picks - bf16 autocast on a CPU where it measures
  faster than fp32 (``app.engine.device.cpu_bf16_pays``), else fp32; the header line says
  which. ``--engine-precision fp32``
  forces fp32 (``TrainConfig.precision``) to separate
  the bf16 gain from that of channels_last + caching.

Both use the mean loss, so the same lr means the same steps (d2l's own loop sums the loss
and uses a 128x smaller lr; see ``app/engine/config.py``). Both run with the same
``torch.get_num_threads()``. A short warm-up (one forward/backward of a throwaway model in
both memory formats) runs first, so neither side pays PyTorch's one-time lazy start-up.

How to read it
--------------
* ``train img/s``: training images processed / wall time of the training passes, data
  loading included, evaluation excluded. For the engine it is timed from the callback
  (start of the pass = ``on_start`` or the previous ``on_epoch``; end = the last
  ``on_batch``), which is how the bare loop is timed too; ``EpochMetrics.images_per_s`` is
  printed alongside as a cross-check. This is the steady-state speed of the training loop.
* ``whole run s``: everything of the run, setup (model, dataset scan, the engine's one-time
  decode/cache), all epochs, every evaluation and, for the engine, writing its checkpoint.
  This is the honest end-to-end figure: the engine's cache costs time up front that only
  the epochs pay back, so on few epochs the whole-run ratio is below the train-pass ratio.
* ``ratio engine/bare``: engine speed over bare speed, so above 1 means the engine is
  faster. For the train passes it is the ratio of images/s; for the whole run it is
  bare seconds / engine seconds.

The ``thread-time spent waiting for a CPU`` line (from Linux schedstat) tells whether other
processes competed for the cores. Above ~10% the figures mean little: with OpenMP's
spin-waiting, N torch threads sharing cores with another busy process can run several times
slower than one thread, and the bf16 kernels suffer most. On a shared machine measure with
``--threads 1`` (one core each side) or ``OMP_WAIT_POLICY=PASSIVE``.

Then (unless ``--compile-rounds 0``; ``--quick`` skips it) it measures ``torch.compile`` on
the engine's own training step (``app.engine.train.forward_backward`` and the optimiser step,
through ``app.engine.compiled.CompiledStep``, inductor, with the precision and memory format
of the engine's device plan) against the same step eager, on two copies of one model and the
same fixed batches (no data loading: this is what compiling changes):

* ``first compiled step`` / ``compile time``: the first compiled step's wall time, and that
  less one eager step. By default inductor's on-disk cache starts empty (a worker's first
  compiling job); ``--warm-compile-cache`` uses the usual cache (its later jobs).
* steady ``img/s`` of each side over ``--compile-rounds`` rounds that alternate which side
  goes first, ``--compile-steps`` steps per side per round; medians with [min-max], and the
  per-round ratio compiled/eager (each round's two sides ran under the same load).
* ``break-even``: training images after which the compiled run has caught up its compile
  time, ``compile_s / (1/eager - 1/compiled)``, at the run's image size and in images at
  224 px (the unit of the engine's rule, ``TRAIN_COMPILE_BREAK_EVEN``; see
  ``app/engine/compiled.py``).
* the first step's loss on each side from the same weights and batch (they agree within the
  precision's tolerance), and the compile decision the engine's run above took.

Accuracies are printed to show the two runs learn alike; on a few epochs from scratch they
are close to chance and differ by the run's randomness (augmentation, shuffling), not by a
bug. The first side run in a process can be slightly disadvantaged (allocator, caches):
``--order engine-first`` swaps the order to check that the ratio does not hinge on it.

Usage::

    .venv/bin/python bench/train_throughput.py            # defaults, ~2-3 min on 2 cores
    .venv/bin/python bench/train_throughput.py --quick    # seconds: a smoke test
    .venv/bin/python bench/train_throughput.py --threads 1 --engine-precision fp32
    .venv/bin/python bench/train_throughput.py --data ~/data/hotdog --init imagenet --json
    .venv/bin/python bench/train_throughput.py --compile-rounds 5 --image-size 112
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms
from torchvision.models import resnet18

from app.engine import BatchProgress, Callback, EpochMetrics, StartInfo, TrainConfig, fit
from app.engine.checkpoint import load_checkpoint
from app.engine.compiled import BREAK_EVEN_IMAGES, REFERENCE_SIZE, CompiledStep
from app.engine.config import COMPILE_CHOICES, INIT_IMAGENET, INIT_SCRATCH
from app.engine.data import load_image_folder
from app.engine.device import DevicePlan, plan_device
from app.engine.errors import DatasetError, PretrainedWeightsMissing
from app.engine.model import build_model, load_imagenet_state_dict
from app.engine.train import forward_backward, make_optimizer

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
SIDES = ("bare", "engine")

# Defaults of a normal run and of --quick; an option given on the command line wins.
DEFAULTS: dict[str, Any] = {
    "train_per_class": 64, "test_per_class": 32, "min_side": 256, "max_side": 640,
    "epochs": 3, "image_size": 224, "batch_size": 32, "compile_rounds": 5,
}
QUICK: dict[str, Any] = {
    "train_per_class": 16, "test_per_class": 8, "min_side": 80, "max_side": 160,
    "epochs": 1, "image_size": 64, "batch_size": 32, "compile_rounds": 0,
}


@dataclass(frozen=True)
class Recipe:
    """What both sides train: the resolved engine config is the single source of truth."""

    init: str
    epochs: int
    batch_size: int
    lr: float
    head_lr_mult: float
    weight_decay: float
    momentum: float
    image_size: int
    seed: int
    device: str = "cpu"

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Recipe:
        assert cfg.lr is not None and cfg.head_lr_mult is not None
        return cls(
            init=cfg.init, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
            head_lr_mult=cfg.head_lr_mult, weight_decay=cfg.weight_decay,
            momentum=cfg.momentum, image_size=cfg.image_size, seed=cfg.seed,
            device=cfg.device,
        )


@dataclass
class SideResult:
    """One side's figures. Seconds are wall-clock; ``train_seconds`` excludes evaluation."""

    side: str
    train_images: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    setup_seconds: float = 0.0  # before the first training pass (engine: decode/cache too)
    tail_seconds: float = 0.0  # after the last evaluation (engine: writing the checkpoint)
    whole_seconds: float = 0.0
    test_acc: float = float("nan")
    epoch_images_per_s: list[float] = field(default_factory=list)
    epoch_test_acc: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.train_images / self.train_seconds if self.train_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "images_per_s": self.images_per_s}


# --------------------------------------------------------------------------- the bare side


def _replace_head(net: nn.Module, num_classes: int) -> nn.Module:
    # d2l: a new Linear(512, C) with a Xavier-uniform weight. Its bias is zeroed as the
    # engine does, so both sides start from bit-identical weights.
    net.fc = nn.Linear(net.fc.in_features, num_classes)
    nn.init.xavier_uniform_(net.fc.weight)
    nn.init.zeros_(net.fc.bias)
    return net


def bare_model(num_classes: int, init: str, seed: int) -> nn.Module:
    """ResNet-18 built the plain torchvision way, from the same seed as ``fit`` uses."""
    state = load_imagenet_state_dict() if init == INIT_IMAGENET else None
    torch.manual_seed(seed)
    net = resnet18(weights=None)
    if state is not None:
        net.load_state_dict(state)
    return _replace_head(net, num_classes)


def _drop_last(n: int, batch_size: int) -> bool:
    # As the engine: BatchNorm cannot train on a last batch of exactly one image.
    return n > 1 and n % batch_size == 1


def run_bare(data: Path, recipe: Recipe) -> SideResult:
    res = SideResult("bare")
    t0 = time.perf_counter()
    normalize = transforms.Normalize(mean=MEAN, std=STD)
    size = recipe.image_size
    train_augs = transforms.Compose([
        transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), normalize,
    ])
    test_augs = transforms.Compose([
        transforms.Resize(round(size * 256 / 224)), transforms.CenterCrop(size),
        transforms.ToTensor(), normalize,
    ])
    train_set = datasets.ImageFolder(str(data / "train"), transform=train_augs)
    test_set = datasets.ImageFolder(str(data / "test"), transform=test_augs)
    device = torch.device(recipe.device)
    net = bare_model(len(train_set.classes), recipe.init, recipe.seed).to(device)
    batch_size = min(recipe.batch_size, len(train_set))
    train_iter = DataLoader(
        train_set, batch_size=batch_size, shuffle=True, num_workers=0,
        drop_last=_drop_last(len(train_set), batch_size),
    )
    test_iter = DataLoader(test_set, batch_size=recipe.batch_size, num_workers=0)
    loss = nn.CrossEntropyLoss()
    params_1x = [p for name, p in net.named_parameters() if name not in ("fc.weight", "fc.bias")]
    trainer = torch.optim.SGD(
        [{"params": params_1x},
         {"params": net.fc.parameters(), "lr": recipe.lr * recipe.head_lr_mult}],
        lr=recipe.lr, weight_decay=recipe.weight_decay, momentum=recipe.momentum,
    )
    res.setup_seconds = time.perf_counter() - t0
    for _ in range(recipe.epochs):
        net.train()
        start = time.perf_counter()
        seen = 0
        for features, labels in train_iter:
            features, labels = features.to(device), labels.to(device)  # d2l's GPU loop
            trainer.zero_grad()
            out = net(features)
            batch_loss = loss(out, labels)
            batch_loss.backward()
            trainer.step()
            seen += labels.numel()
        seconds = time.perf_counter() - start
        if device.type == "cuda":
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        res.train_images += seen
        res.train_seconds += seconds
        res.epoch_images_per_s.append(seen / seconds)
        start = time.perf_counter()
        res.epoch_test_acc.append(_bare_accuracy(net, test_iter, device))
        res.eval_seconds += time.perf_counter() - start
    res.whole_seconds = time.perf_counter() - t0
    res.tail_seconds = res.whole_seconds - res.setup_seconds - res.train_seconds - res.eval_seconds
    res.test_acc = res.epoch_test_acc[-1]
    res.extra["classes"] = train_set.classes
    return res


def _bare_accuracy(net: nn.Module, data_iter: DataLoader[Any], device: torch.device) -> float:
    net.eval()
    correct = total = 0
    with torch.no_grad():
        for features, labels in data_iter:
            out = net(features.to(device)).argmax(1).cpu()
            correct += int((out == labels).sum())
            total += labels.numel()
    return correct / total if total else float("nan")


# ------------------------------------------------------------------------- the engine side


class _EpochTimer(Callback):
    """Times the training passes from the callback, the same way the bare loop is timed."""

    def __init__(self) -> None:
        self.started = 0.0  # on_start
        self.pass_start = 0.0
        self.last_batch = 0.0
        self.last_epoch = 0.0
        self.images_in_epoch = 0
        self.info: StartInfo | None = None
        self.train_images = 0
        self.train_seconds = 0.0
        self.eval_seconds = 0.0
        self.epoch_images_per_s: list[float] = []
        self.metrics: list[EpochMetrics] = []

    def on_start(self, info: StartInfo) -> None:
        self.info = info
        self.started = self.pass_start = time.perf_counter()

    def on_batch(self, progress: BatchProgress) -> None:
        self.last_batch = time.perf_counter()
        self.images_in_epoch = progress.images

    def on_epoch(self, metrics: EpochMetrics) -> None:
        now = time.perf_counter()
        seconds = self.last_batch - self.pass_start
        self.train_images += self.images_in_epoch
        self.train_seconds += seconds
        self.eval_seconds += now - self.last_batch
        self.epoch_images_per_s.append(self.images_in_epoch / seconds if seconds > 0 else 0.0)
        self.metrics.append(metrics)
        self.pass_start = self.last_epoch = now


def engine_plan(cfg: TrainConfig) -> DevicePlan:
    """The device plan ``fit`` will use for ``cfg``."""
    return plan_device(cfg.device, precision=cfg.precision, workers=cfg.workers,
                       channels_last=cfg.channels_last)


def run_engine(data: Path, cfg: TrainConfig, out: Path) -> SideResult:
    res = SideResult("engine")
    timer = _EpochTimer()
    t0 = time.perf_counter()
    result = fit(data, cfg, out, callback=timer)
    res.whole_seconds = time.perf_counter() - t0
    assert timer.info is not None
    res.train_images = timer.train_images
    res.train_seconds = timer.train_seconds
    res.eval_seconds = timer.eval_seconds
    res.setup_seconds = timer.started - t0
    res.tail_seconds = t0 + res.whole_seconds - timer.last_epoch
    res.epoch_images_per_s = timer.epoch_images_per_s
    res.epoch_test_acc = [m.test_acc for m in result.history]
    res.test_acc = result.test_acc
    res.extra = {
        "classes": result.classes,
        "compile": load_checkpoint(out)["compute"]["compile"],
        "decode_cache_seconds": timer.info.decode_seconds,
        "decode_cache_mb": timer.info.cached_bytes / 1e6,
        "epoch_metrics_images_per_s": [m.images_per_s for m in result.history],
        "epoch_metrics_seconds": [m.seconds for m in result.history],
        "fit_minus_epochs_seconds": res.whole_seconds - sum(m.seconds for m in result.history),
    }
    return res


# ------------------------------------------------------------------- torch.compile's step


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def measure_compile(
    cfg: TrainConfig, num_classes: int, plan: DevicePlan, *, rounds: int, steps: int,
    out: Callable[[str], None],
) -> dict[str, Any]:
    """The engine's training step (``app.engine.train.forward_backward`` + the optimiser
    step, under its device plan) eager and compiled (``CompiledStep``, inductor), on two
    copies of the same model and the same fixed batches: the first compiled step's time
    (compile + one step), then ``rounds`` alternating rounds of ``steps`` steps each side.
    Data loading is left out: this is the step that compiling changes."""
    device = plan.device
    size, batch = cfg.image_size, cfg.batch_size
    gen = torch.Generator().manual_seed(cfg.seed)
    batches = [
        (torch.randn(batch, 3, size, size, generator=gen).to(device).contiguous(
            memory_format=torch.channels_last if plan.channels_last else torch.contiguous_format),
         torch.randint(0, num_classes, (batch,), generator=gen).to(device))
        for _ in range(2)
    ]

    def make() -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(cfg.seed)
        model = build_model(num_classes, cfg.init).to(device)
        if plan.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model.train(), make_optimizer(model, cfg)

    def sync() -> None:
        if plan.is_cuda:
            torch.cuda.synchronize(device)

    eager_model, eager_opt = make()
    compiled_model, compiled_opt = make()
    compiled = CompiledStep(compiled_model, compiled_model)

    def one(step_with: Callable[[Any], tuple[torch.Tensor, torch.Tensor]],
            opt: torch.optim.Optimizer, i: int) -> float:
        x, y = batches[i % len(batches)]
        opt.zero_grad(set_to_none=True)

        def step(net: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
            return forward_backward(net, x, y, plan)

        loss, _ = step_with(step)
        opt.step()
        return float(loss.detach())

    def eager(step: Callable[[nn.Module], Any]) -> Any:
        return step(eager_model)

    def through_compiled(step: Callable[[nn.Module], Any]) -> Any:
        return compiled.run(batch, step)

    def timed(fn: Callable[[Any], Any], opt: torch.optim.Optimizer) -> float:
        sync()
        start = time.perf_counter()
        for i in range(steps):
            one(fn, opt, i)
        sync()
        return batch * steps / (time.perf_counter() - start)

    first_loss_eager = one(eager, eager_opt, 0)  # also eager's own warm-up step
    sync()
    start = time.perf_counter()
    first_loss_compiled = one(through_compiled, compiled_opt, 0)
    sync()
    first_step_s = time.perf_counter() - start
    if compiled.failure is not None:
        out(f"compile FAILED, the step ran eagerly: {compiled.failure}")
    eager_ips: list[float] = []
    compiled_ips: list[float] = []
    for r in range(rounds):
        sides = [("eager", eager, eager_opt), ("compiled", through_compiled, compiled_opt)]
        for name, fn, opt in sides if r % 2 == 0 else sides[::-1]:
            (eager_ips if name == "eager" else compiled_ips).append(timed(fn, opt))
    ratios = [c / e for c, e in zip(compiled_ips, eager_ips, strict=True)]
    e_med, c_med = _median(eager_ips), _median(compiled_ips)
    compile_s = max(0.0, first_step_s - batch / e_med) if rounds else first_step_s
    per_image_saved = 1 / e_med - 1 / c_med if rounds else float("nan")
    break_even = compile_s / per_image_saved if per_image_saved > 0 else None
    scale = (size / REFERENCE_SIZE) ** 2
    return {
        "image_size": size, "batch_size": batch, "rounds": rounds, "steps_per_round": steps,
        "first_step_seconds": first_step_s, "compile_seconds": compile_s,
        "failure": compiled.failure,
        "eager_images_per_s": eager_ips, "compiled_images_per_s": compiled_ips,
        "eager_median": e_med, "compiled_median": c_med, "ratios": ratios,
        "ratio_median": _median(ratios),
        "break_even_images": break_even,
        "break_even_images_224": None if break_even is None else break_even * scale,
        "first_step_loss": {"eager": first_loss_eager, "compiled": first_loss_compiled},
        "cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR", "inductor's default"),
    }


def report_compile(c: dict[str, Any], plan: DevicePlan, engine_compile: dict[str, Any],
                   out: Callable[[str], None]) -> None:
    def spread(values: Sequence[float], spec: str = ".1f") -> str:
        if not values:
            return "-"
        return f"{_median(values):{spec}} [{min(values):{spec}}-{max(values):{spec}}]"

    out("")
    out(f"torch.compile of the training step (inductor; {plan.precision}, "
        f"{'channels_last' if plan.channels_last else 'contiguous'}, batch {c['batch_size']} at "
        f"{c['image_size']} px, fixed batches, no data loading; cache {c['cache']}):")
    out(f"  first compiled step {c['first_step_seconds']:.1f}s -> compile time "
        f"~{c['compile_seconds']:.1f}s")
    out(f"  steady step img/s over {c['rounds']} alternating rounds of {c['steps_per_round']} "
        f"steps, median [min-max]: eager {spread(c['eager_images_per_s'])}, compiled "
        f"{spread(c['compiled_images_per_s'])}")
    out(f"  ratio compiled/eager (per round): {spread(c['ratios'], '.2f')}")
    if c["break_even_images"] is None:
        out("  break-even: never (compiled not faster)")
    else:
        out(f"  break-even: {c['break_even_images']:,.0f} training images at "
            f"{c['image_size']} px = {c['break_even_images_224']:,.0f} images at "
            f"{REFERENCE_SIZE} px (TRAIN_COMPILE_BREAK_EVEN; the engine's default for "
            f"{plan.device.type}: {BREAK_EVEN_IMAGES.get(plan.device.type, '-')})")
    losses = c["first_step_loss"]
    out(f"  first-step loss from the same weights: eager {losses['eager']:.5f}, compiled "
        f"{losses['compiled']:.5f} (|diff| {abs(losses['eager'] - losses['compiled']):.1e})")
    if "cpu_wait_pct" in c:
        out(f"  thread-time spent waiting for a CPU: {c['cpu_wait_pct']:.0f}% (ratios of "
            "alternating rounds still compare the two steps under the same load)")
    out(f"  the engine run above: {engine_compile.get('reason')}")


# ------------------------------------------------------------------------------ the harness


def warm_up(image_size: int, amp_dtype: torch.dtype | None, device: str = "cpu") -> None:
    """One forward/backward per memory format (and under the engine's autocast, if any) of a
    throwaway model: PyTorch's lazy start-up (thread pool, oneDNN, allocator, CUDA context)
    is then paid by neither side.
    """
    torch.manual_seed(12345)
    dev = torch.device(device)
    net = resnet18(weights=None, num_classes=2).to(dev)
    x = torch.randn(2, 3, image_size, image_size, device=dev)
    modes = [(torch.contiguous_format, None), (torch.channels_last, None)]
    if amp_dtype is not None:
        modes.append((torch.channels_last, amp_dtype))
    for fmt, amp in modes:
        net = net.to(memory_format=fmt).train()
        with torch.autocast(dev.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            net(x.contiguous(memory_format=fmt)).sum().backward()
            with torch.no_grad():
                net.eval()(x.contiguous(memory_format=fmt))


def runqueue_wait_s() -> float | None:
    """Seconds this process's live threads have spent runnable but waiting for a CPU
    (Linux schedstat), None where unknown. Without competing processes it stays near zero.
    """
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return None
    total = 0
    for task in tasks.iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def measured(run: Callable[[], SideResult], threads: int) -> SideResult:
    """Run one side, adding its CPU seconds and the share of its thread-time spent waiting
    for a CPU (``cpu_wait_pct``: other processes competing for the cores) to ``extra``.
    """
    wait, cpu = runqueue_wait_s(), time.process_time()
    res = run()
    res.extra["cpu_seconds"] = time.process_time() - cpu
    after = runqueue_wait_s()
    if wait is not None and after is not None and res.whole_seconds > 0:
        res.extra["cpu_wait_pct"] = 100 * (after - wait) / (res.whole_seconds * threads)
    return res


def measured_compile(cfg: TrainConfig, num_classes: int, plan: DevicePlan,
                     args: argparse.Namespace, threads: int) -> dict[str, Any]:
    """:func:`measure_compile` with the share of thread-time spent waiting for a CPU."""
    wait = runqueue_wait_s()
    start = time.perf_counter()
    figures = measure_compile(cfg, num_classes, plan, rounds=args.compile_rounds,
                              steps=args.compile_steps, out=print)
    after, seconds = runqueue_wait_s(), time.perf_counter() - start
    if wait is not None and after is not None and seconds > 0:
        figures["cpu_wait_pct"] = 100 * (after - wait) / (seconds * threads)
    return figures


def same_initial_weights(num_classes: int, recipe: Recipe) -> bool:
    """Whether the bare model and the engine's ``build_model`` start bit-identical."""
    bare = bare_model(num_classes, recipe.init, recipe.seed).state_dict()
    torch.manual_seed(recipe.seed)  # what fit does before build_model
    ours = build_model(num_classes, recipe.init).state_dict()
    return bare.keys() == ours.keys() and all(torch.equal(bare[k], ours[k]) for k in bare)


def _count_images(root: Path) -> dict[str, int]:
    splits = load_image_folder(root)
    return {"train": len(splits.train), "test": len(splits.test), "classes": len(splits.classes)}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Training images/s and whole-run time: app.engine.fit vs d2l's bare loop.",
    )
    d = DEFAULTS
    p.add_argument("--data", type=Path, help="an existing ImageFolder dir (train/, test/)")
    p.add_argument("--train-per-class", type=int, help=f"default {d['train_per_class']}")
    p.add_argument("--test-per-class", type=int, help=f"default {d['test_per_class']}")
    p.add_argument("--seed", type=int, default=0, help="dataset and training seed (default 0)")
    p.add_argument("--min-side", type=int, help=f"generated images (default {d['min_side']})")
    p.add_argument("--max-side", type=int, help=f"generated images (default {d['max_side']})")
    p.add_argument("--init", choices=(INIT_SCRATCH, INIT_IMAGENET), default=INIT_SCRATCH)
    p.add_argument("--epochs", type=int, help=f"default {d['epochs']}")
    p.add_argument("--image-size", type=int, help=f"default {d['image_size']}")
    p.add_argument("--batch-size", type=int, help=f"default {d['batch_size']}")
    p.add_argument("--lr", type=float, help="default: the engine's for --init")
    p.add_argument("--head-lr-mult", type=float, help="default: the engine's for --init")
    p.add_argument("--threads", type=int, help="torch threads for both sides (default: torch's)")
    p.add_argument("--order", choices=("bare-first", "engine-first"), default="bare-first")
    p.add_argument(
        "--engine-precision", choices=("auto", "fp32"), default="auto",
        help="auto: the engine's own choice (bf16 autocast on a CPU with native bf16); fp32: "
        "force fp32, to separate the bf16 gain from channels_last + caching",
    )
    p.add_argument(
        "--engine-compile", choices=COMPILE_CHOICES, default="auto",
        help="the engine run's TrainConfig.compile (auto: its own rule, see "
        "app/engine/compiled.py)")
    p.add_argument(
        "--compile-rounds", type=int,
        help="torch.compile measurement: alternating eager/compiled rounds after the first "
        f"(compiling) step; 0 skips it (default {d['compile_rounds']}, --quick "
        f"{QUICK['compile_rounds']})")
    p.add_argument("--compile-steps", type=int, default=3,
                   help="training steps per side per round (default 3)")
    p.add_argument(
        "--warm-compile-cache", action="store_true",
        help="use inductor's usual on-disk cache (a worker's later jobs); default: an empty "
        "one, so the compile time is a first job's")
    p.add_argument("--no-warmup", dest="warmup", action="store_false")
    p.add_argument("--device", default="cpu",
                   help="cpu or cuda[:N]: where both sides train (default cpu)")
    p.add_argument(
        "--quick", action="store_true",
        help="a seconds-long smoke run: "
        + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in QUICK.items()),
    )
    p.add_argument("--json", action="store_true", help="end with one JSON line of all figures")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def _fmt_list(values: Sequence[float], spec: str = ".1f") -> str:
    return ", ".join(format(v, spec) for v in values)


def report(
    sides: dict[str, SideResult], recipe: Recipe, meta: dict[str, Any], out: Callable[[str], None]
) -> dict[str, float]:
    bare, engine = sides["bare"], sides["engine"]
    ratios = {
        "train_images_per_s": engine.images_per_s / bare.images_per_s,
        "whole_run": bare.whole_seconds / engine.whole_seconds,
    }
    out(f"dataset: {meta['data']} ({meta['dataset']})")
    out(
        f"recipe: init {recipe.init}, {recipe.epochs} epochs, batch {recipe.batch_size}, "
        f"lr {recipe.lr:g}, head x{recipe.head_lr_mult:g}, wd {recipe.weight_decay:g}, "
        f"momentum {recipe.momentum:g}, image {recipe.image_size}, seed {recipe.seed}; "
        f"torch {torch.__version__}, torch threads {meta['threads']}, {meta['order']}, "
        f"same initial weights: {'yes' if meta['same_init'] else 'NO'}"
    )
    chosen = "its own device plan" if meta["engine_precision_option"] == "auto" else "forced"
    out(f"bare: fp32, contiguous; engine ({chosen}): {meta['engine_precision']}"
        f"{' autocast' if meta['engine_precision'] != 'float32' else ''}, "
        f"{'channels_last' if meta['engine_channels_last'] else 'contiguous'}")
    out("")
    out(f"{'side':<8}{'train img/s':>13}{'train s':>10}{'eval s':>9}{'setup s':>10}"
        f"{'whole run s':>13}{'test acc':>10}")
    for r in (bare, engine):
        out(f"{r.side:<8}{r.images_per_s:>13.1f}{r.train_seconds:>10.1f}{r.eval_seconds:>9.1f}"
            f"{r.setup_seconds:>10.1f}{r.whole_seconds:>13.1f}{r.test_acc:>10.3f}")
    out("")
    out(f"bare   per-epoch train img/s: {_fmt_list(bare.epoch_images_per_s)}; "
        f"test acc: {_fmt_list(bare.epoch_test_acc, '.3f')}")
    out(f"engine per-epoch train img/s: {_fmt_list(engine.epoch_images_per_s)} "
        f"(EpochMetrics.images_per_s: {_fmt_list(engine.extra['epoch_metrics_images_per_s'])}); "
        f"test acc: {_fmt_list(engine.epoch_test_acc, '.3f')}")
    decode = engine.extra["decode_cache_seconds"]
    decode_mb = engine.extra["decode_cache_mb"]
    decode_txt = "?" if decode is None else f"{decode:.1f}s ({decode_mb:.0f} MB)"
    out(f"engine one-time cost: decode/cache {decode_txt}; setup before epoch 1 "
        f"{engine.setup_seconds:.1f}s; fit - sum(epoch seconds) "
        f"{engine.extra['fit_minus_epochs_seconds']:.1f}s (incl. final checkpoint "
        f"{engine.tail_seconds:.1f}s)")
    waits = [r.extra.get("cpu_wait_pct") for r in (bare, engine)]
    if None not in waits:
        out(f"thread-time spent waiting for a CPU (other processes competing; ~0 = clean): "
            f"bare {waits[0]:.0f}%, engine {waits[1]:.0f}%"
            + ("  <-- NOISY: rerun on an idle machine, or with --threads 1 on a shared one"
               if max(waits) > 10 else ""))
    out("ratios are engine speed / bare speed (>1: engine faster); whole run = bare s / engine s")
    out(f"ratio engine/bare (train images/s): {ratios['train_images_per_s']:.2f}")
    out(f"ratio engine/bare (whole run): {ratios['whole_run']:.2f}")
    return ratios


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    try:
        cfg = TrainConfig(
            init=args.init, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            head_lr_mult=args.head_lr_mult, image_size=args.image_size, seed=args.seed,
            device=args.device,  # both sides on the same device
            precision=args.engine_precision, compile=args.engine_compile,
        ).resolved()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    recipe = Recipe.from_config(cfg)
    if recipe.init == INIT_IMAGENET:
        try:  # fail before generating anything
            load_imagenet_state_dict()
        except PretrainedWeightsMissing as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    plan = engine_plan(cfg)

    with tempfile.TemporaryDirectory(prefix="hotdog-bench-") as tmp:
        meta: dict[str, Any] = {
            "threads": threads, "order": args.order,
            "engine_precision_option": args.engine_precision,
            "engine_precision": str(plan.amp_dtype or torch.float32).removeprefix("torch."),
            "engine_channels_last": plan.channels_last,
        }
        if args.data is not None:
            data = args.data.expanduser()
            meta["generate_seconds"] = 0.0
        else:
            from app.datasets.synthetic import generate_demo_dataset

            data = Path(tmp) / "data"
            start = time.perf_counter()
            generate_demo_dataset(
                data, train_per_class=args.train_per_class, test_per_class=args.test_per_class,
                seed=args.seed, min_side=args.min_side, max_side=args.max_side,
            )
            meta["generate_seconds"] = time.perf_counter() - start
        try:
            counts = _count_images(data)
        except DatasetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        meta["data"] = str(args.data) if args.data is not None else "generated"
        meta["counts"] = counts
        meta["dataset"] = (
            f"{counts['train']} train / {counts['test']} test images, {counts['classes']} classes"
            + (f"; generated in {meta['generate_seconds']:.1f}s, sides "
               f"{args.min_side}..{args.max_side}, seed {args.seed}" if args.data is None else "")
        )
        try:
            meta["same_init"] = same_initial_weights(counts["classes"], recipe)
        except PretrainedWeightsMissing as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if args.warmup:
            warm_up(recipe.image_size, plan.amp_dtype, cfg.device)

        runners: dict[str, Callable[[], SideResult]] = {
            "bare": lambda: run_bare(data, recipe),
            "engine": lambda: run_engine(data, cfg, Path(tmp) / "engine.pt"),
        }
        order = SIDES if args.order == "bare-first" else SIDES[::-1]
        sides: dict[str, SideResult] = {}
        for side in order:
            sides[side] = measured(runners[side], threads)
            if torch.get_num_threads() != threads:  # the engine must not change it
                print(f"warning: {side} changed torch threads to {torch.get_num_threads()}",
                      file=sys.stderr)
                torch.set_num_threads(threads)
        if sides["bare"].extra["classes"] != sides["engine"].extra["classes"]:
            print("warning: the two sides see different classes", file=sys.stderr)

        compile_figures = None
        if args.compile_rounds:
            if not args.warm_compile_cache:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor")
            compile_figures = measured_compile(cfg, counts["classes"], plan, args, threads)

    ratios = report(sides, recipe, meta, print)
    if compile_figures is not None:
        report_compile(compile_figures, plan, sides["engine"].extra["compile"], print)
    if args.json:
        print(json.dumps({
            "recipe": asdict(recipe),
            "meta": meta,
            "bare": sides["bare"].to_dict(),
            "engine": sides["engine"].to_dict(),
            "ratio_train_images_per_s": ratios["train_images_per_s"],
            "ratio_whole_run": ratios["whole_run"],
            "compile": compile_figures,
            "engine_compile": sides["engine"].extra["compile"],
        }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
