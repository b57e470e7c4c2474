"""The TensorFlow original's evaluation preprocessing for EfficientNet-Lite (tensorflow worker), run as it runs.

Written out from tensorflow/tpu, models/official/efficientnet (commit 7dc921f): ``preprocessing.py``
(``_decode_and_center_crop``, ``_resize_image``, ``preprocess_for_eval``), ``imagenet_input.py`` /
``utils.py`` (``EvalCkptDriver.build_dataset``: a ``tf.data`` map over the files, then batches),
``main.py`` (``resize_method = BILINEAR`` for the lite models; ``normalize_features`` in the model
function) and ``lite/efficientnet_lite_builder.py`` (``MEAN_RGB``, ``STDDEV_RGB``), with the
``tf.compat.v1`` API the repository imports as ``tf``.

It runs in graph mode, as the original's scripts do: the preprocessing is a ``tf.data`` map function, so
the cropped image's height and width are unknown when ``tf.compat.v1.image.resize`` is traced and the
resize always runs (float32 out), even for a crop window that already has the input size (run eagerly,
that one call would return the window unresized, as uint8, and ``convert_image_dtype`` would then divide
it by 255). ``lite-tf-bicubic-*`` is the same evaluation with ``resize_method=None``, the default
``tf.image.resize_bicubic`` that ``eval_ckpt_main.py`` (the command the lite README gives) runs.
Returns NHWC, as the original feeds its model.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

LAYOUT = "NHWC"
CROP_PADDING = 32  # preprocessing.py at the lite release; later revisions compute round(image_size / 7)
MEAN_RGB = [127.0, 127.0, 127.0]
STDDEV_RGB = [128.0, 128.0, 128.0]
BATCH_SIZE = 50


def _resize_image(image, image_size: int, method=None):
    if method is not None:
        return tf.compat.v1.image.resize([image], [image_size, image_size], method)[0]
    return tf.compat.v1.image.resize_bicubic([image], [image_size, image_size])[0]


def _decode_and_center_crop(image_bytes, image_size: int, resize_method=None):
    shape = tf.image.extract_jpeg_shape(image_bytes)
    image_height = shape[0]
    image_width = shape[1]
    padded_center_crop_size = tf.cast(
        ((image_size / (image_size + CROP_PADDING)) * tf.cast(tf.minimum(image_height, image_width), tf.float32)),
        tf.int32,
    )
    offset_height = ((image_height - padded_center_crop_size) + 1) // 2
    offset_width = ((image_width - padded_center_crop_size) + 1) // 2
    crop_window = tf.stack([offset_height, offset_width, padded_center_crop_size, padded_center_crop_size])
    image = tf.image.decode_and_crop_jpeg(image_bytes, crop_window, channels=3)
    return _resize_image(image, image_size, resize_method)


def preprocess_for_eval(image_bytes, image_size: int, resize_method=None):
    image = _decode_and_center_crop(image_bytes, image_size, resize_method)
    image = tf.reshape(image, [image_size, image_size, 3])
    return tf.image.convert_image_dtype(image, dtype=tf.float32)


def _normalize_features(features):
    features -= tf.constant(MEAN_RGB, shape=[1, 1, 3], dtype=features.dtype)
    features /= tf.constant(STDDEV_RGB, shape=[1, 1, 3], dtype=features.dtype)
    return features


def _lite_eval(image_size: int, resize_method=None):
    normalize = tf.function(_normalize_features)  # the model function's first ops, in its graph

    def run(paths: list[str]) -> np.ndarray:
        dataset = tf.data.Dataset.from_tensor_slices(tf.constant(paths))

        def parse(filename):
            image = preprocess_for_eval(tf.io.read_file(filename), image_size, resize_method)
            return tf.cast(image, tf.float32)

        dataset = dataset.map(parse).batch(BATCH_SIZE)
        return np.concatenate([normalize(images).numpy() for images in dataset])

    return run


PIPELINES = {f"lite-tf-{size}": _lite_eval(size, tf.image.ResizeMethod.BILINEAR) for size in (224, 240, 260)}
PIPELINES.update({f"lite-tf-bicubic-{size}": _lite_eval(size) for size in (224, 240, 260)})


def describe() -> str:
    return ("tensorflow/tpu EfficientNet-Lite evaluation preprocessing (graph mode, tf.data) on tensorflow "
            f"{tf.__version__}")
