"""Zip archives of datasets: writing one from a folder, and extracting one safely.

Extraction is the one place that decides which archive entries may be written: uploads
and ``fetch-d2l`` both go through :func:`extract_zip`. It refuses what could escape the
destination (absolute, ``..``, drive-letter or backslash paths, control characters, links)
and compression bombs, checks every entry before writing any, and with :class:`Limits` (as
for uploads) also caps the number of entries and the bytes they expand to.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from app.datasets.layout import SPLITS, is_hidden
from app.engine.data import DatasetError

logger = logging.getLogger(__name__)

# A zip member that expands more than this and is large is a compression bomb, not a photo.
MAX_RATIO = 200
RATIO_MIN_BYTES = 8 << 20
IGNORED_PREFIXES = ("__MACOSX/",)  # resource forks that macOS's Finder adds to zips
# A fixed timestamp keeps zip archives identical for identical trees.
_ZIP_DATE = (2000, 1, 1, 0, 0, 0)
_STORED_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".zip"})
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_files: int


def _member_path(info: zipfile.ZipInfo) -> PurePosixPath | None:
    """The member's safe relative path; ``None`` for entries to skip. Raises on unsafe ones,
    before deciding to skip, so that no skipped folder can hide an unsafe name."""
    name = info.filename
    if "\\" in name:  # a Windows path: on another system it may name a different file
        raise DatasetError(f"unsafe zip entry {name!r}: it has a backslash in its path; use '/'")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise DatasetError(f"unsafe zip entry {name!r}: it has control characters in its name")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise DatasetError(f"unsafe zip entry {name!r}: it points outside the dataset")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DatasetError(f"unsafe zip entry {name!r}: it is a symbolic link; links are refused")
    if name.startswith(IGNORED_PREFIXES) or is_hidden(path.parts) or not path.parts:
        return None
    return path


def _plan(
    members: list[zipfile.ZipInfo], limits: Limits | None
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """The files to write and where, once every entry has passed the checks."""
    if limits is not None and len(members) > limits.max_files:
        raise DatasetError(f"the zip has {len(members)} entries; the limit is {limits.max_files}")
    planned = []
    total = 0
    for info in members:
        path = _member_path(info)
        if path is None or info.is_dir():
            continue
        total += info.file_size
        if limits is not None and total > limits.max_bytes:
            raise DatasetError(f"the zip expands to more than {limits.max_bytes} bytes, the limit")
        if (info.file_size > RATIO_MIN_BYTES
                and info.file_size > MAX_RATIO * max(1, info.compress_size)):
            ratio = info.file_size // max(1, info.compress_size)
            raise DatasetError(f"zip entry {info.filename!r} expands {ratio}x; "
                               "refused as a compression bomb")
        planned.append((info, path))
    return planned


def _write_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> int:
    """Write one member to ``target``; returns its size. Raises if it is larger than its
    header says (the header is what the limits were checked against) or unreadable."""
    target.parent.mkdir(parents=True, exist_ok=True)
    left = info.file_size
    try:
        with zf.open(info) as src, open(target, "wb") as out:
            while chunk := src.read(_CHUNK):
                left -= len(chunk)
                if left < 0:
                    raise DatasetError(f"zip entry {info.filename!r} is larger than declared")
                out.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError,
            RuntimeError) as exc:  # RuntimeError: encrypted member
        raise DatasetError(f"zip entry {info.filename!r} cannot be read ({exc})") from None
    return info.file_size - left


def extract_zip(source: str | Path | BinaryIO, dest: Path, limits: Limits | None = None) -> int:
    """Extract the archive's files into ``dest`` (created; it must not exist yet) and return
    the bytes written. Dot files and ``__MACOSX/`` are skipped. Raises DatasetError."""
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"the archive is not a readable zip file ({exc})") from None
    with zf:
        planned = _plan(zf.infolist(), limits)
        dest.mkdir(parents=True)
        root = dest.resolve()
        written = 0
        for info, path in planned:
            target = dest.joinpath(*path.parts)
            # The names are safe; this also catches a link the tree might have come to hold.
            if not target.resolve().is_relative_to(root):
                raise DatasetError(f"unsafe zip entry {info.filename!r}: it points outside "
                                   "the dataset")
            written += _write_member(zf, info, target)
    return written


def _walk_splits(src: Path) -> Iterator[Path]:
    for split in SPLITS:
        root = src / split
        yield root
        yield from sorted(root.rglob("*"), key=lambda p: p.relative_to(root).parts)


def _add_to_zip(zf: zipfile.ZipFile, path: Path, rel: str) -> None:
    if path.is_dir():
        info = zipfile.ZipInfo(rel + "/", date_time=_ZIP_DATE)
        info.external_attr = (0o40755 << 16) | 0x10
        zf.writestr(info, b"")
        return
    info = zipfile.ZipInfo(rel, date_time=_ZIP_DATE)
    info.external_attr = 0o100644 << 16
    # JPEGs do not shrink under deflate; storing them saves the CPU time.
    stored = path.suffix.lower() in _STORED_SUFFIXES
    info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    info.file_size = path.stat().st_size
    with path.open("rb") as fin, zf.open(info, "w") as fout:
        shutil.copyfileobj(fin, fout, _CHUNK)


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
                if path.resolve() not in skip:
                    _add_to_zip(zf, path, path.relative_to(src).as_posix())
        # mkstemp() makes the file private (0600); the archive is meant to be shared.
        tmp.chmod(0o644)
        os.replace(tmp, zip_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("zipped %s to %s", src, zip_path)
    return zip_path
