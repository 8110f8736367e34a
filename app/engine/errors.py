"""The errors the engine raises to its callers (the API maps them to 4xx answers, the
command line to exit codes). Defined here, apart from the code that raises them, so that a
caller can name them without importing torch."""

from __future__ import annotations


class DatasetError(ValueError):
    """The directory is not a usable ImageFolder dataset; the message says why."""


class ImageDecodeError(ValueError):
    """A file that is not a decodable image of a supported format. The message names it."""


class CheckpointError(ValueError):
    """The file is not a hotdog checkpoint this version can read."""


class PretrainedWeightsMissing(RuntimeError):
    """ImageNet weights are not on this machine and cannot be downloaded."""


class TrainingCancelled(Exception):
    """The callback asked the run to stop."""
