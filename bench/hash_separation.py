"""Which perceptual hash separates altered copies from distinct photos: the figures behind
``app.datasets.report.NEAR_DUPLICATE_BITS``.

    python bench/hash_separation.py [--photos 200 --copies 40]

Renders distinct synthetic photos (every food, hotdogs, empty tables, 64..128 px a side),
makes altered copies of some (crop c at each edge, resize by s, JPEG quality q: five kinds),
and prints, for pHash, dHash and their sum, the largest distance of a copy to its original
and the smallest distance between two distinct photos (or a copy and another photo); and
the largest difference of coarse colours between a copy and its original.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import imagehash
import numpy as np
from PIL import Image

from app.datasets.synthetic.foods import FOODS
from app.datasets.synthetic.render import render_demo_image, render_food_image

ALTERATIONS = [(0.03, 0.7, 70), (0.05, 0.5, 60), (0.0, 1.5, 80), (0.04, 1.0, 90),
               (0.02, 0.8, 50)]


def photo(i: int) -> Image.Image:
    rng = np.random.default_rng([7, i])
    if i % 3 == 0:
        return render_demo_image(rng, hotdog=bool(i % 2), min_side=64, max_side=128)
    foods = sorted(FOODS)
    return render_food_image(rng, foods[i % len(foods)], min_side=64, max_side=128)


def altered(img: Image.Image, crop: float, scale: float, quality: int) -> Image.Image:
    w, h = img.size
    c = int(crop * min(w, h))
    out = img.crop((c, c, w - c, h - c))
    out = out.resize((max(8, int(w * scale)), max(8, int(h * scale))))
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=200)
    ap.add_argument("--copies", type=int, default=40)
    args = ap.parse_args()
    photos = [photo(i) for i in range(args.photos)]
    copies = [(i, ALTERATIONS[i % len(ALTERATIONS)]) for i in range(args.copies)]
    copied = [altered(photos[i], *alt) for i, alt in copies]

    def bits(h: imagehash.ImageHash) -> np.ndarray:
        return np.asarray(h.hash, dtype=bool).ravel()

    hashes = {"phash": imagehash.phash, "dhash": imagehash.dhash}
    table: dict[str, dict[str, object]] = {}
    dist: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for name, fn in hashes.items():
        a = np.stack([bits(fn(p)) for p in photos])
        c = np.stack([bits(fn(p)) for p in copied])
        pairs = (a[:, None] != a[None]).sum(-1)  # photo x photo
        to_all = (c[:, None] != a[None]).sum(-1)  # copy x photo
        own = np.array([to_all[k, i] for k, (i, _) in enumerate(copies)])
        dist[name] = (pairs, to_all, own)
    dist["phash+dhash"] = tuple(x + y for x, y in zip(dist["phash"], dist["dhash"],
                                                       strict=True))  # type: ignore[assignment]
    n = args.photos
    for name, (pairs, to_all, own) in dist.items():
        others = to_all.copy()
        for k, (i, _) in enumerate(copies):
            others[k, i] = 10**6
        by_kind = {f"crop {c:.0%} scale {s} q{q}": int(max(
            own[k] for k, (_, alt) in enumerate(copies) if alt == (c, s, q)))
            for c, s, q in ALTERATIONS}
        table[name] = {"copy_max": int(own.max()), "copy_max_by_kind": by_kind,
                       "distinct_min": int(pairs[np.triu_indices(n, 1)].min()),
                       "copy_to_other_min": int(others.min())}
    # Coarse colours (as the report compares them): copies against their originals.
    def grid(img: Image.Image) -> np.ndarray:
        return np.asarray(img.resize((4, 4), Image.Resampling.BOX), dtype=np.float32)

    grids = [grid(p) for p in photos]
    colour = [float(np.abs(grid(c) - grids[i]).mean()) for c, (i, _) in zip(copied, copies,
                                                                          strict=True)]
    table["colour_diff"] = {"copy_max": round(max(colour), 1)}
    print(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
