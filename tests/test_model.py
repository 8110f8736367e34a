from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

from app.engine.config import TrainConfig
from app.engine.errors import PretrainedWeightsMissing
from app.engine.model import (
    build_model,
    imagenet_weights_cache_path,
    load_imagenet_state_dict,
)
from app.engine.train import make_optimizer


def _fake_imagenet(path: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    state = resnet18(num_classes=1000).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def _assert_backbone_equal(model: torch.nn.Module, source: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    backbone = [k for k in source if not k.startswith("fc.")]
    assert len(backbone) > 100
    for k in backbone:
        assert torch.equal(state[k], source[k]), k


def _assert_new_head(model: torch.nn.Module, classes: int) -> None:
    fc = model.fc
    assert isinstance(fc, torch.nn.Linear)
    assert (fc.in_features, fc.out_features) == (512, classes)
    bound = (6 / (512 + classes)) ** 0.5  # Xavier-uniform bound
    assert fc.weight.abs().max() <= bound and fc.weight.abs().max() > bound * 0.9
    assert torch.count_nonzero(fc.bias) == 0


def test_imagenet_from_torchvision_cache(no_imagenet: Path) -> None:
    cache = imagenet_weights_cache_path()
    assert str(cache).startswith(str(no_imagenet)) and cache.name == "resnet18-f37072fd.pth"
    source = _fake_imagenet(cache)
    model = build_model(3, "imagenet")
    _assert_backbone_equal(model, source)
    _assert_new_head(model, 3)


def test_imagenet_from_configured_file(no_imagenet: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    source = _fake_imagenet(tmp_path / "weights" / "r18.pth")
    monkeypatch.setenv("HOTDOG_PRETRAINED_PATH", str(tmp_path / "weights" / "r18.pth"))
    _assert_backbone_equal(build_model(2, "imagenet"), source)


def test_missing_weights_fail_fast_with_instructions(no_imagenet: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(PretrainedWeightsMissing) as err:
        load_imagenet_state_dict()
    assert time.perf_counter() - start < 10
    message = str(err.value)
    assert str(imagenet_weights_cache_path()) in message
    assert "HOTDOG_PRETRAINED_PATH" in message and "resnet18-f37072fd.pth" in message


def test_configured_file_missing(no_imagenet: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOTDOG_PRETRAINED_PATH", "/nonexistent/r18.pth")
    with pytest.raises(PretrainedWeightsMissing, match="/nonexistent/r18.pth does not exist"):
        build_model(2, "imagenet")


def test_wrong_weights_file_is_refused(no_imagenet: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    monkeypatch.setenv("HOTDOG_PRETRAINED_PATH", str(tmp_path / "bad.pth"))
    with pytest.raises(PretrainedWeightsMissing, match="do not fit ResNet-18"):
        build_model(2, "imagenet")


def test_from_checkpoint_state_copies_backbone_and_replaces_head() -> None:
    torch.manual_seed(5)
    earlier = build_model(4, "scratch").state_dict()
    model = build_model(2, "checkpoint", source_state=earlier)
    _assert_backbone_equal(model, earlier)
    _assert_new_head(model, 2)


def test_scratch_is_torchvision_random_init_with_new_head() -> None:
    torch.manual_seed(0)
    a = build_model(2, "scratch")
    torch.manual_seed(0)
    b = build_model(2, "scratch")
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    _assert_new_head(a, 2)


def test_head_lr_is_mult_times_backbone_lr() -> None:
    model = build_model(2, "scratch")
    cfg = TrainConfig(init="imagenet", lr=0.01, head_lr_mult=10).resolved()
    opt = make_optimizer(model, cfg)
    backbone, head = opt.param_groups
    assert backbone["lr"] == pytest.approx(0.01) and head["lr"] == pytest.approx(0.1)
    assert {id(p) for p in head["params"]} == {id(p) for p in model.fc.parameters()}
    n_all = sum(1 for _ in model.parameters())
    assert len(backbone["params"]) + len(head["params"]) == n_all
    assert backbone["weight_decay"] == head["weight_decay"] == pytest.approx(1e-3)
    assert isinstance(opt, torch.optim.SGD)


def test_defaults_follow_init() -> None:
    pre = TrainConfig(init="imagenet").resolved()
    assert (pre.lr, pre.head_lr_mult, pre.batch_size, pre.epochs) == (0.0064, 10.0, 128, 5)
    assert (pre.weight_decay, pre.momentum) == (1e-3, 0.0)
    scratch = TrainConfig(init="scratch").resolved()
    assert (scratch.lr, scratch.head_lr_mult) == (0.064, 1.0)
    assert TrainConfig(init="scratch", head_lr_mult=10).resolved().head_lr_mult == 10


@pytest.mark.parametrize(
    ("field", "value"),
    [("epochs", 0), ("batch_size", 0), ("lr", -1.0), ("image_size", 8), ("momentum", 1.0),
     ("head_lr_mult", 0.0), ("weight_decay", -0.1)],
)
def test_config_bounds(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value}).resolved()  # type: ignore[arg-type]


def _truncated_imagenet(path: Path) -> None:
    """The first half of a real weights file: a copy or download cut off midway."""
    _fake_imagenet(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_cached_weights_file_is_missing_weights(no_imagenet: Path) -> None:
    cache = imagenet_weights_cache_path()
    _truncated_imagenet(cache)
    with pytest.raises(PretrainedWeightsMissing) as err:
        build_model(2, "imagenet")
    message = str(err.value)
    assert f"{cache} is unreadable" in message and "HOTDOG_PRETRAINED_PATH" in message


@pytest.mark.parametrize("content", ["truncated", "garbage"])
def test_a_corrupt_configured_weights_file_is_missing_weights(
        no_imagenet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str) -> None:
    path = tmp_path / "r18.pth"
    if content == "truncated":
        _truncated_imagenet(path)
    else:
        path.write_bytes(b"not a weights file\n" * 100)
    monkeypatch.setenv("HOTDOG_PRETRAINED_PATH", str(path))
    with pytest.raises(PretrainedWeightsMissing, match=f"{path} is unreadable"):
        load_imagenet_state_dict()
