"""ImageFolder train/(val/)test splits, decoded once and cached in memory when they fit.

Decoding goes through :mod:`app.engine.images` and the geometry through
:mod:`app.engine.presets`, so training, evaluation and prediction see the same pixels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from torchvision.transforms.v2 import functional as F

from app.engine.errors import DatasetError
from app.engine.images import is_image_file, open_rgb
from app.engine.presets import (
    Preprocessing,
    load_eval_image,
    pil_to_uint8,
    train_decode_size,
    train_geometry,
)

log = logging.getLogger(__name__)

Sample = tuple[Path, int]


@dataclass(frozen=True)
class ImageFolderSplits:
    root: Path
    classes: list[str]
    train: list[Sample]
    test: list[Sample]
    # ``val/<class>/*`` when the dataset has that folder (else empty, and ``has_val`` False)
    val: list[Sample] = field(default_factory=list)
    has_val: bool = False

    def named(self) -> list[tuple[str, list[Sample]]]:
        """The splits the dataset has, by name: train, val (when present), test."""
        return [("train", self.train), *([("val", self.val)] if self.has_val else []),
                ("test", self.test)]

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for split, samples in self.named():
            per = dict.fromkeys(self.classes, 0)
            for _, label in samples:
                per[self.classes[label]] += 1
            out[split] = per
        return out


def _class_dirs(split_dir: Path) -> dict[str, list[Path]]:
    return {
        d.name: sorted(p for p in d.iterdir() if p.is_file() and is_image_file(p))
        for d in sorted(split_dir.iterdir())
        if d.is_dir() and not d.name.startswith((".", "__"))
    }


def _same_classes(root: Path, split: str, found: dict[str, list[Path]],
                  train: dict[str, list[Path]]) -> None:
    if set(found) != set(train):
        only_train = sorted(set(train) - set(found))
        only_other = sorted(set(found) - set(train))
        raise DatasetError(
            f"{root}: train and {split} must have the same classes "
            f"(only in train: {only_train or '-'}; only in {split}: {only_other or '-'})"
        )
    if not any(found.values()):
        raise DatasetError(f"{root}/{split}: no images")


def load_image_folder(root: str | Path) -> ImageFolderSplits:
    """Read ``root/train/<class>/*``, ``root/test/<class>/*`` and, when the folder is there,
    ``root/val/<class>/*`` (classes sorted by name, the same in every split)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset directory")
    found = {}
    for split in ("train", "test"):
        split_dir = root / split
        if not split_dir.is_dir():
            raise DatasetError(f"{root}: missing the '{split}/' folder (expected {split}/<class>/)")
        found[split] = _class_dirs(split_dir)
    has_val = (root / "val").is_dir()
    train = found["train"]
    if len(train) < 2:
        raise DatasetError(f"{root}/train: need at least 2 class folders, found {len(train)}")
    _same_classes(root, "test", found["test"], train)
    if has_val:
        found["val"] = _class_dirs(root / "val")
        _same_classes(root, "val", found["val"], train)
    empty = [c for c, files in train.items() if not files]
    if empty:
        raise DatasetError(f"{root}/train: class folders without images: {', '.join(empty)}")
    classes = sorted(train)

    def samples(split: str) -> list[Sample]:
        return [(p, i) for i, c in enumerate(classes) for p in found.get(split, {}).get(c, [])]

    return ImageFolderSplits(root=root, classes=classes, train=samples("train"),
                             test=samples("test"), val=samples("val"), has_val=has_val)


def load_train_image(path: Path, image_size: int) -> torch.Tensor:
    """Decode for training: short side capped where no random crop could use more pixels."""
    limit = train_decode_size(image_size)
    img = pil_to_uint8(open_rgb(path, min_short_side=limit))
    if min(img.shape[-2:]) > limit:
        img = F.resize(img, limit, antialias=True)
    return img.contiguous()


def available_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


class CachedImages(Dataset[tuple[torch.Tensor, int]]):
    """Samples decoded by ``load``; kept in memory up to a byte budget, the rest decoded
    on every access. ``geometry`` runs after the cache (random augmentation for training).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        load: Callable[[Path], torch.Tensor],
        geometry: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.load = load
        self.geometry = geometry
        self.cache: list[torch.Tensor | None] = [None] * len(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        img = self.cache[i]
        if img is None:
            img = self.load(path)
        if self.geometry is not None:
            img = self.geometry(img)
        return img, label

    def fill(self, budget: int, threads: int | None = None) -> int:
        """Decode up to ``budget`` bytes ahead of training, in threads (decoding releases
        the GIL). Decode errors surface here, before any compute is spent. Returns bytes.
        """
        threads = threads or min(8, os.cpu_count() or 1)
        used = 0
        chunk = threads * 8  # bounded look-ahead, so a full budget stops the decoding
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for start in range(0, len(self.samples), chunk):
                paths = [p for p, _ in self.samples[start : start + chunk]]
                for i, img in enumerate(pool.map(self.load, paths), start):
                    if used + img.numel() > budget:
                        log.info("image cache full after %d of %d images", i, len(self))
                        return used
                    self.cache[i] = img
                    used += img.numel()
        return used


def train_dataset(samples: Sequence[Sample], image_size: int) -> CachedImages:
    return CachedImages(
        samples, lambda p: load_train_image(p, image_size), train_geometry(image_size)
    )


def eval_dataset(samples: Sequence[Sample], pre: Preprocessing) -> CachedImages:
    # The eval geometry is deterministic, so its output itself is cached.
    return CachedImages(samples, lambda p: load_eval_image(p, pre))


def make_loader(
    ds: CachedImages,
    *,
    batch_size: int,
    shuffle: bool,
    workers: int,
    pin_memory: bool = False,
    generator: torch.Generator | None = None,
    sample_weights: torch.Tensor | None = None,
) -> DataLoader[tuple[torch.Tensor, int]]:
    """``shuffle`` with ``sample_weights``: each epoch draws ``len(ds)`` images with
    replacement, image i with probability proportional to ``sample_weights[i]``."""
    # BatchNorm cannot train on a batch of one: drop a last batch of exactly one image.
    drop_last = shuffle and len(ds) > 1 and len(ds) % batch_size == 1
    sampler = None
    if shuffle and sample_weights is not None:
        sampler = WeightedRandomSampler(sample_weights.tolist(), len(ds), replacement=True,
                                        generator=generator)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else None,
        sampler=sampler,
        generator=generator,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
    )
