"""The hostile inputs of bench/hostile_load.py: small files that cost a server a lot.

Each is written once into a cache folder (its parameters in its name) and reused; all of
them together take a few seconds to write. The PNGs and the big zip are crafted byte by
byte (zlib and struct), so that writing them never holds their decoded size in memory.

    gray16_png      a 16-bit grayscale PNG, constant gray: 8000x8000 is 128 MB of pixels in
                    ~135 KB of file (a decoder that goes through float64 needs ~1.5 GiB)
    rgba_png        a fully transparent RGBA PNG: 4000x4000 (16 MP) is 64 MB in ~62 KB
    entries_zip     a zip of many empty entries: 400,000 central-directory records (~20 MB);
                    zipfile builds all of them before anyone can count them
    classes_zip     one tiny image per class in train/ and in test/: 15,000 classes (~5 MB)
    zeros_zip       members of exactly 8 MiB of zeros each, deflated (~8 KB each): the size
                    at which today's ratio check starts to apply, so none is refused
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

MIB = 1 << 20
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ROWS_PER_FEED = 64  # rows handed to zlib at a time: big enough to be fast, small in memory


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _constant_png(out: BinaryIO, width: int, height: int, depth: int,
                  color_type: int, pixel: bytes) -> None:
    """A PNG whose every pixel is ``pixel``: rows streamed through zlib, never all in memory."""
    out.write(_PNG_SIGNATURE)
    out.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color_type,
                                          0, 0, 0)))
    row = b"\x00" + pixel * width  # filter byte 0 (None), then the row's samples
    z = zlib.compressobj(9)
    idat = bytearray()
    left = height
    while left:
        n = min(left, _ROWS_PER_FEED)
        idat += z.compress(row * n)
        left -= n
    idat += z.flush()
    for start in range(0, len(idat), 1 << 16):
        out.write(_chunk(b"IDAT", bytes(idat[start:start + (1 << 16)])))
    out.write(_chunk(b"IEND", b""))


def write_gray16_png(path: Path, side: int) -> None:
    with path.open("wb") as out:
        _constant_png(out, side, side, 16, 0, b"\x80\x00")  # mid gray, 16 bits


def write_rgba_png(path: Path, side: int) -> None:
    with path.open("wb") as out:
        _constant_png(out, side, side, 8, 6, b"\x00\x00\x00\x00")  # black, alpha 0


def _short_name(i: int) -> bytes:
    """Distinct names of 1-4 characters (base 36)."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    s = ""
    while True:
        i, r = divmod(i, 36)
        s = digits[r] + s
        if not i:
            return s.encode()


def write_entries_zip(path: Path, entries: int) -> None:
    """``entries`` empty stored files in a zip64 archive. Every central-directory record
    points at one local record (a zip tool unpacking it would complain at the second
    member): what a parser spends is in the central directory, and it stays ~50 bytes an
    entry, as an attacker would make it."""
    first = _short_name(0)
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0x21, 0, 0, 0,
                        len(first), 0) + first
    crc, dos_time, dos_date = 0, 0, 0x21
    records = bytearray()
    for i in range(entries):
        name = _short_name(i)
        records += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, dos_time, dos_date,
                               crc, 0, 0, len(name), 0, 0, 0, 0, 0o100644 << 16, 0)
        records += name
    cd_offset, cd_size = len(local), len(records)
    zip64_end = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries,
                            cd_size, cd_offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, cd_offset + cd_size, 1)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF,
                      0xFFFFFFFF, 0)
    with path.open("wb") as out:
        for part in (local, records, zip64_end, locator, end):
            out.write(part)


def _tiny_png() -> bytes:
    buf = io.BytesIO()
    _constant_png(buf, 1, 1, 8, 0, b"\x7f")
    return buf.getvalue()


def write_classes_zip(path: Path, classes: int) -> None:
    """``classes`` classes of one 1x1 PNG in train/ and one in test/: a valid dataset."""
    png = _tiny_png()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for split in ("train", "test"):
            for c in range(classes):
                zf.writestr(f"{split}/c{c:05d}/0.png", png)


def write_zeros_zip(path: Path, members: int, member_bytes: int) -> None:
    """``members`` deflated members of ``member_bytes`` zeros, in a dataset's layout (two
    classes, both splits) so that only their size or ratio can refuse them."""
    zeros = bytes(member_bytes)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for i in range(members):
            split = "train" if i % 4 < 2 else "test"
            zf.writestr(f"{split}/{'ab'[i % 2]}/{i:04d}.jpg", zeros)


def cached(cache: Path, name: str, write: Callable[[Path], None]) -> Path:
    """``cache/name``, written by ``write`` unless it is already there (written to a temp
    name and renamed: a run stopped half-way leaves no half file)."""
    path = cache / name
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{name}.")
        os.close(fd)
        try:
            write(Path(tmp))
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return path


def default_cache() -> Path:
    return Path(tempfile.gettempdir()) / "hotdog-hostile-inputs"
