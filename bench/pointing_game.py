"""The pointing game of tests/test_explain.py, with its figures printed: a ResNet-18 trained
from scratch (64 px crops, 6 epochs, seed 0) on photos of one coloured object each, placed
off-centre; for each correctly classified test photo, whether the Grad-CAM peak falls inside
the object's box; and the crop coverage of photos whose object lies outside the centre crop
against photos whose object is in the middle.

Usage::

    .venv/bin/python bench/pointing_game.py      # a few minutes on 2 cores
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    import numpy as np

    from app.engine import Predictor, TrainConfig, fit
    from app.engine.explain import Explainer
    from tests.helpers import CLASSES, object_photo, write_object_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        boxes = write_object_dataset(root / "data", train=48, test=16)
        cfg = TrainConfig(init="scratch", image_size=64, batch_size=16, epochs=6, seed=0,
                          val_fraction=0)
        started = time.perf_counter()
        fit(root / "data", cfg, root / "model.pt")
        trained = time.perf_counter() - started
        predictor, explainer = Predictor(root / "model.pt", device="cpu"), Explainer(
            root / "model.pt")
        hits = correct = 0
        started = time.perf_counter()
        for rel, (x0, y0, x1, y1) in boxes.items():
            label = predictor.predict([root / "data" / rel])[0].label
            if label != rel.split("/")[1]:
                continue
            correct += 1
            e = explainer.explain(root / "data" / rel, label)
            assert e.peak is not None
            hits += x0 <= e.peak[0] < x1 and y0 <= e.peak[1] < y1
        per_explanation = (time.perf_counter() - started) / len(boxes)
        rng = np.random.default_rng(7)
        outside, centred = [], []
        for cls in CLASSES:
            for box in ((4, 30, 40, 66), (184, 30, 220, 66)):
                outside.append(explainer.explain(object_photo(cls, box, (224, 96), rng),
                                                 cls).crop_coverage or 0.0)
            centred.append(explainer.explain(object_photo(cls, (94, 30, 130, 66), (224, 96),
                                                          rng), cls).crop_coverage or 0.0)
    print(f"trained in {trained:.0f} s; {correct}/{len(boxes)} test photos classified "
          f"correctly; the peak inside the object's box in {hits}/{correct} "
          f"({hits / max(1, correct):.0%}); {per_explanation * 1000:.0f} ms per photo "
          "(prediction + explanation)")
    print(f"crop coverage, object outside the crop: mean {statistics.mean(outside):.2f} "
          f"(max {max(outside):.2f}); object in the middle: mean {statistics.mean(centred):.2f} "
          f"(min {min(centred):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
