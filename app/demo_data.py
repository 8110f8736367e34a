"""Demo datasets: a synthetic, photo-like hotdog / not-hotdog set, or d2l's real one.

The synthetic set needs no network: every image is drawn with PIL + numpy from its
own random stream, so it is reproducible byte for byte under a seed and a larger
count never changes the images a smaller count already produced.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import math
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

logger = logging.getLogger(__name__)

D2L_HOTDOG_URL = "http://d2l-data.s3-accelerate.amazonaws.com/hotdog.zip"
D2L_HOTDOG_SHA1 = "fba480ffa8aa7e0febbb511d181409f899b9baa5"

SPLITS: tuple[str, str] = ("train", "test")

_Color = tuple[int, int, int]
_Rng = np.random.Generator

# Objects are drawn at twice their size and halved, which anti-aliases their edges.
_SS = 2
# A fixed timestamp keeps zip archives identical for identical trees.
_ZIP_DATE = (2000, 1, 1, 0, 0, 0)
_STORED_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".zip"})
_DRIVE_RE = re.compile(r"^[A-Za-z]:")


# --------------------------------------------------------------------------- public API


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

    def render(rng: _Rng, class_index: int) -> Image.Image:
        return render_demo_image(
            rng, hotdog=class_index == 0, min_side=min_side, max_side=max_side
        )

    return _generate(Path(out), classes, render, train_per_class=train_per_class,
                     test_per_class=test_per_class, seed=seed, min_side=min_side,
                     max_side=max_side, progress=progress)


# The other foods by name: the classes of :func:`generate_food_dataset`.
FOODS = ("pizza", "burger", "salad", "fruit", "donut", "egg", "cookie", "berries", "broccoli")


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

    def render(rng: _Rng, class_index: int) -> Image.Image:
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
    render: Callable[[_Rng, int], Image.Image],
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
    _refuse_non_empty(out)

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
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote %d images to %s", total, out)
    return {
        "path": str(out),
        "classes": list(classes),
        "counts": {split: {name: counts[split] for name in classes} for split in SPLITS},
    }


def zip_dataset(src: Path | str, zip_path: Path | str) -> Path:
    """Zip ``src/train`` and ``src/test`` so that the archive has them at its root.

    The archive is written under a temporary name and renamed over ``zip_path``.
    """
    src = Path(src)
    zip_path = Path(zip_path)
    if not src.is_dir():
        raise FileNotFoundError(f"dataset folder {src} does not exist")
    missing = [split for split in SPLITS if not (src / split).is_dir()]
    if missing:
        raise ValueError(f"{src} has no {' or '.join(m + '/' for m in missing)} folder")

    zip_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{zip_path.name}.", suffix=".part", dir=zip_path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    skip = {tmp.resolve(), zip_path.resolve()}
    try:
        with zipfile.ZipFile(tmp, "w") as zf:
            for path in _walk_splits(src):
                if path.resolve() in skip:
                    continue
                rel = path.relative_to(src).as_posix()
                if path.is_dir():
                    info = zipfile.ZipInfo(rel + "/", date_time=_ZIP_DATE)
                    info.external_attr = (0o40755 << 16) | 0x10
                    zf.writestr(info, b"")
                    continue
                info = zipfile.ZipInfo(rel, date_time=_ZIP_DATE)
                info.external_attr = 0o100644 << 16
                # JPEGs do not shrink under deflate; storing them saves the CPU time.
                stored = path.suffix.lower() in _STORED_SUFFIXES
                info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
                info.file_size = path.stat().st_size
                with path.open("rb") as fin, zf.open(info, "w") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
        # mkstemp() makes the file private (0600); the archive is meant to be shared.
        tmp.chmod(0o644)
        os.replace(tmp, zip_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("zipped %s to %s", src, zip_path)
    return zip_path


def fetch_d2l(
    out: Path | str,
    *,
    url: str = D2L_HOTDOG_URL,
    sha1: str = D2L_HOTDOG_SHA1,
    timeout: float = 60.0,
) -> Path:
    """Download d2l's hotdog.zip, check its SHA-1 and unpack it to ``out/{train,test}/``.

    A single leading folder in the archive (d2l's has ``hotdog/``) is stripped. Raises
    ``ConnectionError`` when the download fails, ``ValueError`` on a checksum mismatch or
    an unsafe or malformed archive, ``FileExistsError`` if ``out`` is not empty.
    """
    out = Path(out)
    _refuse_non_empty(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, zip_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".zip.part", dir=out.parent)
    zip_tmp = Path(zip_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            actual = _download(url, fh, timeout)
        if actual != sha1.lower():
            raise ValueError(
                f"SHA-1 mismatch for {url}: expected {sha1.lower()}, got {actual}; "
                "the download is corrupt or the file has changed"
            )
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            _safe_extract(zip_tmp, tmp)
            _check_split_layout(tmp, url)
            _move_into_place(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        zip_tmp.unlink(missing_ok=True)
    logger.info("extracted %s to %s", url, out)
    return out


def render_demo_image(
    rng: _Rng, *, hotdog: bool, min_side: int = 160, max_side: int = 512
) -> Image.Image:
    """Draw one synthetic photo (RGB) from ``rng``: a hotdog, or other food / nothing."""
    image, light, cx, cy, short = _scene(rng, min_side, max_side)
    if hotdog:
        drawer: Callable[..., Image.Image] | None = _draw_hotdog
        size = short * float(rng.uniform(1.0, 1.35))
    else:
        drawer = _OTHER_FOODS[int(rng.choice(len(_OTHER_FOODS), p=_OTHER_WEIGHTS))]
        size = short * float(rng.uniform(0.6, 0.95))
    return _serve(rng, image, drawer, size, cx, cy, light, pair=hotdog)


def render_food_image(
    rng: _Rng, food: str, *, min_side: int = 160, max_side: int = 512
) -> Image.Image:
    """Draw one synthetic photo (RGB) of ``food`` (one of :data:`FOODS`) on a table."""
    drawer = _FOOD_DRAWERS[food]
    image, light, cx, cy, short = _scene(rng, min_side, max_side)
    size = short * float(rng.uniform(0.6, 0.95))
    return _serve(rng, image, drawer, size, cx, cy, light, pair=False)


def _scene(rng: _Rng, min_side: int, max_side: int
           ) -> tuple[Image.Image, float, float, float, int]:
    """A table with clutter, and where its dish goes: (image, light, cx, cy, short side)."""
    width = int(rng.integers(min_side, max_side + 1))
    height = int(rng.integers(min_side, max_side + 1))
    image = _background(rng, width, height)
    light = float(rng.uniform(0, 2 * math.pi))
    _table_clutter(rng, image)
    short = min(width, height)
    # Shallow depth of field, as in most food photos: the table behind the dish is soft.
    image = image.filter(ImageFilter.BoxBlur(short * float(rng.uniform(0.004, 0.02))))

    # Like a photographer, keep the subject near the middle, whatever the aspect ratio.
    cx = width / 2 + short * float(rng.uniform(-0.18, 0.18))
    cy = height / 2 + short * float(rng.uniform(-0.18, 0.18))
    return image, light, cx, cy, short


def _serve(rng: _Rng, image: Image.Image, drawer: Callable[..., Image.Image] | None,
           size: float, cx: float, cy: float, light: float, *, pair: bool) -> Image.Image:
    """Put the dish (``drawer``; None: an empty table) on the table, maybe on a plate, and
    finish the photo. ``pair``: sometimes two of them side by side (hotdogs)."""
    if rng.random() < 0.55:
        _plate(rng, image, cx, cy, size * float(rng.uniform(0.55, 0.75)), light)
    if drawer is None:
        return _photo_finish(rng, image)
    angle = float(rng.uniform(-25, 25)) if drawer is _draw_burger else float(rng.uniform(0, 360))
    if pair and rng.random() < 0.45:  # a pair of hotdogs side by side
        size *= 0.8
        gap = size * float(rng.uniform(0.18, 0.25))
        dx, dy = math.sin(math.radians(angle)) * gap, math.cos(math.radians(angle)) * gap
        for sign in (-1, 1):
            _place(rng, image, drawer, size, cx + sign * dx, cy + sign * dy, angle, light)
    else:
        _place(rng, image, drawer, size, cx, cy, angle, light)
    return _photo_finish(rng, image)


def _place(
    rng: _Rng,
    image: Image.Image,
    drawer: Callable[..., Image.Image],
    size: float,
    cx: float,
    cy: float,
    angle: float,
    light: float,
) -> None:
    rad = math.radians(angle)
    # Patches are rotated after drawing, so shade them from the rotated-back light.
    patch_light = (
        math.cos(light) * math.cos(rad) - math.sin(light) * math.sin(rad),
        math.cos(light) * math.sin(rad) + math.sin(light) * math.cos(rad),
    )
    patch = drawer(rng, size * _SS, patch_light).reduce(_SS)
    patch = patch.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    _paste_with_shadow(image, patch, cx, cy, light, size, float(rng.uniform(0.3, 0.55)))


# --------------------------------------------------------------------------- helpers


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


def _refuse_non_empty(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"{out} already exists and is not an empty folder; "
            "remove it or choose another destination"
        )


def _move_into_place(tmp: Path, out: Path) -> None:
    _refuse_non_empty(out)
    # mkdtemp() makes the folder private (0700); the dataset should be readable like any other.
    tmp.chmod(0o755)
    if out.is_dir():
        # rename() cannot replace a directory on every platform, even an empty one.
        out.rmdir()
    tmp.rename(out)


def _walk_splits(src: Path) -> Iterator[Path]:
    for split in SPLITS:
        root = src / split
        yield root
        yield from sorted(root.rglob("*"), key=lambda p: p.relative_to(root).parts)


def _download(url: str, fh: Any, timeout: float) -> str:
    digest = hashlib.sha1()
    request = urllib.request.Request(url, headers={"User-Agent": "hotdog-demo-data"})
    logger.info("downloading %s", url)
    hint = "the machine may be offline; run `hotdog demo-data` for a synthetic dataset instead"
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                fh.write(chunk)
    except urllib.error.HTTPError as exc:
        raise ConnectionError(
            f"could not download {url}: HTTP {exc.code} {exc.reason}; "
            "run `hotdog demo-data` for a synthetic dataset instead"
        ) from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ConnectionError(f"could not download {url} ({reason}); {hint}") from exc
    return digest.hexdigest()


def _member_parts(name: str) -> list[str]:
    if "\\" in name or name.startswith("/") or _DRIVE_RE.match(name) or "\x00" in name:
        raise ValueError(f"refusing unsafe path in archive: {name!r}")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"refusing unsafe path in archive: {name!r}")
    return parts


def _safe_extract(zip_file: Path, dest: Path) -> None:
    try:
        zf = zipfile.ZipFile(zip_file)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"downloaded file is not a valid zip archive: {exc}") from exc
    with zf:
        members: list[tuple[zipfile.ZipInfo, list[str]]] = []
        # Validate every name before writing anything, so a bad archive writes nothing.
        for info in zf.infolist():
            parts = _member_parts(info.filename)
            if not parts or "__MACOSX" in parts or parts[-1] == ".DS_Store":
                continue
            members.append((info, parts))
        tops = {parts[0] for _, parts in members}
        strip = (
            len(tops) == 1
            and not tops & set(SPLITS)
            and all(len(parts) > 1 or info.is_dir() for info, parts in members)
        )
        root = dest.resolve()
        for info, parts in members:
            rel = parts[1:] if strip else parts
            if not rel:
                continue
            target = dest.joinpath(*rel)
            if not target.resolve().is_relative_to(root):
                raise ValueError(f"refusing unsafe path in archive: {info.filename!r}")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as fin, target.open("wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)


def _check_split_layout(root: Path, source: str) -> None:
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir() or not any(p.is_dir() for p in folder.iterdir()):
            raise ValueError(f"{source} does not contain {split}/<class>/ folders")


# --------------------------------------------------------------------------- drawing


def _color(rng: _Rng, base: _Color, spread: float = 18) -> _Color:
    r, g, b = np.clip(np.asarray(base) + rng.normal(0, spread, 3), 0, 255)
    return int(r), int(g), int(b)


def _shade(color: _Color, factor: float) -> _Color:
    r, g, b = (int(min(255.0, max(0.0, c * factor))) for c in color)
    return r, g, b


def _mix(a: _Color, b: _Color, t: float) -> _Color:
    return (
        int(a[0] + (b[0] - a[0]) * t),
        int(a[1] + (b[1] - a[1]) * t),
        int(a[2] + (b[2] - a[2]) * t),
    )


def _upsampled(
    rng: _Rng, grid: tuple[int, int], size: tuple[int, int], channels: int = 1
) -> np.ndarray:
    """Smooth random field in [0, 1], shape (h, w) or (h, w, channels)."""
    shape = (grid[1], grid[0], channels) if channels > 1 else (grid[1], grid[0])
    small = rng.integers(0, 256, shape, dtype=np.uint8)
    big = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    return np.asarray(big, dtype=np.float32) / 255.0


_WOODS: tuple[_Color, ...] = ((150, 105, 65), (120, 110, 100), (80, 60, 50), (200, 185, 160))
# Mostly neutral surfaces, as in most food photos; a few colours occur in both classes.
_CLOTHS: tuple[_Color, ...] = (
    (235, 232, 225),
    (60, 70, 95),
    (200, 195, 185),
    (90, 90, 95),
    (40, 40, 42),
    (140, 160, 185),
    (215, 205, 180),
    (95, 75, 110),
    (80, 120, 95),
    (225, 225, 230),
)


def _background(rng: _Rng, width: int, height: int) -> Image.Image:
    kind = int(rng.choice(4, p=[0.2, 0.3, 0.2, 0.3]))
    if kind == 0:  # wooden planks
        vertical = rng.random() < 0.5
        across, along = (width, height) if vertical else (height, width)
        n_planks = int(rng.integers(2, 6))
        plank = across / n_planks
        base = np.asarray(_color(rng, _WOODS[int(rng.integers(len(_WOODS)))], 15), np.float32)
        tones = base * rng.uniform(0.85, 1.15, (n_planks + 1, 1)).astype(np.float32)
        rows = np.arange(across)
        colors = tones[(rows / plank).astype(int)]
        colors[(rows % plank) < max(1.0, across * 0.006)] *= 0.55
        grain = _upsampled(rng, (int(rng.integers(3, 9)), max(2, across // 3)), (along, across))
        arr = colors[:, None, :] * (0.8 + 0.4 * grain[..., None])
        if vertical:
            arr = arr.transpose(1, 0, 2)
    elif kind == 1:  # plain cloth with a weave
        base = np.asarray(_color(rng, _CLOTHS[int(rng.integers(len(_CLOTHS)))], 20), np.float32)
        weave = rng.standard_normal((height, width, 1), dtype=np.float32)
        arr = base * (1 + 0.04 * weave)
    elif kind == 2:  # gingham
        cell = int(rng.integers(6, 40))
        a = np.asarray(_color(rng, (240, 238, 230), 8), np.float32)
        b = np.asarray(_color(rng, _CLOTHS[int(rng.integers(1, len(_CLOTHS)))], 20), np.float32)
        palette = np.stack([a, (a + b) / 2, b])
        level = (np.arange(width) // cell % 2)[None, :] + (np.arange(height) // cell % 2)[:, None]
        arr = palette[level]
    else:  # smooth two-colour gradient
        a = np.asarray(np.clip(rng.uniform(35, 230) + rng.normal(0, 15, 3), 0, 255), np.float32)
        b = np.asarray(
            np.clip(a * rng.uniform(0.6, 1.3) + rng.normal(0, 12, 3), 0, 255), np.float32
        )
        theta = rng.uniform(0, 2 * math.pi)
        x = np.linspace(0, 1, width, dtype=np.float32)
        y = np.linspace(0, 1, height, dtype=np.float32)
        t = np.clip(math.cos(theta) * x[None, :] + math.sin(theta) * y[:, None], 0, 1)
        arr = a + (b - a) * t[..., None]
    blotch = _upsampled(rng, (3, 3), (width, height), channels=3)
    arr = arr * (0.88 + 0.24 * blotch)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _table_clutter(rng: _Rng, image: Image.Image) -> None:
    """Napkins, cutlery, cups and crumbs, equally likely in both classes."""
    draw = ImageDraw.Draw(image)
    w, h = image.size
    short = min(w, h)
    for _ in range(int(rng.choice(4, p=[0.35, 0.35, 0.2, 0.1]))):
        kind = int(rng.integers(3))
        x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        if kind == 0:  # napkin
            half = short * float(rng.uniform(0.12, 0.3))
            rot = float(rng.uniform(0, math.pi))
            corners = [
                (
                    x + half * math.cos(rot + k * math.pi / 2),
                    y + half * math.sin(rot + k * math.pi / 2),
                )
                for k in range(4)
            ]
            draw.polygon(corners, fill=_color(rng, (235, 235, 230), 20))
        elif kind == 1:  # knife or fork: a thin grey rod with a darker handle
            length = short * float(rng.uniform(0.3, 0.6))
            rot = float(rng.uniform(0, math.pi))
            dx, dy = math.cos(rot) * length / 2, math.sin(rot) * length / 2
            metal = _color(rng, (185, 188, 195), 12)
            thick = max(2, int(short * 0.02))
            draw.line([(x - dx, y - dy), (x + dx, y + dy)], fill=metal, width=thick)
            handle = _color(rng, (60, 50, 45), 25)
            draw.line(
                [(x - dx, y - dy), (x - dx * 0.2, y - dy * 0.2)], fill=handle, width=thick + 2
            )
        else:  # cup seen from above
            r = short * float(rng.uniform(0.07, 0.14))
            cup = _color(rng, (230, 230, 225), 25)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=_shade(cup, 0.8))
            draw.ellipse((x - r * 0.85, y - r * 0.85, x + r * 0.85, y + r * 0.85), fill=cup)
            inner = r * 0.72
            drink = _color(rng, (90, 60, 40), 40)
            draw.ellipse((x - inner, y - inner, x + inner, y + inner), fill=drink)
    for _ in range(int(rng.integers(0, 25))):
        x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        r = float(rng.uniform(0.5, 2.0))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=_color(rng, (170, 140, 100), 40))


def _plate(rng: _Rng, image: Image.Image, cx: float, cy: float, r: float, light: float) -> None:
    draw = ImageDraw.Draw(image)
    base = _color(
        rng,
        [(245, 245, 240), (240, 232, 215), (200, 215, 230), (50, 52, 55)][
            int(rng.choice(4, p=[0.5, 0.25, 0.15, 0.1]))
        ],
        8,
    )
    ry = r * float(rng.uniform(0.8, 1.0))
    blur = max(1, int(r * 0.05))
    pad = 2 * blur
    mask = Image.new("L", (int(2 * r) + 2 * pad, int(2 * ry) + 2 * pad), 0)
    ImageDraw.Draw(mask).ellipse((pad, pad, pad + 2 * r, pad + 2 * ry), fill=110)
    mask = mask.filter(ImageFilter.BoxBlur(blur))
    sx, sy = -math.cos(light) * r * 0.06, -math.sin(light) * r * 0.06
    image.paste((20, 15, 10), (int(cx - r - pad + sx), int(cy - ry - pad + sy)), mask)
    draw.ellipse((cx - r, cy - ry, cx + r, cy + ry), fill=_shade(base, 0.9))
    draw.ellipse((cx - r * 0.93, cy - ry * 0.93, cx + r * 0.93, cy + ry * 0.93), fill=base)
    draw.ellipse(
        (cx - r * 0.72, cy - ry * 0.72, cx + r * 0.72, cy + ry * 0.72), fill=_shade(base, 0.95)
    )


def _shaded_ellipse(
    draw: ImageDraw.ImageDraw,
    box: tuple[float, float, float, float],
    color: _Color,
    light: tuple[float, float],
    steps: int = 8,
    dark: float = 0.6,
    bright: float = 1.25,
) -> None:
    """Concentric ellipses drifting towards the light: a cheap rounded 3D look."""
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    for k in range(steps):
        t = k / steps
        s = 1 - 0.8 * t
        ox, oy = light[0] * rx * 0.45 * t, light[1] * ry * 0.45 * t
        fill = _shade(color, dark + (bright - dark) * math.sqrt(t))
        draw.ellipse((cx + ox - rx * s, cy + oy - ry * s, cx + ox + rx * s, cy + oy + ry * s), fill)


def _shaded_rod(
    draw: ImageDraw.ImageDraw,
    points: list[tuple[float, float]],
    width: float,
    color: _Color,
    light: tuple[float, float],
    steps: int = 7,
) -> None:
    """A rod with round ends along ``points``, lit from ``light``."""
    for k in range(steps):
        t = k / steps
        w = width * (1 - 0.75 * t)
        ox, oy = light[0] * width * 0.25 * t, light[1] * width * 0.25 * t
        pts = [(x + ox, y + oy) for x, y in points]
        fill = _shade(color, 0.6 + 0.65 * math.sqrt(t))
        draw.line(pts, fill=fill, width=max(1, int(w)), joint="curve")
        for x, y in (pts[0], pts[-1]):
            draw.ellipse((x - w / 2, y - w / 2, x + w / 2, y + w / 2), fill=fill)


def _squiggle(
    rng: _Rng, x0: float, x1: float, centre: Callable[[float], float], amp: float
) -> list[tuple[float, float]]:
    cycles = float(rng.uniform(3, 8))
    phase = float(rng.uniform(0, 2 * math.pi))
    ts = np.linspace(0.06, 0.94, 48)
    return [
        (x0 + (x1 - x0) * t, centre(t) + amp * math.sin(2 * math.pi * cycles * t + phase))
        for t in ts
    ]


def _new_patch(width: float, height: float) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    w = max(_SS * 4, int(width) // _SS * _SS)
    h = max(_SS * 4, int(height) // _SS * _SS)
    patch = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    return patch, ImageDraw.Draw(patch)


def _draw_hotdog(rng: _Rng, size: float, light: tuple[float, float]) -> Image.Image:
    bun_len = size / 1.12
    bun_w = bun_len * float(rng.uniform(0.36, 0.48))
    sausage_len = bun_len * float(rng.uniform(1.0, 1.14))
    sausage_w = bun_w * float(rng.uniform(0.45, 0.58))
    bend = sausage_w * float(rng.uniform(-0.5, 0.5))
    patch, draw = _new_patch(size * 1.05, bun_w * 1.25 + abs(bend))
    pw, ph = patch.size
    cx, cy = pw / 2, ph / 2

    bun = _color(rng, (222, 168, 98), 14)
    for sign in (-1, 1):  # two bun halves either side of the sausage
        y_in, y_out = cy + sign * bun_w * 0.05, cy + sign * bun_w / 2
        box = (cx - bun_len / 2, min(y_in, y_out), cx + bun_len / 2, max(y_in, y_out))
        _shaded_ellipse(draw, box, bun, light, steps=9, dark=0.62, bright=1.18)
    for _ in range(int(rng.integers(20, 60))):  # toasted crumb texture
        x = cx + bun_len * 0.45 * float(rng.uniform(-1, 1))
        y = cy + bun_w * 0.42 * float(rng.uniform(-1, 1))
        r = bun_w * float(rng.uniform(0.01, 0.03))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=_shade(bun, float(rng.uniform(0.7, 1.1))))

    def centre(t: float) -> float:
        return cy + bend * math.sin(math.pi * t)

    sx0, sx1 = cx - sausage_len / 2 + sausage_w / 2, cx + sausage_len / 2 - sausage_w / 2
    rod = [(sx0 + (sx1 - sx0) * t, centre(t)) for t in np.linspace(0, 1, 12)]
    sausage = _color(rng, (205, 52, 38), 10)
    _shaded_rod(draw, rod, sausage_w, sausage, light)
    if rng.random() < 0.6:  # grill marks
        for t in np.linspace(0.15, 0.85, int(rng.integers(3, 7))):
            x, y = sx0 + (sx1 - sx0) * t, centre(float(t))
            d = sausage_w * 0.35
            draw.line(
                [(x - d * 0.4, y - d), (x + d * 0.4, y + d)],
                fill=_shade(sausage, 0.45),
                width=max(1, int(sausage_w * 0.08)),
            )

    sauces = []
    roll = rng.random()
    if roll < 0.55:
        sauces = [(232, 190, 40)]
    elif roll < 0.65:
        sauces = [(190, 30, 28)]
    elif roll < 0.9:
        sauces = [(190, 30, 28), (232, 190, 40)]
    for sauce in sauces:
        pts = _squiggle(rng, sx0, sx1, centre, sausage_w * float(rng.uniform(0.2, 0.4)))
        width = max(2, int(sausage_w * float(rng.uniform(0.16, 0.26))))
        color = _color(rng, sauce, 10)
        draw.line(pts, fill=_shade(color, 0.8), width=width, joint="curve")
        draw.line(pts, fill=color, width=max(1, width // 2))
    if rng.random() < 0.15:  # relish or onion bits
        bits = (90, 150, 50) if rng.random() < 0.5 else (235, 230, 210)
        for _ in range(int(rng.integers(5, 15))):
            t = float(rng.uniform(0.1, 0.9))
            x = sx0 + (sx1 - sx0) * t
            y = centre(t) + float(rng.normal(0, sausage_w * 0.2))
            r = sausage_w * float(rng.uniform(0.06, 0.12))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=_color(rng, bits, 15))
    return patch


def _draw_pizza(rng: _Rng, size: float, light: tuple[float, float]) -> Image.Image:
    patch, draw = _new_patch(size, size)
    c, r = size / 2, size / 2 * 0.98
    crust = _color(rng, (200, 140, 70), 15)
    _shaded_ellipse(draw, (c - r, c - r, c + r, c + r), crust, light, steps=5, dark=0.7)
    ri = r * float(rng.uniform(0.8, 0.88))
    cheese = _color(rng, (238, 190, 90), 15)
    draw.ellipse((c - ri, c - ri, c + ri, c + ri), fill=_mix(cheese, (200, 80, 40), 0.35))
    for _ in range(int(rng.integers(6, 14))):  # melted cheese blotches
        a, d = float(rng.uniform(0, 2 * math.pi)), ri * math.sqrt(float(rng.random())) * 0.8
        x, y = c + d * math.cos(a), c + d * math.sin(a)
        rb = ri * float(rng.uniform(0.15, 0.35))
        draw.ellipse((x - rb, y - rb, x + rb, y + rb), fill=_color(rng, cheese, 10))
    _toppings(rng, draw, lambda: _in_disc(rng, c, c, ri * 0.85), size)
    if rng.random() < 0.5:
        for k in range(int(rng.integers(3, 5)) * 2):
            a = k * math.pi / 4 + 0.3
            draw.line(
                [(c, c), (c + r * math.cos(a), c + r * math.sin(a))],
                fill=_shade(crust, 0.6),
                width=max(1, int(size * 0.006)),
            )
    return patch


def _draw_pizza_slice(rng: _Rng, size: float, light: tuple[float, float]) -> Image.Image:
    patch, draw = _new_patch(size, size * 0.75)
    w, h = patch.size
    apex, base_x = (w * 0.04, h / 2), w * 0.88
    crust = _color(rng, (200, 140, 70), 15)
    half = h * 0.46
    draw.pieslice(
        (base_x - w * 0.1, h / 2 - half, base_x + w * 0.1, h / 2 + half), -90, 90, fill=crust
    )
    draw.polygon([apex, (base_x, h / 2 - half), (base_x, h / 2 + half)], fill=_shade(crust, 0.9))
    cheese = _color(rng, (238, 190, 90), 15)
    inset = [
        (w * 0.1, h / 2),
        (base_x - w * 0.02, h / 2 - half * 0.85),
        (base_x - w * 0.02, h / 2 + half * 0.85),
    ]
    draw.polygon(inset, fill=_mix(cheese, (200, 80, 40), 0.25))

    def spot() -> tuple[float, float]:
        u, v = sorted(rng.random(2))
        x = inset[0][0] + (inset[1][0] - inset[0][0]) * (0.25 + 0.7 * v)
        y = h / 2 + (u * 2 - 1) * half * 0.75 * (x - inset[0][0]) / (inset[1][0] - inset[0][0])
        return x, y

    _toppings(rng, draw, spot, size * 0.7)
    return patch


def _in_disc(rng: _Rng, cx: float, cy: float, r: float) -> tuple[float, float]:
    a, d = float(rng.uniform(0, 2 * math.pi)), r * math.sqrt(float(rng.random()))
    return cx + d * math.cos(a), cy + d * math.sin(a)


def _toppings(
    rng: _Rng, draw: ImageDraw.ImageDraw, where: Callable[[], tuple[float, float]], size: float
) -> None:
    pepperoni = _color(rng, (165, 38, 32), 12)
    for _ in range(int(rng.integers(3, 11))):
        x, y = where()
        r = size * float(rng.uniform(0.04, 0.07))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=_shade(pepperoni, 0.8))
        draw.ellipse((x - r * 0.8, y - r * 0.8, x + r * 0.8, y + r * 0.8), fill=pepperoni)
    if rng.random() < 0.5:  # olives
        for _ in range(int(rng.integers(3, 9))):
            x, y = where()
            r = size * 0.025
            draw.ellipse((x - r, y - r, x + r, y + r), fill=(30, 30, 28))
            draw.ellipse(
                (x - r * 0.45, y - r * 0.45, x + r * 0.45, y + r * 0.45), fill=(200, 150, 80)
            )
    if rng.random() < 0.5:  # basil or peppers
        green = _color(rng, (60, 130, 45), 15)
        for _ in range(int(rng.integers(3, 9))):
            x, y = where()
            r = size * float(rng.uniform(0.02, 0.045))
            draw.ellipse((x - r, y - r * 0.6, x + r, y + r * 0.6), fill=green)


def _draw_burger(rng: _Rng, size: float, light: tuple[float, float]) -> Image.Image:
    height = size * float(rng.uniform(0.7, 0.9))
    patch, draw = _new_patch(size, height)
    w, h = patch.size
    bun = _color(rng, (215, 150, 75), 14)
    layers: list[tuple[float, _Color, str]] = [(0.16, bun, "bun")]
    layers.append((0.17, _color(rng, (95, 55, 35), 12), "patty"))
    if rng.random() < 0.7:
        layers.append((0.05, _color(rng, (245, 185, 40), 10), "cheese"))
    if rng.random() < 0.6:
        layers.append((0.06, _color(rng, (200, 40, 35), 12), "tomato"))
    if rng.random() < 0.8:
        layers.append((0.07, _color(rng, (95, 165, 55), 15), "lettuce"))
    y = h * 0.97
    for frac, color, kind in layers:
        lh = h * frac
        inset = w * (0.06 if kind == "bun" else 0.02)
        top = y - lh
        if kind == "lettuce":
            pts = [
                (inset + (w - 2 * inset) * t, top + lh * 0.5 + lh * 0.5 * math.sin(t * 40))
                for t in np.linspace(0, 1, 30)
            ]
            draw.polygon([(inset, y), *pts, (w - inset, y)], fill=color)
        elif kind == "cheese":
            draw.rectangle((inset, top, w - inset, y), fill=color)
            for _ in range(int(rng.integers(2, 5))):
                x = float(rng.uniform(inset, w - inset))
                draw.polygon([(x - lh, y), (x + lh, y), (x, y + lh * 1.5)], fill=color)
        else:
            draw.rounded_rectangle(
                (inset, top, w - inset, y), radius=lh * 0.45, fill=_shade(color, 0.85)
            )
            draw.rounded_rectangle(
                (inset * 1.2, top + lh * 0.12, w - inset * 1.2, y - lh * 0.3),
                radius=lh * 0.35,
                fill=color,
            )
        y = top
    dome = max(h * 0.05, y - h * 0.03)
    box = (w * 0.04, y - dome, w * 0.96, y + dome)
    for k in range(7):
        t = k / 7
        s = 1 - 0.75 * t
        cx, cy = w / 2 + light[0] * w * 0.1 * t, y + light[1] * dome * 0.2 * t
        rx, ry = (box[2] - box[0]) / 2 * s, dome * (1 - 0.5 * t)
        draw.chord(
            (cx - rx, cy - ry, cx + rx, cy + ry),
            180,
            360,
            fill=_shade(bun, 0.65 + 0.55 * math.sqrt(t)),
        )
    for _ in range(int(rng.integers(6, 20))):  # sesame seeds
        a = float(rng.uniform(math.pi * 1.1, math.pi * 1.9))
        d = float(rng.uniform(0.2, 0.85))
        x = w / 2 + (box[2] - box[0]) / 2 * d * math.cos(a)
        yy = y + dome * d * math.sin(a)
        r = w * 0.012
        draw.ellipse((x - r * 1.6, yy - r, x + r * 1.6, yy + r), fill=(245, 235, 200))
    return patch


def _bowl(
    rng: _Rng,
    draw: ImageDraw.ImageDraw,
    size: float,
    colors: list[_Color],
    spread: float,
    light: tuple[float, float],
) -> tuple[float, float, _Color]:
    """A round bowl seen from above filling the patch; returns (centre, inner radius, color)."""
    c, r = size / 2, size / 2 * 0.98
    bowl = _color(rng, colors[int(rng.integers(len(colors)))], spread)
    _shaded_ellipse(draw, (c - r, c - r, c + r, c + r), bowl, light, steps=4, dark=0.75)
    return c, r * 0.84, bowl


def _draw_salad(rng: _Rng, size: float, light: tuple[float, float]) -> Image.Image:
    patch, draw = _new_patch(size, size)
    c, ri, _ = _bowl(
        rng, draw, size, [(240, 240, 235), (70, 140, 160), (160, 110, 70), (200, 60, 50)], 15,
        light,
    )
    draw.ellipse((c - ri, c - ri, c + ri, c + ri), fill=_color(rng, (45, 85, 30), 10))
    greens = [(70, 140, 40), (110, 170, 60), (50, 110, 45), (140, 190, 80), (100, 60, 90)]
    for _ in range(int(rng.integers(25, 45))):
        x, y = _in_disc(rng, c, c, ri * 0.9)
        lr = size * float(rng.uniform(0.05, 0.12))
        n = int(rng.integers(5, 8))
        pts = []
        for k in range(n):
            a = 2 * math.pi * k / n + float(rng.normal(0, 0.2))
            d = lr * float(rng.uniform(0.5, 1.0))
            pts.append((x + d * math.cos(a), y + d * math.sin(a)))
        leaf = _color(rng, greens[int(rng.choice(5, p=[0.3, 0.3, 0.2, 0.15, 0.05]))], 15)
        draw.polygon(pts, fill=leaf)
    for _ in range(int(rng.integers(0, 3)) if rng.random() < 0.3 else 0):  # cherry tomatoes
        x, y = _in_disc(rng, c, c, ri * 0.75)
        tr = size * float(rng.uniform(0.04, 0.06))
        _shaded_ellipse(
            draw, (x - tr, y - tr, x + tr, y + tr), _color(rng, (205, 40, 30), 10), light, steps=4
        )
    for _ in range(int(rng.integers(0, 6))):  # cucumber slices
        x, y = _in_disc(rng, c, c, ri * 0.75)
        cr = size * float(rng.uniform(0.04, 0.06))
        draw.ellipse((x - cr, y - cr, x + cr, y + cr), fill=(40, 90, 35))
        draw.ellipse(
            (x - cr * 0.85, y - cr * 0.85, x + cr * 0.85, y + cr * 0.85),
            fill=_color(rng, (190, 215, 150), 10),
        )
    for _ in range(int(rng.integers(0, 10))):  # feta cubes
        x, y = _in_disc(rng, c, c, ri * 0.8)
        fr = size * float(rng.uniform(0.015, 0.03))
        draw.rectangle((x - fr, y - fr, x + fr, y + fr), fill=_color(rng, (245, 245, 235), 6))
    for _ in range(int(rng.integers(0, 5))):  # carrot strips
        x, y = _in_disc(rng, c, c, ri * 0.8)
        a = float(rng.uniform(0, math.pi))
        d = size * 0.05
        draw.line(
            [(x, y), (x + d * math.cos(a), y + d * math.sin(a))],
            fill=_color(rng, (240, 130, 30), 10),
            width=max(1, int(size * 0.012)),
        )
    return patch


_FRUITS: tuple[_Color, ...] = (
    (140, 190, 60),
    (120, 175, 40),
    (100, 30, 80),
    (240, 140, 20),
    (240, 210, 60),
    (60, 50, 110),
)


def _draw_fruit(rng: _Rng, size: float, light: tuple[float, float]) -> Image.Image:
    patch, draw = _new_patch(size, size)
    n = int(rng.choice([1, 2, 3, 4, 5], p=[0.3, 0.2, 0.2, 0.15, 0.15]))
    kind = int(rng.choice(len(_FRUITS), p=[0.3, 0.25, 0.2, 0.08, 0.05, 0.12]))
    c = size / 2
    for i in range(n):
        r = size * (0.45 if n == 1 else float(rng.uniform(0.2, 0.28)))
        if n == 1:
            x, y = c, c
        else:
            a = 2 * math.pi * i / n + float(rng.normal(0, 0.3))
            x, y = c + (c - r) * 0.8 * math.cos(a), c + (c - r) * 0.8 * math.sin(a)
        color = _color(rng, _FRUITS[kind if rng.random() < 0.7 else int(rng.integers(3))], 15)
        squash = float(rng.uniform(0.9, 1.0))
        _shaded_ellipse(
            draw, (x - r, y - r * squash, x + r, y + r * squash), color, light, steps=12
        )
        if kind == 3:  # orange peel dimples
            for _ in range(25):
                px, py = _in_disc(rng, x, y, r * 0.85)
                draw.point((px, py), fill=_shade(color, 0.85))
        if rng.random() < 0.5:
            draw.line(
                [(x, y - r * 0.1), (x + r * 0.1, y - r * 0.35)],
                fill=(80, 55, 30),
                width=max(1, int(r * 0.06)),
            )
    return patch


def _draw_donut(rng: _Rng, size: float, light: tuple[float, float]) -> Image.Image:
    patch, draw = _new_patch(size, size)
    n = int(rng.choice([1, 2, 3], p=[0.6, 0.25, 0.15]))
    c = size / 2
    for i in range(n):
        r = size * (0.47 if n == 1 else 0.27)
        if n == 1:
            x, y = c, c
        else:
            a = 2 * math.pi * i / n + float(rng.normal(0, 0.2))
            x, y = c + (c - r) * math.cos(a), c + (c - r) * math.sin(a)
        dough = _color(rng, (205, 150, 90), 14)
        _shaded_ellipse(draw, (x - r, y - r, x + r, y + r), dough, light, steps=6, dark=0.7)
        glaze_kind = int(rng.choice(6, p=[0.25, 0.25, 0.2, 0.15, 0.1, 0.05]))
        if glaze_kind < 5:
            glazes = [
                (240, 150, 180),
                (245, 240, 230),
                (120, 180, 230),
                (150, 200, 90),
                (90, 50, 30),
            ]
            glaze = _color(rng, glazes[glaze_kind], 12)
            pts = []
            for k in range(36):
                a = 2 * math.pi * k / 36
                d = r * (0.9 + 0.05 * math.sin(a * 5 + float(rng.uniform(0, 6))))
                pts.append((x + d * math.cos(a), y + d * math.sin(a)))
            draw.polygon(pts, fill=glaze)
            for _ in range(int(rng.integers(0, 30))):  # sprinkles
                px, py = _in_disc(rng, x, y, r * 0.75)
                a = float(rng.uniform(0, math.pi))
                d = r * 0.07
                draw.line(
                    [(px, py), (px + d * math.cos(a), py + d * math.sin(a))],
                    fill=tuple(int(v) for v in rng.integers(60, 256, 3)),
                    width=max(1, int(r * 0.03)),
                )
        hole = r * float(rng.uniform(0.25, 0.33))
        draw.ellipse(
            (x - hole * 1.15, y - hole * 1.15, x + hole * 1.15, y + hole * 1.15),
            fill=_shade(dough, 0.7),
        )
        draw.ellipse((x - hole, y - hole, x + hole, y + hole), fill=(0, 0, 0, 0))
    return patch


def _draw_egg(rng: _Rng, size: float, light: tuple[float, float]) -> Image.Image:
    patch, draw = _new_patch(size, size)
    c = size / 2
    white = _color(rng, (248, 246, 238), 5)
    crisp = rng.random() < 0.5
    blobs = []
    for _ in range(int(rng.integers(5, 9))):
        x, y = _in_disc(rng, c, c, size * 0.18)
        r = size * float(rng.uniform(0.2, 0.3))
        blobs.append((x, y, r))
    if crisp:
        for x, y, r in blobs:
            draw.ellipse(
                (x - r * 1.06, y - r * 1.06, x + r * 1.06, y + r * 1.06),
                fill=_color(rng, (190, 140, 80), 10),
            )
    for x, y, r in blobs:
        draw.ellipse((x - r, y - r, x + r, y + r), fill=white)
    yr = size * float(rng.uniform(0.08, 0.12))
    yx, yy = _in_disc(rng, c, c, size * 0.06)
    _shaded_ellipse(
        draw,
        (yx - yr, yy - yr, yx + yr, yy + yr),
        _color(rng, (250, 175, 30), 10),
        light,
        steps=6,
        dark=0.8,
    )
    return patch


def _draw_cookie(rng: _Rng, size: float, light: tuple[float, float]) -> Image.Image:
    patch, draw = _new_patch(size, size)
    c, r = size / 2, size * 0.45
    pts = []
    for k in range(28):
        a = 2 * math.pi * k / 28
        d = r * float(rng.uniform(0.92, 1.0))
        pts.append((c + d * math.cos(a), c + d * math.sin(a)))
    dough = _color(rng, (195, 140, 80), 15)
    draw.polygon(pts, fill=_shade(dough, 0.8))
    _shaded_ellipse(
        draw,
        (c - r * 0.9, c - r * 0.9, c + r * 0.9, c + r * 0.9),
        dough,
        light,
        steps=4,
        dark=0.9,
        bright=1.1,
    )
    for _ in range(int(rng.integers(6, 16))):
        x, y = _in_disc(rng, c, c, r * 0.8)
        cr = size * float(rng.uniform(0.02, 0.04))
        draw.polygon(
            [
                (x + cr * math.cos(a), y + cr * math.sin(a))
                for a in np.linspace(0, 2 * math.pi, 6)[:-1] + float(rng.uniform(0, 1))
            ],
            fill=_color(rng, (60, 35, 20), 10),
        )
    return patch


def _draw_berries(rng: _Rng, size: float, light: tuple[float, float]) -> Image.Image:
    patch, draw = _new_patch(size, size)
    c, ri, bowl = _bowl(
        rng, draw, size, [(240, 240, 235), (70, 140, 160), (200, 200, 210), (60, 60, 65)], 12,
        light,
    )
    draw.ellipse((c - ri, c - ri, c + ri, c + ri), fill=_shade(bowl, 0.6))
    berry = [(55, 60, 125), (150, 190, 80), (110, 45, 105), (40, 30, 50)][int(rng.integers(4))]
    br = size * float(rng.uniform(0.04, 0.065))
    for _ in range(int(rng.integers(35, 70))):
        x, y = _in_disc(rng, c, c, ri - br)
        color = _color(rng, berry, 12)
        draw.ellipse((x - br, y - br, x + br, y + br), fill=_shade(color, 0.7))
        draw.ellipse((x - br * 0.8, y - br * 0.8, x + br * 0.6, y + br * 0.6), fill=color)
        hx, hy = x + light[0] * br * 0.4, y + light[1] * br * 0.4
        draw.ellipse(
            (hx - br * 0.2, hy - br * 0.2, hx + br * 0.2, hy + br * 0.2), fill=_shade(color, 1.6)
        )
    return patch


def _draw_broccoli(rng: _Rng, size: float, light: tuple[float, float]) -> Image.Image:
    patch, draw = _new_patch(size, size)
    c = size / 2
    stem = _color(rng, (160, 195, 110), 12)
    for _ in range(int(rng.integers(3, 7))):
        x, y = _in_disc(rng, c, c, size * 0.25)
        fr = size * float(rng.uniform(0.14, 0.22))
        a = float(rng.uniform(0, 2 * math.pi))
        draw.line(
            [(x, y), (x + fr * 1.2 * math.cos(a), y + fr * 1.2 * math.sin(a))],
            fill=stem,
            width=max(2, int(fr * 0.5)),
        )
        green = _color(rng, (55, 115, 45), 12)
        for _ in range(int(rng.integers(10, 18))):
            bx, by = _in_disc(rng, x, y, fr * 0.7)
            br = fr * float(rng.uniform(0.25, 0.4))
            _shaded_ellipse(
                draw,
                (bx - br, by - br, bx + br, by + br),
                green,
                light,
                steps=3,
                dark=0.6,
                bright=1.2,
            )
    return patch


_OTHER_FOODS: tuple[Callable[..., Image.Image] | None, ...] = (
    _draw_pizza,
    _draw_pizza_slice,
    _draw_burger,
    _draw_salad,
    _draw_fruit,
    _draw_donut,
    _draw_egg,
    _draw_cookie,
    _draw_berries,
    _draw_broccoli,
    None,
)
_FOOD_DRAWERS: dict[str, Callable[..., Image.Image]] = {
    "pizza": _draw_pizza, "burger": _draw_burger, "salad": _draw_salad, "fruit": _draw_fruit,
    "donut": _draw_donut, "egg": _draw_egg, "cookie": _draw_cookie, "berries": _draw_berries,
    "broccoli": _draw_broccoli,
}
assert set(_FOOD_DRAWERS) == set(FOODS)
# Warm, bun-coloured foods are rare here so that a small net can learn "hotdog" quickly.
_OTHER_WEIGHTS = np.array([0.02, 0.02, 0.02, 0.24, 0.16, 0.08, 0.05, 0.02, 0.14, 0.13, 0.12])


def _paste_with_shadow(
    image: Image.Image,
    patch: Image.Image,
    cx: float,
    cy: float,
    light: float,
    size: float,
    strength: float,
) -> None:
    x = round(cx - patch.width / 2)
    y = round(cy - patch.height / 2)
    alpha = patch.getchannel("A")
    shadow = alpha.filter(ImageFilter.BoxBlur(max(1, int(size * 0.03))))
    shadow = shadow.point([int(v * strength) for v in range(256)])
    offset = size * 0.04
    sx, sy = int(-math.cos(light) * offset), int(-math.sin(light) * offset)
    image.paste((20, 15, 10), (x + sx, y + sy), shadow)
    image.paste(patch, (x, y), patch)


def _photo_finish(rng: _Rng, image: Image.Image) -> Image.Image:
    """Camera-ish degradations: defocus, uneven light, colour cast, exposure, sensor noise."""
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.6))))
    w, h = image.size
    arr = np.asarray(image, dtype=np.float32)
    gain = 0.75 + 0.5 * _upsampled(rng, (2, 2), (w, h))
    if rng.random() < 0.6:
        x = np.linspace(-1, 1, w, dtype=np.float32)
        y = np.linspace(-1, 1, h, dtype=np.float32)
        gain *= 1 - float(rng.uniform(0.1, 0.35)) * (x[None, :] ** 2 + y[:, None] ** 2) / 2
    cast = (1 + rng.normal(0, 0.05, 3)).astype(np.float32)
    arr *= gain[..., None] * cast
    saturation = float(rng.uniform(0.85, 1.2))
    contrast = float(rng.uniform(0.8, 1.2))
    brightness = float(rng.uniform(0.8, 1.2))
    # Saturation, contrast and brightness are one affine map; a subsampled mean is plenty.
    mean = float(arr[::4, ::4].mean())
    grey = (arr[..., 0] + arr[..., 1] + arr[..., 2]) * ((1 - saturation) * contrast / 3)
    arr *= saturation * contrast
    arr += grey[..., None]
    arr += mean * (brightness - contrast)
    # Uniform draws are several times cheaper than normal ones and look the same as grain.
    sigma = float(rng.uniform(1.5, 8))
    luma = rng.random((h, w, 1), dtype=np.float32)
    luma -= 0.5
    arr += luma * (sigma * 3.4)
    chroma = rng.random((h, w, 3), dtype=np.float32)
    chroma -= 0.5
    arr += chroma * (sigma * 1.4)
    np.clip(arr, 0, 255, out=arr)
    return Image.fromarray(arr.astype(np.uint8))
