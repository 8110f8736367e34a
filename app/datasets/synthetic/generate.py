"""Writing the synthetic datasets: every image from its own random stream.

Each image's stream is seeded by (seed, split, class, index), so a dataset is reproducible
byte for byte under a seed and a larger count never changes the images a smaller count
already produced.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from app.datasets.layout import SPLITS, move_into_place, refuse_non_empty
from app.datasets.synthetic.foods import FOODS
from app.datasets.synthetic.paint import Rng
from app.datasets.synthetic.render import render_demo_image, render_food_image

logger = logging.getLogger(__name__)

def generate_demo_dataset(
    out: Path | str,
    *,
    train_per_class: int = 100,
    test_per_class: int = 50,
    seed: int = 0,
    classes: tuple[str, str] = ("hotdog", "not-hotdog"),
    min_side: int = 160,
    max_side: int = 512,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write a synthetic ImageFolder dataset to ``out/{train,test}/<class>/NNNN.jpg``.

    ``classes[0]`` receives hotdog pictures and ``classes[1]`` everything else (other
    food, or an empty table). Each side of each image is drawn uniformly from
    ``[min_side, max_side]``. ``progress(done, total)`` is called after every image.

    Raises ``FileExistsError`` if ``out`` exists and is not an empty directory. The
    tree is built in a temporary sibling directory and renamed into place at the end.
    """
    if len(classes) != 2 or len(set(classes)) != 2:
        raise ValueError(f"need two distinct class names, got {classes!r}")

    def render(rng: Rng, class_index: int) -> Image.Image:
        return render_demo_image(
            rng, hotdog=class_index == 0, min_side=min_side, max_side=max_side
        )

    return _generate(Path(out), classes, render, train_per_class=train_per_class,
                     test_per_class=test_per_class, seed=seed, min_side=min_side,
                     max_side=max_side, progress=progress)


def generate_food_dataset(
    out: Path | str,
    *,
    foods: tuple[str, ...] = ("pizza", "salad", "fruit", "donut", "berries", "broccoli"),
    train_per_class: int = 60,
    test_per_class: int = 30,
    seed: int = 0,
    min_side: int = 160,
    max_side: int = 512,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """A different synthetic task on the same kind of photos: which food is on the table
    (one class per name in ``foods``, no hotdogs). ``hotdog demo`` pretrains on it when no
    ImageNet weights are available. Same layout, guarantees and errors as
    :func:`generate_demo_dataset`.
    """
    unknown = [f for f in foods if f not in FOODS]
    if unknown or len(foods) < 2 or len(set(foods)) != len(foods):
        raise ValueError(f"need at least two distinct foods out of {', '.join(FOODS)}; "
                         f"got {', '.join(foods)}")

    def render(rng: Rng, class_index: int) -> Image.Image:
        return render_food_image(
            rng, foods[class_index], min_side=min_side, max_side=max_side
        )

    # A seed stream of its own: these images never repeat the hotdog set's.
    return _generate(Path(out), tuple(foods), render, train_per_class=train_per_class,
                     test_per_class=test_per_class, seed=seed, min_side=min_side,
                     max_side=max_side, progress=progress, stream=1)


def _generate(
    out: Path,
    classes: tuple[str, ...],
    render: Callable[[Rng, int], Image.Image],
    *,
    train_per_class: int,
    test_per_class: int,
    seed: int,
    min_side: int,
    max_side: int,
    progress: Callable[[int, int], None] | None,
    stream: int | None = None,
) -> dict[str, Any]:
    _check_generate_args(train_per_class, test_per_class, seed, classes, min_side, max_side)
    refuse_non_empty(out)

    counts = {"train": train_per_class, "test": test_per_class}
    total = len(classes) * (train_per_class + test_per_class)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    logger.info("generating %d synthetic images into %s (seed %d)", total, out, seed)
    prefix = [] if stream is None else [stream]
    try:
        done = 0
        for split_index, split in enumerate(SPLITS):
            for class_index, name in enumerate(classes):
                folder = tmp / split / name
                folder.mkdir(parents=True)
                for i in range(counts[split]):
                    rng = np.random.default_rng([*prefix, seed, split_index, class_index, i])
                    image = render(rng, class_index)
                    quality = int(rng.integers(85, 93))
                    image.save(folder / f"{i:04d}.jpg", "JPEG", quality=quality)
                    done += 1
                    if progress is not None:
                        progress(done, total)
        move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote %d images to %s", total, out)
    return {
        "path": str(out),
        "classes": list(classes),
        "counts": {split: {name: counts[split] for name in classes} for split in SPLITS},
    }


def _check_generate_args(
    train: int, test: int, seed: int, classes: tuple[str, ...], min_side: int, max_side: int
) -> None:
    if train < 0 or test < 0:
        raise ValueError("per-class counts must be >= 0")
    if seed < 0:
        raise ValueError("seed must be >= 0")
    if not 16 <= min_side <= max_side:
        raise ValueError(f"need 16 <= min_side <= max_side, got {min_side} and {max_side}")
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"need distinct class names, got {classes!r}")
    for name in classes:
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise ValueError(f"class name {name!r} is not a valid folder name")
