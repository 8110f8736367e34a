"""The images of a stored dataset, each with a stable id and the path it had in the upload.

Reports, label reviews, thumbnails and relabelling all name images the same way: ``id`` is
the image's position in the dataset's ImageFolder order (train, then val when present, then
test; classes sorted; files sorted), and ``uploaded`` is its path inside the uploaded zip
(from the dataset's ``manifest.json``, written at ingest), so that a user can find the photo
in their own folder. A folder without a manifest (``hotdog review-local DIR``) names each
image by its path in that folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from app.engine.data import load_image_folder

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ImageEntry:
    id: int
    split: str  # train | val | test
    label: str  # the class folder it is in
    path: str  # relative to the dataset's root, e.g. train/hotdog/000003.jpg
    uploaded: str  # its path in the upload (or ``path`` when the upload is not known)

    def as_dict(self) -> dict[str, object]:
        return {"image_id": self.id, "split": self.split, "label": self.label,
                "path": self.uploaded}


def write_manifest(root: Path, uploaded: Mapping[str, str]) -> None:
    """Record, for each stored image (path relative to ``root``), its path in the upload."""
    tmp = root / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"version": 1, "uploaded": dict(uploaded)}, sort_keys=True))
    os.replace(tmp, root / MANIFEST)


def read_manifest(root: Path) -> dict[str, str]:
    try:
        data = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        return {}
    uploaded = data.get("uploaded", {}) if isinstance(data, dict) else {}
    return {str(k): str(v) for k, v in uploaded.items()}


def catalogue(root: str | Path) -> list[ImageEntry]:
    """Every image of the dataset at ``root``, in id order."""
    root = Path(root)
    splits = load_image_folder(root)
    uploaded = read_manifest(root)
    entries: list[ImageEntry] = []
    for split, samples in splits.named():
        for path, label in samples:
            rel = path.relative_to(root).as_posix()
            entries.append(ImageEntry(id=len(entries), split=split,
                                      label=splits.classes[label], path=rel,
                                      uploaded=uploaded.get(rel, rel)))
    return entries
