"""Copies of an ImageFolder dataset with some training labels changed, for ``hotdog demo
--label-noise`` and the label review's tests and benchmark: :func:`flip_labels` moves a
seeded share of the training images into another class's folder (label noise whose truth
is known); :func:`relabelled_copy` writes the copy a review's suggestions describe.

The source folder is never modified. Copies are made in a temporary folder beside the
destination and renamed into place, so a half-made copy never looks like a dataset.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path

from app.engine.catalogue import MANIFEST
from app.engine.data import load_image_folder


def _copy_tree(src: Path, dst: Path) -> Path:
    """``src`` copied to a temporary sibling of ``dst`` (its manifest left out: the paths
    change); the caller edits it, then :func:`_publish` renames it to ``dst``."""
    if dst.exists():
        raise FileExistsError(f"{dst} already exists")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(MANIFEST))
    return tmp


def _publish(tmp: Path, dst: Path) -> Path:
    os.replace(tmp, dst)
    return dst


def _move(root: Path, rel: str, new_class: str) -> str:
    """Move the image ``rel`` (split/class/name) into ``new_class``'s folder of its split;
    its new relative path (the name gets a suffix if taken)."""
    split, _old, name = rel.split("/", 2)
    target_dir = root / split / new_class
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / name
    stem, suffix = os.path.splitext(name)
    n = 1
    while target.exists():
        target = target_dir / f"{stem}_{n}{suffix}"
        n += 1
    os.replace(root / rel, target)
    return target.relative_to(root).as_posix()


def flip_labels(src: str | Path, dst: str | Path, *, fraction: float, seed: int = 0
                ) -> dict[str, str]:
    """Copy the dataset ``src`` to ``dst`` with ``round(fraction x N)`` of its N training
    images (drawn with ``seed``) moved to another class, chosen at random. Returns, for each
    moved image, its path in ``dst`` and its true class."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    src, dst = Path(src), Path(dst)
    splits = load_image_folder(src)
    rng = random.Random(seed)
    chosen = sorted(rng.sample(range(len(splits.train)), round(fraction * len(splits.train))))
    tmp = _copy_tree(src, dst)
    truth = {}
    for i in chosen:
        path, label = splits.train[i]
        others = [c for j, c in enumerate(splits.classes) if j != label]
        new = _move(tmp, path.relative_to(src).as_posix(), rng.choice(others))
        truth[new] = splits.classes[label]
    _publish(tmp, dst)
    return truth


def relabelled_copy(src: str | Path, dst: str | Path, changes: Mapping[str, str]
                    ) -> dict[str, str]:
    """Copy the dataset ``src`` to ``dst`` with each image ``changes`` names (its path
    relative to ``src``) moved to the class it maps to. Returns each moved image's new path
    (relative to ``dst``) and its class before."""
    src, dst = Path(src), Path(dst)
    classes = load_image_folder(src).classes
    unknown = sorted(set(changes.values()) - set(classes))
    if unknown:
        raise ValueError(f"unknown class(es) {', '.join(unknown)}: the dataset has "
                         f"{', '.join(classes)}")
    tmp = _copy_tree(src, dst)
    moved = {}
    for rel, new_class in sorted(changes.items()):
        old_class = rel.split("/")[1]
        if old_class != new_class:
            moved[_move(tmp, rel, new_class)] = old_class
    _publish(tmp, dst)
    return moved
