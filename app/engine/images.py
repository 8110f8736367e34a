"""Decoding any supported image file into an 8-bit RGB picture, the same way everywhere.

Training, evaluation and prediction all go through :func:`open_rgb`, so an odd file
(CMYK, 16-bit, palette with transparency, EXIF-rotated, ...) is seen identically by each.
What a decode will hold is estimated from the header first (:func:`decode_cost`): an image
over the limit is refused, and a :class:`DecodeBudget` bounds the decodes in flight.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import BinaryIO, TypeVar, overload

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from app.engine.errors import ImageDecodeError

# Formats a user's photo realistically arrives in (JPEG covers multi-picture MPO files).
# Anything else is refused rather than handed to a less-exercised PIL decoder.
SUPPORTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"}
)
# 64 megapixels: larger than any camera photo a user would fine-tune on, far below the
# sizes a decompression bomb needs. PIL raises DecompressionBombError at twice this.
MAX_IMAGE_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
# Between 1x and 2x that, PIL warns as it opens the file: ``open_rgb`` refuses such an image
# itself, so the warning would only repeat the refusal on stderr, once for each size sent.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# PIL allocates a picture in blocks of up to this size. Above glibc's largest mmap threshold
# (32 MiB), every such block is mapped on its own and given back to the system when freed;
# PIL's default 16 MiB blocks came from malloc's heaps once a first one was freed, which
# kept the peak of past decodes resident in every thread's arena.
Image.core.set_block_size(64 << 20)

# What transparent pixels become: white, as an image viewer shows them on a page.
_BACKGROUND = (255, 255, 255)

# The most memory one decode may need, whoever asks (a budgeted caller: at most its whole
# budget): 16 bytes a pixel at MAX_IMAGE_PIXELS, what a rotated transparent TIFF needs.
MAX_DECODE_BYTES = 1 << 30
# Conversions to RGB work on bands of rows of about this many pixels: their float64 and
# 8-bit pieces are all the memory they need besides the source and the result.
STRIP_PIXELS = 1 << 19
_STRIP_BYTES_A_PIXEL = 24  # a float64 copy, its source and 8-bit pieces, the RGBA composite
# Formats whose decoder holds a second full-size buffer while it decodes (bytes a pixel):
# libwebp's RGBA output; a TIFF of a single strip read through libtiff's RGBA interface.
_DECODER_BUFFER = {"WEBP": 4, "TIFF": 4}
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# 16-bit level -> 8-bit level, as ``rint(v * 255 / 65535)`` (which no 16-bit value ties).
_FROM_16_BIT = np.rint(np.arange(65536, dtype=np.float64) * (255.0 / 65535.0)).astype(np.uint8)

T = TypeVar("T")


class DecodeBusy(RuntimeError):
    """The decode budget stayed taken by other decodes for longer than the caller waits."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


@overload
def open_rgb(
    source: str | Path | bytes | BinaryIO, *, name: str | None = ...,
    min_short_side: int | None = ..., then: None = ...,
    budget: DecodeBudget | None = ..., wait: float | None = ...,
) -> Image.Image: ...


@overload
def open_rgb(
    source: str | Path | bytes | BinaryIO, *, name: str | None = ...,
    min_short_side: int | None = ..., then: Callable[[Image.Image], T],
    budget: DecodeBudget | None = ..., wait: float | None = ...,
) -> T: ...


def open_rgb(
    source: str | Path | bytes | BinaryIO,
    *,
    name: str | None = None,
    min_short_side: int | None = None,
    then: Callable[[Image.Image], T] | None = None,
    budget: DecodeBudget | None = None,
    wait: float | None = None,
) -> Image.Image | T:
    """Decode ``source`` into an 8-bit RGB image, EXIF orientation applied.

    ``min_short_side`` lets a JPEG be decoded at a reduced DCT scale (1/2, 1/4, 1/8)
    as long as both sides stay at least that large: callers pass the smallest size
    their transform needs, so nothing the model sees is lost.
    ``then`` (a resize, say) is applied to the decoded picture and its result returned
    instead; it saves the copy that handing out the decoded picture itself costs.
    Before decoding, the memory it needs is estimated from the header (``decode_cost``):
    over ``MAX_DECODE_BYTES`` (or ``budget``'s capacity) the image is refused, and with a
    ``budget`` the decode first reserves it there, waiting up to ``wait`` seconds (None: as
    long as it takes) before raising DecodeBusy.
    """
    label = name or (str(source) if isinstance(source, (str, Path)) else "<upload>")
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with Image.open(source, formats=SUPPORTED_FORMATS) as img:
            # PIL itself refuses only twice MAX_IMAGE_PIXELS (and warns between): the limit
            # is checked here, from the header, and not through the warnings filter, which
            # is the process's (a thread's ``catch_warnings`` changes it for every thread).
            pixels = img.width * img.height
            if pixels > MAX_IMAGE_PIXELS:
                raise ImageDecodeError(
                    f"{label}: image is too large ({img.width}x{img.height}, {pixels:,} "
                    f"pixels; the limit is {MAX_IMAGE_PIXELS:,})")
            return _decode(img, label, min_short_side, then, budget, wait)
    except FileNotFoundError as exc:
        raise ImageDecodeError(f"{label}: file not found") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            f"{label}: not an image of a supported format ({', '.join(SUPPORTED_FORMATS)})"
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"{label}: image is too large ({exc})") from exc
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        # PIL reports truncated/corrupt data through a zoo of exception types.
        raise ImageDecodeError(f"{label}: corrupt or unreadable image ({exc})") from exc


def _decode(img: Image.Image, label: str, min_short_side: int | None,
            then: Callable[[Image.Image], T] | None, budget: DecodeBudget | None,
            wait: float | None) -> Image.Image | T:
    undrafted = img.size
    if min_short_side and img.format in ("JPEG", "MPO"):
        img.draft(img.mode, (min_short_side, min_short_side))
    cost = decode_cost(img, undrafted=undrafted)
    if then is None and img.mode == "RGB":
        cost += 4 * img.width * img.height  # the copy handed out
    limit = MAX_DECODE_BYTES if budget is None else min(MAX_DECODE_BYTES, budget.capacity)
    if cost > limit:
        raise ImageDecodeError(
            f"{label}: decoding this {img.width}x{img.height} {img.mode} image needs about "
            f"{_mib(cost)} of memory; the limit for one image is {_mib(limit)}")
    with budget.reserve(cost, timeout=wait) if budget is not None else nullcontext():
        img.load()
        method = _transposition(img)
        picture = img if method is None else img.transpose(method)
        rgb = to_rgb(picture)
        if then is not None:
            return then(rgb)
        # The file's image is released when the file closes: hand out a copy.
        return rgb.copy() if rgb is img else rgb


def decode_cost(img: Image.Image, *, undrafted: tuple[int, int] | None = None) -> int:
    """Bytes that decoding ``img`` (opened, not yet loaded) into RGB holds at its peak, from
    its header: the pixels in the file's mode (as PIL stores them: RGB and LA take 4 bytes
    a pixel, 16-bit modes 2), the decoder's own full-size buffers, a transposed copy when
    the EXIF orientation asks for one, and the RGB picture with the strips that convert
    it. ``undrafted``: the size before a JPEG ``draft`` (a progressive JPEG keeps all its
    DCT coefficients, 2 bytes each, at full size). What ``then`` makes is not counted."""
    pixels = img.width * img.height
    source = pixels * _pixel_bytes(img.mode)
    cost = source + pixels * _DECODER_BUFFER.get(img.format or "", 0)
    if img.format in ("JPEG", "MPO") and img.info.get("progressive"):
        width, height = undrafted or img.size
        cost += width * height * 2 * len(img.getbands())
    if _transposition(img) is not None:
        cost += source
    if img.mode != "RGB":
        strip = min(pixels, max(STRIP_PIXELS, img.width))  # at least one row
        cost += 4 * pixels + _STRIP_BYTES_A_PIXEL * strip
    return cost


def _pixel_bytes(mode: str) -> int:
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def _transposition(img: Image.Image) -> Image.Transpose | None:
    # Image.Image's getexif, not PngImageFile's (which decodes the whole image to look for
    # EXIF after the pixel data): orientation is read from the header only, so what it costs
    # is known before decoding. PIL keeps the EXIF it read, so before and after load agree.
    orientation = Image.Image.getexif(img).get(ExifTags.Base.Orientation, 1)
    return _TRANSPOSE.get(orientation) if isinstance(orientation, int) else None


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MiB"


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB without clipping or dropping information badly.
    Conversions that need intermediate pictures make them a band of rows at a time."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _high_depth_to_rgb(img)
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        mode in ("P", "L", "RGB") and "transparency" in img.info
    )
    if has_alpha:
        return _by_strips(img, _on_background)
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise ImageDecodeError(f"unsupported image mode {mode!r}") from exc


def _on_background(strip: Image.Image) -> Image.Image:
    rgba = strip.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
    return Image.alpha_composite(background, rgba)


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    # PIL's own convert("RGB") clips 16-bit values at 255, turning most pixels white.
    extrema = img.getextrema()
    peak = float(extrema[1]) if extrema else 0.0  # type: ignore[arg-type]
    to_8_bit: Callable[[np.ndarray], np.ndarray]
    if img.mode == "F":
        scale = 255.0 if not extrema or peak <= 1.0 else 255.0 / max(peak, 1e-12)
        to_8_bit = partial(_float_to_8_bit, scale=scale)
    elif img.mode.startswith("I;16") or peak > 255:
        to_8_bit = lambda a: _FROM_16_BIT[np.clip(a, 0, 65535)]  # noqa: E731
    else:
        to_8_bit = lambda a: np.clip(a, 0, 255).astype(np.uint8)  # noqa: E731
    return _by_strips(img, lambda strip: Image.fromarray(to_8_bit(np.asarray(strip))))


def _float_to_8_bit(a: np.ndarray, scale: float) -> np.ndarray:
    x = a.astype(np.float64)  # in place from here: one float64 copy of the strip
    x *= scale
    np.rint(x, out=x)
    np.clip(x, 0, 255, out=x)
    return x.astype(np.uint8)


def _by_strips(img: Image.Image, convert: Callable[[Image.Image], Image.Image]) -> Image.Image:
    """``convert`` applied to bands of rows (about STRIP_PIXELS each), pasted into one RGB
    picture: no full-size intermediate besides the result."""
    width, height = img.size
    out = Image.new("RGB", img.size)
    rows = max(1, STRIP_PIXELS // max(1, width))
    for top in range(0, height, rows):
        strip = img.crop((0, top, width, min(height, top + rows)))
        out.paste(convert(strip).convert("RGB"), (0, top))
    return out


class DecodeBudget:
    """Bytes of decoding in flight at once, at most ``capacity``. A decode reserves its
    estimated cost before it starts and waits, first come first served, until it fits:
    however many threads decode, their pictures together stay within the budget."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a decode budget needs at least 1 byte, not {capacity}")
        self.capacity = capacity
        self.in_use = 0
        self._changed = threading.Condition()
        self._turns: deque[object] = deque()

    def resize(self, capacity: int) -> None:
        """A new capacity; reservations held keep what they hold until they end."""
        if capacity < 1:
            raise ValueError(f"a decode budget needs at least 1 byte, not {capacity}")
        with self._changed:
            self.capacity = capacity
            self._changed.notify_all()

    @contextmanager
    def reserve(self, cost: int, *, timeout: float | None = None) -> Iterator[None]:
        """Hold ``cost`` bytes (at most the whole budget) while the block runs. Waits for
        them up to ``timeout`` seconds (None: as long as it takes; 0: not at all), then
        raises DecodeBusy."""
        turn = object()
        with self._changed:
            cost = min(cost, self.capacity)
            self._turns.append(turn)
            fits = self._changed.wait_for(
                lambda: self._turns[0] is turn and self.in_use + cost <= self.capacity,
                timeout)
            self._turns.remove(turn)
            if fits:
                self.in_use += cost
            self._changed.notify_all()  # the next in line may be first now
            busy = f"{_mib(self.in_use)} of {_mib(self.capacity)}"
        if not fits:
            raise DecodeBusy(f"image decoding is at capacity ({busy} in use); retry shortly")
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= cost
                self._changed.notify_all()


def default_decode_budget() -> int:
    """512 MiB, or a quarter of the memory this process may use when that is less: enough
    for any image within MAX_IMAGE_PIXELS but a rotated transparent one (see decode_cost)."""
    return min(512 << 20, _memory_bytes() // 4)


def _memory_bytes() -> int:
    """The machine's memory, or the container's limit (cgroup v2) when it is lower."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        total = 4 << 30
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


# The process's budget: what the API's predictions and its upload checks share.
_PROCESS_BUDGET = DecodeBudget(default_decode_budget())


def decode_budget() -> DecodeBudget:
    """This process's decode budget (sized by ``set_decode_budget``)."""
    return _PROCESS_BUDGET


def set_decode_budget(capacity: int | None) -> DecodeBudget:
    """Size this process's decode budget: ``capacity`` bytes, None for the default."""
    _PROCESS_BUDGET.resize(capacity or default_decode_budget())
    return _PROCESS_BUDGET
