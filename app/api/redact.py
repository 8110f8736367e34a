"""Error answers name no server paths. The domains' messages are written for operators and
the command line, where a full path helps; before one becomes an answer, each path under
the data dir or the temporary folder is replaced by what the client can place:

- inside an upload being unpacked (``DATA_DIR/datasets/.incoming-<id>/…``, see
  ``app.datasets.service``): the path inside the zip (``train/cat/1.jpg``), or "the zip";
- elsewhere in the data dir: ``DATA_DIR/<path>`` (``DATA_DIR/jobs/<id>/model.pt``);
- in the temporary folder: "a temporary file".

The full message goes to the log, with the request id (``app.api.errors``).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from pathlib import Path

INCOMING = ".incoming-"  # an upload's working folder: DATA_DIR/datasets/.incoming-<id>
PROSE = r"\s'\":;,()\[\]"  # what ends a path in a message
PATH_TAIL = rf"(?=/|[{PROSE}]|$)(?:/[^{PROSE}]*)?"  # a whole component, then the rest


def _in_data_dir(rest: str) -> str:
    parts = [p for p in rest.split("/") if p]
    if len(parts) >= 2 and parts[0] == "datasets" and parts[1].startswith(INCOMING):
        return "/".join(parts[2:]) or "the zip"
    return "DATA_DIR/" + "/".join(parts) if parts else "DATA_DIR"


def _in_temp(_rest: str) -> str:
    return "a temporary file"


def public_message(message: str, data_dir: Path) -> str:
    """``message`` with the server's paths replaced (see the module's doc)."""
    roots: dict[str, Callable[[str], str]] = {tempfile.gettempdir(): _in_temp}
    for folder in (data_dir.absolute(), data_dir.resolve()):
        roots[str(folder)] = _in_data_dir
    # The longest first: the data dir may well lie in the temporary folder (tests do).
    for root in sorted(roots, key=len, reverse=True):
        if root != "/" and root in message:
            message = _replace(message, root, roots[root])
    return message


def _replace(message: str, root: str, name: Callable[[str], str]) -> str:
    pattern = r"(?<![\w./-])" + re.escape(root) + PATH_TAIL
    return re.sub(pattern, lambda m: name(m.group()[len(root):]), message)
