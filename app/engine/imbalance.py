"""Classes of unequal size in the training split: ``class_weights: balanced`` weights each
image's loss by ``n / (classes x n_class)`` (scikit-learn's "balanced"), and ``sampler:
balanced`` draws each epoch's images with replacement at probability ``1 / n_class`` each,
so every class is drawn about equally often. Both come from the training images' counts
(after the validation split is held out); both default off (the d2l recipe).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from app.engine.data import Sample


def class_counts(samples: Sequence[Sample], num_classes: int) -> torch.Tensor:
    return torch.bincount(torch.tensor([label for _, label in samples], dtype=torch.long),
                          minlength=num_classes)


def balanced_class_weights(samples: Sequence[Sample], num_classes: int) -> torch.Tensor:
    """Each class's loss weight, ``n / (classes x n_class)``: their mean over the training
    images is 1, so the loss keeps its scale (and the learning rate its meaning)."""
    counts = class_counts(samples, num_classes).double()
    return (counts.sum() / (num_classes * counts.clamp(min=1))).float()


def balanced_sample_weights(samples: Sequence[Sample], num_classes: int) -> torch.Tensor:
    """Each training image's chance of being drawn: ``1 / n_class`` (unnormalised)."""
    counts = class_counts(samples, num_classes).double()
    return torch.tensor([1.0 / float(counts[label]) for _, label in samples],
                        dtype=torch.double)
