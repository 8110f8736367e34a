"""The checkpoint file: written atomically, read with ``weights_only=True`` (no pickled code).

Contents (a plain dict of tensors and builtins):
``format``/``version``, ``arch``, ``model`` (state dict), ``classes`` (index order),
``preprocessing`` (image size, resize, mean, std), ``params`` (the resolved TrainConfig),
``epoch`` (epochs completed), ``optimizer`` (state dict, for resume), ``seed``, ``history``
(one metrics dict per epoch), ``metrics`` (the last epoch's), ``evaluation`` (confusion
matrix and per-class report, final file only) and ``complete``.

No RNG state is stored: every epoch's randomness (shuffle order, augmentation, loader
worker seeds) is derived from ``(seed, epoch)`` (and the rank, with several training
processes), so a resumed run replays exactly what an uninterrupted run would have done,
whatever the number of loader workers. The file does not depend on the number of training
processes; ``compute.world_size`` records it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from app.engine.errors import CheckpointError

FORMAT = "hotdog.checkpoint"
VERSION = 1
REQUIRED_KEYS = ("model", "classes", "preprocessing", "params", "epoch")


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write to a temp file in the same directory, fsync, then rename over ``path``.

    A crash at any point leaves either the previous file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "version": VERSION, "arch": "resnet18", **payload}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(
    path: str | Path, *, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # UnpicklingError for code payloads, zip errors for garbage
        raise CheckpointError(f"{path}: not a loadable hotdog checkpoint ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a hotdog checkpoint")
    if data.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {data.get('version')} is not supported")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return data
