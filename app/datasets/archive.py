"""Zip archives of datasets: writing one from a folder, and extracting one safely.

Extraction is the one place that decides which archive entries may be written: uploads
and ``fetch-d2l`` both go through :func:`extract_zip`. It refuses what could escape the
destination (absolute, ``..``, drive-letter or backslash paths, control characters, links),
paths too long or too deep for a file system, a file where another entry needs a folder, and
compression bombs, checking every entry before writing any. With :class:`Limits` (as for
uploads) it also measures the central directory before :mod:`zipfile` reads it
(:mod:`app.datasets.zipdir`), caps the number of entries and the bytes written, and keeps a
reserve of free space on the storage's file system.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from app.datasets import zipdir
from app.datasets.layout import SPLITS, is_hidden, present_splits
from app.engine.errors import DatasetError

logger = logging.getLogger(__name__)

# A zip member that expands more than MAX_RATIO times is a compression bomb, not a photo,
# unless it expands to RATIO_ALLOWANCE bytes at most (a tiny flat image or text file may).
MAX_RATIO = 200
RATIO_ALLOWANCE = 64 << 10
# Paths: bytes of one name (most file systems' limit), bytes of a whole path, folders deep.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 1024
MAX_DEPTH = 16
# Central directory bytes allowed per entry the limit allows: a fixed header and a path of
# MAX_PATH_BYTES (extra fields and comments fit in what real, shorter names leave over).
DIRECTORY_BYTES_PER_ENTRY = zipdir.HEADER.size + MAX_PATH_BYTES
SHOWN_CHARS = 100  # of an entry's name quoted in an error
IGNORED_PREFIXES = ("__MACOSX/",)  # resource forks that macOS's Finder adds to zips
# A fixed timestamp keeps zip archives identical for identical trees.
_ZIP_DATE = (2000, 1, 1, 0, 0, 0)
_STORED_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".zip"})
_CHUNK = 1 << 20
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class StorageFull(Exception):
    """Storing the upload would leave less free space than the server keeps."""


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_files: int
    min_free_bytes: int = 0  # free space to leave on the destination's file system
    # class folders: counted from the entry names before anything is written (and checked
    # again by ingestion once extracted)
    max_classes: int | None = None


def _shown(name: str) -> str:
    return repr(name if len(name) <= SHOWN_CHARS else name[:SHOWN_CHARS] + "…")


def _member_path(info: zipfile.ZipInfo) -> PurePosixPath | None:
    """The member's safe relative path; ``None`` for entries to skip. Raises on unsafe ones,
    before deciding to skip, so that no skipped folder can hide an unsafe name."""
    name = info.filename
    shown = _shown(name)
    if "\\" in name:  # a Windows path: on another system it may name a different file
        raise DatasetError(f"unsafe zip entry {shown}: it has a backslash in its path; use '/'")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise DatasetError(f"unsafe zip entry {shown}: it has control characters in its name")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise DatasetError(f"unsafe zip entry {shown}: it points outside the dataset")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DatasetError(f"unsafe zip entry {shown}: it is a symbolic link; links are refused")
    _check_length(name, path)
    if name.startswith(IGNORED_PREFIXES) or is_hidden(path.parts) or not path.parts:
        return None
    return path


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


def _check_length(name: str, path: PurePosixPath) -> None:
    """Paths any file system can hold: names, whole paths and nesting within bounds."""
    if _size(name) > MAX_PATH_BYTES:
        raise DatasetError(f"zip entry {_shown(name)}: its path is {_size(name)} bytes; "
                           f"the limit is {MAX_PATH_BYTES}")
    for part in path.parts:
        if _size(part) > MAX_NAME_BYTES:
            raise DatasetError(f"zip entry {_shown(name)}: its name {_shown(part)} is "
                               f"{_size(part)} bytes; the limit is {MAX_NAME_BYTES}")
    if len(path.parts) > MAX_DEPTH:
        raise DatasetError(f"zip entry {_shown(name)} is {len(path.parts)} levels deep; "
                           f"the limit is {MAX_DEPTH}")


@dataclass
class _Tree:
    """The files planned so far, and the folders they need: a path cannot be both."""

    files: dict[PurePosixPath, str] = field(default_factory=dict)
    folders: dict[PurePosixPath, str] = field(default_factory=dict)  # → an entry inside

    def add(self, path: PurePosixPath, name: str) -> None:
        if path in self.folders:
            raise DatasetError(f"zip entry {_shown(name)} is a file, but entry "
                               f"{_shown(self.folders[path])} needs a folder of that name")
        for folder in list(path.parents)[:-1]:  # all but "."
            if folder in self.files:
                raise DatasetError(f"zip entry {_shown(self.files[folder])} is a file, but "
                                   f"entry {_shown(name)} needs a folder of that name")
            self.folders.setdefault(folder, name)
        self.files[path] = name


def _check_ratio(info: zipfile.ZipInfo) -> None:
    if (info.file_size > RATIO_ALLOWANCE
            and info.file_size > MAX_RATIO * max(1, info.compress_size)):
        ratio = info.file_size // max(1, info.compress_size)
        raise DatasetError(f"zip entry {_shown(info.filename)} expands {ratio}x; "
                           "refused as a compression bomb")


def _plan(
    members: list[zipfile.ZipInfo], limits: Limits | None
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """The files to write and where, once every entry has passed the checks."""
    if limits is not None and len(members) > limits.max_files:
        raise DatasetError(f"the zip has {len(members)} entries; the limit is {limits.max_files}")
    planned = []
    tree = _Tree()
    total = 0
    for info in members:
        path = _member_path(info)
        if path is None or info.is_dir():
            continue
        _check_ratio(info)
        tree.add(path, info.filename)
        total += info.file_size
        if limits is not None and total > limits.max_bytes:
            raise DatasetError(f"the zip expands to more than {limits.max_bytes} bytes, the limit")
        planned.append((info, path))
    return planned


@contextmanager
def _opened(source: str | Path | BinaryIO) -> Iterator[BinaryIO]:
    if isinstance(source, (str, Path)):
        with open(source, "rb") as f:
            yield f
    else:
        yield source


def _check_directory(source: str | Path | BinaryIO, limits: Limits) -> None:
    """Refuse more entries than the limit, or a central directory larger than that many
    entries need, before ``zipfile`` reads the directory and builds its list."""
    try:
        with _opened(source) as f:
            directory = zipdir.find_directory(f)
            if directory is None:
                return  # not a zip: zipfile says so
            if directory.entries > limits.max_files:
                raise DatasetError(f"the zip has {directory.entries} entries; the limit is "
                                   f"{limits.max_files}")
            bound = limits.max_files * DIRECTORY_BYTES_PER_ENTRY
            if directory.size > bound:
                raise DatasetError(f"the zip's central directory is {directory.size} bytes, "
                                   f"more than {limits.max_files} entries need ({bound})")
            if zipdir.count_entries(f, directory, stop_after=limits.max_files) > limits.max_files:
                raise DatasetError(f"the zip has more than {limits.max_files} entries, the limit")
    except OSError as exc:
        raise DatasetError(f"the archive is not a readable zip file ({exc})") from None


@dataclass
class _Budget:
    """Bytes written so far, against the dataset limit and the free space to keep."""

    dest: Path
    limits: Limits | None
    declared: int  # what the headers say the files expand to
    written: int = 0

    def check_space(self, more: int) -> None:
        keep = self.limits.min_free_bytes if self.limits is not None else 0
        if shutil.disk_usage(self.dest).free - more < keep:
            raise StorageFull(
                f"not enough free storage for this upload ({self.declared} bytes extracted): "
                f"the server keeps {keep} bytes free; retry later, or ask its operator to "
                "free space")

    def spend(self, n: int) -> None:
        """Before writing ``n`` more bytes."""
        if self.limits is not None:
            if self.written + n > self.limits.max_bytes:
                raise DatasetError(f"the zip expands to more than {self.limits.max_bytes} "
                                   "bytes, the limit")
            self.check_space(n)
        self.written += n


def _write_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path,
                  budget: _Budget) -> None:
    """Write one member to ``target``, counting it against ``budget``. Raises if it is
    larger than its header says (the header is what the limits were checked against) or
    unreadable."""
    target.parent.mkdir(parents=True, exist_ok=True)
    left = info.file_size
    with open(target, "wb") as out:
        for chunk in _chunks(zf, info):
            left -= len(chunk)
            if left < 0:
                raise DatasetError(f"zip entry {_shown(info.filename)} is larger than declared")
            budget.spend(len(chunk))
            out.write(chunk)


def _chunks(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Iterator[bytes]:
    try:
        with zf.open(info) as src:
            while chunk := src.read(_CHUNK):
                yield chunk
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError,
            RuntimeError) as exc:  # RuntimeError: encrypted member
        raise DatasetError(f"zip entry {_shown(info.filename)} cannot be read ({exc})") from None


def _open_zip(source: str | Path | BinaryIO) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:  # ValueError: e.g. bad UTF-8
        raise DatasetError(f"the archive is not a readable zip file ({exc})") from None


def extract_zip(source: str | Path | BinaryIO, dest: Path, limits: Limits | None = None) -> int:
    """Extract the archive's files into ``dest`` (created; it must not exist yet) and return
    the bytes written. Dot files and ``__MACOSX/`` are skipped. Raises DatasetError, or
    StorageFull when the files would not leave ``limits.min_free_bytes`` free."""
    if limits is not None:
        _check_directory(source, limits)
    with _open_zip(source) as zf:
        planned = _plan(zf.infolist(), limits)
        if limits is not None and limits.max_classes is not None:
            _check_classes(planned, limits.max_classes)
        dest.mkdir(parents=True)
        budget = _Budget(dest, limits, declared=sum(info.file_size for info, _ in planned))
        try:
            if limits is not None:
                budget.check_space(budget.declared)
            _write_all(zf, planned, dest, budget)
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                raise StorageFull("the server ran out of storage while writing this upload; "
                                  "retry later, or ask its operator to free space") from None
            raise
    return budget.written


def _check_classes(planned: list[tuple[zipfile.ZipInfo, PurePosixPath]], limit: int) -> None:
    """Refuse more class folders than ``limit`` from the names alone: ``<split>/<class>/…`` at
    the zip's top level or inside one folder (as the dataset's root is found once extracted),
    so that a zip of thousands of one-image classes costs no disk and no decoding."""
    classes: set[str] = set()
    for _, path in planned:
        parts = path.parts
        for at in (0, 1):
            if len(parts) > at + 2 and parts[at] in SPLITS:
                classes.add(parts[at + 1])
                break
    if len(classes) > limit:
        raise DatasetError(f"the dataset has {len(classes)} classes; the limit is {limit}")


def _write_all(zf: zipfile.ZipFile, planned: list[tuple[zipfile.ZipInfo, PurePosixPath]],
               dest: Path, budget: _Budget) -> None:
    root = dest.resolve()
    for info, path in planned:
        target = dest.joinpath(*path.parts)
        # The names are safe; this also catches a link the tree might have come to hold.
        if not target.resolve().is_relative_to(root):
            raise DatasetError(f"unsafe zip entry {_shown(info.filename)}: it points outside "
                               "the dataset")
        _write_member(zf, info, target, budget)


def _walk_splits(src: Path) -> Iterator[Path]:
    for split in present_splits(src):
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
    """Zip ``src/train``, ``src/test`` (and ``src/val`` when there is one) so that the
    archive has them at its root.

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
