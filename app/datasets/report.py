"""A dataset's report, computed without a model: duplicates, train/test leakage, the same
photo under two classes, image-level issues, and counts.

Every image is decoded once (through :func:`app.engine.images.open_rgb`, within the
process's decode budget) and described by: a digest of its decoded pixels (exact
duplicates), two 64-bit perceptual hashes from ``imagehash`` (near duplicates), and a few
statistics of a small grey copy (image-level issues). Images are named as everywhere else
(:mod:`app.engine.catalogue`: id, split, class and the path in the upload).

Near duplicates: two images whose pHash and dHash differ in at most
:data:`NEAR_DUPLICATE_BITS` bits together (of 128) and whose coarse colours are alike
(:data:`NEAR_COLOUR_DIFF`). Measured on synthetic photos (``bench/hash_separation.py``,
README "Dataset report"): copies re-encoded, resized and cropped by up to 5 % at each edge
differ by at most 23 bits (up to 20 for crops of 4 % or less), distinct photos by at least
29; either hash alone overlaps (copies up to 12 bits, distinct photos from 8 or 12). On
2,000 photos a few distinct pairs (empty plates, plain tables) come within 20 bits; their
colours differ by 37 and more, copies' by at most 8.

The report is a JSON file in the dataset's folder (:data:`REPORT_FILE`), written to a temp
name and renamed; the dataset's images are never modified.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
from PIL import Image

from app.engine.catalogue import ImageEntry, catalogue
from app.engine.images import DecodeBudget, decode_budget, open_rgb

REPORT_FILE = "report.json"
VERSION = 1

# Near duplicates: pHash + dHash Hamming distance (bits of 128) at most this, and colours
# alike: the mean absolute difference of the 4 x 4 grids of mean RGB colours (0..255) at most
# NEAR_COLOUR_DIFF (the hashes see grey structure only: two empty plates on differently
# coloured tables can hash alike).
NEAR_DUPLICATE_BITS = 20
NEAR_COLOUR_DIFF = 16.0
# Image-level issues.
TINY_SIDE = 32  # shorter side under this: upscaled 7x or more by the recipe's 224 crop
ASPECT_RATIO = 2.0  # long side / short side above this: CenterCrop keeps under half of it
UNIFORM_STD = 5.0  # grey levels' standard deviation (0..255) under this: nearly one colour
DARK_MEAN = 25.0  # mean grey level under this: nearly black
# Variance of the Laplacian of the grey image scaled to at most 256 px, under this: blurry
# (sharp synthetic photos measure 60 and more, the same photos blurred by 1.5 % of their
# side under 40).
BLURRY_LAPLACIAN = 30.0
# Mean of max(R, G, B) - min(R, G, B) under this: a grey picture. Reported only when most
# of the dataset is in colour.
GRAYSCALE_SPREAD = 3.0
STATS_SIDE = 256
PROGRESS_EVERY = 100  # images between two progress calls

THRESHOLDS: dict[str, float] = {
    "near_duplicate_bits": NEAR_DUPLICATE_BITS, "near_colour_diff": NEAR_COLOUR_DIFF,
    "tiny_side": TINY_SIDE,
    "aspect_ratio": ASPECT_RATIO, "uniform_std": UNIFORM_STD, "dark_mean": DARK_MEAN,
    "blurry_laplacian": BLURRY_LAPLACIAN, "grayscale_spread": GRAYSCALE_SPREAD,
}
ISSUES = ("tiny", "aspect_ratio", "uniform", "dark", "blurry", "grayscale")


@dataclass(frozen=True)
class Features:
    width: int
    height: int
    digest: bytes  # of the decoded RGB pixels and the size
    hashes: np.ndarray  # two uint64: pHash, dHash
    colours: np.ndarray  # 4 x 4 x 3 mean colours (float32)
    grey_mean: float
    grey_std: float
    laplacian: float
    spread: float


def _bits(h: imagehash.ImageHash) -> np.uint64:
    return np.uint64(int(str(h), 16))


def describe(rgb: Image.Image) -> Features:
    """What the report needs of one decoded picture."""
    digest = hashlib.blake2b(rgb.tobytes(), digest_size=16)
    digest.update(f"{rgb.width}x{rgb.height}".encode())
    grey = rgb.convert("L")
    hashes = np.array([_bits(imagehash.phash(grey)), _bits(imagehash.dhash(grey))],
                      dtype=np.uint64)
    small = grey.copy()
    small.thumbnail((STATS_SIDE, STATS_SIDE))
    a = np.asarray(small, dtype=np.float32)
    if a.shape[0] >= 3 and a.shape[1] >= 3:
        lap = 4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:]
        laplacian = float(lap.var())
    else:
        laplacian = 0.0
    colour = np.asarray(rgb.resize((32, 32), Image.Resampling.BILINEAR), dtype=np.int16)
    spread = float((colour.max(axis=2) - colour.min(axis=2)).mean())
    grid = np.asarray(rgb.resize((4, 4), Image.Resampling.BOX), dtype=np.float32)
    return Features(width=rgb.width, height=rgb.height, digest=digest.digest(), hashes=hashes,
                    colours=grid,
                    grey_mean=float(a.mean()), grey_std=float(a.std()), laplacian=laplacian,
                    spread=spread)


def _describe_file(path: Path, budget: DecodeBudget) -> Features | str:
    try:
        return open_rgb(path, then=describe, budget=budget)
    except Exception as exc:  # one unreadable file is reported, not the report's end
        return f"{type(exc).__name__}: {exc}"


class _Groups:
    """Union-find over image indices."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def sets(self, members: Sequence[int]) -> list[list[int]]:
        out: dict[int, list[int]] = defaultdict(list)
        for i in members:
            out[self.find(i)].append(i)
        return sorted((sorted(g) for g in out.values() if len(g) > 1), key=lambda g: g[0])


def near_pairs(hashes: np.ndarray, max_bits: int) -> list[tuple[int, int, int]]:
    """Pairs (i, j, distance), i < j, whose hashes (rows of uint64 words) differ in at most
    ``max_bits`` bits; compared a block of rows at a time (about 2M words in flight)."""
    n = len(hashes)
    chunk = max(16, (1 << 21) // max(1, n * hashes.shape[1]))
    out: list[tuple[int, int, int]] = []
    for start in range(0, n, chunk):
        block = hashes[start:start + chunk]
        dist = np.bitwise_count(block[:, None, :] ^ hashes[None, :, :]).sum(axis=2)
        rows, cols = np.nonzero(dist <= max_bits)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            i = start + r
            if i < c:
                out.append((i, c, int(dist[r, c])))
    return out


def _group(kind: str, members: list[int], entries: Sequence[ImageEntry],
           distance: dict[tuple[int, int], int] | None = None) -> dict[str, Any]:
    splits = sorted({entries[i].split for i in members})
    labels = sorted({entries[i].label for i in members})
    group: dict[str, Any] = {
        "kind": kind,
        "scope": "leakage" if len(splits) > 1 else splits[0],
        "splits": splits, "labels": labels, "label_conflict": len(labels) > 1,
        "images": [entries[i].as_dict() for i in members],
    }
    if distance is not None:
        near = [d for (a, b), d in distance.items() if a in members and b in members]
        group["max_distance"] = max(near, default=0)
    return group


def _imbalance(counts: dict[str, int]) -> float | None:
    values = list(counts.values())
    if not values or min(values) == 0:
        return None  # a class without images: no finite ratio
    return round(max(values) / min(values), 3)


def build_report(root: str | Path, *, threads: int = 2, budget: DecodeBudget | None = None,
                 max_near_images: int | None = None, dataset_id: str | None = None,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The report of the dataset at ``root`` (a JSON-able dict). ``max_near_images``: above
    this many images the near-duplicate search (quadratic) is skipped, and said so.
    ``progress(done, total)`` is called every PROGRESS_EVERY images; what it raises stops
    the report (images not started yet are not decoded)."""
    started = time.monotonic()
    root = Path(root)
    entries = catalogue(root)
    budget = budget or decode_budget()
    pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="report")
    results: list[Features | str] = []
    try:
        for i, r in enumerate(pool.map(lambda e: _describe_file(root / e.path, budget),
                                       entries)):
            results.append(r)
            if progress is not None and (i + 1) % PROGRESS_EVERY == 0:
                progress(i + 1, len(entries))  # may raise to stop the report
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    ok = [i for i, r in enumerate(results) if not isinstance(r, str)]
    feats: dict[int, Features] = {i: r for i, r in enumerate(results) if not isinstance(r, str)}
    unreadable = [{**entries[i].as_dict(), "error": r}
                  for i, r in enumerate(results) if isinstance(r, str)]

    groups, near_skipped = _duplicate_groups(entries, ok, feats, max_near_images)
    issues = _image_issues(entries, feats)
    counts = _counts(entries)
    leakage = [g for g in groups if g["scope"] == "leakage"]
    by_issue = Counter(name for item in issues for name in item["issues"])
    summary = {
        "images": len(entries),
        "exact_groups": dict(Counter(g["scope"] for g in groups if g["kind"] == "exact")),
        "near_groups": dict(Counter(g["scope"] for g in groups if g["kind"] == "near")),
        "leakage_groups": len(leakage),
        # Test (or val) images that have a copy in another split.
        "leaked_images": len({img["image_id"] for g in leakage for img in g["images"]
                              if img["split"] != "train"}),
        "label_conflicts": sum(1 for g in groups if g["label_conflict"]),
        "issues": {name: by_issue.get(name, 0) for name in ISSUES},
        "unreadable": len(unreadable),
        "imbalance": {split: _imbalance(c) for split, c in counts.items()},
    }
    return {
        "version": VERSION, "dataset_id": dataset_id, "summary": summary,
        "counts": counts, "thresholds": THRESHOLDS,
        "hashes": "imagehash pHash + dHash, 64 bits each",
        "near_duplicates_skipped": near_skipped,
        "groups": groups, "image_issues": issues, "unreadable": unreadable,
        "seconds": round(time.monotonic() - started, 3),
    }


def _duplicate_groups(entries: Sequence[ImageEntry], ok: list[int],
                      feats: dict[int, Features], max_near_images: int | None
                      ) -> tuple[list[dict[str, Any]], bool]:
    """The exact and near duplicate groups of the decodable images ``ok``, and whether the
    near search was skipped (more than ``max_near_images``)."""
    # Exact duplicates: the same decoded pixels.
    exact = _Groups(len(entries))
    first: dict[bytes, int] = {}
    for i in ok:
        j = first.setdefault(feats[i].digest, i)
        if j != i:
            exact.join(j, i)
    groups = [_group("exact", g, entries) for g in exact.sets(ok)]

    # Near duplicates: perceptual hashes close; a group of identical pictures only is exact.
    near_skipped = max_near_images is not None and len(ok) > max_near_images
    if not near_skipped and ok:
        hashes = np.stack([feats[i].hashes for i in ok])
        near = _Groups(len(entries))
        distance: dict[tuple[int, int], int] = {}
        for a, b, d in near_pairs(hashes, NEAR_DUPLICATE_BITS):
            i, j = ok[a], ok[b]
            if float(np.abs(feats[i].colours - feats[j].colours).mean()) > NEAR_COLOUR_DIFF:
                continue
            near.join(i, j)
            distance[(i, j)] = d
        for g in near.sets(ok):
            if len({feats[i].digest for i in g}) > 1:
                groups.append(_group("near", g, entries, distance))

    return groups, near_skipped


def _counts(entries: Sequence[ImageEntry]) -> dict[str, dict[str, int]]:
    """Images per split and class (every class in every split, zeros included)."""
    classes = sorted({e.label for e in entries})
    counts = {e.split: dict.fromkeys(classes, 0) for e in entries}
    for e in entries:
        counts[e.split][e.label] += 1
    return counts


def _image_issues(entries: Sequence[ImageEntry], feats: dict[int, Features]
                  ) -> list[dict[str, Any]]:
    colour = sum(1 for f in feats.values() if f.spread >= GRAYSCALE_SPREAD)
    colour_set = colour * 2 > len(feats)
    out = []
    for i, f in sorted(feats.items()):
        found = []
        if min(f.width, f.height) < TINY_SIDE:
            found.append("tiny")
        if max(f.width, f.height) > ASPECT_RATIO * min(f.width, f.height):
            found.append("aspect_ratio")
        if f.grey_std < UNIFORM_STD:
            found.append("uniform")
        if f.grey_mean < DARK_MEAN:
            found.append("dark")
        if f.laplacian < BLURRY_LAPLACIAN and f.grey_std >= UNIFORM_STD:
            found.append("blurry")  # (a uniform picture is that already)
        if colour_set and f.spread < GRAYSCALE_SPREAD:
            found.append("grayscale")
        if found:
            out.append({**entries[i].as_dict(), "issues": found, "width": f.width,
                        "height": f.height})
    return out


def write_report(root: Path, report: dict[str, Any]) -> None:
    tmp = root / f".{REPORT_FILE}.tmp"
    tmp.write_text(json.dumps(report))
    os.replace(tmp, root / REPORT_FILE)


def read_report(root: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((root / REPORT_FILE).read_text())
    except FileNotFoundError:
        return None
    return data if isinstance(data, dict) else None


@lru_cache(maxsize=16)
def cached_catalogue(root: Path) -> tuple[ImageEntry, ...]:
    """A stored dataset's catalogue (its files never change, its id is never reused)."""
    return tuple(catalogue(root))


class ImageNotFound(LookupError):
    """No image with this id in the dataset."""


THUMBNAIL_SIZES = (32, 512)  # the smallest and largest ?size= of a thumbnail


def thumbnail_jpeg(root: Path, image_id: int, size: int, *, budget: DecodeBudget,
                   wait: float | None) -> bytes:
    """Image ``image_id`` of the dataset at ``root``, fitted in ``size`` x ``size``, as a
    JPEG (decoded within ``budget``, waiting up to ``wait`` s for it: DecodeBusy)."""
    entries = cached_catalogue(root)
    if not 0 <= image_id < len(entries):
        raise ImageNotFound(f"no image {image_id} in this dataset; its images are "
                            f"0..{len(entries) - 1}")

    def fit(img: Image.Image) -> bytes:
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        return buf.getvalue()

    return open_rgb(root / entries[image_id].path, min_short_side=size, then=fit,
                    budget=budget, wait=wait)
