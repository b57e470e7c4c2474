"""TensorFlow's crop-window decode, ``tf.image.decode_and_crop_jpeg``, run in a tensorflow worker.

TensorFlow's EfficientNet evaluation decodes only its centred window: libjpeg-turbo's partial decode
(``jpeg_crop_scanline``, ``jpeg_skip_scanlines``) upsamples the chroma of the decoded region's edge
columns as an image's edges, so the window's last column (and its first, when it starts on an iMCU
boundary) differs from the same pixels of the whole decoded image. The decode pool cannot import
TensorFlow, so the parent hands this worker the chunks it would have given its pool
(:class:`xfverify.evaluator.process.worker_decode_pool.WorkerDecodePool`): per file, the window xfverify
computes, decoded by TensorFlow, resized by xfverify's numpy TensorFlow resize as the pool would, written
into the shard's rows, each chunk reported as an event. Files that are not RGB-decodable JPEGs (PNG,
CMYK) go through the pool's own decode (:func:`xfverify.evaluator.data.imaging.load_geometry_noting`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import simplejpeg
import tensorflow as tf

from xfverify.evaluator.backends.decoding import decode_chunks
from xfverify.evaluator.data.imaging import (
    BadImageError,
    check_jpeg_bytes,
    crop_window,
    load_geometry_noting,
    read_image_bytes,
    resize_window,
)
from xfverify.evaluator.process.tasks import DecodeDone, WindowDecodeJob
from xfverify.models.preprocess import PreprocessSpec

_TF_DECODES = ("YCbCr", "Gray")  # JPEG colour spaces decoded as TensorFlow decodes them (CMYK goes through PIL)


def decode_window(path: str, spec: PreprocessSpec) -> tuple[np.ndarray, str | None]:
    """The file's geometry for ``spec`` with its window decoded by ``tf.image.decode_and_crop_jpeg``, and the
    decode's caveat (or None); a BadImageError for a file that cannot be decoded."""
    data = read_image_bytes(path)
    if data[:2] == b"\xff\xd8":
        check_jpeg_bytes(path, data)
        try:
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError:
            colorspace = None
        if colorspace in _TF_DECODES:
            top, left, side = crop_window(height, width, spec)
            try:
                window = tf.image.decode_and_crop_jpeg(data, [top, left, side, side], channels=3).numpy()
            except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as exc:
                raise BadImageError(path, f"TensorFlow cannot decode it ({exc.message.splitlines()[0]})") from None
            return resize_window(window, spec), None
    return load_geometry_noting(path, spec)


def decode_tensorflow_window(request: WindowDecodeJob, workdir: Path) -> DecodeDone:
    """Decode every chunk of the job into its shard's rows; one ``decoded`` event per chunk."""
    # Decoding is CPU work: a GPU TensorFlow initialised would take the memory the evaluating worker needs.
    tf.config.set_visible_devices([], "GPU")
    chunks = decode_chunks(request, decode_window)
    return DecodeDone(chunks=chunks, device=f"tensorflow {tf.__version__} on the CPU")
