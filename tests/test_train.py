from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from app.engine import (
    Callback,
    CheckpointError,
    DatasetError,
    EpochMetrics,
    ImageDecodeError,
    Predictor,
    TrainConfig,
    TrainingCancelled,
    fit,
    load_checkpoint,
)
from app.engine.callback import BatchProgress
from app.engine.checkpoint import save_checkpoint
from app.engine.train import TrainingDiverged
from tests.helpers import TINY


class Recorder(Callback):
    def __init__(self) -> None:
        self.epochs: list[EpochMetrics] = []
        self.batches: list[BatchProgress] = []
        self.checkpoints: list[int] = []

    def on_epoch(self, metrics: EpochMetrics) -> None:
        self.epochs.append(metrics)

    def on_batch(self, progress: BatchProgress) -> None:
        self.batches.append(progress)

    def on_checkpoint(self, path: Path, epoch: int) -> None:
        assert load_checkpoint(path)["epoch"] == epoch
        self.checkpoints.append(epoch)


def test_learns_the_demo_task_from_scratch(demo_dataset: Path, tmp_path: Path) -> None:
    # Plain SGD as the recipe: with momentum 0.9 at this lr the BatchNorm running statistics
    # lag the weights and test accuracy swings from epoch to epoch on so few images.
    cfg = TrainConfig(init="scratch", image_size=64, batch_size=16, epochs=8, lr=0.05,
                      precision="fp32")
    rec = Recorder()
    result = fit(demo_dataset, cfg, tmp_path / "m.pt", callback=rec)
    losses = [m.train_loss for m in rec.epochs]
    assert len(rec.epochs) == 8 and [m.epoch for m in rec.epochs] == list(range(1, 9))
    assert min(losses[-3:]) < losses[0]
    assert result.test_acc >= 0.7, [m.test_acc for m in rec.epochs]  # chance is 0.5
    assert all(m.images_per_s > 0 and m.seconds > 0 for m in rec.epochs)


def test_callback_sees_every_batch_epoch_and_checkpoint(color_dataset: Path,
                                                        tmp_path: Path) -> None:
    rec = Recorder()
    result = fit(color_dataset, TrainConfig(**TINY, epochs=2), tmp_path / "m.pt",
                 callback=rec, epoch_checkpoint=tmp_path / "last.pt")
    assert rec.checkpoints == [1, 2]
    # 16 images, one per class held out for validation (val_fraction 0.1), batch 8
    assert [b.batch for b in rec.batches] == [1, 2, 1, 2]
    assert rec.batches[-1].images == 14
    assert result.evaluation is not None and result.evaluation.count == 8


def test_checkpoint_contents_round_trip(color_dataset: Path, tmp_path: Path) -> None:
    result = fit(color_dataset, TrainConfig(**TINY, epochs=1, seed=3), tmp_path / "m.pt")
    ck = load_checkpoint(result.checkpoint)
    assert ck["format"] == "hotdog.checkpoint" and ck["arch"] == "resnet18"
    assert ck["classes"] == ["hotdog", "not-hotdog"]
    assert ck["preprocessing"] == {"image_size": 32, "resize_size": 37,
                                   "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert ck["params"]["lr"] == 0.064 and ck["params"]["seed"] == 3 and ck["epoch"] == 1
    assert ck["complete"] and ck["evaluation"]["confusion"] and ck["metrics"]["test_acc"] >= 0
    assert "param_groups" in ck["optimizer"] and len(ck["history"]) == 1
    assert ck["compute"]["device"] == "cpu" and ck["compute"]["precision"] in ("fp32", "bf16")
    # The weights load back into a model that predicts exactly as the training's evaluation.
    predictor = Predictor(result.checkpoint, device="cpu")
    ev, preds = predictor.evaluate_folder(color_dataset)
    assert ev.confusion == ck["evaluation"]["confusion"]
    assert ev.loss == pytest.approx(ck["evaluation"]["loss"], rel=1e-5)
    assert len(preds) == 8 and all(abs(sum(p.probabilities.values()) - 1) < 1e-5 for p in preds)


def test_fp32_and_bf16_both_train_and_are_recorded(color_dataset: Path, tmp_path: Path) -> None:
    for precision in ("fp32", "bf16"):
        result = fit(color_dataset, TrainConfig(**TINY, epochs=1, precision=precision),
                     tmp_path / f"{precision}.pt")
        assert load_checkpoint(result.checkpoint)["compute"]["precision"] == precision
        assert result.history[0].train_loss == result.history[0].train_loss  # not NaN


def test_same_seed_same_weights(color_dataset: Path, tmp_path: Path) -> None:
    a = fit(color_dataset, TrainConfig(**TINY, epochs=1), tmp_path / "a.pt")
    b = fit(color_dataset, TrainConfig(**TINY, epochs=1), tmp_path / "b.pt")
    sa, sb = load_checkpoint(a.checkpoint)["model"], load_checkpoint(b.checkpoint)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_equals_uninterrupted(color_dataset: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(**TINY, epochs=4, momentum=0.9, seed=7)  # momentum: optimiser state too
    straight = fit(color_dataset, cfg, tmp_path / "straight.pt")
    first = fit(color_dataset, TrainConfig(**TINY, epochs=2, momentum=0.9, seed=7),
                tmp_path / "first.pt", epoch_checkpoint=tmp_path / "last.pt")
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2
    resumed = fit(color_dataset, cfg, tmp_path / "resumed.pt", resume_from=tmp_path / "last.pt")
    s, r = (load_checkpoint(x.checkpoint) for x in (straight, resumed))
    for k in s["model"]:
        assert torch.equal(s["model"][k], r["model"][k]), k
    assert [m["train_loss"] for m in r["history"]] == [m["train_loss"] for m in s["history"]]
    assert len(r["history"]) == 4
    assert r["history"][:2] == load_checkpoint(first.checkpoint)["history"]


def test_resume_applies_the_new_learning_rate(color_dataset: Path, tmp_path: Path) -> None:
    fit(color_dataset, TrainConfig(**TINY, epochs=1, lr=0.01), tmp_path / "m.pt")
    resumed = fit(color_dataset, TrainConfig(**TINY, epochs=2, lr=0.02), tmp_path / "r.pt",
                  resume_from=tmp_path / "m.pt")
    groups = load_checkpoint(resumed.checkpoint)["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [pytest.approx(0.02), pytest.approx(0.02)]  # scratch: x1


def test_resume_refuses_other_classes(color_dataset: Path, tmp_path: Path) -> None:
    fit(color_dataset, TrainConfig(**TINY, epochs=1), tmp_path / "m.pt")
    other = tmp_path / "other"
    shutil.copytree(color_dataset, other)
    for split in ("train", "test"):
        (other / split / "not-hotdog").rename(other / split / "pizza")
    with pytest.raises(ValueError, match="classes"):
        fit(other, TrainConfig(**TINY, epochs=2), tmp_path / "x.pt", resume_from=tmp_path / "m.pt")


def test_start_from_an_earlier_checkpoint(color_dataset: Path, tmp_path: Path) -> None:
    first = fit(color_dataset, TrainConfig(**TINY, epochs=1), tmp_path / "first.pt")
    second = fit(color_dataset, TrainConfig(**{**TINY, "init": str(first.checkpoint)}, epochs=1,
                                            lr=0.0001), tmp_path / "second.pt")
    ck = load_checkpoint(second.checkpoint)
    assert ck["params"]["init"] == str(first.checkpoint) and ck["params"]["head_lr_mult"] == 10
    with pytest.raises(ValueError, match="checkpoint"):
        fit(color_dataset, TrainConfig(**{**TINY, "init": str(tmp_path / "nope.pt")}),
            tmp_path / "third.pt")


def test_callback_can_cancel_between_batches(color_dataset: Path, tmp_path: Path) -> None:
    class StopAfterOneBatch(Recorder):
        def should_stop(self) -> bool:
            return len(self.batches) >= 1

    rec = StopAfterOneBatch()
    with pytest.raises(TrainingCancelled):
        fit(color_dataset, TrainConfig(**TINY, epochs=3), tmp_path / "m.pt", callback=rec)
    assert len(rec.batches) == 1 and not rec.epochs and not (tmp_path / "m.pt").exists()


def test_corrupt_image_in_dataset_names_the_file(color_dataset: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(color_dataset, data)
    (data / "train" / "hotdog" / "003.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(ImageDecodeError, match=r"train/hotdog/003\.jpg"):
        fit(data, TrainConfig(**TINY, epochs=1), tmp_path / "m.pt")


def test_corrupt_image_is_found_without_the_cache_too(color_dataset: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(color_dataset, data)
    (data / "test" / "hotdog" / "001.jpg").write_text("not an image")
    with pytest.raises(ImageDecodeError, match=r"test/hotdog/001\.jpg"):
        fit(data, TrainConfig(**TINY, epochs=1, cache_bytes=0), tmp_path / "m.pt")


def test_uncached_run_equals_cached_run(color_dataset: Path, tmp_path: Path) -> None:
    a = fit(color_dataset, TrainConfig(**TINY, epochs=1), tmp_path / "a.pt")
    b = fit(color_dataset, TrainConfig(**TINY, epochs=1, cache_bytes=0), tmp_path / "b.pt")
    assert a.history[0].train_loss == b.history[0].train_loss
    assert a.evaluation == b.evaluation


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: shutil.rmtree(d / "test"), "missing the 'test/' folder"),
        (lambda d: shutil.copytree(d / "test" / "hotdog", d / "test" / "pizza"),
         r"same classes \(only in train: -; only in test: \['pizza'\]\)"),
        (lambda d: [shutil.rmtree(d / s / "hotdog") for s in ("train", "test")],
         "at least 2 class folders"),
        (lambda d: [p.unlink() for p in (d / "train" / "hotdog").iterdir()],
         "without images: hotdog"),
    ],
)
def test_bad_dataset_layouts(color_dataset: Path, tmp_path: Path, mutate, message: str) -> None:
    data = tmp_path / "data"
    shutil.copytree(color_dataset, data)
    mutate(data)
    with pytest.raises(DatasetError, match=message):
        fit(data, TrainConfig(**TINY, epochs=1), tmp_path / "m.pt")


def test_missing_imagenet_fails_before_decoding(color_dataset: Path, tmp_path: Path,
                                                no_imagenet: Path) -> None:
    from app.engine import PretrainedWeightsMissing

    with pytest.raises(PretrainedWeightsMissing, match="HOTDOG_PRETRAINED_PATH"):
        fit(color_dataset, TrainConfig(init="imagenet", image_size=32, epochs=1), tmp_path / "m.pt")


def test_batch_of_one_at_the_end_is_dropped(color_dataset: Path, tmp_path: Path) -> None:
    # 16 training images with batch 5 leave a last batch of 1, which BatchNorm cannot train on.
    rec = Recorder()
    fit(color_dataset, TrainConfig(**{**TINY, "batch_size": 5}, epochs=1, val_fraction=0),
        tmp_path / "m.pt", callback=rec)
    assert rec.batches[-1].images == 15


def test_crash_while_writing_checkpoint_keeps_the_previous(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ck.pt"
    good = {"model": {"w": torch.ones(2)}, "classes": ["a", "b"], "preprocessing": {},
            "params": {}, "epoch": 1}
    save_checkpoint(good, path)

    def explode(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", explode)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({**good, "epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temp files left


def test_pickle_payload_checkpoint_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    torch.save({"format": "hotdog.checkpoint", "version": 1, "model": Evil()}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_run_whose_losses_blow_up_fails_saying_so(demo_dataset: Path, tmp_path: Path) -> None:
    # lr 10 from scratch, the head at 100x and momentum 0.99: the weights blow up in the
    # first epoch; the losses are nan or inf, which no epoch row, JSON answer or model
    # selection can use. (lr 10 alone gave nan in bf16 but losses of 1e33, finite, in fp32 on
    # a CPU without native bf16; these settings give nan in both.)
    rec = Recorder()
    cfg = TrainConfig(**{**TINY, "init": "scratch", "lr": 10.0, "head_lr_mult": 100.0,
                         "momentum": 0.99, "epochs": 2})
    with pytest.raises(TrainingDiverged, match=r"diverged at epoch 1: .*loss (nan|inf).* lower lr"):
        fit(demo_dataset, cfg, tmp_path / "m.pt", callback=rec)
    assert not rec.epochs and not (tmp_path / "m.pt").exists()
