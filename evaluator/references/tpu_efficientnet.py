"""The TensorFlow original's evaluation preprocessing for EfficientNet-Lite (tensorflow worker).

Written out from tensorflow/tpu, models/official/efficientnet: ``preprocessing.py``
(``_decode_and_center_crop``, ``preprocess_for_eval``), ``main.py`` (bilinear resizing for the lite
models) and ``lite/efficientnet_lite_builder.py`` (``MEAN_RGB``, ``STDDEV_RGB``), with the
``tf.compat.v1`` API the repository imports as ``tf``. Returns NHWC, as the original feeds its model.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

LAYOUT = "NHWC"
CROP_PADDING = 32
MEAN_RGB = [127.0, 127.0, 127.0]
STDDEV_RGB = [128.0, 128.0, 128.0]


def _decode_and_center_crop(image_bytes, image_size: int):
    shape = tf.image.extract_jpeg_shape(image_bytes)
    image_height, image_width = shape[0], shape[1]
    padded_center_crop_size = tf.cast(
        (image_size / (image_size + CROP_PADDING)) * tf.cast(tf.minimum(image_height, image_width), tf.float32),
        tf.int32,
    )
    offset_height = ((image_height - padded_center_crop_size) + 1) // 2
    offset_width = ((image_width - padded_center_crop_size) + 1) // 2
    crop_window = tf.stack([offset_height, offset_width, padded_center_crop_size, padded_center_crop_size])
    image = tf.image.decode_and_crop_jpeg(image_bytes, crop_window, channels=3)
    return tf.compat.v1.image.resize([image], [image_size, image_size], tf.image.ResizeMethod.BILINEAR)[0]


def _lite_eval(image_size: int):
    def run(paths: list[str]) -> np.ndarray:
        tensors = []
        for path in paths:
            image = _decode_and_center_crop(tf.io.read_file(path), image_size)
            image = tf.reshape(image, [image_size, image_size, 3])
            image = tf.image.convert_image_dtype(image, dtype=tf.float32)
            image -= tf.constant(MEAN_RGB, shape=[1, 1, 3], dtype=image.dtype)
            image /= tf.constant(STDDEV_RGB, shape=[1, 1, 3], dtype=image.dtype)
            tensors.append(image.numpy())
        return np.stack(tensors)

    return run


PIPELINES = {f"lite-tf-{size}": _lite_eval(size) for size in (224, 240, 260)}


def describe() -> str:
    return f"tensorflow/tpu EfficientNet-Lite evaluation preprocessing on tensorflow {tf.__version__}"
