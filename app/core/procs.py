"""Process and thread helpers: children that must not outlive their parent, named threads."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies (strictly: when the parent's
    thread that started it ends), so that a killed worker or API leaves no training or
    explanation process behind holding memory, a GPU or a job's files. Elsewhere: nothing."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


PR_SET_NAME = 15


def name_thread(name: str) -> None:
    """Linux: the calling thread's name as ``top -H``, ``ps -L`` and ``/proc/<pid>/task``
    show it (15 bytes at most), so that a process's CPU can be told apart by thread: the
    decode threads, the forward threads (and the threads that ONNX Runtime or OpenMP start
    from them, which inherit the name). Python 3.11 leaves every thread named after the
    process. Elsewhere: nothing."""
    _prctl(PR_SET_NAME, name.encode()[:15])


def _prctl(option: int, arg: int | bytes) -> None:
    """Linux's prctl(option, arg); nothing elsewhere, or where libc cannot be loaded."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(option, arg)
