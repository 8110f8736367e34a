"""Synthetic, photo-like datasets drawn with PIL + numpy: no network, reproducible by seed.

``generate`` writes datasets, ``render`` composes one photo from ``scene`` (table, plate,
camera finish) and ``foods`` (the dishes), both drawn with ``paint``'s primitives.
"""

from app.datasets.synthetic.foods import FOODS
from app.datasets.synthetic.generate import generate_demo_dataset, generate_food_dataset
from app.datasets.synthetic.render import render_demo_image, render_food_image

__all__ = [
    "FOODS",
    "generate_demo_dataset",
    "generate_food_dataset",
    "render_demo_image",
    "render_food_image",
]
