"""Exporting a trained model for other runtimes, and running the ONNX export.

An export is the whole prediction after decoding: its input is a batch of decoded, resized
and centre-cropped RGB pixels, uint8 ``(N, S, S, 3)`` (exactly what :func:`load_eval_image`
produces, in its memory order), and the graph itself scales, normalises, runs ResNet-18 and
applies the softmax to the logits divided by the model's temperature (fitted on its
validation split, :mod:`app.engine.calibrate`; 1 without one). Outputs: ``logits`` (not
divided) and ``probabilities`` (calibrated), both ``(N, classes)``; the contract records
``temperature`` and ``calibrated``.
What a caller must do before (the resize and crop) and the class names are recorded in the
file itself (:func:`contract`): ONNX metadata properties, or TorchScript extra files.

Formats:
- ``onnx``: for ONNX Runtime (what ``/predict`` uses when it can), or any ONNX consumer.
  Exported with the batch axis dynamic. A job's export is verified before it is kept
  (:func:`export_verified`): its probabilities on the job's own test images must equal the
  PyTorch model's within :data:`PARITY_TOLERANCE`.
- ``torchscript``: for libtorch / TorchServe-style deployments (``torch.jit.load``).

A job also gets an **INT8** ONNX model (:func:`int8_for_job`): ONNX Runtime's static
quantization (QDQ, per-channel int8 weights, uint8 activations, after its
``quant_pre_process``), calibrated on a seeded sample of the job's training images. It is
kept only if, on the job's test images, its labels agree with the fp32 export's on at least
:data:`INT8_MIN_AGREEMENT` of them and its accuracy is at most :data:`INT8_MAX_ACCURACY_DROP`
below fp32's; both figures are recorded either way. And a small **verification set**
(:func:`write_verification_set`): a sample of decoded test crops and their labels beside the
checkpoint, on which a server checks a runtime it builds itself (compiled PyTorch) against
eager PyTorch before serving with it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models import resnet18

from app.engine.checkpoint import load_checkpoint
from app.engine.data import load_image_folder
from app.engine.presets import Preprocessing, load_eval_image

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
INT8_SUFFIX = ".int8.onnx"
VERIFY_SET_SUFFIX = ".verify.pt"
CONTRACT_FORMAT = "hotdog.export"
CONTRACT_VERSION = 1
ONNX_OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "probabilities")
# The exported graph must agree with PyTorch fp32 to this (max absolute difference of any
# class probability on any verification image). Seen here: about 1e-6.
PARITY_TOLERANCE = 1e-4
# Verification decodes at most this many test images (a d2l-sized test set has 800).
VERIFY_MAX_IMAGES = 512
# INT8: calibrated on this many training images at most (a seeded sample), and kept only if
# its labels agree with fp32's on this share of the test images and its accuracy is at most
# this far below fp32's (0.005: half a point).
CALIBRATION_IMAGES = 256
INT8_MIN_AGREEMENT = 0.99
INT8_MAX_ACCURACY_DROP = 0.005
# Test crops kept beside the checkpoint for a server's own runtime checks (64 crops at 224 px
# are 9.6 MB).
VERIFY_SET_IMAGES = 64


class ExportError(RuntimeError):
    """The model could not be exported, or the export does not match PyTorch."""


class ServingModule(nn.Module):
    """uint8 ``(N, S, S, 3)`` RGB crops → ``(logits, probabilities)``: ToTensor's scaling,
    Normalize, the network and the (temperature-scaled) softmax in one graph."""

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor
    temperature: torch.Tensor

    def __init__(self, model: nn.Module, pre: Preprocessing, temperature: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(pre.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(pre.std).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.permute(0, 3, 1, 2).float().sub(self.mean).div(self.std)
        logits = self.model(x)
        return logits, torch.softmax(logits / self.temperature, dim=1)


def temperature_of(ckpt: dict[str, Any]) -> float | None:
    """The checkpoint's calibrated temperature; None for a model without one (trained
    without a validation split, or before calibration existed)."""
    t = ckpt.get("temperature")
    return None if t is None else float(t)


def serving_module(ckpt: dict[str, Any]) -> ServingModule:
    """The checkpoint's model in fp32 on the CPU, wrapped with its preprocessing and
    temperature."""
    model = resnet18(weights=None, num_classes=len(ckpt["classes"]))
    model.load_state_dict(ckpt["model"])
    return ServingModule(model, Preprocessing.from_dict(ckpt["preprocessing"]),
                         temperature_of(ckpt) or 1.0).eval()


def contract(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What a consumer of the export needs to know, stored inside the exported file."""
    pre = Preprocessing.from_dict(ckpt["preprocessing"])
    return {
        "format": CONTRACT_FORMAT,
        "version": CONTRACT_VERSION,
        "arch": ckpt.get("arch", "resnet18"),
        "classes": list(ckpt["classes"]),
        "input": {
            "name": INPUT_NAME, "dtype": "uint8", "layout": "NHWC", "color": "RGB",
            "shape": ["batch", pre.image_size, pre.image_size, 3],
            "preprocessing": (
                f"decode, resize the shorter side to {pre.resize_size} (bilinear, "
                f"antialiased), centre-crop {pre.image_size}x{pre.image_size}; the model "
                "scales to [0, 1] and normalises with mean and std itself"
            ),
        },
        "outputs": list(OUTPUT_NAMES),
        "preprocessing": pre.to_dict(),
        "epoch": int(ckpt.get("selected_epoch") or ckpt.get("epoch", 0)),
        # probabilities = softmax(logits / temperature); calibrated: fitted on a
        # validation split (else 1)
        "temperature": temperature_of(ckpt) or 1.0,
        "calibrated": temperature_of(ckpt) is not None,
    }


def _example(pre: Preprocessing, batch: int = 2) -> torch.Tensor:
    return torch.zeros(batch, pre.image_size, pre.image_size, 3, dtype=torch.uint8)


@contextlib.contextmanager
def _atomic_path(out: Path) -> Iterator[Path]:
    """A temp name beside ``out``, renamed over it when the block succeeds."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)


def export_onnx(ckpt: dict[str, Any], out: str | Path) -> Path:
    """Write the ONNX export of ``ckpt`` to ``out`` (atomically), contract in its metadata."""
    try:
        import onnx
    except ImportError as exc:
        raise ExportError(
            "ONNX export needs the onnx package: pip install 'hotdog[onnx]'"
        ) from exc
    out = Path(out)
    module = serving_module(ckpt)
    pre = Preprocessing.from_dict(ckpt["preprocessing"])
    with _atomic_path(out) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation notices
            # The TorchScript-based exporter: a self-contained file in half a second, where
            # the dynamo exporter takes ten times as long and writes weights beside it.
            torch.onnx.export(
                module, (_example(pre),), str(tmp), input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES), opset_version=ONNX_OPSET, dynamo=False,
                dynamic_axes={INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in OUTPUT_NAMES}},
            )
        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto)
        del proto.metadata_props[:]
        for key, value in contract(ckpt).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = f"hotdog.{key}", json.dumps(value)
        proto.doc_string = "hotdog ResNet-18 classifier: " + ", ".join(ckpt["classes"])
        onnx.save(proto, str(tmp))
    return out


def export_onnx_bytes(ckpt: dict[str, Any]) -> bytes:
    """The ONNX export of ``ckpt`` as bytes (for a checkpoint that has no export file)."""
    with tempfile.TemporaryDirectory(prefix="hotdog-export-") as tmp:
        return export_onnx(ckpt, Path(tmp) / "model.onnx").read_bytes()


def export_torchscript(ckpt: dict[str, Any], out: str | Path) -> Path:
    """Write a traced TorchScript module (``torch.jit.load``); contract in ``hotdog.json``."""
    out = Path(out)
    module = serving_module(ckpt)
    pre = Preprocessing.from_dict(ckpt["preprocessing"])
    with _atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice
        traced = torch.jit.trace(  # type: ignore[no-untyped-call]
            module, (_example(pre),), check_trace=False
        )
        torch.jit.save(traced, str(tmp),
                       _extra_files={"hotdog.json": json.dumps(contract(ckpt))})
    return out


def export_model(checkpoint: str | Path | dict[str, Any], fmt: str, out: str | Path) -> Path:
    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    if fmt == "onnx":
        return export_onnx(ckpt, out)
    if fmt == "torchscript":
        return export_torchscript(ckpt, out)
    raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")


# ------------------------------------------------------------------------- ONNX Runtime


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class OnnxModel:
    """An ONNX export run by ONNX Runtime. One session per intra-op thread count, so a batch
    that computes alone can use every core while overlapping batches get a share each
    (see ``app.api.serving.ForwardThreads``); sessions are safe to run from many threads."""

    def __init__(self, source: str | Path | bytes, *, device: torch.device | None = None,
                 threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ExportError(
                "the ONNX runtime needs onnxruntime: pip install 'hotdog[onnx]'"
            ) from exc
        self.ort = ort
        self.source = str(source) if isinstance(source, Path) else source
        available = ort.get_available_providers()
        self.providers: list[str | tuple[str, dict[str, int]]] = ["CPUExecutionProvider"]
        if device is not None and device.type == "cuda":
            if "CUDAExecutionProvider" in available:
                self.providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}),
                                  "CPUExecutionProvider"]
            else:
                log.warning("onnxruntime has no CUDA provider here (install onnxruntime-gpu): "
                            "the ONNX model runs on the CPU")
        self.threads = threads or torch.get_num_threads()
        self.sessions: dict[int, Any] = {}
        session = self.session(self.threads)
        meta = session.get_modelmeta().custom_metadata_map
        try:
            self.contract = {k.removeprefix("hotdog."): json.loads(v)
                             for k, v in meta.items() if k.startswith("hotdog.")}
        except ValueError as exc:
            raise ExportError(f"unreadable hotdog metadata in the ONNX model: {exc}") from exc
        if self.contract.get("format") != CONTRACT_FORMAT:
            raise ExportError("not a hotdog ONNX export (no hotdog.format metadata)")

    @property
    def on_cuda(self) -> bool:
        return self.providers[0] != "CPUExecutionProvider"

    def session(self, threads: int) -> Any:
        if threads not in self.sessions:
            ort = self.ort
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = max(1, threads)
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            # Idle pool threads sleep instead of spinning: the cores they would burn are the
            # ones decoding the next requests' images.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.sessions[threads] = ort.InferenceSession(
                self.source, options, providers=self.providers)
        return self.sessions[threads]

    def run(self, images: torch.Tensor | np.ndarray, *, threads: int | None = None,
            outputs: tuple[str, ...] = ("probabilities",)) -> list[np.ndarray]:
        """uint8 (N, S, S, 3) → the named outputs as float32 arrays."""
        x = images.contiguous().numpy() if isinstance(images, torch.Tensor) else images
        session = self.session(threads or self.threads)
        results: list[np.ndarray] = session.run(list(outputs),
                                                {INPUT_NAME: np.ascontiguousarray(x)})
        return results


# ------------------------------------------------------------------- a job's export


@dataclass(frozen=True)
class ExportRecord:
    """What the worker records about a job's export (``jobs.exports[format]``)."""

    file: str | None = None
    max_abs_diff: float | None = None
    images: int = 0
    seconds: float = 0.0
    error: str | None = None
    # INT8 only: the share of test images whose label equals fp32's, both accuracies on
    # them, and how many training images calibrated it.
    agreement: float | None = None
    accuracy: float | None = None
    reference_accuracy: float | None = None
    calibration_images: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def batches_of(images: Iterable[torch.Tensor], size: int = 32) -> Iterator[torch.Tensor]:
    """uint8 (3, S, S) crops (views of HWC pixels) → uint8 (N, S, S, 3) batches."""
    chunk: list[torch.Tensor] = []
    for image in images:
        chunk.append(image.permute(1, 2, 0))
        if len(chunk) == size:
            yield torch.stack(chunk)
            chunk = []
    if chunk:
        yield torch.stack(chunk)


def random_images(pre: Preprocessing, count: int = 16, seed: int = 0) -> Iterator[torch.Tensor]:
    """Noise crops, for verifying an export when no dataset is at hand."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(count):
        hwc = torch.randint(0, 256, (pre.image_size, pre.image_size, 3), dtype=torch.uint8,
                            generator=g)
        yield hwc.permute(2, 0, 1)


def _runner(fmt: str, path: Path) -> Any:
    """uint8 NHWC batch → probabilities (numpy), computed by the exported file's runtime."""
    if fmt == "onnx":
        onnx_model = OnnxModel(path, threads=torch.get_num_threads())
        return lambda batch: onnx_model.run(batch)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    return lambda batch: traced(batch)[1].numpy()


def max_difference(ckpt: dict[str, Any], fmt: str, path: Path,
                   batches: Iterable[torch.Tensor]) -> tuple[float, int]:
    """Largest |p_export - p_torch| over every class of every image, and the image count."""
    module = serving_module(ckpt)
    run = _runner(fmt, path)
    worst, count = 0.0, 0
    with torch.inference_mode():
        for batch in batches:
            expected = module(batch)[1].numpy()
            worst = max(worst, float(np.abs(run(batch) - expected).max()))
            count += len(batch)
    return worst, count


def export_verified(checkpoint: str | Path, images: Iterable[torch.Tensor],
                    out: str | Path, fmt: str = "onnx") -> ExportRecord:
    """Export ``checkpoint`` to ``out`` and check it against PyTorch fp32 on ``images``
    (uint8 crops). A failed or mismatching export is deleted; the record says why."""
    started = time.perf_counter()
    out = Path(out)
    try:
        ckpt = load_checkpoint(checkpoint)
        export_model(ckpt, fmt, out)
        worst, count = max_difference(ckpt, fmt, out, batches_of(images))
        if count == 0:
            raise ExportError("no test images to verify the export on")
        if not worst <= PARITY_TOLERANCE:
            raise ExportError(
                f"the exported model's probabilities differ from PyTorch's by {worst:.2e} on "
                f"{count} images (tolerance {PARITY_TOLERANCE:.0e}); export discarded"
            )
    except Exception as exc:  # any failure discards the export; prediction uses PyTorch
        out.unlink(missing_ok=True)
        message = str(exc) if isinstance(exc, ExportError) else f"{type(exc).__name__}: {exc}"
        log.warning("%s export of %s discarded: %s", fmt, checkpoint, message)
        return ExportRecord(error=message, seconds=round(time.perf_counter() - started, 3))
    return ExportRecord(file=out.name, max_abs_diff=worst, images=count,
                        seconds=round(time.perf_counter() - started, 3))


def dataset_images(checkpoint: str | Path, data_dir: str | Path, split: str = "test",
                   limit: int = VERIFY_MAX_IMAGES) -> Iterator[torch.Tensor]:
    """Up to ``limit`` images of a dataset split, decoded exactly as ``/predict`` decodes."""
    pre = Preprocessing.from_dict(load_checkpoint(checkpoint)["preprocessing"])
    splits = load_image_folder(data_dir)
    for path, _ in (splits.test if split == "test" else splits.train)[:limit]:
        yield load_eval_image(path, pre)


def export_for_job(checkpoint: str | Path, data_dir: str | Path, out: str | Path) -> ExportRecord:
    """A finished job's ONNX export, verified on (up to :data:`VERIFY_MAX_IMAGES` of) the
    test images of its dataset."""
    return export_verified(checkpoint, dataset_images(checkpoint, data_dir), out)


def labelled_images(data_dir: str | Path, pre: Preprocessing, split: str = "test",
                    limit: int = VERIFY_MAX_IMAGES, seed: int | None = None
                    ) -> Iterator[tuple[torch.Tensor, int]]:
    """Up to ``limit`` (crop, class index) of a split, decoded as ``/predict`` decodes; a
    seeded random sample when ``seed`` is given, else the first ones."""
    splits = load_image_folder(data_dir)
    samples = list(splits.test if split == "test" else splits.train)
    if seed is not None and len(samples) > limit:
        samples = random.Random(seed).sample(samples, limit)
    for path, target in samples[:limit]:
        yield load_eval_image(path, pre), int(target)


# ------------------------------------------------------------------------------- INT8


def int8_verdict(agreement: float, accuracy: float, reference_accuracy: float, *,
                 min_agreement: float = INT8_MIN_AGREEMENT,
                 max_drop: float = INT8_MAX_ACCURACY_DROP) -> str | None:
    """Why an INT8 model with these figures is refused, or None when it is kept."""
    if agreement < min_agreement:
        return (f"its labels agree with fp32's on {agreement:.1%} of the test images "
                f"(at least {min_agreement:.0%} needed)")
    if reference_accuracy - accuracy > max_drop + 1e-9:  # float rounding
        return (f"its test accuracy {accuracy:.4f} is {reference_accuracy - accuracy:.4f} "
                f"below fp32's {reference_accuracy:.4f} (at most {max_drop} allowed)")
    return None


def quantize_int8(fp32_onnx: str | Path, calibration: Iterable[torch.Tensor],
                  out: str | Path) -> tuple[Path, int]:
    """Statically quantize an fp32 export (QDQ, per-channel int8 weights, uint8 activations)
    calibrated on ``calibration`` (uint8 NHWC batches); the contract metadata is carried
    over. Returns the file and the number of calibration images."""
    try:
        import onnx
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise ExportError("INT8 needs onnx and onnxruntime: pip install 'hotdog[onnx]'"
                          ) from exc
    batches = [np.ascontiguousarray(b.numpy()) for b in calibration]
    count = sum(len(b) for b in batches)
    if not count:
        raise ExportError("no training images to calibrate the INT8 model on")

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.left = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.left, None)
            return None if batch is None else {INPUT_NAME: batch}

    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="hotdog-int8-") as tmp, _atomic_path(out) as dst:
        # Shape inference and graph optimisation first (ONNX Runtime's advice): the
        # quantizer then sees fused convolutions, and the model runs faster.
        prepared = Path(tmp) / "prepared.onnx"
        with warnings.catch_warnings(), _quiet("root"):
            warnings.simplefilter("ignore")
            quant_pre_process(str(fp32_onnx), str(prepared))
            quantize_static(str(prepared), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8)
        source, proto = onnx.load(str(fp32_onnx)), onnx.load(str(dst))
        del proto.metadata_props[:]
        for entry in source.metadata_props:
            proto.metadata_props.add(key=entry.key, value=entry.value)
        proto.doc_string = source.doc_string + " (INT8)"
        onnx.save(proto, str(dst))
    return out, count


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """The quantizer logs a warning for the uint8 input it leaves alone: not ours to show."""
    target = logging.getLogger(None if logger == "root" else logger)
    level = target.level
    target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(level)


def int8_verified(fp32_onnx: str | Path, calibration: Iterable[torch.Tensor],
                  test: Iterable[tuple[torch.Tensor, int]], out: str | Path,
                  **rule: float) -> ExportRecord:
    """Quantize ``fp32_onnx`` to ``out`` and keep it only if it passes :func:`int8_verdict`
    (``rule``: its thresholds, the defaults unless given) on ``test`` ((crop, class index)
    pairs) against the fp32 model; else it is deleted and the record says why (with the
    figures)."""
    started = time.perf_counter()
    out = Path(out)
    figures: dict[str, Any] = {}
    try:
        _, figures["calibration_images"] = quantize_int8(fp32_onnx, calibration, out)
        fp32, int8 = OnnxModel(fp32_onnx), OnnxModel(out)
        agree = right = right_ref = count = 0
        chunk: list[tuple[torch.Tensor, int]] = []
        for item in (*test, None):
            if item is not None:
                chunk.append(item)
            if chunk and (item is None or len(chunk) == 32):
                x = torch.stack([image.permute(1, 2, 0) for image, _ in chunk])
                targets = np.array([t for _, t in chunk])
                a, b = fp32.run(x)[0].argmax(1), int8.run(x)[0].argmax(1)
                agree += int((a == b).sum())
                right_ref += int((a == targets).sum())
                right += int((b == targets).sum())
                count += len(chunk)
                chunk = []
        if not count:
            raise ExportError("no test images to verify the INT8 model on")
        figures.update(images=count, agreement=round(agree / count, 6),
                       accuracy=round(right / count, 6),
                       reference_accuracy=round(right_ref / count, 6))
        refusal = int8_verdict(figures["agreement"], figures["accuracy"],
                               figures["reference_accuracy"], **rule)
        if refusal is not None:
            raise ExportError(f"INT8 model discarded: {refusal}")
    except Exception as exc:  # the job succeeds without it
        out.unlink(missing_ok=True)
        message = str(exc) if isinstance(exc, ExportError) else f"{type(exc).__name__}: {exc}"
        log.warning("INT8 model of %s discarded: %s", fp32_onnx, message)
        return ExportRecord(error=message, seconds=round(time.perf_counter() - started, 3),
                            **figures)
    return ExportRecord(file=out.name, seconds=round(time.perf_counter() - started, 3),
                        **figures)


def int8_for_job(checkpoint: str | Path, data_dir: str | Path, fp32_onnx: str | Path,
                 out: str | Path) -> ExportRecord:
    """A finished job's INT8 model: calibrated on a sample of :data:`CALIBRATION_IMAGES`
    training images (seeded by the job's seed), verified on up to
    :data:`VERIFY_MAX_IMAGES` test images."""
    ckpt = load_checkpoint(checkpoint)
    pre = Preprocessing.from_dict(ckpt["preprocessing"])
    seed = int((ckpt.get("params") or {}).get("seed", 0))
    calibration = batches_of(image for image, _ in labelled_images(
        data_dir, pre, "train", CALIBRATION_IMAGES, seed=seed))
    return int8_verified(fp32_onnx, calibration, labelled_images(data_dir, pre), out)


# ------------------------------------------------------------------ verification set


def write_verification_set(checkpoint: str | Path, data_dir: str | Path,
                           limit: int = VERIFY_SET_IMAGES) -> Path:
    """Up to ``limit`` decoded test crops (uint8 NHWC) and their class indices, saved beside
    the checkpoint (:data:`VERIFY_SET_SUFFIX`), for the runtimes a server builds itself."""
    pre = Preprocessing.from_dict(load_checkpoint(checkpoint)["preprocessing"])
    pairs = list(labelled_images(data_dir, pre, limit=limit))
    images = (torch.stack([image.permute(1, 2, 0) for image, _ in pairs]) if pairs
              else torch.empty(0, pre.image_size, pre.image_size, 3, dtype=torch.uint8))
    out = verification_set_path(checkpoint)
    with _atomic_path(out) as tmp:
        torch.save({"images": images.contiguous(),
                    "targets": torch.tensor([t for _, t in pairs], dtype=torch.long)}, tmp)
    return out


def verification_set_path(checkpoint: str | Path) -> Path:
    return Path(checkpoint).with_suffix(VERIFY_SET_SUFFIX)


def load_verification_set(checkpoint: str | Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The crops (uint8 NHWC) and targets written by :func:`write_verification_set`, or
    None when the job has none (trained before it existed, or exports were off)."""
    path = verification_set_path(checkpoint)
    if not path.is_file():
        return None
    data = torch.load(path, map_location="cpu", weights_only=True)
    return data["images"], data["targets"]


def exports_for_job(checkpoint: str | Path, data_dir: str | Path, *, int8: bool = True
                    ) -> dict[str, dict[str, Any]]:
    """Everything a worker writes beside a succeeded job's checkpoint, by format: the
    verified ONNX export, the verified INT8 model (when asked for and the fp32 export was
    kept) and the verification set."""
    checkpoint = Path(checkpoint)
    write_verification_set(checkpoint, data_dir)
    fp32 = checkpoint.with_suffix(".onnx")
    out = {"onnx": export_for_job(checkpoint, data_dir, fp32).to_dict()}
    if int8 and fp32.is_file():
        out["onnx_int8"] = int8_for_job(checkpoint, data_dir, fp32,
                                        checkpoint.with_suffix(INT8_SUFFIX)).to_dict()
    return out
