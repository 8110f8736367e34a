from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import threading
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.engine.errors import ImageDecodeError
from app.engine.images import (
    MAX_IMAGE_PIXELS,
    DecodeBudget,
    DecodeBusy,
    open_rgb,
)
from app.engine.presets import Preprocessing, load_eval_image
from tests.helpers import wait_for


def _save(img: Image.Image, path: Path, **kw: object) -> Path:
    img.save(path, **kw)
    return path


def _pixel(img: Image.Image, xy: tuple[int, int] = (0, 0)) -> tuple[int, int, int]:
    px = img.getpixel(xy)
    assert isinstance(px, tuple)
    return px[:3]  # type: ignore[return-value]


def _close(a: tuple[int, ...], b: tuple[int, ...], tol: int = 6) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def test_rgb_jpeg(tmp_path: Path) -> None:
    p = _save(Image.new("RGB", (20, 10), (200, 30, 30)), tmp_path / "a.jpg", quality=95)
    img = open_rgb(p)
    assert img.mode == "RGB" and img.size == (20, 10)
    assert _close(_pixel(img), (200, 30, 30))


def test_cmyk_jpeg(tmp_path: Path) -> None:
    # Pure cyan in CMYK is (0, 255, 255) in RGB.
    p = _save(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), tmp_path / "c.jpg", quality=95)
    assert Image.open(p).mode == "CMYK"
    img = open_rgb(p)
    assert img.mode == "RGB" and _close(_pixel(img), (0, 255, 255), tol=10)


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grayscale_and_bilevel(tmp_path: Path, mode: str) -> None:
    value = 255 if mode == "1" else 128
    p = _save(Image.new(mode, (8, 8), value), tmp_path / f"g{mode}.png")
    img = open_rgb(p)
    assert img.mode == "RGB" and _pixel(img) == (value, value, value)


def test_palette_png(tmp_path: Path) -> None:
    pal = Image.new("RGB", (8, 8), (10, 200, 90)).convert("P", palette=Image.Palette.ADAPTIVE)
    p = _save(pal, tmp_path / "p.png")
    assert Image.open(p).mode == "P"
    assert _close(_pixel(open_rgb(p)), (10, 200, 90), tol=2)


def test_palette_with_transparency_becomes_white(tmp_path: Path) -> None:
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((1, 1), 1)
    p = _save(pal, tmp_path / "t.png", transparency=0)
    img = open_rgb(p)
    assert _pixel(img, (0, 0)) == (255, 255, 255)  # transparent index
    assert _pixel(img, (1, 1)) == (255, 0, 0)


def test_rgba_transparent_pixels_become_white_not_black(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.putpixel((2, 2), (0, 0, 255, 255))
    rgba.putpixel((3, 3), (0, 0, 0, 128))  # half-transparent black over white: mid-gray
    img = open_rgb(_save(rgba, tmp_path / "a.png"))
    assert _pixel(img, (0, 0)) == (255, 255, 255)
    assert _pixel(img, (2, 2)) == (0, 0, 255)
    assert _close(_pixel(img, (3, 3)), (127, 127, 127), tol=2)


def test_la_grayscale_with_alpha(tmp_path: Path) -> None:
    la = Image.new("LA", (4, 4), (50, 255))
    assert _pixel(open_rgb(_save(la, tmp_path / "la.png"))) == (50, 50, 50)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.full((8, 8), 32768, dtype=np.uint16)
    arr[0, 0] = 65535
    arr[0, 1] = 0
    p = _save(Image.fromarray(arr), tmp_path / "g16.png")
    assert Image.open(p).mode.startswith("I")
    img = open_rgb(p)
    assert _pixel(img, (0, 0)) == (255, 255, 255)
    assert _pixel(img, (1, 0)) == (0, 0, 0)
    assert _close(_pixel(img, (3, 3)), (128, 128, 128), tol=1)  # PIL alone would clip to 255


def test_32_bit_float_tiff(tmp_path: Path) -> None:
    arr = np.full((4, 4), 0.5, dtype=np.float32)
    p = _save(Image.fromarray(arr, mode="F"), tmp_path / "f.tif")
    assert _close(_pixel(open_rgb(p)), (128, 128, 128), tol=1)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Stored 40x20 with a red left half; orientation 6 means "rotate 90° clockwise to view".
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    p = _save(stored, tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    img = open_rgb(p)
    assert img.size == (20, 40)
    assert _close(_pixel(img, (10, 5)), (255, 0, 0), tol=20)  # red is now on top
    assert _close(_pixel(img, (10, 35)), (0, 0, 255), tol=20)


def test_webp_gif_bmp_tiff(tmp_path: Path) -> None:
    src = Image.new("RGB", (8, 8), (30, 60, 90))
    for ext in ("webp", "gif", "bmp", "tiff"):
        p = _save(src, tmp_path / f"x.{ext}")
        assert open_rgb(p).mode == "RGB"


def test_corrupt_jpeg_error_names_the_file(tmp_path: Path) -> None:
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good, "JPEG")
    p = tmp_path / "broken.jpg"
    p.write_bytes(good.getvalue()[:200])
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        open_rgb(p)


def test_non_image_error_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "notes.jpg"
    p.write_text("this is not a photo")
    with pytest.raises(ImageDecodeError, match=r"notes\.jpg.*not an image"):
        open_rgb(p)


def test_unsupported_format_is_refused(tmp_path: Path) -> None:
    p = _save(Image.new("RGB", (16, 16)), tmp_path / "icon.ico")
    with pytest.raises(ImageDecodeError, match="icon.ico"):
        open_rgb(p)


def test_decompression_bomb_is_refused(tmp_path: Path) -> None:
    # A 1-bit PNG compresses to almost nothing whatever its pixel count.
    side = int((MAX_IMAGE_PIXELS * 1.5) ** 0.5)
    p = _save(Image.new("1", (side, side)), tmp_path / "bomb.png")
    assert p.stat().st_size < 2_000_000
    with pytest.raises(ImageDecodeError, match=r"bomb\.png.*too large"):
        open_rgb(p)


def test_the_pixel_limit_holds_while_other_threads_change_the_warnings_filter() -> None:
    # catch_warnings swaps the process's filter list: a thread leaving it restores the list
    # it found, undoing what other threads set meanwhile. The limit must not depend on it
    # (a filter turning PIL's bomb warning into an error let 88 of these 800 through).
    side = int((MAX_IMAGE_PIXELS * 1.5) ** 0.5)
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG")
    bomb = buf.getvalue()
    accepted: list[tuple[int, int]] = []
    stop = threading.Event()

    def quieting() -> None:
        while not stop.is_set():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")

    def decoding() -> None:
        for _ in range(200):
            with contextlib.suppress(ImageDecodeError):
                accepted.append(open_rgb(bomb, then=lambda img: img.size))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave at almost every bytecode
    try:
        with warnings.catch_warnings():
            others = [threading.Thread(target=quieting) for _ in range(2)]
            decoders = [threading.Thread(target=decoding) for _ in range(4)]
            for t in others + decoders:
                t.start()
            for t in decoders:
                t.join()
            stop.set()
            for t in others:
                t.join()
    finally:
        sys.setswitchinterval(interval)
    assert accepted == []


def test_uploaded_bytes_are_named_by_caller() -> None:
    with pytest.raises(ImageDecodeError, match="upload-7.png"):
        open_rgb(b"garbage", name="upload-7.png")


def test_draft_decodes_large_jpeg_smaller_but_never_below_the_bound(tmp_path: Path) -> None:
    p = _save(Image.new("RGB", (1600, 1200), (90, 90, 90)), tmp_path / "big.jpg")
    img = open_rgb(p, min_short_side=256)
    assert min(img.size) >= 256 and img.size[0] < 1600
    assert open_rgb(p).size == (1600, 1200)


def test_eval_image_is_same_through_path_bytes_and_file(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    p = _save(Image.fromarray(arr), tmp_path / "x.jpg", quality=90)
    pre = Preprocessing.for_size(32)
    a = load_eval_image(p, pre)
    b = load_eval_image(p.read_bytes(), pre)
    with open(p, "rb") as fh:
        c = load_eval_image(fh, pre)
    assert a.shape == (3, 32, 32) and a.dtype.is_floating_point is False
    assert (a == b).all() and (a == c).all()


# ------------------------------------------------------------------ memory of decoding

def _png_16_bit(path: Path, side: int) -> Path:
    arr = np.zeros((side, side), dtype=np.uint16)
    arr[::7, ::5] = 40000
    return _save(Image.fromarray(arr), path)


def _png_transparent(path: Path, side: int) -> Path:
    return _save(Image.new("RGBA", (side, side), (0, 0, 0, 0)), path)


PEAK_SCRIPT = """
import resource, sys
from PIL import Image
from app.engine.images import decode_cost
from app.engine.presets import Preprocessing, load_eval_image
from tests.helpers import wait_for
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
load_eval_image(data, Preprocessing.for_size(224))
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(grown, decode_cost(Image.open(sys.argv[1])))
"""


@pytest.mark.parametrize("make", [_png_16_bit, _png_transparent], ids=["16-bit", "alpha"])
def test_decoding_holds_what_its_estimate_says_and_few_bytes_a_pixel(
        tmp_path: Path, make: Callable[[Path, int], Path]) -> None:
    # A 4000x4000 picture compresses to a few KB. Decoding it for /predict held 25 (16-bit
    # gray) and 19 (transparent) bytes a pixel in float64 and full-size RGBA copies; now it
    # holds the file's pixels and the RGB result (with a band of rows being converted).
    side = 4000
    png = make(tmp_path / "big.png", side)
    assert png.stat().st_size < 200_000
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(png)], capture_output=True,
                         text=True, check=True, cwd=Path(__file__).parents[1]).stdout
    grown, estimate = map(int, out.split())
    assert grown < 12 * side * side, f"peak grew by {grown >> 20} MiB"
    assert grown <= estimate + (8 << 20), f"{grown >> 20} MiB held, {estimate >> 20} estimated"
    assert estimate < 12 * side * side


def test_an_image_over_the_budget_is_refused_from_its_header(tmp_path: Path) -> None:
    png = _png_16_bit(tmp_path / "deep.png", 8000)
    cut = tmp_path / "deep-cut.png"  # the header, then a fraction of the pixel data
    cut.write_bytes(png.read_bytes()[:5000])
    budget = DecodeBudget(256 << 20)
    for p in (png, cut):  # refused before decoding: the cut file is not called corrupt
        with pytest.raises(ImageDecodeError, match=rf"{p.name}: .*8000x8000 I;16.* needs "
                                                   r"about 37\d MiB.* limit .* 256 MiB"):
            open_rgb(p, budget=budget)
    assert budget.in_use == 0
    assert open_rgb(_png_16_bit(tmp_path / "small.png", 64), budget=budget).size == (64, 64)


def test_float_images_convert_without_full_size_float64_copies(tmp_path: Path) -> None:
    # tracemalloc sees numpy's allocations (not PIL's): the conversion holds less than one
    # float32 copy of the picture (a float64 copy of this 2000x2000 one would be 32 MB).
    arr = np.random.default_rng(0).random((2000, 2000), dtype=np.float32) * 3
    p = _save(Image.fromarray(arr), tmp_path / "f.tif")
    tracemalloc.start()
    try:
        img = open_rgb(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2000 * 2000 * 4, f"numpy held {peak >> 20} MiB"
    expected = np.clip(np.rint(arr.astype(np.float64) * (255 / float(arr.max()))), 0, 255)
    assert (np.asarray(img)[..., 0] == expected.astype(np.uint8)).all()


def test_a_reservation_waits_while_the_budget_is_held_first_come_first_served() -> None:
    budget = DecodeBudget(100)
    got = threading.Event()

    def second() -> None:
        with budget.reserve(60):
            got.set()

    with budget.reserve(60):
        with pytest.raises(DecodeBusy, match="retry"), budget.reserve(60, timeout=0):
            pass
        waiter = threading.Thread(target=second)
        waiter.start()
        wait_for(lambda: budget._turns, timeout=10, what="the second reservation to queue")
        # 30 more would fit, but the reservation of 60 came first: this one is refused.
        with pytest.raises(DecodeBusy), budget.reserve(30, timeout=0.2):
            pass
        assert not got.is_set()
    waiter.join(10)
    assert got.is_set() and budget.in_use == 0
    with budget.reserve(10**9, timeout=0):  # more than the whole budget: all of it
        assert budget.in_use == 100
