"""Model-based label review: which training images are probably mislabeled, and which are
outliers, without training the network k times.

1. **Embeddings**: one forward pass per training image through a ResNet-18 backbone (its
   ``fc`` removed: the 512 pooled features), with the evaluation preprocessing, batched,
   without gradients, on the engine's device and precision (:func:`plan_device`).
2. **Out-of-sample probabilities**: a logistic regression on the embeddings (scikit-learn),
   in stratified, seeded k-fold cross-validation: every image's probabilities come from a
   classifier that never saw its label.
3. **Label issues**: cleanlab's confident learning (``cleanlab.filter.find_label_issues``,
   ranked by self-confidence), plus ``cleanlab.rank.get_label_quality_scores`` to rank every
   image; **outliers**: cleanlab's ``OutOfDistribution`` on the embeddings (mean distance to
   the k nearest neighbours), flagged with the rule of cleanlab's Datalab (beyond
   Q3 + (1/0.37 - 1) x IQR of those distances).

Which backbone: a backbone fine-tuned on these labels may have memorised the wrong ones, so
by default the review embeds with the model's *starting* backbone (ImageNet weights, or the
checkpoint it started from) and falls back to the fine-tuned one only when it started from
scratch (random weights know nothing). The README has the measurement behind this choice
(``bench/label_review.py``).

Images are named by :mod:`app.engine.catalogue` (id, split, class, path as uploaded).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models import resnet18

from app.engine.callback import BatchProgress, Callback
from app.engine.catalogue import ImageEntry, catalogue
from app.engine.checkpoint import load_checkpoint
from app.engine.config import INIT_IMAGENET, INIT_SCRATCH
from app.engine.data import Sample, eval_dataset, load_image_folder, make_loader
from app.engine.device import DevicePlan, plan_device
from app.engine.errors import (
    CheckpointError,
    DatasetError,
    PretrainedWeightsMissing,
    TrainingCancelled,
)
from app.engine.model import load_imagenet_state_dict
from app.engine.presets import Preprocessing, normalize_batch

log = logging.getLogger(__name__)

BACKBONE_CHOICES = ("auto", "start", "fine-tuned")
FINE_TUNED = "fine-tuned"
# cleanlab Datalab's default for feature-based outliers: an image whose mean distance to its
# k nearest neighbours exceeds Q3 + (1/0.37 - 1) x IQR of those distances.
OUTLIER_THRESHOLD = 0.37
OUTLIER_NEIGHBOURS = 10
# The logistic regression's inverse regularisation strength: 512 features and a few hundred
# images separate easily; a stronger penalty than scikit-learn's default (1.0) keeps the
# probabilities from saturating at 0/1 (which would tie cleanlab's ranking) and converges in
# a fraction of the iterations.
REGULARISATION = 0.05


@dataclass(frozen=True)
class ReviewConfig:
    folds: int = 5  # cross-validation folds of the logistic regression (fewer for tiny classes)
    seed: int = 0  # the folds' shuffle, and a scratch backbone's weights
    batch_size: int = 64  # images per forward pass
    device: str = "auto"
    precision: str = "auto"
    max_listed: int = 1000  # issues and outliers listed at most (the most likely first)

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ValueError(f"folds must be at least 2, got {self.folds}")
        if self.batch_size < 1 or self.max_listed < 0:
            raise ValueError("batch_size must be at least 1 and max_listed at least 0")


@dataclass(frozen=True)
class LabelIssue:
    image_id: int
    split: str
    label: str  # the given label (its class folder)
    path: str  # as uploaded
    suggested: str  # the class the out-of-sample classifier finds most likely
    confidence: float  # its out-of-sample probability
    rank: int  # 1: the most likely mislabeled


@dataclass(frozen=True)
class Outlier:
    image_id: int
    split: str
    label: str
    path: str
    score: float  # cleanlab's outlier score in (0, 1]: the lower, the more unusual


@dataclass
class LabelReview:
    """The result, as ``GET /jobs/{id}/label-review`` shows it (``issues``, ``outliers``,
    ``backbone``); the rest is for the command line, the benchmark and the tests."""

    backbone: str
    classes: list[str]
    issues: list[LabelIssue]
    outliers: list[Outlier]
    images: int  # training images reviewed
    folds: int
    cv_accuracy: float  # of the out-of-sample predictions against the given labels
    seconds: dict[str, float] = field(default_factory=dict)  # embed, classify, rank
    # Every training image's id in ranked order (most likely mislabeled first): the issues
    # first, in their order, then the rest by label quality. Not listed in the JSON.
    ranking: list[int] = field(default_factory=list)
    flagged: int = 0  # images cleanlab flagged (issues may list fewer: max_listed)

    def to_dict(self) -> dict[str, Any]:
        return {"backbone": self.backbone,
                "issues": [asdict(i) for i in self.issues],
                "outliers": [asdict(o) for o in self.outliers]}

    def summary(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "classes": self.classes, "images": self.images,
                "folds": self.folds, "cv_accuracy": self.cv_accuracy, "flagged": self.flagged,
                "outliers": len(self.outliers), "seconds": self.seconds}


# ------------------------------------------------------------------------------ backbone
@dataclass(frozen=True)
class Backbone:
    model: nn.Module  # ResNet-18 whose fc is the identity: 512 features per image
    description: str  # what the result's ``backbone`` says
    preprocessing: Preprocessing


def _features(state: dict[str, torch.Tensor] | None, seed: int) -> nn.Module:
    """ResNet-18 without its head, from ``state`` (any head size), or seeded random weights."""
    if state is None:
        torch.manual_seed(seed)
        model = resnet18(weights=None)
    else:
        classes = state["fc.weight"].shape[0] if "fc.weight" in state else 1000
        model = resnet18(weights=None, num_classes=classes)
        model.load_state_dict(state)
    model.fc = nn.Identity()
    features: nn.Module = model.eval()
    return features


def choose_backbone(
    checkpoint: str | Path | None = None,
    *,
    start: str | None = None,
    start_name: str | None = None,
    prefer: str = "auto",
    image_size: int = 224,
    seed: int = 0,
) -> Backbone:
    """The backbone whose embeddings the review uses.

    ``checkpoint``: the fine-tuned model under review (its preprocessing is used). ``start``:
    where it started, ``imagenet``, ``scratch`` or a checkpoint path (default: what the
    checkpoint records, ``params.init``); ``start_name`` names that start in the description
    (e.g. ``job:<id>``). ``prefer``: ``auto`` (the start, unless it is scratch), ``start``,
    ``fine-tuned``. Without a checkpoint the start alone is used (``scratch``: random weights
    seeded by ``seed``, a weak baseline), at ``image_size``.
    """
    if prefer not in BACKBONE_CHOICES:
        raise ValueError(f"backbone must be one of {', '.join(BACKBONE_CHOICES)}, got "
                         f"{prefer!r}")
    ckpt = load_checkpoint(checkpoint) if checkpoint is not None else None
    if ckpt is not None:
        pre = Preprocessing.from_dict(ckpt["preprocessing"])
        start = start or str((ckpt.get("params") or {}).get("init") or INIT_SCRATCH)
    else:
        pre = Preprocessing.for_size(image_size)
        if start is None or prefer == FINE_TUNED:
            raise ValueError("a label review needs a checkpoint for its fine-tuned backbone, "
                             "or a starting backbone (imagenet, scratch or a checkpoint)")
    assert start is not None
    name = start_name or start
    use_start = prefer == "start" or (prefer == "auto" and start != INIT_SCRATCH)
    if ckpt is not None and (not use_start or prefer == FINE_TUNED):
        why = (" (the job started from scratch: no pretrained backbone to prefer)"
               if start == INIT_SCRATCH and prefer == "auto" else "")
        return Backbone(_features(ckpt["model"], seed), FINE_TUNED + why, pre)
    if start == INIT_SCRATCH:
        return Backbone(_features(None, seed), f"scratch (random weights, seed {seed})", pre)
    if start == INIT_IMAGENET:
        try:
            state = load_imagenet_state_dict()
        except PretrainedWeightsMissing:
            if ckpt is None or prefer == "start":
                raise
            log.warning("ImageNet weights missing: reviewing with the fine-tuned backbone")
            return Backbone(_features(ckpt["model"], seed),
                            FINE_TUNED + " (the ImageNet weights it started from are not on "
                            "this machine)", pre)
        return Backbone(_features(state, seed), "imagenet (the starting backbone)"
                        if ckpt is not None else "imagenet", pre)
    try:
        source = load_checkpoint(start)["model"]
    except CheckpointError:
        if ckpt is None or prefer == "start":
            raise
        log.warning("the model %s started from is unreadable: reviewing with the fine-tuned "
                    "backbone", name)
        return Backbone(_features(ckpt["model"], seed), FINE_TUNED + f" (the model it started "
                        f"from, {name}, is gone)", pre)
    return Backbone(_features(source, seed), f"{name} (the starting backbone)"
                    if ckpt is not None else name, pre)


# ---------------------------------------------------------------------------- embeddings
@torch.inference_mode()
def embed(
    backbone: Backbone, samples: list[Sample], *, plan: DevicePlan, batch_size: int,
    callback: Callback | None = None,
) -> np.ndarray:
    """One 512-feature row per sample (float32), in order. ``callback`` hears each batch (as
    epoch 1 of 1) and may stop the pass between batches (:class:`TrainingCancelled`)."""
    pre = backbone.preprocessing
    model = backbone.model.to(plan.device)
    if plan.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = make_loader(eval_dataset(samples, pre), batch_size=batch_size, shuffle=False,
                         workers=0)
    batches = -(-len(samples) // batch_size)
    rows, done = [], 0
    for i, (images, _targets) in enumerate(loader):
        if callback is not None and callback.should_stop():
            raise TrainingCancelled(f"cancelled at batch {i} of {batches}")
        x = normalize_batch(images, pre.mean, pre.std, device=plan.device,
                            channels_last=plan.channels_last)
        with plan.autocast():
            features = model(x)
        rows.append(features.float().cpu().numpy())
        done += len(images)
        if callback is not None:
            callback.on_batch(BatchProgress(1, 1, i + 1, batches, done))
    return np.concatenate(rows) if rows else np.zeros((0, 512), np.float32)


# ------------------------------------------------------------------ out-of-sample probs
def out_of_sample_probabilities(features: np.ndarray, labels: np.ndarray, num_classes: int,
                                *, folds: int, seed: int) -> tuple[np.ndarray, int]:
    """Each row's class probabilities from a logistic regression (on standardised features)
    that was fitted on the other folds; and the folds used (at most the smallest class's
    count, so that every fold's training part has every class)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(labels, minlength=num_classes)
    if counts.min() < 2:
        small = [str(i) for i in np.flatnonzero(counts < 2)]
        raise DatasetError(f"a label review needs at least 2 training images per class; "
                           f"class index(es) {', '.join(small)} have fewer")
    folds = int(min(folds, counts.min()))
    probs = np.zeros((len(labels), num_classes))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fit_rows, held_out in splitter.split(features, labels):
        clf = make_pipeline(StandardScaler(), LogisticRegression(
            C=REGULARISATION, max_iter=1000, random_state=seed))
        clf.fit(features[fit_rows], labels[fit_rows])
        probs[np.ix_(held_out, clf.classes_)] = clf.predict_proba(features[held_out])
    return probs, folds


# ------------------------------------------------------------------------------- ranking
def rank_label_issues(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Confident learning's flagged rows, most likely mislabeled first, and every row ranked
    (the flagged ones first, then the rest by cleanlab's label quality score)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    with contextlib.redirect_stdout(sys.stderr):  # a training process's stdout is its events
        flagged = np.asarray(find_label_issues(
            labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1), dtype=int)
        quality = get_label_quality_scores(labels, probs, method="self_confidence")
    seen = set(flagged.tolist())
    rest = [int(i) for i in np.argsort(quality, kind="stable") if int(i) not in seen]
    return flagged, [*flagged.tolist(), *rest]


def outlier_scores(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's outlier score of each row (lower: more unusual) and which rows are
    outliers by Datalab's rule on the mean neighbour distances."""
    from cleanlab.outlier import OutOfDistribution

    n = len(features)
    if n < 3:
        return np.ones(n), np.zeros(n, dtype=bool)
    k = min(OUTLIER_NEIGHBOURS, n - 1)
    with contextlib.redirect_stdout(sys.stderr):  # a training process's stdout is its events
        scores = np.asarray(OutOfDistribution(params={"k": k}).fit_score(
            features=features, verbose=False))
    # score = exp(-t x mean distance / scale): -log(score) is the distance, rescaled, and the
    # rule below does not change under a rescaling.
    distance = -np.log(np.clip(scores, 1e-300, None))
    q1, q3 = np.percentile(distance, [25, 75])
    limit = q3 + (1 / OUTLIER_THRESHOLD - 1) * (q3 - q1)
    return scores, distance > limit


# --------------------------------------------------------------------------------- review
def review_labels(
    data_dir: str | Path,
    backbone: Backbone,
    config: ReviewConfig = ReviewConfig(),
    *,
    callback: Callback | None = None,
) -> LabelReview:
    """Review the training images of the dataset at ``data_dir`` with ``backbone``."""
    splits = load_image_folder(data_dir)
    entries: list[ImageEntry] = [e for e in catalogue(data_dir) if e.split == "train"]
    if len(entries) != len(splits.train):  # both read the same folder in the same order
        raise DatasetError(f"{data_dir}: the dataset changed while it was read")
    labels = np.array([label for _, label in splits.train], dtype=int)
    plan = plan_device(config.device, precision=config.precision, workers=0)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    features = embed(backbone, splits.train, plan=plan, batch_size=config.batch_size,
                     callback=callback)
    seconds["embed"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    probs, folds = out_of_sample_probabilities(features, labels, len(splits.classes),
                                               folds=config.folds, seed=config.seed)
    seconds["classify"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    flagged, ranking = rank_label_issues(labels, probs)
    scores, is_outlier = outlier_scores(features)
    seconds["rank"] = time.perf_counter() - t0
    classes = splits.classes
    issues = []
    for rank, row in enumerate(flagged[: config.max_listed].tolist(), start=1):
        e, suggested = entries[row], int(np.argmax(probs[row]))
        issues.append(LabelIssue(image_id=e.id, split=e.split, label=e.label, path=e.uploaded,
                                 suggested=classes[suggested],
                                 confidence=round(float(probs[row, suggested]), 6), rank=rank))
    outlier_rows = [int(i) for i in np.argsort(scores, kind="stable") if is_outlier[i]]
    outliers = [Outlier(image_id=entries[i].id, split=entries[i].split, label=entries[i].label,
                        path=entries[i].uploaded, score=round(float(scores[i]), 6))
                for i in outlier_rows[: config.max_listed]]
    accuracy = float((probs.argmax(1) == labels).mean()) if len(labels) else 0.0
    return LabelReview(backbone=backbone.description, classes=classes, issues=issues,
                       outliers=outliers, images=len(labels), folds=folds,
                       cv_accuracy=accuracy, seconds=seconds,
                       ranking=[entries[i].id for i in ranking], flagged=len(flagged))


def write_review(review: LabelReview, path: str | Path) -> Path:
    """The review as JSON (:meth:`LabelReview.to_dict` and its summary), written to a
    temporary name beside ``path`` and renamed: readers never see half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({**review.to_dict(), "summary": review.summary()}))
    os.replace(tmp, path)
    return path


def precision_recall_at(ranking: list[int], flipped: set[int], k: int | None = None
                        ) -> tuple[float, float]:
    """Of the first ``k`` ids of ``ranking`` (default: as many as ``flipped``), the share
    that are in ``flipped`` (precision) and the share of ``flipped`` found (recall)."""
    k = len(flipped) if k is None else k
    if k == 0 or not flipped:
        return 0.0, 0.0
    hits = len(set(ranking[:k]) & flipped)
    return hits / k, hits / len(flipped)
