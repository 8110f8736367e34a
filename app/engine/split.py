"""The validation split: the images that choose the epoch, the temperature and early stopping
(the test split is reported, never used to choose anything).

A dataset's own ``val/`` folder is used when it has one. Otherwise a stratified, seeded
share of train is held out: ``round(fraction * n)`` images of each class (at least one, and
at least one left to train on), drawn by a generator seeded from ``(seed, class name)``, so
the same dataset and seed always hold out the same images, whatever else changed.

The split is recorded (:meth:`ValidationSplit.to_dict`: the images' paths relative to the
dataset root) in every checkpoint of the run; a resumed run and a later evaluation use the
recorded images, not a new draw.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.engine.data import ImageFolderSplits, Sample

SOURCE_FOLDER = "folder"  # the dataset's val/ folder
SOURCE_CARVED = "carved"  # held out of train


@dataclass(frozen=True)
class ValidationSplit:
    """The run's training and validation images (``val`` empty: no validation split)."""

    train: list[Sample]
    val: list[Sample]
    source: str | None  # SOURCE_FOLDER, SOURCE_CARVED, or None without a split
    fraction: float = 0.0  # the fraction carved (SOURCE_CARVED)
    seed: int = 0

    @property
    def exists(self) -> bool:
        return bool(self.val)

    def to_dict(self, root: Path) -> dict[str, Any]:
        """What the checkpoint records: the held-out images, relative to the dataset root."""
        return {"source": self.source, "fraction": self.fraction, "seed": self.seed,
                "images": [p.relative_to(root).as_posix() for p, _ in self.val]}


def carve(train: list[Sample], classes: list[str], fraction: float,
          seed: int) -> tuple[list[Sample], list[Sample]]:
    """(train kept, held out): per class, ``round(fraction * n)`` images, at least one, and
    never the class's last one. Both lists keep the dataset's order."""
    held: set[Path] = set()
    for label, name in enumerate(classes):
        paths = [p for p, y in train if y == label]
        if len(paths) < 2:
            raise ValueError(
                f"val_fraction: class {name!r} has {len(paths)} training image(s), too few "
                "to hold one out for validation; add images, give the dataset a val/ folder "
                "or set val_fraction 0")
        count = min(len(paths) - 1, max(1, round(fraction * len(paths))))
        held.update(random.Random(f"{seed}:{name}").sample(paths, count))
    return [s for s in train if s[0] not in held], [s for s in train if s[0] in held]


def validation_split(splits: ImageFolderSplits, fraction: float, seed: int,
                     recorded: dict[str, Any] | None = None) -> ValidationSplit:
    """The run's split: ``recorded`` (a resumed run's) when given, else the dataset's val/
    folder, else ``fraction`` of train carved out (none when 0)."""
    if recorded is not None:
        return _recorded(splits, recorded)
    if splits.has_val:
        return ValidationSplit(splits.train, splits.val, SOURCE_FOLDER)
    if fraction <= 0:
        return ValidationSplit(splits.train, [], None)
    train, val = carve(splits.train, splits.classes, fraction, seed)
    return ValidationSplit(train, val, SOURCE_CARVED, fraction, seed)


def _recorded(splits: ImageFolderSplits, recorded: dict[str, Any]) -> ValidationSplit:
    """The split a checkpoint recorded, refused when the dataset no longer has its images."""
    source = recorded.get("source")
    images = set(recorded.get("images") or [])
    pool = splits.val if source == SOURCE_FOLDER else splits.train
    by_name = {p.relative_to(splits.root).as_posix(): (p, y) for p, y in pool}
    missing = sorted(images - set(by_name))
    if missing:
        raise ValueError(f"cannot resume: the dataset lacks {len(missing)} image(s) of the "
                         f"recorded validation split, e.g. {missing[0]}")
    val = [s for name, s in by_name.items() if name in images]
    train = splits.train if source == SOURCE_FOLDER else [
        s for s in splits.train if s[0].relative_to(splits.root).as_posix() not in images]
    return ValidationSplit(train, val, source, float(recorded.get("fraction", 0.0)),
                           int(recorded.get("seed", 0)))
