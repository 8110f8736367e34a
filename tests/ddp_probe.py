"""Run by tests/test_ddp.py under ``torchrun``: ``fit`` on every rank, with a record of what
each rank trained on and what its callback saw, written to ``OUT/rank<R>.json``.

``python -m torch.distributed.run --standalone --nproc-per-node N -m tests.ddp_probe
DATA OUT CONFIG_JSON``
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from app.engine import train
from app.engine.callback import BatchProgress, Callback, EpochMetrics, StartInfo
from app.engine.config import TrainConfig


def main() -> None:
    data, out, config = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    rank = int(os.environ["RANK"])
    record: dict[str, Any] = {"rank": rank, "epochs": [], "callback": []}
    original = train.train_one_epoch

    def recording_train_one_epoch(model: Any, loader: Any, *args: Any, **kwargs: Any) -> Any:
        # The images this rank trains on in this epoch, and the (reduced) totals it returns.
        indices = [i for batch in loader.batch_sampler for i in batch]
        loss, acc, seen, seconds = original(model, loader, *args, **kwargs)
        record["epochs"].append({"indices": indices, "loss": loss, "acc": acc, "seen": seen})
        return loss, acc, seen, seconds

    train.train_one_epoch = recording_train_one_epoch

    class Recorder(Callback):
        def on_start(self, info: StartInfo) -> None:
            record["callback"].append(["start", info.train_count, info.world_size])

        def on_batch(self, progress: BatchProgress) -> None:
            record["callback"].append(["batch", progress.epoch, progress.batch, progress.images])

        def on_epoch(self, metrics: EpochMetrics) -> None:
            record["callback"].append(["epoch", metrics.to_dict()])

        def on_checkpoint(self, path: Path, epoch: int) -> None:
            record["callback"].append(["checkpoint", epoch])

    result = train.fit(data, TrainConfig.from_dict(config), out / "model.pt", callback=Recorder(),
                       epoch_checkpoint=out / "last.pt")
    record["history"] = [m.to_dict() for m in result.history]
    assert result.evaluation is not None
    record["evaluation"] = result.evaluation.to_dict()
    (out / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
