"""A zip's central directory, measured before :mod:`zipfile` reads it.

``zipfile.ZipFile`` reads the whole central directory into memory and builds an object per
entry before anyone can count them (it walks the directory to its end, whatever count the
end record claims): a small upload of many tiny entries costs far more memory and time than
its size suggests. :func:`find_directory` reads the end record the way ``zipfile`` finds it
(the zip64 one when present), and :func:`count_entries` walks the entries' fixed-size
headers in constant memory, stopping as soon as the count passes a limit.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

END = struct.Struct("<4s4H2LH")  # end of central directory record, 22 bytes
END_SIGNATURE = b"PK\x05\x06"
LOCATOR = struct.Struct("<4sLQL")  # zip64 end of central directory locator, 20 bytes
LOCATOR_SIGNATURE = b"PK\x06\x07"
END64 = struct.Struct("<4sQ2H2L4Q")  # zip64 end of central directory record, 56 bytes
END64_SIGNATURE = b"PK\x06\x06"
# A central directory file header: 46 bytes, then its name, extra field and comment.
HEADER = struct.Struct("<4s24x3H12x")
HEADER_SIGNATURE = b"PK\x01\x02"
MAX_COMMENT = 0xFFFF  # the archive comment after the end record, at most


@dataclass(frozen=True)
class Directory:
    entries: int  # as the end record claims it
    start: int  # where ``zipfile`` will read it from
    size: int  # bytes, as the end record claims it


def find_directory(f: BinaryIO) -> Directory | None:
    """The central directory as the end record (zip64's when there is one) describes it;
    ``None`` when there is no end record (then ``zipfile`` refuses the file itself)."""
    file_size = f.seek(0, os.SEEK_END)
    tail_start = max(0, file_size - END.size - MAX_COMMENT)
    f.seek(tail_start)
    tail = f.read()
    # As zipfile: an end record without a comment first, else the last signature.
    at = len(tail) - END.size
    if not (at >= 0 and tail[at:at + 4] == END_SIGNATURE and tail[-2:] == b"\0\0"):
        at = tail.rfind(END_SIGNATURE)
    if at < 0 or len(tail) - at < END.size:
        return None
    *_, entries, size, _offset, _comment = END.unpack_from(tail, at)
    end = tail_start + at
    zip64 = _zip64_end(f, end)
    if zip64 is not None:
        entries, size = zip64
        end -= LOCATOR.size + END64.size
    return Directory(entries=entries, start=end - size, size=size)


def _zip64_end(f: BinaryIO, end: int) -> tuple[int, int] | None:
    """(entries, directory size) from the zip64 end record just before the locator that
    precedes the end record at ``end``, where ``zipfile`` looks for them."""
    if end < LOCATOR.size + END64.size:
        return None
    f.seek(end - LOCATOR.size - END64.size)
    data = f.read(END64.size + LOCATOR.size)
    if (len(data) != END64.size + LOCATOR.size
            or LOCATOR.unpack_from(data, END64.size)[0] != LOCATOR_SIGNATURE):
        return None
    record = END64.unpack_from(data)
    if record[0] != END64_SIGNATURE:
        return None
    return record[7], record[8]  # entries in all, directory size


def count_entries(f: BinaryIO, directory: Directory, *, stop_after: int) -> int:
    """The entries in the directory, counted as ``zipfile`` walks them (header by header
    until its size is used up), but at most ``stop_after + 1``. Stops early, short of the
    real count, where the directory is malformed: ``zipfile`` refuses it at that point."""
    if directory.start < 0:
        return 0
    f.seek(directory.start)
    walked = count = 0
    while walked < directory.size and count <= stop_after:
        head = f.read(HEADER.size)
        if len(head) != HEADER.size:
            break
        signature, name, extra, comment = HEADER.unpack(head)
        if signature != HEADER_SIGNATURE:
            break
        f.seek(name + extra + comment, os.SEEK_CUR)
        walked += HEADER.size + name + extra + comment
        count += 1
    return count
