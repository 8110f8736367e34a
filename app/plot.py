"""Line charts as PNG files, drawn with Pillow (no plotting library needed): panels side by
side, each with axes, ticks, grid lines and a legend. ``hotdog demo`` draws its loss and
accuracy curves with it."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# Drawn at SUPERSAMPLE x the size and scaled down: anti-aliased lines and text.
SUPERSAMPLE = 2
PANEL_WIDTH, HEIGHT = 600, 440
# Colour-blind-safe pair (Okabe-Ito blue and vermillion), then more of the same palette.
PALETTE = ((0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233))
INK, GRID, AXIS = (40, 40, 40), (228, 228, 228), (120, 120, 120)


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]  # (x, y), x increasing
    color: tuple[int, int, int] | None = None  # None: the palette's next colour


@dataclass(frozen=True)
class Panel:
    title: str
    xlabel: str
    ylabel: str
    series: Sequence[Series]
    y_range: tuple[float, float] | None = None  # None: fitted to the data
    integer_x: bool = True  # epochs: ticks on whole numbers only


def nice_ticks(lo: float, hi: float, target: int = 5, *, integer: bool = False
               ) -> list[float]:
    """About ``target`` round tick values (1, 2 or 5 times a power of ten) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(1, target)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    if integer:
        step = max(1.0, round(step))
    first = math.floor(lo / step + 1e-9) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < hi - 1e-9:
        ticks.append(round(value, 10))
    return ticks


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size * SUPERSAMPLE)


def _label(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    return f"{value:.{min(decimals, 4)}f}"


def render(panels: Sequence[Panel], *, title: str | None = None) -> Image.Image:
    """The chart: ``panels`` side by side under ``title`` and one legend for them all (the
    first panel's series). Size: :func:`chart_size`."""
    s = SUPERSAMPLE
    title_band = _title_band(title)
    width, height = chart_size(len(panels), title)
    image = Image.new("RGB", (width * s, height * s), "white")
    draw = ImageDraw.Draw(image)
    if title:
        font = _font(17)
        w = draw.textlength(title, font=font)
        draw.text(((width * s - w) / 2, 12 * s), title, fill=INK, font=font)
    if panels:
        _draw_legend(draw, panels[0], center_x=width * s / 2, y=(title_band - 26) * s)
    for i, panel in enumerate(panels):
        _draw_panel(image, panel, left=i * PANEL_WIDTH * s, top=title_band * s)
    return image.resize((width, height), Image.Resampling.LANCZOS)


def chart_size(panels: int, title: str | None = None) -> tuple[int, int]:
    """(width, height) in pixels of :func:`render`'s image."""
    return PANEL_WIDTH * panels, HEIGHT + _title_band(title)


def _title_band(title: str | None) -> int:
    return 70 if title else 34


def _draw_legend(draw: ImageDraw.ImageDraw, panel: Panel, *, center_x: float, y: float
                 ) -> None:
    s = SUPERSAMPLE
    font = _font(13)
    items = [(series.name, series.color or PALETTE[k % len(PALETTE)])
             for k, series in enumerate(panel.series)]
    widths = [30 * s + draw.textlength(name, font=font) for name, _ in items]
    gap = 28 * s
    x = center_x - (sum(widths) + gap * (len(items) - 1)) / 2
    for (name, color), w in zip(items, widths, strict=True):
        draw.line([(x, y + 9 * s), (x + 22 * s, y + 9 * s)], fill=color, width=3 * s)
        r = 4 * s
        draw.ellipse((x + 11 * s - r, y + 9 * s - r, x + 11 * s + r, y + 9 * s + r), fill=color)
        draw.text((x + 30 * s, y), name, fill=INK, font=font)
        x += w + gap


def _draw_panel(image: Image.Image, panel: Panel, *, left: int, top: int) -> None:
    s = SUPERSAMPLE
    draw = ImageDraw.Draw(image)
    small, normal = _font(12), _font(14)
    # The plot area inside the panel, in supersampled pixels.
    x0, x1 = left + 70 * s, left + (PANEL_WIDTH - 20) * s
    y0, y1 = top + 40 * s, top + (HEIGHT - 60) * s

    points = [p for series in panel.series for p in series.points
              if math.isfinite(p[0]) and math.isfinite(p[1])]
    xs = [p[0] for p in points] or [0.0, 1.0]
    ys = [p[1] for p in points] or [0.0, 1.0]
    if panel.integer_x and max(xs) - min(xs) <= 12:  # a few epochs: one tick each
        x_ticks = [float(x) for x in range(math.floor(min(xs)), math.ceil(max(xs)) + 1)]
    else:
        x_ticks = nice_ticks(min(xs), max(xs), 6, integer=panel.integer_x)
    if len(x_ticks) == 1:
        x_ticks = [x_ticks[0] - 1, x_ticks[0], x_ticks[0] + 1]
    if panel.y_range is not None:
        y_ticks = nice_ticks(*panel.y_range, 5)
    else:
        pad = (max(ys) - min(ys)) * 0.05 or 0.5
        y_ticks = nice_ticks(min(0.0, min(ys)) if min(ys) >= 0 else min(ys) - pad,
                             max(ys) + pad, 5)
    xlo, xhi, ylo, yhi = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    x_pad = (xhi - xlo) * 0.03  # points at the ends stay off the frame

    def px(x: float) -> float:
        return x0 + (x - xlo + x_pad) / ((xhi - xlo + 2 * x_pad) or 1) * (x1 - x0)

    def py(y: float) -> float:
        y = min(max(y, ylo), yhi)  # a diverging loss is drawn at the top edge, not off it
        return y1 - (y - ylo) / ((yhi - ylo) or 1) * (y1 - y0)

    tw = draw.textlength(panel.title, font=normal)
    draw.text(((x0 + x1 - tw) / 2, top + 12 * s), panel.title, fill=INK, font=normal)
    y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
    x_step = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1.0
    for y in y_ticks:
        draw.line([(x0, py(y)), (x1, py(y))], fill=GRID, width=s)
        text = _label(y, y_step)
        w = draw.textlength(text, font=small)
        draw.text((x0 - 8 * s - w, py(y) - 8 * s), text, fill=INK, font=small)
        draw.line([(x0 - 4 * s, py(y)), (x0, py(y))], fill=AXIS, width=s)
    for x in x_ticks:
        text = _label(x, x_step)
        w = draw.textlength(text, font=small)
        draw.text((px(x) - w / 2, y1 + 8 * s), text, fill=INK, font=small)
        draw.line([(px(x), y1), (px(x), y1 + 4 * s)], fill=AXIS, width=s)
    draw.line([(x0, y0), (x0, y1), (x1, y1)], fill=AXIS, width=s)
    w = draw.textlength(panel.xlabel, font=normal)
    draw.text(((x0 + x1 - w) / 2, y1 + 30 * s), panel.xlabel, fill=INK, font=normal)
    _vertical_text(image, panel.ylabel, normal, center=(left + 16 * s, (y0 + y1) / 2))

    for k, series in enumerate(panel.series):
        color = series.color or PALETTE[k % len(PALETTE)]
        pts = [(px(x), py(y)) for x, y in series.points if math.isfinite(x) and math.isfinite(y)]
        if len(pts) > 1:
            draw.line(pts, fill=color, width=3 * s, joint="curve")
        r = 4 * s
        for x, y in pts:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=color, outline="white", width=s)


def _vertical_text(image: Image.Image, text: str,
                   font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
                   center: tuple[float, float]) -> None:
    box = ImageDraw.Draw(image).textbbox((0, 0), text, font=font)
    label = Image.new("L", (int(box[2]) + 4, int(box[3]) + 4), 0)
    ImageDraw.Draw(label).text((2, 2), text, fill=255, font=font)
    label = label.rotate(90, expand=True)
    x, y = int(center[0] - label.width / 2), int(center[1] - label.height / 2)
    image.paste(INK, (x, y), label)


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write ``image`` to ``path`` under a temporary name, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, "PNG", optimize=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
