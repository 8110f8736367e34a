"""Shared test constants."""

# The smallest training setting that still exercises every part: scratch, 32 px, batch 8.
TINY = {"init": "scratch", "image_size": 32, "batch_size": 8}
