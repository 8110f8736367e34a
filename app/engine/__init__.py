"""The fine-tuning engine: a plain library used by the worker, the CLI and the benchmarks."""

from app.engine.callback import (
    BatchProgress,
    Callback,
    EpochMetrics,
    StartInfo,
    TrainingCancelled,
)
from app.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from app.engine.config import TrainConfig
from app.engine.data import DatasetError, ImageFolderSplits, load_image_folder
from app.engine.images import ImageDecodeError, open_rgb
from app.engine.metrics import Evaluation
from app.engine.model import PretrainedWeightsMissing, build_model
from app.engine.predict import Prediction, Predictor
from app.engine.presets import Preprocessing, eval_transform, train_transform
from app.engine.train import TrainResult, fit

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
