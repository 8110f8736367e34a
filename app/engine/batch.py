"""Batch prediction: many photos through one :class:`Predictor`, in batches, in order.

Each photo gets a row: its label and every class's probability, or why it could not be read
(a photo that does not decode fails its row, never the batch); with an :class:`Explainer`,
also its ``crop_coverage``: the share of the Grad-CAM evidence for its label that the
centre crop keeps (low: the model's evidence lies outside what it sees). Photos are decoded and
cropped on a few threads, one batch ahead of the forward pass, so the model rarely waits.
The rows are written as JSON lines (:class:`ResultsWriter`: a temp name, renamed once
complete) and read back as JSON lines or CSV (:func:`read_rows`, :func:`csv_lines`).

The worker's predict jobs, ``bench/batch_predict.py`` and the tests call this; it knows
nothing of the service.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.engine.errors import ImageDecodeError, TrainingCancelled
from app.engine.images import is_image_file

if TYPE_CHECKING:
    import torch

    from app.engine.explain import Explainer
    from app.engine.predict import Predictor

# torch, the dataset catalogue (which reads through torch's data module) and the predictor
# are imported by the functions that predict: listing a folder's photos and writing CSV
# (``hotdog classify --url`` on a folder, a client command) start without torch.

IGNORED_FOLDERS = ("__MACOSX",)  # resource forks that macOS's Finder adds to zips


@dataclass(frozen=True)
class Photo:
    name: str  # as its owner knows it: its path in the uploaded zip
    path: Path  # where it is stored


@dataclass(frozen=True)
class BatchRow:
    """One photo's answer: ``label`` and ``probabilities``, or ``error`` (it did not decode);
    ``crop_coverage`` when it was asked for (None for a photo without a label)."""

    filename: str
    label: str | None
    probabilities: dict[str, float] | None
    error: str | None = None
    crop_coverage: float | None = None

    def to_dict(self, *, coverage: bool = False) -> dict[str, Any]:
        out = {"filename": self.filename, "label": self.label,
               "probabilities": self.probabilities, "error": self.error}
        return {**out, "crop_coverage": self.crop_coverage} if coverage else out


def _hidden(parts: Sequence[str]) -> bool:
    return any(p.startswith(".") or p in IGNORED_FOLDERS for p in parts)


def photos_in(root: Path) -> tuple[list[Photo], list[str]]:
    """The image files anywhere under ``root`` (any folder layout), by path; and the other
    files (not images by their name), which are ignored. Dot files and ``__MACOSX`` are
    skipped silently."""
    photos: list[Photo] = []
    others: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not _hidden([d]))
        rel_folder = Path(folder).relative_to(root)
        for name in sorted(files):
            rel = rel_folder / name
            if _hidden(rel.parts):
                continue
            if is_image_file(rel):
                photos.append(Photo(rel.as_posix(), Path(folder) / name))
            else:
                others.append(rel.as_posix())
    photos.sort(key=lambda p: p.name)
    others.sort()
    return photos, others


def dataset_photos(root: Path, split: str) -> list[Photo]:
    """The images of one split of a stored dataset, named by their path in its upload."""
    from app.engine.catalogue import catalogue

    return [Photo(e.uploaded, root / e.path) for e in catalogue(root) if e.split == split]


@dataclass
class Progress:
    """What a run reports: ``done`` photos of ``total`` (rows out, read or not)."""

    total: int
    done: int = 0
    failed: int = 0  # photos that did not decode
    labels: dict[str, int] = field(default_factory=dict)  # rows by predicted label


def predict_photos(
    predictor: Predictor, photos: Sequence[Photo], *, batch_size: int = 64,
    threads: int | None = None, should_stop: Callable[[], bool] = lambda: False,
    on_batch: Callable[[Progress], None] | None = None, progress: Progress | None = None,
    explainer: Explainer | None = None,
) -> Iterator[BatchRow]:
    """Every photo's row, in ``photos``' order. Decoding runs on ``threads`` (default: up
    to 4) one batch ahead of the forward pass; ``should_stop`` is asked before each batch
    (:class:`TrainingCancelled` when it says so); ``on_batch`` hears the progress after
    each batch's rows are out. ``progress``: counted in this object (else a new one).
    ``explainer``: each labelled row also gets its ``crop_coverage`` (a Grad-CAM pass per
    photo, for its predicted class: several times the cost of the prediction)."""
    progress = progress if progress is not None else Progress(total=len(photos))
    chunks = [photos[i:i + batch_size] for i in range(0, len(photos), batch_size)]
    workers = threads or max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="batch-decode") as pool:
        def decode(chunk: Sequence[Photo]) -> list[Future[torch.Tensor]]:
            return [pool.submit(predictor.load, p.path, name=p.name) for p in chunk]

        ahead = decode(chunks[0]) if chunks else []
        for i, chunk in enumerate(chunks):
            if should_stop():
                for f in ahead:
                    f.cancel()
                raise TrainingCancelled(f"cancelled after {progress.done} of "
                                        f"{progress.total} photos")
            current, ahead = ahead, decode(chunks[i + 1]) if i + 1 < len(chunks) else []
            rows = _rows(predictor, chunk, current, progress)
            yield from (rows if explainer is None else
                        (_with_coverage(explainer, row, photo)
                         for row, photo in zip(rows, chunk, strict=True)))
            if on_batch is not None:
                on_batch(progress)


def _rows(predictor: Predictor, chunk: Sequence[Photo], decoded: list[Future[torch.Tensor]],
          progress: Progress) -> Iterator[BatchRow]:
    import torch

    images: list[torch.Tensor] = []
    errors: list[str | None] = []
    for future in decoded:
        try:
            images.append(future.result())
            errors.append(None)
        except ImageDecodeError as exc:
            errors.append(str(exc))
    probs = predictor.probabilities(torch.stack(images)).tolist() if images else []
    it = iter(probs)
    for photo, error in zip(chunk, errors, strict=True):
        progress.done += 1
        if error is not None:
            progress.failed += 1
            yield BatchRow(photo.name, None, None, error)
            continue
        p = next(it)
        label = predictor.classes[max(range(len(p)), key=p.__getitem__)]
        progress.labels[label] = progress.labels.get(label, 0) + 1
        yield BatchRow(photo.name, label, dict(zip(predictor.classes, p, strict=True)))


def _with_coverage(explainer: Explainer, row: BatchRow, photo: Photo) -> BatchRow:
    """``row`` with the crop coverage of its label's heatmap (None: no label, or a heatmap
    with no evidence anywhere)."""
    if row.label is None:
        return row
    explanation = explainer.explain(photo.path, row.label, name=photo.name, overlay=False)
    return replace(row, crop_coverage=explanation.crop_coverage)


class ResultsWriter:
    """JSON lines written under a temporary name in the destination's folder and renamed
    over ``path`` only by :meth:`commit`: a reader sees the whole file or none. A writer
    closed without committing removes its temp file."""

    def __init__(self, path: Path, *, coverage: bool = False) -> None:
        self.path = path
        self.coverage = coverage
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        self.tmp = Path(tmp)
        self.fh = os.fdopen(fd, "w", encoding="utf-8")

    def write(self, rows: Iterable[BatchRow]) -> None:
        for row in rows:
            self.fh.write(json.dumps(row.to_dict(coverage=self.coverage)) + "\n")

    def commit(self) -> Path:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        self.tmp.chmod(0o644)
        os.replace(self.tmp, self.path)
        return self.path

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.fh.closed:
            self.fh.close()
        self.tmp.unlink(missing_ok=True)


def read_rows(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def csv_header(classes: Sequence[str], *, coverage: bool = False) -> list[str]:
    """``filename, label, p_<class>... , [crop_coverage,] error``: one probability column
    per class."""
    return ["filename", "label", *(f"p_{c}" for c in classes),
            *(["crop_coverage"] if coverage else []), "error"]


def csv_lines(rows: Iterable[dict[str, Any]], classes: Sequence[str], *,
              coverage: bool = False) -> Iterator[str]:
    """The rows as CSV text, a header first, one line at a time (for streaming);
    ``coverage``: with the ``crop_coverage`` column."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")

    def line(values: list[Any]) -> str:
        writer.writerow(values)
        text = buf.getvalue()
        buf.seek(0)
        buf.truncate()
        return text

    yield line(csv_header(classes, coverage=coverage))
    for row in rows:
        probs = row.get("probabilities") or {}
        covered = row.get("crop_coverage")
        yield line([row["filename"], row.get("label") or "",
                    *(repr(float(probs[c])) if c in probs else "" for c in classes),
                    *([] if not coverage else ["" if covered is None else repr(covered)]),
                    row.get("error") or ""])
