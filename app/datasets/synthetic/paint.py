"""Drawing primitives shared by the scene and the foods: colours, shaded shapes, patches."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

Color = tuple[int, int, int]
Rng = np.random.Generator
# A light direction in a patch's own frame: a unit vector (x, y).
Light = tuple[float, float]

# Objects are drawn at twice their size and halved, which anti-aliases their edges.
SUPERSAMPLE = 2


def vary_color(rng: Rng, base: Color, spread: float = 18) -> Color:
    r, g, b = np.clip(np.asarray(base) + rng.normal(0, spread, 3), 0, 255)
    return int(r), int(g), int(b)


def shade(color: Color, factor: float) -> Color:
    r, g, b = (int(min(255.0, max(0.0, c * factor))) for c in color)
    return r, g, b


def mix(a: Color, b: Color, t: float) -> Color:
    return (
        int(a[0] + (b[0] - a[0]) * t),
        int(a[1] + (b[1] - a[1]) * t),
        int(a[2] + (b[2] - a[2]) * t),
    )


def smooth_noise(
    rng: Rng, grid: tuple[int, int], size: tuple[int, int], channels: int = 1
) -> np.ndarray:
    """Smooth random field in [0, 1], shape (h, w) or (h, w, channels)."""
    shape = (grid[1], grid[0], channels) if channels > 1 else (grid[1], grid[0])
    small = rng.integers(0, 256, shape, dtype=np.uint8)
    big = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    return np.asarray(big, dtype=np.float32) / 255.0


def shaded_ellipse(
    draw: ImageDraw.ImageDraw,
    box: tuple[float, float, float, float],
    color: Color,
    light: Light,
    steps: int = 8,
    dark: float = 0.6,
    bright: float = 1.25,
) -> None:
    """Concentric ellipses drifting towards the light: a cheap rounded 3D look."""
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    for k in range(steps):
        t = k / steps
        s = 1 - 0.8 * t
        ox, oy = light[0] * rx * 0.45 * t, light[1] * ry * 0.45 * t
        fill = shade(color, dark + (bright - dark) * math.sqrt(t))
        draw.ellipse((cx + ox - rx * s, cy + oy - ry * s, cx + ox + rx * s, cy + oy + ry * s), fill)


def shaded_rod(
    draw: ImageDraw.ImageDraw,
    points: list[tuple[float, float]],
    width: float,
    color: Color,
    light: Light,
    steps: int = 7,
) -> None:
    """A rod with round ends along ``points``, lit from ``light``."""
    for k in range(steps):
        t = k / steps
        w = width * (1 - 0.75 * t)
        ox, oy = light[0] * width * 0.25 * t, light[1] * width * 0.25 * t
        pts = [(x + ox, y + oy) for x, y in points]
        fill = shade(color, 0.6 + 0.65 * math.sqrt(t))
        draw.line(pts, fill=fill, width=max(1, int(w)), joint="curve")
        for x, y in (pts[0], pts[-1]):
            draw.ellipse((x - w / 2, y - w / 2, x + w / 2, y + w / 2), fill=fill)


def new_patch(width: float, height: float) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    w = max(SUPERSAMPLE * 4, int(width) // SUPERSAMPLE * SUPERSAMPLE)
    h = max(SUPERSAMPLE * 4, int(height) // SUPERSAMPLE * SUPERSAMPLE)
    patch = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    return patch, ImageDraw.Draw(patch)


def point_in_disc(rng: Rng, cx: float, cy: float, r: float) -> tuple[float, float]:
    a, d = float(rng.uniform(0, 2 * math.pi)), r * math.sqrt(float(rng.random()))
    return cx + d * math.cos(a), cy + d * math.sin(a)
