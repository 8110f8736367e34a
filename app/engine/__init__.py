"""The fine-tuning engine: a plain library used by the worker, the CLI and the benchmarks.

Its names are imported on first use (PEP 562), so that importing a torch-free part (the
configuration, the errors) does not import torch: a command-line client that only talks to
a service starts in a fraction of a second instead of seconds.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.engine.callback import (
        BatchProgress,
        Callback,
        EpochMetrics,
        StartInfo,
    )
    from app.engine.checkpoint import load_checkpoint, save_checkpoint
    from app.engine.config import TrainConfig
    from app.engine.data import ImageFolderSplits, load_image_folder
    from app.engine.errors import (
        CheckpointError,
        DatasetError,
        ImageDecodeError,
        PretrainedWeightsMissing,
        TrainingCancelled,
    )
    from app.engine.images import open_rgb
    from app.engine.metrics import Evaluation
    from app.engine.model import build_model
    from app.engine.predict import Prediction, Predictor
    from app.engine.presets import Preprocessing, eval_transform, train_transform
    from app.engine.train import TrainResult, fit

# Each public name -> the module that defines it.
_HOMES = {
    "callback": ("BatchProgress", "Callback", "EpochMetrics", "StartInfo"),
    "checkpoint": ("load_checkpoint", "save_checkpoint"),
    "config": ("TrainConfig",),
    "data": ("ImageFolderSplits", "load_image_folder"),
    "errors": ("CheckpointError", "DatasetError", "ImageDecodeError",
               "PretrainedWeightsMissing", "TrainingCancelled"),
    "images": ("open_rgb",),
    "metrics": ("Evaluation",),
    "model": ("build_model",),
    "predict": ("Prediction", "Predictor"),
    "presets": ("Preprocessing", "eval_transform", "train_transform"),
    "train": ("TrainResult", "fit"),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "BatchProgress",
    "Callback",
    "CheckpointError",
    "DatasetError",
    "EpochMetrics",
    "Evaluation",
    "ImageDecodeError",
    "ImageFolderSplits",
    "Prediction",
    "Predictor",
    "Preprocessing",
    "PretrainedWeightsMissing",
    "StartInfo",
    "TrainConfig",
    "TrainResult",
    "TrainingCancelled",
    "build_model",
    "eval_transform",
    "fit",
    "load_checkpoint",
    "load_image_folder",
    "open_rgb",
    "save_checkpoint",
    "train_transform",
]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
