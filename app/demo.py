"""``make demo``: demo data, a fine-tune and a prediction, start to finish, without the service.

Uses ImageNet weights when they are available (torchvision cache or
``HOTDOG_PRETRAINED_PATH``) with d2l's settings (224 px, 5 epochs, batch 128). Offline without
them it trains from scratch and says so, at 64 px for 8 epochs in batches of 16 with lr 0.05:
from scratch, 10 steps of d2l's batch 128 on 200 images would stay at chance, while these
settings learn the demo task in seconds on a CPU.
Settings: ``DATA_DIR`` (default ``./data``), ``EPOCHS``, ``IMAGE_SIZE``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from app import cli
from app.engine.model import PretrainedWeightsMissing, load_imagenet_state_dict


def main() -> int:
    data_dir = Path(os.environ.get("DATA_DIR", "data"))
    demo = data_dir / "demo"
    model = data_dir / "demo-model.pt"
    if not (demo / "train").is_dir():
        print(f"== generating the synthetic hotdog / not-hotdog dataset in {demo}", flush=True)
        if code := cli.main(["demo-data", str(demo)]):
            return code
    try:
        load_imagenet_state_dict()
        init, epochs, image_size, extra = "imagenet", "5", "224", []
    except PretrainedWeightsMissing as exc:
        print(f"== {exc}\n== so this run trains from scratch instead.", flush=True)
        init, epochs, image_size = "scratch", "8", "64"
        extra = ["--batch-size", "16", "--lr", "0.05"]
    epochs = os.environ.get("EPOCHS", epochs)
    image_size = os.environ.get("IMAGE_SIZE", image_size)
    print(f"== training ResNet-18 ({init}) for {epochs} epochs at {image_size} px", flush=True)
    code = cli.main(["train", str(demo), "--out", str(model), "--init", init,
                     "--epochs", epochs, "--image-size", image_size, *extra])
    if code:
        return code
    test_photos = sorted((demo / "test").glob("*/*.jpg"))
    photos = [test_photos[0], test_photos[-1]]
    print("== predicting two test photos", flush=True)
    code = cli.main(["predict", str(model), *map(str, photos)])
    print(f"\nnext: hotdog predict {model} YOUR_PHOTO.jpg   (hotdog --help for more)")
    return code


if __name__ == "__main__":
    sys.exit(main())
