"""Where the model looked: Grad-CAM heatmaps on the last convolutional block (``layer4``),
computed with captum's ``LayerGradCam``, and what the centre crop kept of them.

Prediction sees ``Resize(R)`` + ``CenterCrop(S)`` (:mod:`app.engine.presets`), which can cut
an off-centre object away. To show that, the heatmap is computed on the **whole photo**
resized as prediction resizes it (short side R, aspect kept) without the crop: ResNet-18 is
convolutional up to its global pooling, so it takes the non-square picture, and the crop is
exactly that picture's central S x S part. The heatmap's share inside the crop box is the
crop coverage. ``crop="full"`` instead squeezes the whole photo into S x S (no crop at all):
what the model sees then is the whole photo, and the heatmap covers it.

Every position is reported in the original photo's pixels (EXIF orientation applied). This
module knows nothing of HTTP: the API, the CLI and the tests call it.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.models import resnet18

from app.engine.checkpoint import load_checkpoint
from app.engine.images import DecodeBudget, open_rgb
from app.engine.presets import Preprocessing, normalize_batch

Crop = Literal["center", "full"]
CROPS: tuple[Crop, ...] = ("center", "full")
# Below this share of the heatmap inside the crop, most of the evidence lies outside it.
COVERAGE_WARNING = 0.5
OVERLAY_MAX_SIDE = 512  # the overlay PNG's longer side at most (smaller photos keep theirs)
OVERLAY_ALPHA = 0.5

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in original pixels (x1, y1 excluded)


def full_resize(img: Image.Image, pre: Preprocessing) -> Image.Image:
    """The whole photo squeezed into S x S: prediction with ``crop=full``."""
    return img.resize((pre.image_size, pre.image_size), Image.Resampling.BILINEAR)


def load_full_image(source: str | Path | bytes | BinaryIO, pre: Preprocessing, *,
                    name: str | None = None, budget: DecodeBudget | None = None,
                    wait: float | None = None) -> torch.Tensor:
    """Decode one image and squeeze the whole of it into uint8 (3, S, S) (``crop=full``):
    the counterpart of :func:`app.engine.presets.load_eval_image`, for the same batches."""
    img = open_rgb(source, name=name, min_short_side=pre.image_size,
                   then=lambda decoded: full_resize(decoded, pre), budget=budget, wait=wait)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)


@dataclass(frozen=True)
class Explanation:
    """A Grad-CAM heatmap of one photo for one class, in the original photo's pixels."""

    target: str  # the class explained
    size: tuple[int, int]  # the original photo's width, height
    crop: Crop
    crop_box: Box  # what the model's input kept of the photo (the whole photo for "full")
    grid: list[list[float]]  # the layer4 heatmap, rows top to bottom, max 1 (all 0: no evidence)
    grid_box: Box  # the part of the photo the grid covers
    peak: tuple[int, int] | None  # where the heatmap is highest, [x, y]; None when empty
    crop_coverage: float | None  # the heatmap's mass inside crop_box over all of it
    warning: str | None
    overlay_png: bytes  # the photo, the heatmap over it, the crop box and the peak drawn

    def to_dict(self, *, overlay: bool = True) -> dict[str, Any]:
        import base64

        out: dict[str, Any] = {
            "class": self.target, "size": list(self.size), "crop": self.crop,
            "crop_box": list(self.crop_box),
            "heatmap": {"grid": self.grid, "box": list(self.grid_box),
                        "rows": len(self.grid), "cols": len(self.grid[0])},
            "peak": list(self.peak) if self.peak is not None else None,
            "crop_coverage": self.crop_coverage, "warning": self.warning}
        if overlay:
            out["overlay_png"] = base64.b64encode(self.overlay_png).decode("ascii")
        return out


class Explainer:
    """Grad-CAM for one checkpoint: its own fp32 PyTorch model (the served one may be an ONNX
    graph or run under bf16 autocast), on ``device``. One explanation at a time per
    explainer (captum hooks the layer while it computes)."""

    def __init__(self, checkpoint: str | Path | dict[str, Any], *, device: str = "cpu") -> None:
        from captum.attr import LayerGradCam

        ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
        self.classes: list[str] = list(ckpt["classes"])
        self.preprocessing = Preprocessing.from_dict(ckpt["preprocessing"])
        self.device = torch.device(device)
        model = resnet18(weights=None, num_classes=len(self.classes))
        model.load_state_dict(ckpt["model"])
        self.model = model.eval().to(self.device)
        for p in self.model.parameters():
            p.requires_grad_(False)  # gradients flow to layer4's output only
        self.cam = LayerGradCam(self.model, self.model.layer4)
        self.lock = threading.Lock()

    def class_index(self, target: str | int) -> int:
        if isinstance(target, int):
            if not 0 <= target < len(self.classes):
                raise ValueError(f"class index {target} is not in 0..{len(self.classes) - 1}")
            return target
        if target not in self.classes:
            raise ValueError(f"unknown class {target!r}; the model's classes are "
                             f"{', '.join(self.classes)}")
        return self.classes.index(target)

    def explain(self, source: str | Path | bytes, target: str | int, *, crop: Crop = "center",
                name: str | None = None, budget: DecodeBudget | None = None,
                wait: float | None = None, threads: int | None = None,
                overlay: bool = True) -> Explanation:
        """The heatmap of ``target`` (a class name or index) for one photo (``overlay``
        False: without drawing its PNG, for the figures alone). ``threads``:
        intra-op threads for this call (per calling thread), so that explanations can be
        kept off the cores that plain predictions use."""
        if crop not in CROPS:
            raise ValueError(f"crop must be center or full, not {crop!r}")
        index = self.class_index(target)
        data = Path(source).read_bytes() if isinstance(source, (str, Path)) else source
        size = original_size(data)
        pre = self.preprocessing
        # Decoded at a reduced JPEG scale when that still gives the overlay enough pixels.
        img = open_rgb(data, name=name, min_short_side=max(pre.resize_size, 256),
                       budget=budget, wait=wait)
        if crop == "center":
            picture, box = _resize_short(img, pre)
        else:
            picture = full_resize(img, pre)
            box = (0, 0, pre.image_size, pre.image_size)
        cam = self._cam(picture, index, threads)  # (gh, gw), >= 0
        return _explanation(self.classes[index], img, size, crop, picture.size, box, cam,
                            overlay)

    def _cam(self, picture: Image.Image, index: int, threads: int | None) -> np.ndarray:
        if threads is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        pre = self.preprocessing
        x = torch.from_numpy(np.array(picture)).permute(2, 0, 1).unsqueeze(0)
        x = normalize_batch(x, pre.mean, pre.std, device=self.device)
        with self.lock, torch.inference_mode(False), torch.enable_grad():
            attr = self.cam.attribute(x, target=index, relu_attributions=True)
        out: np.ndarray = attr.detach().float().cpu().numpy()[0, 0]
        return out


def original_size(data: bytes) -> tuple[int, int]:
    """Width and height of the photo as shown (EXIF orientation applied), from its header."""
    from app.engine.errors import ImageDecodeError

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated by 90 degrees
                w, h = h, w
    except Exception as exc:
        raise ImageDecodeError(f"not a readable image ({exc})") from exc
    return w, h


def _resize_short(img: Image.Image, pre: Preprocessing) -> tuple[Image.Image, Box]:
    """``Resize(R)`` of the whole photo (as torchvision computes its size) and, in it, the
    box that ``CenterCrop(S)`` keeps (as :func:`app.engine.presets.resize_center_crop`)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(pre.resize_size * long / short)
    rw, rh = (pre.resize_size, new_long) if w <= h else (new_long, pre.resize_size)
    s = pre.image_size
    left, top = round((rw - s) / 2.0), round((rh - s) / 2.0)
    return img.resize((rw, rh), Image.Resampling.BILINEAR), (left, top, left + s, top + s)


def _explanation(target: str, img: Image.Image, size: tuple[int, int], crop: Crop,
                 model_size: tuple[int, int], box: Box, cam: np.ndarray,
                 overlay: bool = True) -> Explanation:
    w, h = size
    mw, mh = model_size  # the picture the heatmap was computed on covers the whole photo
    sx, sy = w / mw, h / mh
    crop_box = (round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy))
    top = float(cam.max())
    grid = cam / top if top > 0 else np.zeros_like(cam)
    peak: tuple[int, int] | None = None
    coverage: float | None = None
    if top > 0:
        fx, fy = _peak(grid)  # in grid cells
        peak = (min(w - 1, int(fx / grid.shape[1] * w)), min(h - 1, int(fy / grid.shape[0] * h)))
        dense = _upsample(grid, mh, mw)
        coverage = float(dense[box[1]:box[3], box[0]:box[2]].sum() / dense.sum())
    if coverage is None:
        warning = f"the heatmap is empty: nothing in the photo raises the score of {target}"
    elif coverage < COVERAGE_WARNING and crop == "center":
        warning = (f"{1 - coverage:.0%} of the evidence for {target} lies outside the centre "
                   "crop the model sees; try crop=full")
    else:
        warning = None
    return Explanation(
        target=target, size=size, crop=crop, crop_box=crop_box,
        grid=[[round(float(v), 4) for v in row] for row in grid], grid_box=(0, 0, w, h),
        peak=peak, crop_coverage=None if coverage is None else round(coverage, 4),
        warning=warning,
        overlay_png=_overlay(img, grid, size, crop_box, peak) if overlay else b"")


def _peak(grid: np.ndarray) -> tuple[float, float]:
    """The heatmap's highest cell, refined to the centre of mass of its 3 x 3 neighbourhood
    (in cell units, cell centres at +0.5): finer than one layer4 cell (32 input pixels)."""
    r, c = np.unravel_index(int(np.argmax(grid)), grid.shape)
    r0, r1 = max(0, r - 1), min(grid.shape[0], r + 2)
    c0, c1 = max(0, c - 1), min(grid.shape[1], c + 2)
    patch = grid[r0:r1, c0:c1]
    ys, xs = np.mgrid[r0:r1, c0:c1]
    mass = float(patch.sum())
    return float((patch * (xs + 0.5)).sum() / mass), float((patch * (ys + 0.5)).sum() / mass)


def _upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(grid, dtype=np.float32))[None, None]
    dense = torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
    out: np.ndarray = dense[0, 0].numpy()
    return out


def _jet(v: np.ndarray) -> np.ndarray:
    """0..1 → RGB uint8 (blue, cyan, yellow, red), the usual heatmap colours."""
    rgb = np.stack([np.clip(1.5 - np.abs(4 * v - k), 0, 1) for k in (3, 2, 1)], axis=-1)
    out: np.ndarray = (rgb * 255).astype(np.uint8)
    return out


def _overlay(img: Image.Image, grid: np.ndarray, size: tuple[int, int], crop_box: Box,
             peak: tuple[int, int] | None) -> bytes:
    w, h = size
    scale = min(1.0, OVERLAY_MAX_SIDE / max(w, h))
    ow, oh = max(1, round(w * scale)), max(1, round(h * scale))
    base = img.resize((ow, oh), Image.Resampling.BILINEAR) if img.size != (ow, oh) else img
    heat = _upsample(grid, oh, ow)
    photo = np.asarray(base, dtype=np.float32)
    colours = _jet(heat).astype(np.float32)
    alpha = OVERLAY_ALPHA * np.clip(heat, 0.15, 1.0)[..., None]  # weak evidence stays faint
    blended = Image.fromarray((photo * (1 - alpha) + colours * alpha).astype(np.uint8))
    draw = ImageDraw.Draw(blended)
    x0, y0, x1, y1 = (round(v * scale) for v in crop_box)
    width = max(1, round(max(ow, oh) / 160))
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(0, 0, 0), width=width + 2)
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(255, 255, 255), width=width)
    if peak is not None:
        px, py, r = peak[0] * scale, peak[1] * scale, 2 + 2 * width
        draw.ellipse((px - r, py - r, px + r, py + r), outline=(255, 255, 255), width=width)
    buf = io.BytesIO()
    blended.save(buf, "PNG", optimize=False)
    return buf.getvalue()
