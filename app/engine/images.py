"""Decoding any supported image file into an 8-bit RGB picture, the same way everywhere.

Training, evaluation and prediction all go through :func:`open_rgb`, so an odd file
(CMYK, 16-bit, palette with transparency, EXIF-rotated, ...) is seen identically by each.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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

# What transparent pixels become: white, as an image viewer shows them on a page.
_BACKGROUND = (255, 255, 255)


class ImageDecodeError(ValueError):
    """A file that is not a decodable image of a supported format. The message names it."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def open_rgb(
    source: str | Path | bytes | BinaryIO,
    *,
    name: str | None = None,
    min_short_side: int | None = None,
    then: Callable[[Image.Image], Image.Image] | None = None,
) -> Image.Image:
    """Decode ``source`` into an 8-bit RGB image, EXIF orientation applied.

    ``min_short_side`` lets a JPEG be decoded at a reduced DCT scale (1/2, 1/4, 1/8)
    as long as both sides stay at least that large: callers pass the smallest size
    their transform needs, so nothing the model sees is lost.
    ``then`` (a resize, say) is applied to the decoded picture before it is returned; it
    saves the copy that handing out the decoded picture itself costs.
    """
    label = name or (str(source) if isinstance(source, (str, Path)) else "<upload>")
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            # A bomb warning (between 1x and 2x MAX_IMAGE_PIXELS) is an error here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source, formats=SUPPORTED_FORMATS) as img:
                if min_short_side and img.format in ("JPEG", "MPO"):
                    img.draft(img.mode, (min_short_side, min_short_side))
                img.load()
                ImageOps.exif_transpose(img, in_place=True)
                rgb = to_rgb(img)
                if then is not None:
                    return then(rgb)
                # The file's image is released when the file closes: hand out a copy.
                return rgb.copy() if rgb is img else rgb
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


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB without clipping or dropping information badly."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _high_depth_to_rgb(img)
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        mode in ("P", "L", "RGB") and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise ImageDecodeError(f"unsupported image mode {mode!r}") from exc


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    # PIL's own convert("RGB") clips 16-bit values at 255, turning most pixels white.
    arr = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        peak = float(arr.max()) if arr.size else 1.0
        scale = 255.0 if peak <= 1.0 else 255.0 / max(peak, 1e-12)
    elif img.mode.startswith("I;16") or arr.max(initial=0) > 255:
        scale = 255.0 / 65535.0
    else:
        scale = 1.0
    gray = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")
