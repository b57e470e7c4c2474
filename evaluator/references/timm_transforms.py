"""timm's evaluation transforms for the EfficientNet-Lite ports (torch worker).

``timm.data.resolve_data_config`` on the model's pretrained config, then ``create_transform``.
"""

from __future__ import annotations

import numpy as np
import timm
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform, resolve_data_config

LAYOUT = "NCHW"


def _timm_eval(model_name: str, **overrides):
    def run(paths: list[str]) -> np.ndarray:
        model = timm.create_model(model_name, pretrained=False)
        config = resolve_data_config({}, model=model)
        config.update(overrides)
        transform = create_transform(**config, is_training=False)
        tensors = []
        for path in paths:
            with Image.open(path) as image:  # timm's ImageDataset: PIL, converted to RGB
                tensors.append(transform(image.convert("RGB")).numpy())
        return np.stack(tensors)

    return run


PIPELINES = {
    "lite-timm-224": _timm_eval("tf_efficientnet_lite0"),
    "lite-timm-240": _timm_eval("tf_efficientnet_lite1"),
    "lite-timm-260": _timm_eval("tf_efficientnet_lite2"),
    # The ImageNet-normalisation trap: timm's pipeline for Lite0 with torchvision's mean and std.
    "lite-imagenet-norm-224": _timm_eval("tf_efficientnet_lite0", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD),
}


def describe() -> str:
    return f"timm {timm.__version__} resolve_data_config + create_transform"
