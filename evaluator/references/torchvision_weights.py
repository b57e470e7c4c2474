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


PIPELINES = {
    "torchvision-256": _weights_transforms(models.ResNet50_Weights.IMAGENET1K_V1),
    "torchvision-232": _weights_transforms(models.ResNet50_Weights.IMAGENET1K_V2),
}


def describe() -> str:
    return f"torchvision {torchvision.__version__} weights.transforms()"
