"""One synthetic photo: a table, maybe a plate, the dish (or nothing), and the finish."""

from __future__ import annotations

import math

from PIL import Image, ImageFilter

from app.datasets.synthetic.foods import (
    FOOD_DRAWERS,
    OTHER_FOODS,
    OTHER_WEIGHTS,
    Drawer,
    draw_burger,
    draw_hotdog,
)
from app.datasets.synthetic.paint import SUPERSAMPLE, Rng
from app.datasets.synthetic.scene import (
    background,
    paste_with_shadow,
    photo_finish,
    plate,
    table_clutter,
)


def render_demo_image(
    rng: Rng, *, hotdog: bool, min_side: int = 160, max_side: int = 512
) -> Image.Image:
    """Draw one synthetic photo (RGB) from ``rng``: a hotdog, or other food / nothing."""
    image, light, cx, cy, short = _scene(rng, min_side, max_side)
    if hotdog:
        drawer: Drawer | None = draw_hotdog
        size = short * float(rng.uniform(1.0, 1.35))
    else:
        drawer = OTHER_FOODS[int(rng.choice(len(OTHER_FOODS), p=OTHER_WEIGHTS))]
        size = short * float(rng.uniform(0.6, 0.95))
    return _serve(rng, image, drawer, size, cx, cy, light, pair=hotdog)


def render_food_image(
    rng: Rng, food: str, *, min_side: int = 160, max_side: int = 512
) -> Image.Image:
    """Draw one synthetic photo (RGB) of ``food`` (one of :data:`FOODS`) on a table."""
    drawer = FOOD_DRAWERS[food]
    image, light, cx, cy, short = _scene(rng, min_side, max_side)
    size = short * float(rng.uniform(0.6, 0.95))
    return _serve(rng, image, drawer, size, cx, cy, light, pair=False)


def _scene(rng: Rng, min_side: int, max_side: int
           ) -> tuple[Image.Image, float, float, float, int]:
    """A table with clutter, and where its dish goes: (image, light, cx, cy, short side)."""
    width = int(rng.integers(min_side, max_side + 1))
    height = int(rng.integers(min_side, max_side + 1))
    image = background(rng, width, height)
    light = float(rng.uniform(0, 2 * math.pi))
    table_clutter(rng, image)
    short = min(width, height)
    # Shallow depth of field, as in most food photos: the table behind the dish is soft.
    image = image.filter(ImageFilter.BoxBlur(short * float(rng.uniform(0.004, 0.02))))

    # Like a photographer, keep the subject near the middle, whatever the aspect ratio.
    cx = width / 2 + short * float(rng.uniform(-0.18, 0.18))
    cy = height / 2 + short * float(rng.uniform(-0.18, 0.18))
    return image, light, cx, cy, short


def _serve(rng: Rng, image: Image.Image, drawer: Drawer | None,
           size: float, cx: float, cy: float, light: float, *, pair: bool) -> Image.Image:
    """Put the dish (``drawer``; None: an empty table) on the table, maybe on a plate, and
    finish the photo. ``pair``: sometimes two of them side by side (hotdogs)."""
    if rng.random() < 0.55:
        plate(rng, image, cx, cy, size * float(rng.uniform(0.55, 0.75)), light)
    if drawer is None:
        return photo_finish(rng, image)
    angle = float(rng.uniform(-25, 25)) if drawer is draw_burger else float(rng.uniform(0, 360))
    if pair and rng.random() < 0.45:  # a pair of hotdogs side by side
        size *= 0.8
        gap = size * float(rng.uniform(0.18, 0.25))
        dx, dy = math.sin(math.radians(angle)) * gap, math.cos(math.radians(angle)) * gap
        for sign in (-1, 1):
            _place(rng, image, drawer, size, cx + sign * dx, cy + sign * dy, angle, light)
    else:
        _place(rng, image, drawer, size, cx, cy, angle, light)
    return photo_finish(rng, image)


def _place(
    rng: Rng,
    image: Image.Image,
    drawer: Drawer,
    size: float,
    cx: float,
    cy: float,
    angle: float,
    light: float,
) -> None:
    rad = math.radians(angle)
    # Patches are rotated after drawing, so shade them from the rotated-back light.
    patch_light = (
        math.cos(light) * math.cos(rad) - math.sin(light) * math.sin(rad),
        math.cos(light) * math.sin(rad) + math.sin(light) * math.cos(rad),
    )
    patch = drawer(rng, size * SUPERSAMPLE, patch_light).reduce(SUPERSAMPLE)
    patch = patch.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    paste_with_shadow(image, patch, cx, cy, light, size, float(rng.uniform(0.3, 0.55)))
