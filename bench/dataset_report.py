"""How long a dataset report takes (``app.datasets.report.build_report``): duplicates,
leakage and image-level issues, no model.

    python bench/dataset_report.py --images 2000 --threads 2

Writes a synthetic set of ``--images`` photos (d2l-like sizes, 160..512 px a side) into
``--data`` (kept, so a second run measures the report alone), with 20 test photos copied
into train (re-encoded, resized, cropped) so that the report has leakage to find, then
prints the report's time and what it found.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image

from app.datasets.report import build_report
from app.datasets.synthetic.generate import generate_demo_dataset


def leak(root: Path, n: int) -> None:
    """Copy ``n`` test photos into train, altered as a scraper's copies are."""
    tests = sorted((root / "test").rglob("*.jpg"))[:n]
    for k, path in enumerate(tests):
        with Image.open(path) as img:
            w, h = img.size
            c = int(min(w, h) * 0.03)
            copy = img.convert("RGB").crop((c, c, w - c, h - c))
            copy = copy.resize((max(16, int(copy.width * 0.8)), max(16, int(copy.height * 0.8))))
        copy.save(root / "train" / path.parent.name / f"leak-{k:03d}.jpg", quality=75)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", type=Path, default=None,
                    help="where the synthetic set is (made when missing)")
    ap.add_argument("--leaks", type=int, default=20)
    ap.add_argument("--show", action="store_true", help="print every group found")
    args = ap.parse_args()
    data = args.data or Path(tempfile.gettempdir()) / f"hotdog-report-bench-{args.images}"
    if not data.exists():
        per_class = max(1, (args.images - args.leaks) // 4)
        t = time.monotonic()
        generate_demo_dataset(data, train_per_class=per_class, test_per_class=per_class,
                              seed=0)
        leak(data, args.leaks)
        print(f"generated {data} in {time.monotonic() - t:.0f} s", file=sys.stderr)
    t, cpu = time.monotonic(), time.process_time()
    report = build_report(data, threads=args.threads)
    seconds, cpu = time.monotonic() - t, time.process_time() - cpu
    s = report["summary"]
    if args.show:
        for g in report["groups"]:
            print(g["scope"], g["kind"], g.get("max_distance"), [i["path"] for i in g["images"]])
    print(json.dumps({
        "images": s["images"], "threads": args.threads, "cpus": os.cpu_count(),
        "seconds": round(seconds, 1), "images_per_s": round(s["images"] / seconds, 1),
        # CPU time of the whole report (all threads): on a machine shared with other work,
        # the wall time is longer than cpu_seconds / threads.
        "cpu_seconds": round(cpu, 1), "load_average": round(os.getloadavg()[0], 1),
        "planted_leaks": args.leaks,
        "leakage_groups": s["leakage_groups"], "leaked_images": s["leaked_images"],
        "exact_groups": s["exact_groups"], "near_groups": s["near_groups"],
        "issues": s["issues"],
    }))


if __name__ == "__main__":
    main()
