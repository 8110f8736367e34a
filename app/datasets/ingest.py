"""Turning an uploaded zip into a stored, validated ImageFolder dataset.

The zip holds ``train/<class>/*`` and ``test/<class>/*`` (and optionally ``val/<class>/*``,
the validation split), at its top level or inside one folder (as d2l's ``hotdog.zip``
does). Extraction (``archive.extract_zip``, under the
upload limits) refuses what could escape or exhaust the storage dir, every image is decoded
once, and the tree only appears under its final name when all of it is good: a failed upload
leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO

from app.datasets.archive import Limits, extract_zip
from app.datasets.layout import ALL_SPLITS, MAX_LISTED, find_root, is_hidden, present_splits
from app.engine.catalogue import write_manifest
from app.engine.data import ImageFolderSplits, load_image_folder
from app.engine.errors import DatasetError, ImageDecodeError
from app.engine.images import (
    DecodeBudget,
    decode_budget,
    is_image_file,
    open_rgb,
)

MIN_TRAIN_PER_CLASS = 10
IMBALANCE_RATIO = 4
SMALL_SIDE = 32  # images smaller than this are upscaled a lot by the recipe's transforms


@dataclass
class IngestResult:
    classes: list[str]
    counts: dict[str, dict[str, int]]
    warnings: list[str] = field(default_factory=list)
    size_bytes: int = 0


def _check_image(path: Path, budget: DecodeBudget) -> tuple[int, int] | str:
    try:
        # Small draft decodes are enough to prove the file decodes (truncation included);
        # each waits for its share of the decode budget, which /predict shares.
        return open_rgb(path, min_short_side=SMALL_SIDE, then=lambda img: img.size,
                        budget=budget)
    except ImageDecodeError as exc:
        return str(exc)


def validate(root: Path, *, threads: int | None = None, budget: DecodeBudget | None = None
             ) -> tuple[ImageFolderSplits, list[str]]:
    """Check the layout and decode every image, within ``budget`` (default: the process's
    decode budget). Returns the splits and warnings."""
    splits = load_image_folder(root)
    samples = [p for _, split in splits.named() for p, _ in split]
    threads = threads or min(8, os.cpu_count() or 1)
    check = partial(_check_image, budget=budget or decode_budget())
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(check, samples))
    bad = [(p, r) for p, r in zip(samples, results, strict=True) if isinstance(r, str)]
    if bad:
        listed = "; ".join(f"{p.relative_to(root)}: {msg}" for p, msg in bad[:MAX_LISTED])
        more = f" (and {len(bad) - MAX_LISTED} more)" if len(bad) > MAX_LISTED else ""
        raise DatasetError(f"{len(bad)} file(s) are not decodable images: {listed}{more}")
    warnings = _warnings(root, splits, [r for r in results if not isinstance(r, str)])
    return splits, warnings


def layout_warnings(root: Path, splits: ImageFolderSplits) -> list[str]:
    """The warnings of a stored dataset's layout and counts (image sizes aside: its report
    lists tiny images)."""
    return _warnings(root, splits, [])


def _warnings(
    root: Path, splits: ImageFolderSplits, sizes: list[tuple[int, int]]
) -> list[str]:
    warnings = []
    counts = splits.counts()
    ignored = [
        p.relative_to(root) for split in present_splits(root)
        for p in (root / split).rglob("*")
        if p.is_file() and not is_image_file(p) and not is_hidden(p.relative_to(root).parts)
    ]
    nested = [p.relative_to(root) for split in present_splits(root)
              for p in (root / split).glob("*/*/**/*") if p.is_file() and is_image_file(p)]
    if ignored:
        listed = ", ".join(str(p) for p in ignored[:MAX_LISTED])
        warnings.append(f"ignored {len(ignored)} file(s) that are not images: {listed}")
    if nested:
        warnings.append(f"ignored {len(nested)} image(s) in sub-folders of class folders, "
                        f"e.g. {nested[0]}")
    train = counts["train"]
    few = [c for c, n in train.items() if n < MIN_TRAIN_PER_CLASS]
    if few:
        warnings.append(f"few training images (under {MIN_TRAIN_PER_CLASS}) for: "
                        f"{', '.join(few)}; expect a weak model")
    if max(train.values()) > IMBALANCE_RATIO * max(1, min(train.values())):
        warnings.append(f"classes are imbalanced in train: {train}")
    for split in ("val", "test"):
        empty = [c for c, n in counts.get(split, {}).items() if n == 0]
        if empty:
            warnings.append(f"no {split} images for: {', '.join(empty)}; their {split} "
                            "recall cannot be measured")
    small = sum(1 for w, h in sizes if min(w, h) < SMALL_SIDE)
    if small:
        warnings.append(f"{small} image(s) are smaller than {SMALL_SIDE} px on a side")
    return warnings


def _renamed(splits: ImageFolderSplits, out: Path, extracted: Path) -> Path:
    """The images under names of our own: ``<split>/<class>/<n>.<ext>``. Only class folder
    names (the labels) come from the upload; files that are not images are left out. The
    manifest keeps each image's path in the upload (``extracted`` is where the zip went)."""
    uploaded: dict[str, str] = {}
    for split, samples in splits.named():
        for cls in splits.classes:
            (out / split / cls).mkdir(parents=True)
        for i, (path, label) in enumerate(samples):
            rel = f"{split}/{splits.classes[label]}/{i:06d}{path.suffix.lower()}"
            uploaded[rel] = path.relative_to(extracted).as_posix()
            os.rename(path, out / rel)
    write_manifest(out, uploaded)
    return out


def _check_class_count(root: Path, limit: int | None) -> None:
    """Refuse more class folders than ``limit`` before any image is decoded (training's
    cost and its confusion matrix grow with the classes)."""
    if limit is None:
        return
    classes = {d.name for split in ALL_SPLITS if (root / split).is_dir()
               for d in (root / split).iterdir()
               if d.is_dir() and not d.name.startswith((".", "__"))}
    if len(classes) > limit:
        raise DatasetError(f"the dataset has {len(classes)} classes; the limit is {limit}")


def ingest_zip(
    source: str | Path | BinaryIO, dest: Path, limits: Limits, *, workdir: Path
) -> IngestResult:
    """Extract and validate into ``workdir`` (a fresh temp folder on ``dest``'s file
    system), then move the images, renamed, to ``dest``. ``workdir`` is always removed."""
    try:
        size = extract_zip(source, workdir, limits)
        root = find_root(workdir)
        _check_class_count(root, limits.max_classes)
        splits, warnings = validate(root)
        os.replace(_renamed(splits, workdir / ".dataset", workdir), dest)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return IngestResult(classes=splits.classes, counts=splits.counts(), warnings=warnings,
                        size_bytes=size)
