"""TensorFlow 2's ``tf.image.resize`` on uint8 HWC images, as users call it (run as a script, in its own process).

The parity tests check xfverify's numpy ``tf2`` resize against this. It imports nothing of xfverify and runs
apart from torch (TensorFlow and torchvision crash in one process):
``python tensorflow_resize.py JOB.npz OUT.npz``, where JOB.npz holds ``image_<i>`` arrays and ``cases``, a JSON
list of ``[image index, height, width, interpolation, antialias]``; OUT.npz holds ``out_<j>`` per case, as
TensorFlow returns it (float32; nearest keeps uint8).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tensorflow as tf

METHODS = {
    "nearest": tf.image.ResizeMethod.NEAREST_NEIGHBOR,
    "bilinear": tf.image.ResizeMethod.BILINEAR,
    "bicubic": tf.image.ResizeMethod.BICUBIC,
    "lanczos": tf.image.ResizeMethod.LANCZOS3,
}


def resize(image: np.ndarray, height: int, width: int, interpolation: str, antialias: bool) -> np.ndarray:
    return tf.image.resize(tf.constant(image), (height, width), method=METHODS[interpolation],
                           antialias=antialias).numpy()


def describe() -> str:
    return f"tf.image.resize on tensorflow {tf.__version__}"


def main(job_path: str, out_path: str) -> None:
    with np.load(job_path) as job:
        cases = json.loads(str(job["cases"]))
        images = [job[f"image_{i}"] for i in range(len(job.files) - 1)]
    outputs = {f"out_{j}": resize(images[i], h, w, method, aa) for j, (i, h, w, method, aa) in enumerate(cases)}
    np.savez(out_path, **outputs)


if __name__ == "__main__":
    main(*sys.argv[1:3])
