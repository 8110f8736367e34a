"""Process and thread helpers of app.core.procs."""

from __future__ import annotations

import threading
from pathlib import Path

from app.core.procs import name_thread


def test_name_thread_names_the_calling_thread_only() -> None:
    seen: dict[str, str] = {}

    def named() -> None:
        name_thread("decode-and-a-long-tail")
        seen["tid"] = str(threading.get_native_id())
        seen["comm"] = Path(f"/proc/self/task/{seen['tid']}/comm").read_text().strip()

    main = Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text()
    t = threading.Thread(target=named)
    t.start()
    t.join()
    assert seen["comm"] == "decode-and-a-lo"  # the kernel keeps 15 bytes
    assert Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text() == main
