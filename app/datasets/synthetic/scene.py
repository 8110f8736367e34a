"""The table a dish stands on, the plate, the dish's shadow, and the camera's finish."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from app.datasets.synthetic.paint import Color, Rng, shade, smooth_noise, vary_color

_WOODS: tuple[Color, ...] = ((150, 105, 65), (120, 110, 100), (80, 60, 50), (200, 185, 160))


# Mostly neutral surfaces, as in most food photos; a few colours occur in both classes.
_CLOTHS: tuple[Color, ...] = (
    (235, 232, 225),
    (60, 70, 95),
    (200, 195, 185),
    (90, 90, 95),
    (40, 40, 42),
    (140, 160, 185),
    (215, 205, 180),
    (95, 75, 110),
    (80, 120, 95),
    (225, 225, 230),
)


def background(rng: Rng, width: int, height: int) -> Image.Image:
    kind = int(rng.choice(4, p=[0.2, 0.3, 0.2, 0.3]))
    if kind == 0:  # wooden planks
        vertical = rng.random() < 0.5
        across, along = (width, height) if vertical else (height, width)
        n_planks = int(rng.integers(2, 6))
        plank = across / n_planks
        base = np.asarray(vary_color(rng, _WOODS[int(rng.integers(len(_WOODS)))], 15), np.float32)
        tones = base * rng.uniform(0.85, 1.15, (n_planks + 1, 1)).astype(np.float32)
        rows = np.arange(across)
        colors = tones[(rows / plank).astype(int)]
        colors[(rows % plank) < max(1.0, across * 0.006)] *= 0.55
        grain = smooth_noise(rng, (int(rng.integers(3, 9)), max(2, across // 3)), (along, across))
        arr = colors[:, None, :] * (0.8 + 0.4 * grain[..., None])
        if vertical:
            arr = arr.transpose(1, 0, 2)
    elif kind == 1:  # plain cloth with a weave
        base = np.asarray(vary_color(rng, _CLOTHS[int(rng.integers(len(_CLOTHS)))], 20), np.float32)
        weave = rng.standard_normal((height, width, 1), dtype=np.float32)
        arr = base * (1 + 0.04 * weave)
    elif kind == 2:  # gingham
        cell = int(rng.integers(6, 40))
        a = np.asarray(vary_color(rng, (240, 238, 230), 8), np.float32)
        b = np.asarray(vary_color(rng, _CLOTHS[int(rng.integers(1, len(_CLOTHS)))], 20), np.float32)
        palette = np.stack([a, (a + b) / 2, b])
        level = (np.arange(width) // cell % 2)[None, :] + (np.arange(height) // cell % 2)[:, None]
        arr = palette[level]
    else:  # smooth two-colour gradient
        a = np.asarray(np.clip(rng.uniform(35, 230) + rng.normal(0, 15, 3), 0, 255), np.float32)
        b = np.asarray(
            np.clip(a * rng.uniform(0.6, 1.3) + rng.normal(0, 12, 3), 0, 255), np.float32
        )
        theta = rng.uniform(0, 2 * math.pi)
        x = np.linspace(0, 1, width, dtype=np.float32)
        y = np.linspace(0, 1, height, dtype=np.float32)
        t = np.clip(math.cos(theta) * x[None, :] + math.sin(theta) * y[:, None], 0, 1)
        arr = a + (b - a) * t[..., None]
    blotch = smooth_noise(rng, (3, 3), (width, height), channels=3)
    arr = arr * (0.88 + 0.24 * blotch)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def table_clutter(rng: Rng, image: Image.Image) -> None:
    """Napkins, cutlery, cups and crumbs, equally likely in both classes."""
    draw = ImageDraw.Draw(image)
    w, h = image.size
    short = min(w, h)
    for _ in range(int(rng.choice(4, p=[0.35, 0.35, 0.2, 0.1]))):
        kind = int(rng.integers(3))
        x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        if kind == 0:  # napkin
            half = short * float(rng.uniform(0.12, 0.3))
            rot = float(rng.uniform(0, math.pi))
            corners = [
                (
                    x + half * math.cos(rot + k * math.pi / 2),
                    y + half * math.sin(rot + k * math.pi / 2),
                )
                for k in range(4)
            ]
            draw.polygon(corners, fill=vary_color(rng, (235, 235, 230), 20))
        elif kind == 1:  # knife or fork: a thin grey rod with a darker handle
            length = short * float(rng.uniform(0.3, 0.6))
            rot = float(rng.uniform(0, math.pi))
            dx, dy = math.cos(rot) * length / 2, math.sin(rot) * length / 2
            metal = vary_color(rng, (185, 188, 195), 12)
            thick = max(2, int(short * 0.02))
            draw.line([(x - dx, y - dy), (x + dx, y + dy)], fill=metal, width=thick)
            handle = vary_color(rng, (60, 50, 45), 25)
            draw.line(
                [(x - dx, y - dy), (x - dx * 0.2, y - dy * 0.2)], fill=handle, width=thick + 2
            )
        else:  # cup seen from above
            r = short * float(rng.uniform(0.07, 0.14))
            cup = vary_color(rng, (230, 230, 225), 25)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=shade(cup, 0.8))
            draw.ellipse((x - r * 0.85, y - r * 0.85, x + r * 0.85, y + r * 0.85), fill=cup)
            inner = r * 0.72
            drink = vary_color(rng, (90, 60, 40), 40)
            draw.ellipse((x - inner, y - inner, x + inner, y + inner), fill=drink)
    for _ in range(int(rng.integers(0, 25))):
        x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        r = float(rng.uniform(0.5, 2.0))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=vary_color(rng, (170, 140, 100), 40))


def plate(rng: Rng, image: Image.Image, cx: float, cy: float, r: float, light: float) -> None:
    draw = ImageDraw.Draw(image)
    base = vary_color(
        rng,
        [(245, 245, 240), (240, 232, 215), (200, 215, 230), (50, 52, 55)][
            int(rng.choice(4, p=[0.5, 0.25, 0.15, 0.1]))
        ],
        8,
    )
    ry = r * float(rng.uniform(0.8, 1.0))
    blur = max(1, int(r * 0.05))
    pad = 2 * blur
    mask = Image.new("L", (int(2 * r) + 2 * pad, int(2 * ry) + 2 * pad), 0)
    ImageDraw.Draw(mask).ellipse((pad, pad, pad + 2 * r, pad + 2 * ry), fill=110)
    mask = mask.filter(ImageFilter.BoxBlur(blur))
    sx, sy = -math.cos(light) * r * 0.06, -math.sin(light) * r * 0.06
    image.paste((20, 15, 10), (int(cx - r - pad + sx), int(cy - ry - pad + sy)), mask)
    draw.ellipse((cx - r, cy - ry, cx + r, cy + ry), fill=shade(base, 0.9))
    draw.ellipse((cx - r * 0.93, cy - ry * 0.93, cx + r * 0.93, cy + ry * 0.93), fill=base)
    draw.ellipse(
        (cx - r * 0.72, cy - ry * 0.72, cx + r * 0.72, cy + ry * 0.72), fill=shade(base, 0.95)
    )


def paste_with_shadow(
    image: Image.Image,
    patch: Image.Image,
    cx: float,
    cy: float,
    light: float,
    size: float,
    strength: float,
) -> None:
    x = round(cx - patch.width / 2)
    y = round(cy - patch.height / 2)
    alpha = patch.getchannel("A")
    shadow = alpha.filter(ImageFilter.BoxBlur(max(1, int(size * 0.03))))
    shadow = shadow.point([int(v * strength) for v in range(256)])
    offset = size * 0.04
    sx, sy = int(-math.cos(light) * offset), int(-math.sin(light) * offset)
    image.paste((20, 15, 10), (x + sx, y + sy), shadow)
    image.paste(patch, (x, y), patch)


def photo_finish(rng: Rng, image: Image.Image) -> Image.Image:
    """Camera-ish degradations: defocus, uneven light, colour cast, exposure, sensor noise."""
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.6))))
    w, h = image.size
    arr = np.asarray(image, dtype=np.float32)
    gain = 0.75 + 0.5 * smooth_noise(rng, (2, 2), (w, h))
    if rng.random() < 0.6:
        x = np.linspace(-1, 1, w, dtype=np.float32)
        y = np.linspace(-1, 1, h, dtype=np.float32)
        gain *= 1 - float(rng.uniform(0.1, 0.35)) * (x[None, :] ** 2 + y[:, None] ** 2) / 2
    cast = (1 + rng.normal(0, 0.05, 3)).astype(np.float32)
    arr *= gain[..., None] * cast
    saturation = float(rng.uniform(0.85, 1.2))
    contrast = float(rng.uniform(0.8, 1.2))
    brightness = float(rng.uniform(0.8, 1.2))
    # Saturation, contrast and brightness are one affine map; a subsampled mean is plenty.
    mean = float(arr[::4, ::4].mean())
    grey = (arr[..., 0] + arr[..., 1] + arr[..., 2]) * ((1 - saturation) * contrast / 3)
    arr *= saturation * contrast
    arr += grey[..., None]
    arr += mean * (brightness - contrast)
    # Uniform draws are several times cheaper than normal ones and look the same as grain.
    sigma = float(rng.uniform(1.5, 8))
    luma = rng.random((h, w, 1), dtype=np.float32)
    luma -= 0.5
    arr += luma * (sigma * 3.4)
    chroma = rng.random((h, w, 3), dtype=np.float32)
    chroma -= 0.5
    arr += chroma * (sigma * 1.4)
    np.clip(arr, 0, 255, out=arr)
    return Image.fromarray(arr.astype(np.uint8))
