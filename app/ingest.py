"""Turning an uploaded zip into a stored, validated ImageFolder dataset.

The zip holds ``train/<class>/*`` and ``test/<class>/*``, at its top level or inside one
folder (as d2l's ``hotdog.zip`` does). Extraction refuses what could escape or exhaust the
storage dir (absolute or ``..`` paths, links, too many files or bytes, compression bombs),
every image is decoded once, and the tree only appears under its final name when all of it
is good: a failed upload leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from app.engine.data import DatasetError, ImageFolderSplits, load_image_folder
from app.engine.images import ImageDecodeError, is_image_file, open_rgb

# A zip member that expands more than this and is large is a compression bomb, not a photo.
MAX_RATIO = 200
RATIO_MIN_BYTES = 8 << 20
IGNORED_PREFIXES = ("__MACOSX/",)
MIN_TRAIN_PER_CLASS = 10
IMBALANCE_RATIO = 4
SMALL_SIDE = 32  # images smaller than this are upscaled a lot by the recipe's transforms
MAX_LISTED = 10


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_files: int


@dataclass
class IngestResult:
    classes: list[str]
    counts: dict[str, dict[str, int]]
    warnings: list[str] = field(default_factory=list)
    size_bytes: int = 0


def _is_hidden(parts: tuple[str, ...]) -> bool:
    return any(p.startswith(".") for p in parts)


def _member_path(info: zipfile.ZipInfo) -> PurePosixPath | None:
    """The member's safe relative path; ``None`` for entries to skip. Raises on unsafe ones."""
    name = info.filename
    if name.startswith(IGNORED_PREFIXES):
        return None
    if "\\" in name:  # a Windows path: on another system it may name a different file
        raise DatasetError(f"zip entry {name!r} has a backslash in its path; use '/'")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise DatasetError(f"zip entry {name!r} has control characters in its name")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise DatasetError(f"zip entry {info.filename!r} points outside the dataset")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DatasetError(f"zip entry {info.filename!r} is a symbolic link; links are refused")
    if _is_hidden(path.parts) or not path.parts:
        return None
    return path


def extract_zip(source: str | Path | BinaryIO, dest: Path, limits: Limits) -> int:
    """Extract into ``dest`` (created); returns the bytes written. Raises DatasetError."""
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"the upload is not a readable zip file ({exc})") from None
    with zf:
        members = zf.infolist()
        if len(members) > limits.max_files:
            raise DatasetError(
                f"the zip has {len(members)} entries; the limit is {limits.max_files}"
            )
        planned = []
        total = 0
        for info in members:
            path = _member_path(info)
            if path is None or info.is_dir():
                continue
            total += info.file_size
            if total > limits.max_bytes:
                raise DatasetError(
                    f"the zip expands to more than {limits.max_bytes} bytes, the limit"
                )
            if (info.file_size > RATIO_MIN_BYTES
                    and info.file_size > MAX_RATIO * max(1, info.compress_size)):
                ratio = info.file_size // max(1, info.compress_size)
                raise DatasetError(f"zip entry {info.filename!r} expands {ratio}x; "
                                   "refused as a compression bomb")
            planned.append((info, path))
        dest.mkdir(parents=True)
        written = 0
        for info, path in planned:
            target = dest.joinpath(*path.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(target, "wb") as out:
                    left = info.file_size
                    while chunk := src.read(1 << 20):
                        left -= len(chunk)
                        if left < 0:  # the header lied about the size
                            raise DatasetError(
                                f"zip entry {info.filename!r} is larger than declared")
                        out.write(chunk)
                    written += info.file_size - left
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError,
                    RuntimeError) as exc:  # RuntimeError: encrypted member
                raise DatasetError(f"zip entry {info.filename!r} cannot be read ({exc})") from None
    return written


def find_root(extracted: Path) -> Path:
    """The folder holding ``train/`` and ``test/``: the zip's top level or its one folder."""
    if (extracted / "train").is_dir() or (extracted / "test").is_dir():
        return extracted
    top = [p for p in extracted.iterdir() if not p.name.startswith(".")]
    dirs = [p for p in top if p.is_dir()]
    if len(dirs) == 1 and ((dirs[0] / "train").is_dir() or (dirs[0] / "test").is_dir()):
        return dirs[0]
    found = ", ".join(sorted(p.name + ("/" if p.is_dir() else "") for p in top)[:MAX_LISTED])
    raise DatasetError(
        "the zip must hold train/<class>/ and test/<class>/ folders, at its top level or "
        f"inside one folder; found: {found or 'nothing'}"
    )


def _check_image(path: Path) -> tuple[int, int] | str:
    try:
        # Small draft decodes are enough to prove the file decodes (truncation included).
        img = open_rgb(path, min_short_side=SMALL_SIDE)
        return img.size
    except ImageDecodeError as exc:
        return str(exc)


def validate(root: Path, *, threads: int | None = None) -> tuple[ImageFolderSplits, list[str]]:
    """Check the layout and decode every image. Returns the splits and warnings."""
    splits = load_image_folder(root)
    samples = [p for p, _ in splits.train] + [p for p, _ in splits.test]
    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(_check_image, samples))
    bad = [(p, r) for p, r in zip(samples, results, strict=True) if isinstance(r, str)]
    if bad:
        listed = "; ".join(f"{p.relative_to(root)}: {msg}" for p, msg in bad[:MAX_LISTED])
        more = f" (and {len(bad) - MAX_LISTED} more)" if len(bad) > MAX_LISTED else ""
        raise DatasetError(f"{len(bad)} file(s) are not decodable images: {listed}{more}")
    warnings = _warnings(root, splits, [r for r in results if not isinstance(r, str)])
    return splits, warnings


def _warnings(
    root: Path, splits: ImageFolderSplits, sizes: list[tuple[int, int]]
) -> list[str]:
    warnings = []
    counts = splits.counts()
    ignored = [
        p.relative_to(root) for split in ("train", "test")
        for p in (root / split).rglob("*")
        if p.is_file() and not is_image_file(p) and not _is_hidden(p.relative_to(root).parts)
    ]
    nested = [p.relative_to(root) for split in ("train", "test")
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
    empty_test = [c for c, n in counts["test"].items() if n == 0]
    if empty_test:
        warnings.append(f"no test images for: {', '.join(empty_test)}; their test recall "
                        "cannot be measured")
    small = sum(1 for w, h in sizes if min(w, h) < SMALL_SIDE)
    if small:
        warnings.append(f"{small} image(s) are smaller than {SMALL_SIDE} px on a side")
    return warnings


def _renamed(splits: ImageFolderSplits, out: Path) -> Path:
    """The images under names of our own: ``<split>/<class>/<n>.<ext>``. Only class folder
    names (the labels) come from the upload; files that are not images are left out."""
    for split, samples in (("train", splits.train), ("test", splits.test)):
        for cls in splits.classes:
            (out / split / cls).mkdir(parents=True)
        for i, (path, label) in enumerate(samples):
            os.rename(path, out / split / splits.classes[label] / f"{i:06d}{path.suffix.lower()}")
    return out


def ingest_zip(
    source: str | Path | BinaryIO, dest: Path, limits: Limits, *, workdir: Path
) -> IngestResult:
    """Extract and validate into ``workdir`` (a fresh temp folder on ``dest``'s file
    system), then move the images, renamed, to ``dest``. ``workdir`` is always removed."""
    try:
        size = extract_zip(source, workdir, limits)
        root = find_root(workdir)
        splits, warnings = validate(root)
        os.replace(_renamed(splits, workdir / ".dataset"), dest)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return IngestResult(classes=splits.classes, counts=splits.counts(), warnings=warnings,
                        size_bytes=size)
