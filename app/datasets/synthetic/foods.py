"""The foods, each drawn on a transparent patch: hotdogs, and everything that is not one."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from app.datasets.synthetic.paint import (
    Color,
    Light,
    Rng,
    mix,
    new_patch,
    point_in_disc,
    shade,
    shaded_ellipse,
    shaded_rod,
    vary_color,
)

# Draws a food on a new patch of about the given size, lit from the given direction.
Drawer = Callable[[Rng, float, Light], Image.Image]

# The other foods by name: the classes of :func:`generate_food_dataset`.
FOODS = ("pizza", "burger", "salad", "fruit", "donut", "egg", "cookie", "berries", "broccoli")


def _squiggle(
    rng: Rng, x0: float, x1: float, centre: Callable[[float], float], amp: float
) -> list[tuple[float, float]]:
    cycles = float(rng.uniform(3, 8))
    phase = float(rng.uniform(0, 2 * math.pi))
    ts = np.linspace(0.06, 0.94, 48)
    return [
        (x0 + (x1 - x0) * t, centre(t) + amp * math.sin(2 * math.pi * cycles * t + phase))
        for t in ts
    ]


def draw_hotdog(rng: Rng, size: float, light: Light) -> Image.Image:
    bun_len = size / 1.12
    bun_w = bun_len * float(rng.uniform(0.36, 0.48))
    sausage_len = bun_len * float(rng.uniform(1.0, 1.14))
    sausage_w = bun_w * float(rng.uniform(0.45, 0.58))
    bend = sausage_w * float(rng.uniform(-0.5, 0.5))
    patch, draw = new_patch(size * 1.05, bun_w * 1.25 + abs(bend))
    pw, ph = patch.size
    cx, cy = pw / 2, ph / 2

    bun = vary_color(rng, (222, 168, 98), 14)
    for sign in (-1, 1):  # two bun halves either side of the sausage
        y_in, y_out = cy + sign * bun_w * 0.05, cy + sign * bun_w / 2
        box = (cx - bun_len / 2, min(y_in, y_out), cx + bun_len / 2, max(y_in, y_out))
        shaded_ellipse(draw, box, bun, light, steps=9, dark=0.62, bright=1.18)
    for _ in range(int(rng.integers(20, 60))):  # toasted crumb texture
        x = cx + bun_len * 0.45 * float(rng.uniform(-1, 1))
        y = cy + bun_w * 0.42 * float(rng.uniform(-1, 1))
        r = bun_w * float(rng.uniform(0.01, 0.03))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=shade(bun, float(rng.uniform(0.7, 1.1))))

    def centre(t: float) -> float:
        return cy + bend * math.sin(math.pi * t)

    sx0, sx1 = cx - sausage_len / 2 + sausage_w / 2, cx + sausage_len / 2 - sausage_w / 2
    rod = [(sx0 + (sx1 - sx0) * t, centre(t)) for t in np.linspace(0, 1, 12)]
    sausage = vary_color(rng, (205, 52, 38), 10)
    shaded_rod(draw, rod, sausage_w, sausage, light)
    if rng.random() < 0.6:  # grill marks
        for t in np.linspace(0.15, 0.85, int(rng.integers(3, 7))):
            x, y = sx0 + (sx1 - sx0) * t, centre(float(t))
            d = sausage_w * 0.35
            draw.line(
                [(x - d * 0.4, y - d), (x + d * 0.4, y + d)],
                fill=shade(sausage, 0.45),
                width=max(1, int(sausage_w * 0.08)),
            )

    sauces = []
    roll = rng.random()
    if roll < 0.55:
        sauces = [(232, 190, 40)]
    elif roll < 0.65:
        sauces = [(190, 30, 28)]
    elif roll < 0.9:
        sauces = [(190, 30, 28), (232, 190, 40)]
    for sauce in sauces:
        pts = _squiggle(rng, sx0, sx1, centre, sausage_w * float(rng.uniform(0.2, 0.4)))
        width = max(2, int(sausage_w * float(rng.uniform(0.16, 0.26))))
        color = vary_color(rng, sauce, 10)
        draw.line(pts, fill=shade(color, 0.8), width=width, joint="curve")
        draw.line(pts, fill=color, width=max(1, width // 2))
    if rng.random() < 0.15:  # relish or onion bits
        bits = (90, 150, 50) if rng.random() < 0.5 else (235, 230, 210)
        for _ in range(int(rng.integers(5, 15))):
            t = float(rng.uniform(0.1, 0.9))
            x = sx0 + (sx1 - sx0) * t
            y = centre(t) + float(rng.normal(0, sausage_w * 0.2))
            r = sausage_w * float(rng.uniform(0.06, 0.12))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=vary_color(rng, bits, 15))
    return patch


def _draw_pizza(rng: Rng, size: float, light: Light) -> Image.Image:
    patch, draw = new_patch(size, size)
    c, r = size / 2, size / 2 * 0.98
    crust = vary_color(rng, (200, 140, 70), 15)
    shaded_ellipse(draw, (c - r, c - r, c + r, c + r), crust, light, steps=5, dark=0.7)
    ri = r * float(rng.uniform(0.8, 0.88))
    cheese = vary_color(rng, (238, 190, 90), 15)
    draw.ellipse((c - ri, c - ri, c + ri, c + ri), fill=mix(cheese, (200, 80, 40), 0.35))
    for _ in range(int(rng.integers(6, 14))):  # melted cheese blotches
        a, d = float(rng.uniform(0, 2 * math.pi)), ri * math.sqrt(float(rng.random())) * 0.8
        x, y = c + d * math.cos(a), c + d * math.sin(a)
        rb = ri * float(rng.uniform(0.15, 0.35))
        draw.ellipse((x - rb, y - rb, x + rb, y + rb), fill=vary_color(rng, cheese, 10))
    _toppings(rng, draw, lambda: point_in_disc(rng, c, c, ri * 0.85), size)
    if rng.random() < 0.5:
        for k in range(int(rng.integers(3, 5)) * 2):
            a = k * math.pi / 4 + 0.3
            draw.line(
                [(c, c), (c + r * math.cos(a), c + r * math.sin(a))],
                fill=shade(crust, 0.6),
                width=max(1, int(size * 0.006)),
            )
    return patch


def _draw_pizza_slice(rng: Rng, size: float, light: Light) -> Image.Image:
    patch, draw = new_patch(size, size * 0.75)
    w, h = patch.size
    apex, base_x = (w * 0.04, h / 2), w * 0.88
    crust = vary_color(rng, (200, 140, 70), 15)
    half = h * 0.46
    draw.pieslice(
        (base_x - w * 0.1, h / 2 - half, base_x + w * 0.1, h / 2 + half), -90, 90, fill=crust
    )
    draw.polygon([apex, (base_x, h / 2 - half), (base_x, h / 2 + half)], fill=shade(crust, 0.9))
    cheese = vary_color(rng, (238, 190, 90), 15)
    inset = [
        (w * 0.1, h / 2),
        (base_x - w * 0.02, h / 2 - half * 0.85),
        (base_x - w * 0.02, h / 2 + half * 0.85),
    ]
    draw.polygon(inset, fill=mix(cheese, (200, 80, 40), 0.25))

    def spot() -> tuple[float, float]:
        u, v = sorted(rng.random(2))
        x = inset[0][0] + (inset[1][0] - inset[0][0]) * (0.25 + 0.7 * v)
        y = h / 2 + (u * 2 - 1) * half * 0.75 * (x - inset[0][0]) / (inset[1][0] - inset[0][0])
        return x, y

    _toppings(rng, draw, spot, size * 0.7)
    return patch


def _toppings(
    rng: Rng, draw: ImageDraw.ImageDraw, where: Callable[[], tuple[float, float]], size: float
) -> None:
    pepperoni = vary_color(rng, (165, 38, 32), 12)
    for _ in range(int(rng.integers(3, 11))):
        x, y = where()
        r = size * float(rng.uniform(0.04, 0.07))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=shade(pepperoni, 0.8))
        draw.ellipse((x - r * 0.8, y - r * 0.8, x + r * 0.8, y + r * 0.8), fill=pepperoni)
    if rng.random() < 0.5:  # olives
        for _ in range(int(rng.integers(3, 9))):
            x, y = where()
            r = size * 0.025
            draw.ellipse((x - r, y - r, x + r, y + r), fill=(30, 30, 28))
            draw.ellipse(
                (x - r * 0.45, y - r * 0.45, x + r * 0.45, y + r * 0.45), fill=(200, 150, 80)
            )
    if rng.random() < 0.5:  # basil or peppers
        green = vary_color(rng, (60, 130, 45), 15)
        for _ in range(int(rng.integers(3, 9))):
            x, y = where()
            r = size * float(rng.uniform(0.02, 0.045))
            draw.ellipse((x - r, y - r * 0.6, x + r, y + r * 0.6), fill=green)


def draw_burger(rng: Rng, size: float, light: Light) -> Image.Image:
    height = size * float(rng.uniform(0.7, 0.9))
    patch, draw = new_patch(size, height)
    w, h = patch.size
    bun = vary_color(rng, (215, 150, 75), 14)
    layers: list[tuple[float, Color, str]] = [(0.16, bun, "bun")]
    layers.append((0.17, vary_color(rng, (95, 55, 35), 12), "patty"))
    if rng.random() < 0.7:
        layers.append((0.05, vary_color(rng, (245, 185, 40), 10), "cheese"))
    if rng.random() < 0.6:
        layers.append((0.06, vary_color(rng, (200, 40, 35), 12), "tomato"))
    if rng.random() < 0.8:
        layers.append((0.07, vary_color(rng, (95, 165, 55), 15), "lettuce"))
    y = h * 0.97
    for frac, color, kind in layers:
        lh = h * frac
        inset = w * (0.06 if kind == "bun" else 0.02)
        top = y - lh
        if kind == "lettuce":
            pts = [
                (inset + (w - 2 * inset) * t, top + lh * 0.5 + lh * 0.5 * math.sin(t * 40))
                for t in np.linspace(0, 1, 30)
            ]
            draw.polygon([(inset, y), *pts, (w - inset, y)], fill=color)
        elif kind == "cheese":
            draw.rectangle((inset, top, w - inset, y), fill=color)
            for _ in range(int(rng.integers(2, 5))):
                x = float(rng.uniform(inset, w - inset))
                draw.polygon([(x - lh, y), (x + lh, y), (x, y + lh * 1.5)], fill=color)
        else:
            draw.rounded_rectangle(
                (inset, top, w - inset, y), radius=lh * 0.45, fill=shade(color, 0.85)
            )
            draw.rounded_rectangle(
                (inset * 1.2, top + lh * 0.12, w - inset * 1.2, y - lh * 0.3),
                radius=lh * 0.35,
                fill=color,
            )
        y = top
    dome = max(h * 0.05, y - h * 0.03)
    box = (w * 0.04, y - dome, w * 0.96, y + dome)
    for k in range(7):
        t = k / 7
        s = 1 - 0.75 * t
        cx, cy = w / 2 + light[0] * w * 0.1 * t, y + light[1] * dome * 0.2 * t
        rx, ry = (box[2] - box[0]) / 2 * s, dome * (1 - 0.5 * t)
        draw.chord(
            (cx - rx, cy - ry, cx + rx, cy + ry),
            180,
            360,
            fill=shade(bun, 0.65 + 0.55 * math.sqrt(t)),
        )
    for _ in range(int(rng.integers(6, 20))):  # sesame seeds
        a = float(rng.uniform(math.pi * 1.1, math.pi * 1.9))
        d = float(rng.uniform(0.2, 0.85))
        x = w / 2 + (box[2] - box[0]) / 2 * d * math.cos(a)
        yy = y + dome * d * math.sin(a)
        r = w * 0.012
        draw.ellipse((x - r * 1.6, yy - r, x + r * 1.6, yy + r), fill=(245, 235, 200))
    return patch


def _bowl(
    rng: Rng,
    draw: ImageDraw.ImageDraw,
    size: float,
    colors: list[Color],
    spread: float,
    light: Light,
) -> tuple[float, float, Color]:
    """A round bowl seen from above filling the patch; returns (centre, inner radius, color)."""
    c, r = size / 2, size / 2 * 0.98
    bowl = vary_color(rng, colors[int(rng.integers(len(colors)))], spread)
    shaded_ellipse(draw, (c - r, c - r, c + r, c + r), bowl, light, steps=4, dark=0.75)
    return c, r * 0.84, bowl


def _draw_salad(rng: Rng, size: float, light: Light) -> Image.Image:
    patch, draw = new_patch(size, size)
    c, ri, _ = _bowl(
        rng, draw, size, [(240, 240, 235), (70, 140, 160), (160, 110, 70), (200, 60, 50)], 15,
        light,
    )
    draw.ellipse((c - ri, c - ri, c + ri, c + ri), fill=vary_color(rng, (45, 85, 30), 10))
    greens = [(70, 140, 40), (110, 170, 60), (50, 110, 45), (140, 190, 80), (100, 60, 90)]
    for _ in range(int(rng.integers(25, 45))):
        x, y = point_in_disc(rng, c, c, ri * 0.9)
        lr = size * float(rng.uniform(0.05, 0.12))
        n = int(rng.integers(5, 8))
        pts = []
        for k in range(n):
            a = 2 * math.pi * k / n + float(rng.normal(0, 0.2))
            d = lr * float(rng.uniform(0.5, 1.0))
            pts.append((x + d * math.cos(a), y + d * math.sin(a)))
        leaf = vary_color(rng, greens[int(rng.choice(5, p=[0.3, 0.3, 0.2, 0.15, 0.05]))], 15)
        draw.polygon(pts, fill=leaf)
    for _ in range(int(rng.integers(0, 3)) if rng.random() < 0.3 else 0):  # cherry tomatoes
        x, y = point_in_disc(rng, c, c, ri * 0.75)
        tr = size * float(rng.uniform(0.04, 0.06))
        tomato = vary_color(rng, (205, 40, 30), 10)
        shaded_ellipse(draw, (x - tr, y - tr, x + tr, y + tr), tomato, light, steps=4)
    for _ in range(int(rng.integers(0, 6))):  # cucumber slices
        x, y = point_in_disc(rng, c, c, ri * 0.75)
        cr = size * float(rng.uniform(0.04, 0.06))
        draw.ellipse((x - cr, y - cr, x + cr, y + cr), fill=(40, 90, 35))
        draw.ellipse(
            (x - cr * 0.85, y - cr * 0.85, x + cr * 0.85, y + cr * 0.85),
            fill=vary_color(rng, (190, 215, 150), 10),
        )
    for _ in range(int(rng.integers(0, 10))):  # feta cubes
        x, y = point_in_disc(rng, c, c, ri * 0.8)
        fr = size * float(rng.uniform(0.015, 0.03))
        draw.rectangle((x - fr, y - fr, x + fr, y + fr), fill=vary_color(rng, (245, 245, 235), 6))
    for _ in range(int(rng.integers(0, 5))):  # carrot strips
        x, y = point_in_disc(rng, c, c, ri * 0.8)
        a = float(rng.uniform(0, math.pi))
        d = size * 0.05
        draw.line(
            [(x, y), (x + d * math.cos(a), y + d * math.sin(a))],
            fill=vary_color(rng, (240, 130, 30), 10),
            width=max(1, int(size * 0.012)),
        )
    return patch


# Index 3 is an orange (its peel gets dimples).
_FRUITS: tuple[Color, ...] = (
    (140, 190, 60), (120, 175, 40), (100, 30, 80), (240, 140, 20), (240, 210, 60), (60, 50, 110),
)


def _draw_fruit(rng: Rng, size: float, light: Light) -> Image.Image:
    patch, draw = new_patch(size, size)
    n = int(rng.choice([1, 2, 3, 4, 5], p=[0.3, 0.2, 0.2, 0.15, 0.15]))
    kind = int(rng.choice(len(_FRUITS), p=[0.3, 0.25, 0.2, 0.08, 0.05, 0.12]))
    c = size / 2
    for i in range(n):
        r = size * (0.45 if n == 1 else float(rng.uniform(0.2, 0.28)))
        if n == 1:
            x, y = c, c
        else:
            a = 2 * math.pi * i / n + float(rng.normal(0, 0.3))
            x, y = c + (c - r) * 0.8 * math.cos(a), c + (c - r) * 0.8 * math.sin(a)
        color = vary_color(rng, _FRUITS[kind if rng.random() < 0.7 else int(rng.integers(3))], 15)
        squash = float(rng.uniform(0.9, 1.0))
        shaded_ellipse(
            draw, (x - r, y - r * squash, x + r, y + r * squash), color, light, steps=12
        )
        if kind == 3:  # orange peel dimples
            for _ in range(25):
                px, py = point_in_disc(rng, x, y, r * 0.85)
                draw.point((px, py), fill=shade(color, 0.85))
        if rng.random() < 0.5:
            draw.line(
                [(x, y - r * 0.1), (x + r * 0.1, y - r * 0.35)],
                fill=(80, 55, 30),
                width=max(1, int(r * 0.06)),
            )
    return patch


def _draw_donut(rng: Rng, size: float, light: Light) -> Image.Image:
    patch, draw = new_patch(size, size)
    n = int(rng.choice([1, 2, 3], p=[0.6, 0.25, 0.15]))
    c = size / 2
    for i in range(n):
        r = size * (0.47 if n == 1 else 0.27)
        if n == 1:
            x, y = c, c
        else:
            a = 2 * math.pi * i / n + float(rng.normal(0, 0.2))
            x, y = c + (c - r) * math.cos(a), c + (c - r) * math.sin(a)
        dough = vary_color(rng, (205, 150, 90), 14)
        shaded_ellipse(draw, (x - r, y - r, x + r, y + r), dough, light, steps=6, dark=0.7)
        glaze_kind = int(rng.choice(6, p=[0.25, 0.25, 0.2, 0.15, 0.1, 0.05]))
        if glaze_kind < 5:
            glazes = [
                (240, 150, 180),
                (245, 240, 230),
                (120, 180, 230),
                (150, 200, 90),
                (90, 50, 30),
            ]
            glaze = vary_color(rng, glazes[glaze_kind], 12)
            pts = []
            for k in range(36):
                a = 2 * math.pi * k / 36
                d = r * (0.9 + 0.05 * math.sin(a * 5 + float(rng.uniform(0, 6))))
                pts.append((x + d * math.cos(a), y + d * math.sin(a)))
            draw.polygon(pts, fill=glaze)
            for _ in range(int(rng.integers(0, 30))):  # sprinkles
                px, py = point_in_disc(rng, x, y, r * 0.75)
                a = float(rng.uniform(0, math.pi))
                d = r * 0.07
                draw.line(
                    [(px, py), (px + d * math.cos(a), py + d * math.sin(a))],
                    fill=tuple(int(v) for v in rng.integers(60, 256, 3)),
                    width=max(1, int(r * 0.03)),
                )
        hole = r * float(rng.uniform(0.25, 0.33))
        draw.ellipse(
            (x - hole * 1.15, y - hole * 1.15, x + hole * 1.15, y + hole * 1.15),
            fill=shade(dough, 0.7),
        )
        draw.ellipse((x - hole, y - hole, x + hole, y + hole), fill=(0, 0, 0, 0))
    return patch


def _draw_egg(rng: Rng, size: float, light: Light) -> Image.Image:
    patch, draw = new_patch(size, size)
    c = size / 2
    white = vary_color(rng, (248, 246, 238), 5)
    crisp = rng.random() < 0.5
    blobs = []
    for _ in range(int(rng.integers(5, 9))):
        x, y = point_in_disc(rng, c, c, size * 0.18)
        r = size * float(rng.uniform(0.2, 0.3))
        blobs.append((x, y, r))
    if crisp:
        for x, y, r in blobs:
            draw.ellipse(
                (x - r * 1.06, y - r * 1.06, x + r * 1.06, y + r * 1.06),
                fill=vary_color(rng, (190, 140, 80), 10),
            )
    for x, y, r in blobs:
        draw.ellipse((x - r, y - r, x + r, y + r), fill=white)
    yr = size * float(rng.uniform(0.08, 0.12))
    yx, yy = point_in_disc(rng, c, c, size * 0.06)
    shaded_ellipse(
        draw,
        (yx - yr, yy - yr, yx + yr, yy + yr),
        vary_color(rng, (250, 175, 30), 10),
        light,
        steps=6,
        dark=0.8,
    )
    return patch


def _draw_cookie(rng: Rng, size: float, light: Light) -> Image.Image:
    patch, draw = new_patch(size, size)
    c, r = size / 2, size * 0.45
    pts = []
    for k in range(28):
        a = 2 * math.pi * k / 28
        d = r * float(rng.uniform(0.92, 1.0))
        pts.append((c + d * math.cos(a), c + d * math.sin(a)))
    dough = vary_color(rng, (195, 140, 80), 15)
    draw.polygon(pts, fill=shade(dough, 0.8))
    shaded_ellipse(
        draw,
        (c - r * 0.9, c - r * 0.9, c + r * 0.9, c + r * 0.9),
        dough,
        light,
        steps=4,
        dark=0.9,
        bright=1.1,
    )
    for _ in range(int(rng.integers(6, 16))):
        x, y = point_in_disc(rng, c, c, r * 0.8)
        cr = size * float(rng.uniform(0.02, 0.04))
        draw.polygon(
            [
                (x + cr * math.cos(a), y + cr * math.sin(a))
                for a in np.linspace(0, 2 * math.pi, 6)[:-1] + float(rng.uniform(0, 1))
            ],
            fill=vary_color(rng, (60, 35, 20), 10),
        )
    return patch


def _draw_berries(rng: Rng, size: float, light: Light) -> Image.Image:
    patch, draw = new_patch(size, size)
    c, ri, bowl = _bowl(
        rng, draw, size, [(240, 240, 235), (70, 140, 160), (200, 200, 210), (60, 60, 65)], 12,
        light,
    )
    draw.ellipse((c - ri, c - ri, c + ri, c + ri), fill=shade(bowl, 0.6))
    berry = [(55, 60, 125), (150, 190, 80), (110, 45, 105), (40, 30, 50)][int(rng.integers(4))]
    br = size * float(rng.uniform(0.04, 0.065))
    for _ in range(int(rng.integers(35, 70))):
        x, y = point_in_disc(rng, c, c, ri - br)
        color = vary_color(rng, berry, 12)
        draw.ellipse((x - br, y - br, x + br, y + br), fill=shade(color, 0.7))
        draw.ellipse((x - br * 0.8, y - br * 0.8, x + br * 0.6, y + br * 0.6), fill=color)
        hx, hy = x + light[0] * br * 0.4, y + light[1] * br * 0.4
        draw.ellipse(
            (hx - br * 0.2, hy - br * 0.2, hx + br * 0.2, hy + br * 0.2), fill=shade(color, 1.6)
        )
    return patch


def _draw_broccoli(rng: Rng, size: float, light: Light) -> Image.Image:
    patch, draw = new_patch(size, size)
    c = size / 2
    stem = vary_color(rng, (160, 195, 110), 12)
    for _ in range(int(rng.integers(3, 7))):
        x, y = point_in_disc(rng, c, c, size * 0.25)
        fr = size * float(rng.uniform(0.14, 0.22))
        a = float(rng.uniform(0, 2 * math.pi))
        draw.line(
            [(x, y), (x + fr * 1.2 * math.cos(a), y + fr * 1.2 * math.sin(a))],
            fill=stem,
            width=max(2, int(fr * 0.5)),
        )
        green = vary_color(rng, (55, 115, 45), 12)
        for _ in range(int(rng.integers(10, 18))):
            bx, by = point_in_disc(rng, x, y, fr * 0.7)
            br = fr * float(rng.uniform(0.25, 0.4))
            shaded_ellipse(
                draw,
                (bx - br, by - br, bx + br, by + br),
                green,
                light,
                steps=3,
                dark=0.6,
                bright=1.2,
            )
    return patch


OTHER_FOODS: tuple[Drawer | None, ...] = (
    _draw_pizza,
    _draw_pizza_slice,
    draw_burger,
    _draw_salad,
    _draw_fruit,
    _draw_donut,
    _draw_egg,
    _draw_cookie,
    _draw_berries,
    _draw_broccoli,
    None,
)
FOOD_DRAWERS: dict[str, Drawer] = {
    "pizza": _draw_pizza, "burger": draw_burger, "salad": _draw_salad, "fruit": _draw_fruit,
    "donut": _draw_donut, "egg": _draw_egg, "cookie": _draw_cookie, "berries": _draw_berries,
    "broccoli": _draw_broccoli,
}
assert set(FOOD_DRAWERS) == set(FOODS)
# Warm, bun-coloured foods are rare here so that a small net can learn "hotdog" quickly.
OTHER_WEIGHTS = np.array([0.02, 0.02, 0.02, 0.24, 0.16, 0.08, 0.05, 0.02, 0.14, 0.13, 0.12])
