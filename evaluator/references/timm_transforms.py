"""timm's evaluation transforms for the EfficientNet-Lite ports and every catalogue tag (torch worker).

``timm.data.resolve_data_config`` on the model's pretrained config, then ``create_transform``.
"""

from __future__ import annotations

import numpy as np
import timm
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform, resolve_data_config
from timm.models import get_pretrained_cfg

LAYOUT = "NCHW"


def load(path: str) -> Image.Image:
    with Image.open(path) as image:  # timm's ImageDataset: PIL, converted to RGB
        return image.convert("RGB")


def _transformed(transform, paths: list[str]) -> np.ndarray:
    return np.stack([transform(load(path)).numpy() for path in paths])


def _timm_eval(model_name: str, **overrides):
    def run(paths: list[str]) -> np.ndarray:
        model = timm.create_model(model_name, pretrained=False)
        config = resolve_data_config({}, model=model)
        config.update(overrides)
        return _transformed(create_transform(**config, is_training=False), paths)

    return run


def catalogue_transform(name: str):
    """``architecture:tag`` (a catalogue entry): the tag's pretrained_cfg as timm registers it (no weights, no
    network built), resolved by ``resolve_data_config`` and made a transform by ``create_transform``, on a loaded
    image."""
    architecture, tag = name.split(":")
    config = resolve_data_config({}, pretrained_cfg=get_pretrained_cfg(f"{architecture}.{tag}").to_dict())
    transform = create_transform(**config, is_training=False)
    return lambda image: transform(image).numpy()


def catalogue_pipeline(name: str):
    """The entry's transform on image files, each read as timm's ImageDataset reads it."""
    transform = catalogue_transform(name)
    return lambda paths: np.stack([transform(load(path)) for path in paths])


PIPELINES = {
    "lite-timm-224": _timm_eval("tf_efficientnet_lite0"),
    "lite-timm-240": _timm_eval("tf_efficientnet_lite1"),
    "lite-timm-260": _timm_eval("tf_efficientnet_lite2"),
    # The ImageNet-normalisation trap: timm's pipeline for Lite0 with torchvision's mean and std.
    "lite-imagenet-norm-224": _timm_eval("tf_efficientnet_lite0", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD),
}


def describe() -> str:
    return f"timm {timm.__version__} resolve_data_config + create_transform"
