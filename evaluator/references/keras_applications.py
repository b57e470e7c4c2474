"""Keras's own ``preprocess_input`` after the geometry its maintainers used, and two common traps (tensorflow worker).

The maintainers' recipe for the published numbers (keras-team/keras-applications #88, #99): resize the
shorter side to 256 with ``cv2.resize(..., interpolation=cv2.INTER_CUBIC)``, crop the centre 224 x 224.
It does not say how images were read; EXIF orientation is ignored here, as ``keras.utils.load_img`` does.
"""

from __future__ import annotations

import importlib
import re

import cv2
import keras
import numpy as np
import tensorflow as tf
from PIL import Image

LAYOUT = "NHWC"


def _maintainers_geometry(path: str) -> np.ndarray:
    bgr = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    height, width = rgb.shape[:2]
    if height <= width:
        new_height, new_width = 256, int(256 * width / height)
    else:
        new_height, new_width = int(256 * height / width), 256
    resized = cv2.resize(rgb, (new_width, new_height), interpolation=cv2.INTER_CUBIC)
    top, left = (new_height - 224) // 2, (new_width - 224) // 2
    return resized[top : top + 224, left : left + 224]


def _recipe_geometry(size: int):
    """The maintainers' recipe carried to a model of input size ``size``: shorter side size * 256 // 224 with
    cv2.INTER_CUBIC, centre crop ``size`` (their 256 and 224 at 224)."""
    side = size * 256 // 224

    def geometry(path: str) -> np.ndarray:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        height, width = rgb.shape[:2]
        if height <= width:
            new_height, new_width = side, int(side * width / height)
        else:
            new_height, new_width = int(side * height / width), side
        resized = cv2.resize(rgb, (new_width, new_height), interpolation=cv2.INTER_CUBIC)
        top, left = (new_height - size) // 2, (new_width - size) // 2
        return resized[top : top + size, left : left + size]

    return geometry


def _default_size(builder) -> int:
    """The input size a keras.applications builder asks imagenet_utils.obtain_input_shape for (stopped there, before
    any layer is built), or, for MobileNetV3, which takes any size, the size its weights are for (its warning)."""
    import warnings

    from keras.src.applications import imagenet_utils

    class Asked(Exception):
        pass

    def ask(*args, **kwargs):
        raise Asked(kwargs.get("default_size", args[1] if len(args) > 1 else None))

    original = imagenet_utils.obtain_input_shape
    imagenet_utils.obtain_input_shape = ask
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                builder(weights=None)
            except Asked as asked:
                return int(asked.args[0])
    finally:
        imagenet_utils.obtain_input_shape = original
    said = [re.search(r"Weights for input shape \((\d+), \d+\)", str(w.message)) for w in caught]
    return next(int(m.group(1)) for m in said if m)


def catalogue_pipeline(name: str):
    """``Model:imagenet`` (a catalogue entry): the recipe's geometry at the builder's own input size, then the
    preprocess_input of the builder's own module."""
    builder = getattr(keras.applications, name.split(":")[0])
    module = importlib.import_module(builder.__module__)
    return _pipeline(_recipe_geometry(_default_size(builder)), module.preprocess_input)


def _load_img_nearest(path: str) -> np.ndarray:
    return keras.utils.img_to_array(keras.utils.load_img(path, target_size=(224, 224)), dtype="uint8")


def _pil_bilinear_by_hand(path: str) -> np.ndarray:
    """A hand-made pipeline seen in the wild: PIL bilinear shorter side 256, centre crop 224 (Python round)."""
    image = keras.utils.load_img(path)
    width, height = image.size
    new_width, new_height = (256, int(256 * height / width)) if width <= height else (int(256 * width / height), 256)
    image = image.resize((new_width, new_height), Image.Resampling.BILINEAR)
    top, left = int(round((new_height - 224) / 2)), int(round((new_width - 224) / 2))
    return keras.utils.img_to_array(image, dtype="uint8")[top : top + 224, left : left + 224]


def _pipeline(geometry, preprocess_input):
    def run(paths: list[str]) -> np.ndarray:
        return preprocess_input(np.stack([geometry(path) for path in paths]).astype("float32"))

    return run


PIPELINES = {
    "keras-caffe": _pipeline(_maintainers_geometry, keras.applications.resnet.preprocess_input),
    "keras-tf": _pipeline(_maintainers_geometry, keras.applications.mobilenet.preprocess_input),
    "keras-torch": _pipeline(_maintainers_geometry, keras.applications.densenet.preprocess_input),
    "keras-caffe-load-img-nearest": _pipeline(_load_img_nearest, keras.applications.resnet.preprocess_input),
    "keras-caffe-pil-bilinear": _pipeline(_pil_bilinear_by_hand, keras.applications.resnet.preprocess_input),
}


def describe() -> str:
    return f"keras {keras.__version__} (tensorflow {tf.__version__})"
