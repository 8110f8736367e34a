"""Classification metrics: accuracy, balanced accuracy, macro F1, confusion matrix,
per-class precision/recall/F1."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ClassReport:
    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Evaluation:
    classes: list[str]
    # confusion[i][j]: images of true class i predicted as class j
    confusion: list[list[int]]
    per_class: list[ClassReport]
    accuracy: float
    loss: float
    count: int
    # A job's final evaluation: its temperature and the expected calibration error before
    # and after it (app.engine.calibrate.calibration_report); None elsewhere.
    calibration: dict[str, Any] | None = None

    @property
    def macro_f1(self) -> float:
        return sum(c.f1 for c in self.per_class) / len(self.per_class)

    @property
    def balanced_accuracy(self) -> float:
        """The mean recall of the classes that have images: accuracy as if every class
        were equally frequent (what a majority-class guess scores 1/classes on)."""
        return balanced_accuracy([asdict(c) for c in self.per_class])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["macro_f1"] = self.macro_f1
        d["balanced_accuracy"] = self.balanced_accuracy
        return d


def balanced_accuracy(per_class: list[dict[str, Any]]) -> float:
    """From the per-class reports (as stored): the mean recall over classes with support."""
    recalls = [float(c["recall"]) for c in per_class if c["support"] > 0]
    return sum(recalls) / len(recalls) if recalls else 0.0


def macro_f1(per_class: list[dict[str, Any]]) -> float:
    return float(sum(c["f1"] for c in per_class)) / max(1, len(per_class))


def confusion_matrix(targets: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    idx = targets.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def evaluation_from(
    classes: list[str], targets: torch.Tensor, preds: torch.Tensor, loss: float
) -> Evaluation:
    cm = confusion_matrix(targets.cpu(), preds.cpu(), len(classes))
    reports = []
    for i, label in enumerate(classes):
        tp = int(cm[i, i])
        predicted = int(cm[:, i].sum())
        actual = int(cm[i, :].sum())
        p, r = _ratio(tp, predicted), _ratio(tp, actual)
        f1 = _ratio(2 * tp, predicted + actual)  # = 2pr/(p+r), and 0 when both are 0
        reports.append(ClassReport(label=label, precision=p, recall=r, f1=f1, support=actual))
    total = int(cm.sum())
    return Evaluation(
        classes=list(classes),
        confusion=cm.tolist(),
        per_class=reports,
        accuracy=_ratio(int(cm.trace()), total),
        loss=loss,
        count=total,
    )
