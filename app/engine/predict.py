"""Classifying photos with a trained checkpoint: load once, then preprocess → infer → report.

Preprocessing is rebuilt from the checkpoint and goes through the same functions as the
evaluation during training, so ``hotdog predict``, ``hotdog evaluate`` and the service agree.

Four runtimes compute the same function: ``torch`` (eager PyTorch, bf16 autocast where the
hardware has it), ``compiled`` (the same model through ``torch.compile``: inductor with
freezing, same precision; compiled on first use, so a server builds it in the background and
checks it against eager with :func:`check_against` before serving with it), ``onnx`` (the
job's verified ONNX export in ONNX Runtime, fp32; see :mod:`app.engine.export`) and
``onnx_int8`` (the job's verified INT8 model in ONNX Runtime). In fp32 torch and onnx agree
within ``PARITY_TOLERANCE``. All report calibrated probabilities, ``softmax(logits / T)``
with the checkpoint's temperature (1 for a model without one; the ONNX graphs apply it
themselves).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torchvision.models import resnet18

from app.engine.calibrate import calibration_report
from app.engine.callback import BatchProgress, Callback
from app.engine.checkpoint import load_checkpoint
from app.engine.data import (
    ImageFolderSplits,
    Sample,
    eval_dataset,
    load_image_folder,
    make_loader,
)
from app.engine.device import plan_device
from app.engine.errors import TrainingCancelled
from app.engine.evaluate import evaluation_from_logits, run_inference
from app.engine.export import (
    INT8_SUFFIX,
    OnnxModel,
    export_onnx_bytes,
    onnxruntime_available,
    temperature_of,
)
from app.engine.images import DecodeBudget
from app.engine.metrics import Evaluation
from app.engine.presets import Preprocessing, load_eval_image, normalize_batch
from app.engine.split import validation_split

ImageSource = str | Path | bytes | BinaryIO
RUNTIMES = ("torch", "compiled", "onnx", "onnx_int8")
ONNX_RUNTIMES = ("onnx", "onnx_int8")
# torch.compile's settings for serving: inductor, weights frozen into the graph (constant
# folding, prepacked convolution weights), the batch axis dynamic (the batcher's batches
# have any size up to PREDICT_MAX_BATCH).
COMPILE_BACKEND = "inductor"
# A runtime checked against eager PyTorch must give the same label for every image and
# probabilities within this (bf16's own rounding reaches about 1e-2; fp32 stays near 1e-6).
CHECK_TOLERANCE = {"bf16": 0.05, "fp16": 0.05, "fp32": 1e-3}


def runtime_file(checkpoint: str | Path, runtime: str) -> Path | None:
    """The file beside ``checkpoint`` that ``runtime`` runs (None for the PyTorch ones)."""
    if runtime == "onnx":
        return Path(checkpoint).with_suffix(".onnx")
    if runtime == "onnx_int8":
        return Path(checkpoint).with_suffix(INT8_SUFFIX)
    return None


def available_runtimes(checkpoint: str | Path) -> list[str]:
    """The runtimes a server can build for ``checkpoint``: PyTorch always, ONNX Runtime's
    for each verified file the worker left beside it (a discarded one was deleted)."""
    out = ["torch", "compiled"]
    if onnxruntime_available():
        out += [rt for rt in ONNX_RUNTIMES if (f := runtime_file(checkpoint, rt)) and f.is_file()]
    return out


def choose_runtime(requested: str, *, onnx_file: Path | None, device: str = "auto",
                   precision: str = "auto") -> str:
    """The runtime to serve a model with before anything is measured. ``auto``: ONNX Runtime
    when the model has an export and the alternative would be eager fp32 on a CPU (ONNX
    Runtime is faster there); eager PyTorch on a GPU or with bf16 autocast on a CPU where it
    measures faster than fp32 (faster still). (A server then measures every runtime and keeps the
    fastest: ``app.api.serving``.) An ``onnx`` request for a model without an export falls
    back to PyTorch; ``compiled`` starts as eager PyTorch (it is built in the background)."""
    if requested not in (*RUNTIMES, "auto"):
        raise ValueError(f"runtime must be auto or one of {', '.join(RUNTIMES)}, "
                         f"not {requested!r}")
    if requested in ("torch", "compiled") or onnx_file is None or not onnx_file.is_file():
        return "torch"
    if not onnxruntime_available():
        return "torch"
    if requested in ONNX_RUNTIMES:
        return requested
    plan = plan_device(device, precision=precision, workers=0)
    return "onnx" if not plan.is_cuda and plan.amp_dtype is None else "torch"


@dataclass(frozen=True)
class Prediction:
    filename: str
    label: str
    probabilities: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"filename": self.filename, "label": self.label, "probabilities": self.probabilities}


class Predictor:
    def __init__(
        self,
        checkpoint: str | Path | dict[str, Any],
        *,
        device: str = "auto",
        precision: str = "auto",
        runtime: str = "torch",
        onnx_file: str | Path | None = None,
        threads: int | None = None,
        compile_backend: str = COMPILE_BACKEND,
    ) -> None:
        """``runtime="onnx"`` runs ``onnx_file`` (default: the ``.onnx`` file beside the
        checkpoint, else an export made in memory now) in ONNX Runtime, in fp32;
        ``onnx_int8`` the INT8 model (default: the ``.int8.onnx`` file beside the
        checkpoint). ``compiled`` wraps the eager model in ``torch.compile`` with
        ``compile_backend``; it compiles on its first batches (:meth:`warm_up`)."""
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
        ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
        self.classes: list[str] = list(ckpt["classes"])
        self.preprocessing = Preprocessing.from_dict(ckpt["preprocessing"])
        self.params: dict[str, Any] = dict(ckpt.get("params") or {})
        self.split: dict[str, Any] | None = ckpt.get("split")  # the validation split it chose on
        # Probabilities are softmax(logits / temperature): calibrated on the validation
        # split when the model has a temperature (app.engine.calibrate), else plain softmax.
        fitted = temperature_of(ckpt)
        self.calibrated = fitted is not None
        self.temperature = fitted if fitted is not None else 1.0
        self.runtime = runtime
        self.model: torch.nn.Module | None = None
        self.onnx: OnnxModel | None = None
        self._forward: Callable[[torch.Tensor], torch.Tensor] = self._eager_forward
        if runtime in ONNX_RUNTIMES:
            self.plan = plan_device(device, precision="fp32", workers=0)
            if onnx_file is None and not isinstance(checkpoint, dict):
                beside = runtime_file(checkpoint, runtime)
                onnx_file = beside if beside is not None and beside.is_file() else None
            if onnx_file is None and runtime == "onnx_int8":
                raise ValueError("this model has no INT8 file (the worker writes one when "
                                 "the job succeeds, if it passes its verification)")
            source = onnx_file if onnx_file is not None else export_onnx_bytes(ckpt)
            self.onnx = OnnxModel(source, device=self.plan.device, threads=threads)
            if self.onnx.contract.get("classes") != self.classes:
                raise ValueError(f"{onnx_file}: the ONNX model's classes "
                                 f"{self.onnx.contract.get('classes')} differ from the "
                                 f"checkpoint's {self.classes}")
            # The graph applies the temperature itself (an export from before calibration
            # has none: 1, as its checkpoint's).
            if float(self.onnx.contract.get("temperature", 1.0)) != self.temperature:
                raise ValueError(f"{onnx_file}: the ONNX model's temperature "
                                 f"{self.onnx.contract.get('temperature')} differs from the "
                                 f"checkpoint's {self.temperature}")
            return
        self.plan = plan_device(device, precision=precision, workers=0)
        model = resnet18(weights=None, num_classes=len(self.classes))
        model.load_state_dict(ckpt["model"])
        model.eval().to(self.plan.device)
        if self.plan.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        if runtime == "compiled":
            options: dict[str, str | int | bool | Callable[..., Any]] | None = (
                {"freezing": True} if compile_backend == "inductor" else None)
            self._forward = torch.compile(self._eager_forward, backend=compile_backend,
                                          dynamic=True, options=options)

    @property
    def precision(self) -> str:
        if self.onnx is not None:
            return "int8" if self.runtime == "onnx_int8" else "fp32"
        return self.plan.precision

    def warm_up(self, sizes: Iterable[int] = (1, 2)) -> float:
        """Run one batch of each size (compiling a ``compiled`` runtime: dynamic shapes
        treat batch 1 apart, hence two sizes); returns the seconds it took."""
        started = time.perf_counter()
        s = self.preprocessing.image_size
        for n in sizes:
            self.probabilities(torch.zeros(n, 3, s, s, dtype=torch.uint8))
        return time.perf_counter() - started

    def load(self, source: ImageSource, *, name: str | None = None,
             budget: DecodeBudget | None = None, wait: float | None = None) -> torch.Tensor:
        """Decode and crop one image: uint8 (3, S, S). Raises ImageDecodeError naming it
        (DecodeBusy when ``budget`` stays taken longer than ``wait``: see ``open_rgb``)."""
        return load_eval_image(source, self.preprocessing, name=name, budget=budget, wait=wait)

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor, *, threads: int | None = None) -> torch.Tensor:
        """uint8 (N, 3, S, S) → class probabilities (N, C), float32 on the CPU.

        ``threads``: intra-op threads for this call (set per calling thread)."""
        if self.onnx is not None:
            (probs,) = self.onnx.run(batch.permute(0, 2, 3, 1), threads=threads)
            return torch.from_numpy(probs)
        if threads is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return self.calibrated_softmax(self._torch_logits(batch)).cpu()

    def calibrated_softmax(self, logits: torch.Tensor) -> torch.Tensor:
        """The probabilities this model reports for ``logits``: softmax(logits / T)."""
        return torch.softmax(logits / self.temperature, dim=1)

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) → logits (N, C), float32 on the CPU."""
        if self.onnx is not None:
            (logits,) = self.onnx.run(batch.permute(0, 2, 3, 1), outputs=("logits",))
            return torch.from_numpy(logits)
        return self._torch_logits(batch).cpu()

    def _torch_logits(self, batch: torch.Tensor) -> torch.Tensor:
        assert self.model is not None
        pre = self.preprocessing
        x = normalize_batch(
            batch, pre.mean, pre.std, device=self.plan.device,
            channels_last=self.plan.channels_last,
        )
        return self._forward(x)

    def _eager_forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.model is not None
        with self.plan.autocast():
            logits: torch.Tensor = self.model(x)
        return logits.float()

    def report(self, probs: torch.Tensor, filenames: Sequence[str]) -> list[Prediction]:
        out = []
        for name, p in zip(filenames, probs.tolist(), strict=True):
            best = max(range(len(p)), key=p.__getitem__)
            probs_by_class = dict(zip(self.classes, p, strict=True))
            out.append(Prediction(name, self.classes[best], probs_by_class))
        return out

    def predict(
        self, sources: Sequence[ImageSource], names: Sequence[str] | None = None
    ) -> list[Prediction]:
        names = list(names) if names is not None else [_name(s, i) for i, s in enumerate(sources)]
        batch = torch.stack([self.load(s, name=n) for s, n in zip(sources, names, strict=True)])
        return self.report(self.probabilities(batch), names)

    def evaluate_folder(
        self, data_dir: str | Path, *, split: str = "test", batch_size: int = 64,
        callback: Callback | None = None,
    ) -> tuple[Evaluation, list[Prediction]]:
        """Evaluation of one split of an ImageFolder dataset, and every image's prediction.
        ``split``: test, train, or val (the validation images the model was chosen on, as
        its checkpoint records them). ``callback`` hears each batch (as epoch 1 of 1) and
        can stop it between batches (:class:`TrainingCancelled`)."""
        splits = load_image_folder(data_dir)
        if splits.classes != self.classes:
            raise ValueError(
                f"dataset classes {splits.classes} differ from the model's {self.classes}"
            )
        samples = self._samples(splits, split)
        loader: Iterable[tuple[torch.Tensor, torch.Tensor]] = make_loader(
            eval_dataset(samples, self.preprocessing), batch_size=batch_size, shuffle=False,
            workers=0,
        )
        if callback is not None:
            loader = _reporting(loader, callback, -(-len(samples) // batch_size))
        if self.model is not None:
            logits, targets = run_inference(self.model, loader, self.plan, self.preprocessing)
        else:
            outs = [(self.logits(images), torch.as_tensor(t)) for images, t in loader]
            logits = torch.cat([o[0] for o in outs]) if outs else torch.empty(0, 0)
            targets = torch.cat([o[1] for o in outs]) if outs else torch.empty(0, dtype=torch.long)
        evaluation = replace(
            evaluation_from_logits(self.classes, logits, targets),
            calibration=calibration_report(
                logits, targets, self.temperature if self.calibrated else None,
                len((self.split or {}).get("images") or [])))
        names = [str(p.relative_to(splits.root)) for p, _ in samples]
        return evaluation, self.report(self.calibrated_softmax(logits), names)


    def _samples(self, splits: ImageFolderSplits, split: str) -> list[Sample]:
        if split != "val":
            return splits.test if split == "test" else splits.train
        if not self.split or not self.split.get("images"):
            raise ValueError("this model was trained without a validation split")
        return validation_split(splits, 0.0, 0, recorded=self.split).val


def images_per_second(predictor: Predictor, images: torch.Tensor, *, seconds: float,
                      threads: int | None = None) -> float:
    """``predictor``'s batched speed on ``images`` (uint8 N,3,S,S): one batch to warm up,
    then as many as fit in ``seconds`` (at least two)."""
    predictor.probabilities(images, threads=threads)
    n, started = 0, time.perf_counter()
    while n < 2 * len(images) or time.perf_counter() - started < seconds:
        predictor.probabilities(images, threads=threads)
        n += len(images)
    return n / (time.perf_counter() - started)


def check_against(candidate: Predictor, reference: Predictor, images: torch.Tensor,
                  *, batch: int = 32) -> float:
    """Check ``candidate`` against ``reference`` on ``images`` (uint8 N,3,S,S): every
    image's label equal and every probability within :data:`CHECK_TOLERANCE` of the
    precision. Returns the largest difference; raises ValueError saying how they differ."""
    tolerance = CHECK_TOLERANCE.get(reference.precision, CHECK_TOLERANCE["bf16"])
    if not len(images):
        raise ValueError("no images to check it on")
    worst = 0.0
    for i in range(0, len(images), batch):
        x = images[i:i + batch]
        a, b = reference.probabilities(x), candidate.probabilities(x)
        worst = max(worst, float((a - b).abs().max()))
        differ = int((a.argmax(1) != b.argmax(1)).sum())
        if differ:
            raise ValueError(f"{differ} of {len(x)} images get another label than from "
                             f"{reference.runtime}")
    if worst > tolerance:
        raise ValueError(f"probabilities differ from {reference.runtime}'s by {worst:.2e} "
                         f"(tolerance {tolerance:.0e} in {reference.precision})")
    return worst


def _reporting(loader: Iterable[tuple[torch.Tensor, torch.Tensor]], callback: Callback,
               batches: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``loader``'s batches, each reported to ``callback`` once it has been used; a stop the
    callback asks for ends the pass before the next batch."""
    images = 0
    for i, (batch, targets) in enumerate(loader):
        if callback.should_stop():
            raise TrainingCancelled(f"cancelled at batch {i} of {batches}")
        yield batch, targets
        images += len(targets)
        callback.on_batch(BatchProgress(1, 1, i + 1, batches, images))


def _name(source: ImageSource, i: int) -> str:
    if isinstance(source, (str, Path)):
        return Path(source).name
    return getattr(source, "name", None) or f"image-{i}"
