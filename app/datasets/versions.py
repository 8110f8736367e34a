"""Relabelling: a new version of a dataset, never an edit of the old one.

``changes`` maps image ids of the parent (:mod:`app.engine.catalogue`) to a class the
dataset has, or to ``"drop"``. The new version gets a fresh folder: every image it keeps is
hard-linked from the parent's file where the file system allows (else copied), under the
name ingestion would give it; its manifest keeps each image's path in the original upload.
The parent's files and row are not touched, so jobs on it keep working.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy.orm import Session

from app.datasets.archive import StorageFull
from app.datasets.ingest import IngestResult, layout_warnings
from app.datasets.layout import MAX_LISTED
from app.datasets.report import cached_catalogue
from app.datasets.service import NAME_LENGTH, create, files_removed_on_error, get_live
from app.db.models import Dataset
from app.engine.catalogue import ImageEntry, write_manifest
from app.engine.data import load_image_folder

DROP = "drop"


class InvalidChanges(ValueError):
    """A relabel request that names unknown images or classes, changes nothing, or would
    leave a class without training images. The message says which."""


def _listed(items: list[str]) -> str:
    more = f" (and {len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def check_changes(entries: tuple[ImageEntry, ...], classes: list[str],
                  changes: Mapping[str, str], *, max_changes: int) -> dict[int, str]:
    """The effective changes (image id -> class or DROP), refusing bad ones."""
    if not changes:
        raise InvalidChanges("no changes given: map image ids to a class or \"drop\"")
    if len(changes) > max_changes:
        raise InvalidChanges(f"{len(changes)} changes; at most {max_changes} in one request")
    ids: dict[int, str] = {}
    bad_ids, bad_classes = [], []
    for key, value in changes.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit()):
            bad_ids.append(repr(key))
            continue
        image_id = int(key)
        if not image_id < len(entries):
            bad_ids.append(str(key))
        elif value != DROP and value not in classes:
            bad_classes.append(f"{key}: {value!r}")
        else:
            ids[image_id] = value
    if bad_ids:
        raise InvalidChanges(f"unknown image id(s): {_listed(bad_ids)}; the dataset's images "
                             f"are 0..{len(entries) - 1}")
    if bad_classes:
        raise InvalidChanges(f"unknown class(es): {_listed(bad_classes)}; the classes are "
                             f"{', '.join(classes)}, or \"drop\"")
    effective = {i: v for i, v in ids.items() if v != entries[i].label}
    if not effective:
        raise InvalidChanges("every change names the class the image already has: nothing "
                             "to change")
    train = Counter(effective.get(e.id, e.label) for e in entries if e.split == "train")
    emptied = [c for c in classes if train.get(c, 0) == 0]
    if emptied:
        raise InvalidChanges(f"no training images would be left for class(es) "
                             f"{', '.join(emptied)}; keep at least one in each")
    return effective


def _copy_tree(parent: Path, dest: Path, entries: tuple[ImageEntry, ...],
               effective: dict[int, str], classes: list[str], min_free_bytes: int) -> int:
    """Write the new version into ``dest`` (a fresh folder renamed into place at the end)."""
    work = dest.with_name(f".incoming-{dest.name}")
    tree = work / ".dataset"
    try:
        splits = sorted({e.split for e in entries})
        for split in splits:
            for cls in classes:
                (tree / split / cls).mkdir(parents=True, exist_ok=True)
        uploaded: dict[str, str] = {}
        index: Counter[str] = Counter()
        size = 0
        linked = True
        for e in entries:
            label = effective.get(e.id, e.label)
            if label == DROP:
                continue
            src = parent / e.path
            rel = f"{e.split}/{label}/{index[e.split]:06d}{src.suffix.lower()}"
            index[e.split] += 1
            if linked:
                try:
                    os.link(src, tree / rel)
                except OSError:
                    linked = False  # (another file system: copy, within the free space)
            if not linked:
                need = src.stat().st_size
                if shutil.disk_usage(tree).free - need < min_free_bytes:
                    raise StorageFull("copying the relabelled version would leave less free "
                                      "disk than MIN_FREE_DISK_BYTES")
                shutil.copy2(src, tree / rel)
            size += (tree / rel).stat().st_size
            uploaded[rel] = e.uploaded
        write_manifest(tree, uploaded)
        os.replace(tree, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return size


def relabel(session: Session, *, parent_id: str, dest_root: Path, new_id: str,
            changes: Mapping[str, str], name: str | None, max_changes: int,
            min_free_bytes: int) -> Dataset:
    """The new version's row (flushed, not committed) with its files in place under
    ``dest_root / new_id``; the files are removed if the caller's commit fails (use
    :func:`app.datasets.service.files_removed_on_error`)."""
    parent = get_live(session, parent_id)
    parent_dir = dest_root / parent_id
    entries = cached_catalogue(parent_dir)
    effective = check_changes(entries, list(parent.classes), changes, max_changes=max_changes)
    dest = dest_root / new_id
    size = _copy_tree(parent_dir, dest, entries, effective, list(parent.classes),
                      min_free_bytes)
    with files_removed_on_error(dest):
        splits = load_image_folder(dest)
        result = IngestResult(classes=splits.classes, counts=splits.counts(),
                              warnings=layout_warnings(dest, splits), size_bytes=size)
        label = (name or f"{parent.name} (relabelled)")[:NAME_LENGTH]
        dataset = create(session, dataset_id=new_id, upload=result, name=label, filename=None)
        dataset.parent_id = parent_id
        dataset.changes = {str(i): v for i, v in sorted(effective.items())}
        session.flush()
    return dataset
