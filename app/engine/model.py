"""ResNet-18 with a new head, from ImageNet weights, from scratch, or from a checkpoint."""

from __future__ import annotations

import logging
import os
import pickle
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from app.engine.errors import PretrainedWeightsMissing

log = logging.getLogger(__name__)

PRETRAINED_ENV = "HOTDOG_PRETRAINED_PATH"
FEATURES = 512


def imagenet_weights_cache_path() -> Path:
    """Where torchvision's loader keeps the ResNet-18 ImageNet file (under ``TORCH_HOME``)."""
    url: str = ResNet18_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _missing_message(reason: str) -> str:
    url = ResNet18_Weights.IMAGENET1K_V1.url
    return (
        f"ImageNet weights for ResNet-18 are not available: {reason}. Provide them by either "
        f"(1) downloading {url} on a machine with internet and copying it to "
        f"{imagenet_weights_cache_path()} (torchvision's cache; set TORCH_HOME to move it), "
        f"or (2) setting {PRETRAINED_ENV}=/path/to/resnet18.pth. "
        "Or start from 'scratch' or from an earlier checkpoint instead."
    )


def _reachable(url: str, timeout: float = 3.0) -> bool:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def _unreadable_is_missing(path: Path) -> Iterator[None]:
    """A truncated or corrupt weights file (an interrupted copy or download) is as good as
    none: every attempt would fail the same way, so it fails the job at once, saying which
    file to replace, instead of crashing into retries."""
    try:
        yield
    except (RuntimeError, OSError, pickle.UnpicklingError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PretrainedWeightsMissing(_missing_message(
            f"{path} is unreadable, probably truncated or corrupt ({first[:200]}); delete it "
            "and provide it again"
        )) from exc


def load_imagenet_state_dict(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The torchvision ImageNet state dict: from ``path``/``$HOTDOG_PRETRAINED_PATH``, else
    torchvision's cache, else a download (only when the host answers, so offline fails fast).
    """
    path = path or os.environ.get(PRETRAINED_ENV) or None
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise PretrainedWeightsMissing(_missing_message(f"{path} does not exist"))
        with _unreadable_is_missing(path):
            state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        weights = ResNet18_Weights.IMAGENET1K_V1
        cached = imagenet_weights_cache_path()
        if not cached.is_file() and not _reachable(weights.url):
            raise PretrainedWeightsMissing(
                _missing_message(f"{cached} is missing and the download host is unreachable")
            )
        if cached.is_file():
            with _unreadable_is_missing(cached):
                state = weights.get_state_dict(progress=False, check_hash=False,
                                               weights_only=True)
        else:
            try:
                state = weights.get_state_dict(progress=False, check_hash=True,
                                               weights_only=True)
            # URLError, connection reset, disk full, a download that fails its hash...
            except (OSError, RuntimeError) as exc:
                raise PretrainedWeightsMissing(
                    _missing_message(f"download failed ({exc})")) from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a hotdog checkpoint or a {"model": ...} wrapper
    if not isinstance(state, dict):
        raise PretrainedWeightsMissing(_missing_message(f"{path} does not hold a state dict"))
    return state


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """A new ``Linear(512, C)``: Xavier-uniform weight (as d2l), zero bias (no class prior)."""
    head = nn.Linear(FEATURES, num_classes)
    nn.init.xavier_uniform_(head.weight)
    nn.init.zeros_(head.bias)
    model.fc = head
    return model


def build_model(
    num_classes: int,
    init: str,
    *,
    source_state: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """ResNet-18 whose every layer but ``fc`` holds the source's weights.

    ``init``: ``"imagenet"`` (torchvision weights), ``"scratch"`` (torchvision's random
    init) or ``"checkpoint"`` with ``source_state`` the earlier model's state dict.
    """
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes, got {num_classes}")
    if init == "scratch":
        model = resnet18(weights=None)
    elif init in ("imagenet", "checkpoint"):
        if init == "imagenet":
            source_state = load_imagenet_state_dict()
        if source_state is None:
            raise ValueError("init='checkpoint' needs source_state")
        source_classes = source_state["fc.weight"].shape[0] if "fc.weight" in source_state else 1000
        model = resnet18(weights=None, num_classes=source_classes)
        try:
            model.load_state_dict(source_state)
        except RuntimeError as exc:
            raise PretrainedWeightsMissing(
                _missing_message(f"the weights do not fit ResNet-18 ({exc})")
            ) from exc
    else:
        raise ValueError(f"unknown init {init!r}")
    return replace_head(model, num_classes)


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    return list(model.get_submodule("fc").parameters())


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    head = {id(p) for p in head_parameters(model)}
    return [p for p in model.parameters() if id(p) not in head]
