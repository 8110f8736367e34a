"""How well the label review finds flipped labels, by backbone, and how long it takes.

On the synthetic hotdog / not-hotdog photos (``app.datasets.synthetic``) with ``--noise``
of the training labels flipped (seeded), it fine-tunes a model on the noisy labels from a
pretrained start (ImageNet weights when the machine has them, else, as ``hotdog demo``
does, a ResNet-18 trained first on a different synthetic task: six other foods), then
reviews the noisy labels with each backbone:

- ``start``: the backbone the fine-tune started from (what the review uses by default);
- ``fine-tuned``: the fine-tuned model's own backbone, which has seen the wrong labels;
- ``scratch``: random weights (seeded), the baseline a backbone must beat.

For each it prints, as one JSON line at the end (and a table before it): the precision and
recall of the top k of the ranking (k = the number flipped; equal by construction), the
precision and recall of the set cleanlab flagged, the out-of-sample accuracy of the
logistic regression against the noisy labels, and the seconds (embedding, classification,
ranking).

    python bench/label_review.py                         # the README's figures
    python bench/label_review.py --train-per-class 30 --epochs 2   # a quick look
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.datasets.label_noise import flip_labels  # noqa: E402
from app.engine import TrainConfig, fit  # noqa: E402
from app.engine.catalogue import catalogue  # noqa: E402
from app.engine.config import INIT_IMAGENET, INIT_SCRATCH  # noqa: E402
from app.engine.errors import PretrainedWeightsMissing  # noqa: E402
from app.engine.model import load_imagenet_state_dict  # noqa: E402
from app.engine.review import (  # noqa: E402
    ReviewConfig,
    choose_backbone,
    precision_recall_at,
    review_labels,
)

FOODS = ("pizza", "salad", "fruit", "donut", "berries", "broccoli")


def _start(args: argparse.Namespace, out: Path) -> tuple[str, str]:
    """The fine-tune's start (``imagenet`` or a checkpoint path) and how it is named."""
    if not args.pretext:
        try:
            load_imagenet_state_dict()
            return INIT_IMAGENET, "imagenet"
        except PretrainedWeightsMissing:
            pass
    from app.datasets.synthetic import generate_food_dataset

    ckpt = out / f"pretext-{args.image_size}px-{args.pretext_epochs}ep.pt"
    if not ckpt.is_file():
        foods = out / "foods"
        if not (foods / "train").is_dir():
            generate_food_dataset(foods, foods=FOODS, train_per_class=args.pretext_per_class,
                                  test_per_class=max(1, args.pretext_per_class // 3),
                                  seed=args.seed, min_side=args.image_size,
                                  max_side=2 * args.image_size)
        fit(foods, TrainConfig(init=INIT_SCRATCH, epochs=args.pretext_epochs,
                               image_size=args.image_size, batch_size=args.batch_size,
                               seed=args.seed, val_fraction=0), ckpt)
    return str(ckpt), "pretext (a model of six other foods)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("data/bench-label-review"))
    p.add_argument("--noise", type=float, default=0.1, help="share of training labels flipped")
    p.add_argument("--train-per-class", type=int, default=100)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=8, help="of the fine-tune on noisy labels")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--pretext-epochs", type=int, default=8)
    p.add_argument("--pretext-per-class", type=int, default=60)
    p.add_argument("--pretext", action="store_true",
                   help="start from the other-task model even where ImageNet weights exist")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from app.datasets.synthetic import generate_demo_dataset

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    clean = out / f"hotdog-{args.train_per_class}-{args.image_size}px-s{args.seed}"
    if not (clean / "train").is_dir():
        generate_demo_dataset(clean, train_per_class=args.train_per_class, test_per_class=20,
                              seed=args.seed, min_side=args.image_size,
                              max_side=2 * args.image_size)
    noisy = out / f"{clean.name}-noise{round(100 * args.noise)}"
    shutil.rmtree(noisy, ignore_errors=True)
    truth = flip_labels(clean, noisy, fraction=args.noise, seed=args.seed)
    flipped = {e.id for e in catalogue(noisy) if e.path in truth}
    start, start_name = _start(args, out)
    model = out / "noisy.pt"
    t0 = time.perf_counter()
    result = fit(noisy, TrainConfig(init=start, epochs=args.epochs, image_size=args.image_size,
                                    batch_size=args.batch_size, seed=args.seed,
                                    val_fraction=0), model)
    train_seconds = time.perf_counter() - t0
    rows = {}
    for name, backbone in (
            ("start", choose_backbone(model, start=start, start_name=start_name,
                                      prefer="start", seed=args.seed)),
            ("fine-tuned", choose_backbone(model, prefer="fine-tuned", seed=args.seed)),
            ("scratch", choose_backbone(start=INIT_SCRATCH, image_size=args.image_size,
                                        seed=args.seed))):
        review = review_labels(noisy, backbone, ReviewConfig(seed=args.seed))
        at_k, recall_k = precision_recall_at(review.ranking, flipped)
        flagged = {i.image_id for i in review.issues}
        found = len(flagged & flipped)
        rows[name] = {
            "backbone": review.backbone, "precision_at_k": at_k, "recall_at_k": recall_k,
            "flagged": len(flagged), "flagged_precision": found / len(flagged) if flagged
            else 0.0, "flagged_recall": found / len(flipped) if flipped else 0.0,
            "cv_accuracy": review.cv_accuracy,
            "seconds": {k: round(v, 2) for k, v in review.seconds.items()},
            "total_seconds": round(sum(review.seconds.values()), 2)}
    train_images = sum(1 for e in catalogue(noisy) if e.split == "train")
    print(f"{len(truth)} of {train_images} training images flipped; fine-tune from "
          f"{start_name}: {args.epochs} epochs, test accuracy {result.test_acc:.3f} on the "
          f"noisy labels ({train_seconds:.0f} s)",
          file=sys.stderr)
    print(f"{'backbone':<11} {'P@k':>5} {'R@k':>5} {'flagged':>7} {'P':>5} {'R':>5} "
          f"{'cv acc':>6} {'seconds':>7}", file=sys.stderr)
    for name, r in rows.items():
        print(f"{name:<11} {r['precision_at_k']:>5.2f} {r['recall_at_k']:>5.2f} "
              f"{r['flagged']:>7} {r['flagged_precision']:>5.2f} {r['flagged_recall']:>5.2f} "
              f"{r['cv_accuracy']:>6.3f} {r['total_seconds']:>7.1f}", file=sys.stderr)
    print(json.dumps({"noise": args.noise, "flipped": len(truth), "images": train_images,
                      "start": start_name,
                      "train_per_class": args.train_per_class, "image_size": args.image_size,
                      "epochs": args.epochs, "noisy_test_acc": result.test_acc,
                      "train_seconds": round(train_seconds, 1), "backbones": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
