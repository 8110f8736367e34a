from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import v2

from app.engine.presets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    eval_resize_size,
    eval_transform,
    load_eval_image,
    normalize_batch,
    train_decode_size,
    train_transform,
)


def _photo(w: int = 300, h: int = 200) -> Image.Image:
    rng = np.random.default_rng(0)
    # Smooth content, like a photo, so resampling differences stay small.
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], axis=-1)
    arr = arr + rng.normal(0, 3, size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def test_normalisation_values_are_imagenet() -> None:
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert IMAGENET_STD == (0.229, 0.224, 0.225)


@pytest.mark.parametrize(("size", "resize"), [(224, 256), (64, 73), (32, 37), (112, 128)])
def test_eval_resize_is_256_over_224(size: int, resize: int) -> None:
    assert eval_resize_size(size) == resize
    pre = Preprocessing.for_size(size)
    assert (pre.image_size, pre.resize_size) == (size, resize)


def test_train_transform_is_random_resized_crop_flip_normalize() -> None:
    t = train_transform(64)
    kinds = [type(x) for x in t.transforms]
    assert v2.RandomResizedCrop in kinds and v2.RandomHorizontalFlip in kinds
    crop = next(x for x in t.transforms if isinstance(x, v2.RandomResizedCrop))
    assert tuple(crop.size) == (64, 64) and crop.scale == (0.08, 1.0)
    norm = next(x for x in t.transforms if isinstance(x, v2.Normalize))
    assert tuple(norm.mean) == IMAGENET_MEAN and tuple(norm.std) == IMAGENET_STD
    out = t(_photo())
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32


def test_train_transform_is_random() -> None:
    img = _photo()
    torch.manual_seed(0)
    a = train_transform(32)(img)
    b = train_transform(32)(img)
    assert not torch.equal(a, b)


def test_eval_transform_matches_classic_torchvision_recipe() -> None:
    img = _photo()
    ours = eval_transform(Preprocessing.for_size(224))(img)
    classic = T.Compose(
        [T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )(img)
    assert ours.shape == classic.shape == (3, 224, 224)
    # Tensor vs PIL antialiased resampling differ by rounding only.
    assert (ours - classic).abs().mean() < 0.02


@pytest.mark.parametrize(("w", "h", "size"), [(640, 427, 224), (300, 500, 224), (224, 224, 224),
                                             (97, 41, 32), (1000, 1000, 64)])
def test_load_eval_image_is_resize_then_center_crop(w: int, h: int, size: int) -> None:
    """The fused resize + crop equals torchvision's Resize + CenterCrop within rounding."""
    rng = np.random.default_rng(w * h)
    arr = (rng.random((h // 4 + 1, w // 4 + 1, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(arr).resize((w, h), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    pre = Preprocessing.for_size(size)
    ours = load_eval_image(buf.getvalue(), pre)
    classic = torch.from_numpy(np.array(T.CenterCrop(size)(T.Resize(pre.resize_size)(img))))
    assert ours.shape == (3, size, size)
    diff = (ours.permute(1, 2, 0).int() - classic.int()).abs()
    assert diff.max() <= 1  # PIL rounds between its two passes: some pixels differ by 1


def test_normalize_batch_equals_to_tensor_then_normalize() -> None:
    batch = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    expected = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(batch.float() / 255)
    got = normalize_batch(batch, IMAGENET_MEAN, IMAGENET_STD, channels_last=True)
    assert torch.allclose(got, expected, atol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_train_decode_size_keeps_smallest_crop_at_full_resolution() -> None:
    # The smallest crop covers 8% of the area: sqrt(0.08) of each side.
    for size in (32, 64, 224):
        assert train_decode_size(size) * 0.08**0.5 >= size


def test_preprocessing_round_trip() -> None:
    pre = Preprocessing.for_size(96)
    assert Preprocessing.from_dict(pre.to_dict()) == pre
