"""hotdog: fine-tune a pretrained ResNet-18 on labelled photos and classify new ones."""

__version__ = "0.1.0"
