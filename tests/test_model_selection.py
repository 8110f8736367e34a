"""Choosing the model without the test split: the validation split (a dataset's val/ folder,
or a stratified, seeded share of train), the epoch it selects, early stopping, the learning
rate schedule, class imbalance and the calibrated temperature."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from app.engine import (
    Callback,
    StartInfo,
    TrainConfig,
    TrainingCancelled,
    fit,
    load_checkpoint,
    load_image_folder,
)
from app.engine.split import validation_split
from tests.helpers import TINY, write_color_dataset


class Started(Callback):
    def __init__(self) -> None:
        self.info: StartInfo | None = None

    def on_start(self, info: StartInfo) -> None:
        self.info = info


def _per_class(samples: list[tuple[Path, int]]) -> dict[int, int]:
    return dict(Counter(label for _, label in samples))


# --------------------------------------------------------------------- the validation split


def test_carved_split_is_stratified_seeded_and_leaves_every_class_some_training(
        tmp_path: Path) -> None:
    root = write_color_dataset(tmp_path / "d", train=10, test=1)
    splits = load_image_folder(root)
    split = validation_split(splits, 0.2, seed=3)
    assert split.source == "carved" and _per_class(split.val) == {0: 2, 1: 2}
    assert sorted(split.train + split.val) == sorted(splits.train)
    assert not {p for p, _ in split.train} & {p for p, _ in split.val}
    assert validation_split(splits, 0.2, seed=3).val == split.val  # seeded
    assert validation_split(splits, 0.2, seed=4).val != split.val
    # At least one image per class, however small the fraction; never a class's last one.
    assert _per_class(validation_split(splits, 0.01, seed=0).val) == {0: 1, 1: 1}
    two = write_color_dataset(tmp_path / "two", train=2, test=1)
    assert _per_class(validation_split(load_image_folder(two), 0.5, seed=0).train) == {0: 1, 1: 1}
    assert not validation_split(splits, 0.0, seed=0).exists  # 0: no validation split


def test_carved_split_follows_each_class_size(tmp_path: Path) -> None:
    root = write_color_dataset(tmp_path / "d", train=20, test=1)
    for p in sorted((root / "train" / "not-hotdog").iterdir())[5:]:
        p.unlink()  # 20 hotdogs, 5 others
    split = validation_split(load_image_folder(root), 0.2, seed=0)
    assert _per_class(split.val) == {0: 4, 1: 1}


def test_a_class_with_one_training_image_cannot_give_one_to_validation(tmp_path: Path) -> None:
    root = write_color_dataset(tmp_path / "d", train=1, test=1)
    with pytest.raises(ValueError, match="val_fraction: class 'hotdog' has 1 training image"):
        validation_split(load_image_folder(root), 0.1, seed=0)
    assert not validation_split(load_image_folder(root), 0.0, seed=0).exists


def test_the_split_is_recorded_and_a_resumed_run_keeps_it(color_dataset: Path,
                                                          tmp_path: Path) -> None:
    fit(color_dataset, TrainConfig(**TINY, epochs=1, val_fraction=0.25), tmp_path / "a.pt",
        epoch_checkpoint=tmp_path / "last.pt")
    recorded = load_checkpoint(tmp_path / "last.pt")["split"]
    expected = validation_split(load_image_folder(color_dataset), 0.25, seed=0)
    assert recorded["source"] == "carved" and recorded["seed"] == 0
    assert recorded["images"] == [str(p.relative_to(color_dataset)) for p, _ in expected.val]
    assert len(recorded["images"]) == 4 and all(i.startswith("train/") for i in recorded["images"])
    # Asked for another fraction, the resumed run still validates on the recorded images.
    started = Started()
    fit(color_dataset, TrainConfig(**TINY, epochs=2, val_fraction=0.5), tmp_path / "b.pt",
        resume_from=tmp_path / "last.pt", callback=started)
    assert load_checkpoint(tmp_path / "b.pt")["split"] == recorded
    info = started.info
    assert info is not None and (info.train_count, info.val_count) == (12, 4)


def test_the_datasets_val_folder_is_used_when_present(color_dataset: Path,
                                                      tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(color_dataset, data)
    for cls in ("hotdog", "not-hotdog"):
        (data / "val" / cls).mkdir(parents=True)
        for p in sorted((data / "train" / cls).iterdir())[:3]:
            p.rename(data / "val" / cls / p.name)
    assert load_image_folder(data).counts()["val"] == {"hotdog": 3, "not-hotdog": 3}
    started = Started()
    # fp32 and a gentle lr: this test is about the split, and scratch's lr in bf16 can
    # diverge in one epoch on 10 images on some CPUs.
    result = fit(data, TrainConfig(**{**TINY, "lr": 0.01, "precision": "fp32"}, epochs=1),
                 tmp_path / "m.pt", callback=started)
    split = load_checkpoint(result.checkpoint)["split"]
    assert split["source"] == "folder" and len(split["images"]) == 6
    assert all(i.startswith("val/") for i in split["images"])
    info = started.info
    assert info is not None and (info.train_count, info.val_count) == (10, 6)
    m = result.history[0]
    assert m.val_loss is not None and m.val_acc is not None and m.val_macro_f1 is not None


def test_val_folder_must_have_the_training_classes(color_dataset: Path, tmp_path: Path) -> None:
    from app.engine import DatasetError

    data = tmp_path / "data"
    shutil.copytree(color_dataset, data)
    shutil.copytree(data / "test" / "hotdog", data / "val" / "hotdog")
    with pytest.raises(DatasetError, match=r"train and val must have the same classes"):
        load_image_folder(data)


def test_without_a_split_there_are_no_validation_metrics(color_dataset: Path,
                                                         tmp_path: Path) -> None:
    result = fit(color_dataset, TrainConfig(**TINY, epochs=1, val_fraction=0), tmp_path / "m.pt")
    m = result.history[0]
    assert (m.val_loss, m.val_acc, m.val_macro_f1) == (None, None, None)
    split = load_checkpoint(result.checkpoint)["split"]
    assert split["source"] is None and split["images"] == []


# --------------------------------------------------------------------- the kept epoch

# A run whose validation loss goes up and down (19.1, 0.36, 6.29, 0.016, 0.17, ...: fp32 on
# the CPU, seed 1) and whose test accuracy varies (0.5, 0.75, 0.5, 1.0, ...), on 18
# training, 6 validation and 12 test images at 32 px.
MOVING = {**TINY, "batch_size": 2, "lr": 0.01, "precision": "fp32", "seed": 1,
          "val_fraction": 0.25}


@pytest.fixture(scope="module")
def moving_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_color_dataset(tmp_path_factory.mktemp("moving"), train=12, test=6)


def test_the_best_epoch_on_validation_is_kept_and_early_stopping_ends_the_run(
        moving_dataset: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(**MOVING, epochs=6, early_stopping_patience=1)
    result = fit(moving_dataset, cfg, tmp_path / "m.pt", epoch_checkpoint=tmp_path / "last.pt")
    losses = [m.val_loss for m in result.history]
    assert all(v is not None for v in losses)
    best = min(range(len(losses)), key=lambda i: (losses[i], i)) + 1
    # It ran until an epoch failed to beat the best one (patience 1), then stopped.
    done = len(result.history)
    assert done < 6 and done == best + 1, losses
    assert result.selected_epoch == best and result.note is not None
    assert f"stopped early after epoch {done} of 6" in result.note
    final, last, kept = (load_checkpoint(tmp_path / f) for f in ("m.pt", "last.pt", "best.pt"))
    assert final["selected_epoch"] == kept["epoch"] == best and final["epoch"] == done
    assert final["note"] == result.note and final["metrics"] == result.history[best - 1].to_dict()
    # The checkpoint holds the best epoch's model (best.pt's), not the last one's.
    assert all(torch.equal(final["model"][k], kept["model"][k]) for k in final["model"])
    assert not all(torch.equal(final["model"][k], last["model"][k]) for k in final["model"])
    # Its evaluation is that model's on test: the kept epoch's test figures.
    assert result.evaluation is not None
    assert result.evaluation.accuracy == result.history[best - 1].test_acc == result.test_acc
    assert result.evaluation.loss == pytest.approx(result.history[best - 1].test_loss)


def test_select_last_keeps_the_last_epoch(moving_dataset: Path, tmp_path: Path) -> None:
    result = fit(moving_dataset, TrainConfig(**MOVING, epochs=3, select="last"),
                 tmp_path / "m.pt", epoch_checkpoint=tmp_path / "last.pt")
    final, last = load_checkpoint(tmp_path / "m.pt"), load_checkpoint(tmp_path / "last.pt")
    assert result.selected_epoch == 3 and final["select"]["mode"] == "last"
    assert all(torch.equal(final["model"][k], last["model"][k]) for k in final["model"])
    assert not (tmp_path / "best.pt").exists()


def test_selection_never_reads_the_test_split(moving_dataset: Path, tmp_path: Path) -> None:
    """The same run on a dataset whose test labels are swapped keeps the same epoch (and
    the same temperature): nothing it chooses depends on the test split."""
    poisoned = tmp_path / "poisoned"
    shutil.copytree(moving_dataset, poisoned)
    (poisoned / "test" / "hotdog").rename(poisoned / "test" / "swap")
    (poisoned / "test" / "not-hotdog").rename(poisoned / "test" / "hotdog")
    (poisoned / "test" / "swap").rename(poisoned / "test" / "not-hotdog")
    cfg = TrainConfig(**MOVING, epochs=3)
    clean = fit(moving_dataset, cfg, tmp_path / "clean.pt")
    dirty = fit(poisoned, cfg, tmp_path / "dirty.pt")
    clean_acc = [m.test_acc for m in clean.history]
    # (1 - 2/3 is 0.33333333333333337 in floating point, 1/3 is 0.3333333333333333)
    assert [m.test_acc for m in dirty.history] == pytest.approx([1 - a for a in clean_acc])
    # A choice that read test accuracy would differ between the two runs.
    assert len(set(clean_acc)) > 1, clean_acc
    assert dirty.selected_epoch == clean.selected_epoch
    assert [m.val_loss for m in dirty.history] == [m.val_loss for m in clean.history]
    a, b = load_checkpoint(clean.checkpoint), load_checkpoint(dirty.checkpoint)
    assert a.get("temperature") == b.get("temperature")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_selection_needs_a_validation_split(color_dataset: Path, tmp_path: Path) -> None:
    for asked in ({"select": "best"}, {"early_stopping_patience": 2}):
        with pytest.raises(ValueError, match="needs a validation split"):
            fit(color_dataset, TrainConfig(**TINY, epochs=1, val_fraction=0, **asked),
                tmp_path / "m.pt")


def test_pick_keeps_the_first_best_and_falls_back_to_the_last() -> None:
    from app.engine import selection

    rows = [{"epoch": 1, "val_loss": 0.5, "val_acc": 0.9},
            {"epoch": 2, "val_loss": 0.3, "val_acc": 0.9},
            {"epoch": 3, "val_loss": float("nan"), "val_acc": 0.8}]
    assert selection.pick(rows, "best", "val_loss")["epoch"] == 2
    assert selection.pick(rows, "best", "val_acc")["epoch"] == 1  # a tie keeps the earlier
    assert selection.pick(rows, "last", "val_loss")["epoch"] == 3
    diverged = [{"epoch": 1, "val_loss": float("nan")}, {"epoch": 2, "val_loss": None}]
    assert selection.pick(diverged, "best", "val_loss")["epoch"] == 2
    assert selection.resolve("auto", has_val=True) == "best"
    assert selection.resolve("auto", has_val=False) == "last"


# --------------------------------------------------------------------- the lr schedule


def _rates(schedule: str, epochs: int, **kwargs: int | float) -> list[float]:
    """The backbone's rate in each epoch (lr 1)."""
    from app.engine.schedule import advance, make_scheduler

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = make_scheduler(optimizer, schedule=schedule, epochs=epochs, **kwargs)
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        advance(scheduler)
    return rates


def test_schedules_rates_by_epoch() -> None:
    assert _rates("constant", 3, warmup=0) == [1.0, 1.0, 1.0]
    assert _rates("constant", 3, warmup=1) == [0.5, 1.0, 1.0]
    assert _rates("cosine", 4, warmup=1) == pytest.approx([0.5, 1.0, 0.75, 0.25])
    assert _rates("step", 6, warmup=0) == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert _rates("step", 4, warmup=0, every=3, gamma=0.5) == pytest.approx([1, 1, 1, 0.5])
    with pytest.raises(ValueError, match="warmup_epochs must be fewer than epochs"):
        TrainConfig(epochs=2, warmup_epochs=2).resolved()


class StopAfter(Callback):
    """Stops the run (as a cancel or a killed worker would) once epoch N is checkpointed."""

    def __init__(self, epoch: int) -> None:
        self.epoch, self.stop = epoch, False

    def on_checkpoint(self, path: Path, epoch: int) -> None:
        self.stop = epoch >= self.epoch

    def should_stop(self) -> bool:
        return self.stop


def _untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in ("images_per_s", "seconds")}
            for m in history]


def _earlier_best(history: list[Any], metric: str) -> int:
    """An epoch to stop after at which the run's best epoch is already behind (the
    trajectory, and so that epoch, differs between CPUs): the kept model then comes from
    the best.pt written before the stop."""
    from app.engine import selection

    rows = [m.to_dict() for m in history]
    best = selection.pick(rows, "best", metric)["epoch"]
    for stop in range(best + 1, len(rows)):
        if selection.pick(rows[:stop], "best", metric)["epoch"] == best:
            return stop
    raise AssertionError(f"no epoch of this run has an earlier best {metric}: {rows}")


@pytest.mark.parametrize(("schedule", "metric", "stop"), [
    ("cosine", "val_loss", 2),  # the best epoch is the checkpoint's own
    ("constant", "val_acc", None),  # the best epoch is earlier: its model comes from best.pt
])
def test_resume_with_a_schedule_and_a_validation_split_equals_the_uninterrupted_run(
        moving_dataset: Path, tmp_path: Path, schedule: str, metric: str,
        stop: int | None) -> None:
    cfg = TrainConfig(**MOVING, epochs=5, lr_schedule=schedule, select_metric=metric,
                      momentum=0.5 if schedule == "cosine" else 0.0)
    straight = fit(moving_dataset, cfg, tmp_path / "straight.pt")
    if stop is None:
        stop = _earlier_best(straight.history, metric)
    last = tmp_path / "last.pt"
    with pytest.raises(TrainingCancelled):
        fit(moving_dataset, cfg, tmp_path / "x.pt", epoch_checkpoint=last,
            callback=StopAfter(stop))
    interrupted = load_checkpoint(last)
    assert interrupted["epoch"] == stop
    if metric == "val_acc":
        assert interrupted["best"]["epoch"] < stop  # what this case is for
    resumed = fit(moving_dataset, cfg, tmp_path / "resumed.pt", resume_from=last,
                  epoch_checkpoint=last)
    s, r = load_checkpoint(straight.checkpoint), load_checkpoint(resumed.checkpoint)
    for k in s["model"]:
        assert torch.equal(s["model"][k], r["model"][k]), k
    assert _untimed(r["history"]) == _untimed(s["history"])
    assert r["selected_epoch"] == s["selected_epoch"] == straight.selected_epoch
    assert r["scheduler"] == s["scheduler"] and r["best"] == s["best"]
    assert [g["lr"] for g in r["optimizer"]["param_groups"]] == \
        [g["lr"] for g in s["optimizer"]["param_groups"]]
    if metric == "val_acc":
        assert straight.selected_epoch == interrupted["best"]["epoch"]


# --------------------------------------------------------------------- imbalanced classes


def _imbalanced(root: Path, many: int = 12, few: int = 4) -> Path:
    write_color_dataset(root, train=many, test=2)
    for p in sorted((root / "train" / "not-hotdog").iterdir())[few:]:
        p.unlink()
    return root


def test_balanced_class_weights_weight_each_images_loss(tmp_path: Path) -> None:
    from app.engine.imbalance import balanced_class_weights
    from app.engine.train import image_loss

    samples = [(tmp_path / f"{i}", 0) for i in range(20)] + [(tmp_path / f"b{i}", 1)
                                                            for i in range(5)]
    weights = balanced_class_weights(samples, 2)
    assert weights.tolist() == pytest.approx([25 / 40, 25 / 10])  # n / (classes x n_class)
    assert (20 * weights[0] + 5 * weights[1]) / 25 == pytest.approx(1.0)  # mean 1
    logits, targets = torch.randn(6, 2), torch.tensor([0, 0, 0, 0, 1, 1])
    per_image = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    assert image_loss(logits, targets, weights) == pytest.approx(
        float((weights[targets] * per_image).mean()))
    assert image_loss(logits, targets) == pytest.approx(float(per_image.mean()))


def test_class_weights_change_what_is_learned(tmp_path: Path) -> None:
    data = _imbalanced(tmp_path / "d")
    base = {**TINY, "epochs": 1, "val_fraction": 0, "precision": "fp32"}
    plain = fit(data, TrainConfig(**base), tmp_path / "plain.pt")
    weighted = fit(data, TrainConfig(**base, class_weights="balanced"), tmp_path / "w.pt")
    assert plain.history[0].train_loss != weighted.history[0].train_loss
    a, b = load_checkpoint(plain.checkpoint), load_checkpoint(weighted.checkpoint)
    assert not torch.equal(a["model"]["fc.weight"], b["model"]["fc.weight"])


def test_the_balanced_sampler_draws_classes_about_equally_and_is_seeded(tmp_path: Path) -> None:
    from app.engine.data import CachedImages
    from app.engine.device import plan_device
    from app.engine.distributed import epoch_shard
    from app.engine.imbalance import balanced_sample_weights
    from app.engine.strategy import SingleProcess

    samples = [(tmp_path / f"a{i}", 0) for i in range(40)] + [(tmp_path / f"b{i}", 1)
                                                             for i in range(10)]
    ds = CachedImages(samples, load=lambda p: torch.zeros(1))  # indices only: nothing decoded
    weights = balanced_sample_weights(samples, 2)
    one = SingleProcess(plan_device("cpu", workers=0))

    def drawn(epoch: int, w: torch.Tensor | None) -> list[int]:
        return list(one.epoch_batches(ds, 8, seed=3, epoch=epoch, sample_weights=w)
                    .loader.sampler)  # type: ignore[attr-defined]

    assert sorted(drawn(1, None)) == list(range(50))  # shuffle: every image once
    draws = [i for epoch in range(1, 21) for i in drawn(epoch, weights)]
    minority = sum(1 for i in draws if samples[i][1] == 1) / len(draws)
    assert len(draws) == 1000 and 0.4 < minority < 0.6  # 0.2 of the images, half the draws
    assert drawn(5, weights) == drawn(5, weights) and drawn(5, weights) != drawn(6, weights)
    # Several processes share one weighted draw, split between them.
    shards = [epoch_shard(50, 10, 2, r, torch.Generator().manual_seed(9), weights)
              for r in (0, 1)]
    union = sorted(i for s in shards for b in s.batches for i in b)
    expected = torch.multinomial(weights, 50, replacement=True,
                                 generator=torch.Generator().manual_seed(9))
    assert union == sorted(expected.tolist())


# --------------------------------------------------------------------- calibration


def _overconfident(seed: int, n: int = 3000) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(z), and a model that says 3z: sure beyond its accuracy."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, generator=g) * 1.5
    labels = torch.multinomial(torch.softmax(z, dim=1), 1, generator=g).squeeze(1)
    return 3 * z, labels


def test_temperature_scaling_fixes_overconfidence_and_keeps_every_label() -> None:
    from app.engine.calibrate import expected_calibration_error, fit_temperature

    val_logits, val_labels = _overconfident(0)
    test_logits, test_labels = _overconfident(1)
    t = fit_temperature(val_logits, val_labels)
    assert t == pytest.approx(3.0, rel=0.1)  # the factor the logits were inflated by
    before = expected_calibration_error(torch.softmax(test_logits, 1), test_labels)
    after = expected_calibration_error(torch.softmax(test_logits / t, 1), test_labels)
    assert after < before / 2, (before, after)
    assert torch.equal((test_logits / t).argmax(1), test_logits.argmax(1))
    assert fit_temperature(torch.empty(0, 3), torch.empty(0, dtype=torch.long)) == 1.0
    assert fit_temperature(torch.full((2, 2), float("nan")), torch.tensor([0, 1])) == 1.0


def test_expected_calibration_error_on_known_sets() -> None:
    from app.engine.calibrate import expected_calibration_error

    sure = torch.tensor([[0.9, 0.1]] * 4)  # 90 % sure, right half the time
    assert expected_calibration_error(sure, torch.tensor([0, 0, 1, 1])) == pytest.approx(0.4)
    honest = torch.tensor([[0.75, 0.25]] * 4)  # 75 % sure, right 3 times in 4
    assert expected_calibration_error(honest, torch.tensor([0, 0, 0, 1])) == pytest.approx(0)


def test_a_job_records_its_temperature_and_the_ece_it_changes(moving_dataset: Path,
                                                               tmp_path: Path) -> None:
    from app.engine import Predictor
    from app.engine.calibrate import fit_temperature
    from app.engine.checkpoint import save_checkpoint
    from app.engine.export import OnnxModel, export_onnx

    result = fit(moving_dataset, TrainConfig(**MOVING, epochs=2), tmp_path / "m.pt")
    ck = load_checkpoint(result.checkpoint)
    t = ck["temperature"]
    assert result.evaluation is not None and t == result.temperature is not None
    calibration = result.evaluation.calibration
    assert calibration is not None and calibration["calibrated"]
    assert calibration["temperature"] == t and calibration["bins"] == 15
    assert calibration["val_images"] == 6 and ck["evaluation"]["calibration"] == calibration
    predictor = Predictor(result.checkpoint, device="cpu", precision="fp32")
    assert predictor.calibrated and predictor.temperature == t
    # Fitted on the validation images (the recorded ones): the kept model's logits there
    # give the same T.
    split = validation_split(load_image_folder(moving_dataset), 0, 0, recorded=ck["split"])
    val_logits = predictor.logits(torch.stack([predictor.load(p) for p, _ in split.val]))
    val_labels = torch.tensor([label for _, label in split.val])
    assert fit_temperature(val_logits, val_labels) == pytest.approx(t, rel=1e-3)
    # Calibrated probabilities, the same labels as the plain softmax.
    test, _ = predictor.evaluate_folder(moving_dataset)
    assert test.confusion == result.evaluation.confusion
    assert test.calibration is not None
    assert test.calibration["ece_after"] == pytest.approx(calibration["ece_after"], abs=1e-6)
    photos = sorted((moving_dataset / "test").rglob("*.jpg"))
    batch = torch.stack([predictor.load(p) for p in photos])
    logits = predictor.logits(batch)
    probs = predictor.probabilities(batch)
    assert torch.allclose(probs, torch.softmax(logits / t, 1))
    assert torch.equal(probs.argmax(1), logits.argmax(1))
    # The ONNX export applies it too, and its metadata says which. (A softer temperature
    # than the fitted one, so that the probabilities are not all 0 or 1.)
    soft = save_checkpoint({**ck, "temperature": 2.5}, tmp_path / "soft.pt")
    export_onnx(load_checkpoint(soft), tmp_path / "soft.onnx")
    assert OnnxModel(tmp_path / "soft.onnx").contract["temperature"] == 2.5
    eager = Predictor(soft, device="cpu", precision="fp32").probabilities(batch)
    onnx = Predictor(soft, runtime="onnx", onnx_file=tmp_path / "soft.onnx")
    assert torch.allclose(eager, torch.softmax(logits / 2.5, 1), atol=1e-5)
    assert ((eager > 0.01) & (eager < 0.99)).any()
    assert torch.allclose(onnx.probabilities(batch), eager, atol=1e-4)
    with pytest.raises(ValueError, match="temperature"):  # another model's export
        Predictor(result.checkpoint, runtime="onnx", onnx_file=tmp_path / "soft.onnx")


def test_without_a_validation_split_nothing_is_calibrated(color_dataset: Path,
                                                          tmp_path: Path) -> None:
    from app.engine import Predictor

    result = fit(color_dataset, TrainConfig(**TINY, epochs=1, val_fraction=0), tmp_path / "m.pt")
    assert load_checkpoint(result.checkpoint)["temperature"] is None
    assert result.evaluation is not None and result.evaluation.calibration is not None
    c = result.evaluation.calibration
    assert not c["calibrated"] and c["temperature"] == 1.0 and c["ece_after"] == c["ece_before"]
    predictor = Predictor(result.checkpoint)
    assert not predictor.calibrated and predictor.temperature == 1.0
