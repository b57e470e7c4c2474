"""torchvision's evaluation transforms, ``weights.transforms()``, on its default loader (torch worker)."""

from __future__ import annotations

import numpy as np
import torchvision
from torchvision import models
from torchvision.datasets.folder import default_loader

LAYOUT = "NCHW"


def _weights_transforms(weights):
    def run(paths: list[str]) -> np.ndarray:
        transform = weights.transforms()
        return np.stack([transform(default_loader(path)).numpy() for path in paths])

    return run


load = default_loader  # the source's own loader: a PIL image converted to RGB


def catalogue_transform(name: str):
    """``builder:WEIGHTS`` (a catalogue entry): that weights enum member's own ``transforms()``, on a loaded image."""
    builder, weights = name.split(":")
    transform = models.get_model_weights(builder)[weights].transforms()
    return lambda image: transform(image).numpy()


def catalogue_pipeline(name: str):
    """The entry's transform on image files, each read by the source's loader."""
    transform = catalogue_transform(name)
    return lambda paths: np.stack([transform(load(path)) for path in paths])


PIPELINES = {
    "torchvision-256": _weights_transforms(models.ResNet50_Weights.IMAGENET1K_V1),
    "torchvision-232": _weights_transforms(models.ResNet50_Weights.IMAGENET1K_V2),
}


def describe() -> str:
    return f"torchvision {torchvision.__version__} weights.transforms()"
