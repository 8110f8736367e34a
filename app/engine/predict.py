"""Classifying photos with a trained checkpoint: load once, then preprocess → infer → report.

Preprocessing is rebuilt from the checkpoint and goes through the same functions as the
evaluation during training, so ``hotdog predict``, ``hotdog evaluate`` and the service agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torchvision.models import resnet18

from app.engine.checkpoint import load_checkpoint
from app.engine.data import eval_dataset, load_image_folder, make_loader
from app.engine.device import plan_device
from app.engine.metrics import Evaluation
from app.engine.presets import Preprocessing, load_eval_image, normalize_batch
from app.engine.train import evaluation_from_logits, run_inference

ImageSource = str | Path | bytes | BinaryIO


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
    ) -> None:
        ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
        self.classes: list[str] = list(ckpt["classes"])
        self.preprocessing = Preprocessing.from_dict(ckpt["preprocessing"])
        self.params: dict[str, Any] = dict(ckpt.get("params") or {})
        self.plan = plan_device(device, precision=precision, workers=0)
        model = resnet18(weights=None, num_classes=len(self.classes))
        model.load_state_dict(ckpt["model"])
        model.eval().to(self.plan.device)
        if self.plan.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model

    def load(self, source: ImageSource, *, name: str | None = None) -> torch.Tensor:
        """Decode and crop one image: uint8 (3, S, S). Raises ImageDecodeError naming it."""
        return load_eval_image(source, self.preprocessing, name=name)

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) → class probabilities (N, C), float32 on the CPU."""
        pre = self.preprocessing
        x = normalize_batch(
            batch, pre.mean, pre.std, device=self.plan.device,
            channels_last=self.plan.channels_last,
        )
        with self.plan.autocast():
            logits = self.model(x)
        return torch.softmax(logits.float(), dim=1).cpu()

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
        self, data_dir: str | Path, *, split: str = "test", batch_size: int = 64
    ) -> tuple[Evaluation, list[Prediction]]:
        """Evaluation of one split of an ImageFolder dataset, and every image's prediction."""
        splits = load_image_folder(data_dir)
        if splits.classes != self.classes:
            raise ValueError(
                f"dataset classes {splits.classes} differ from the model's {self.classes}"
            )
        samples = splits.test if split == "test" else splits.train
        loader = make_loader(
            eval_dataset(samples, self.preprocessing), batch_size=batch_size, shuffle=False,
            workers=0,
        )
        logits, targets = run_inference(self.model, loader, self.plan, self.preprocessing)
        evaluation = evaluation_from_logits(self.classes, logits, targets)
        names = [str(p.relative_to(splits.root)) for p, _ in samples]
        return evaluation, self.report(torch.softmax(logits, dim=1), names)


def _name(source: ImageSource, i: int) -> str:
    if isinstance(source, (str, Path)):
        return Path(source).name
    return getattr(source, "name", None) or f"image-{i}"
