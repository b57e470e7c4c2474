"""uint8 images -> the exact float32 tensors a model is fed, and their fingerprint.

Every output element depends on one uint8 value and its channel, so normalisation is a
lookup table of 3 x 256 float32 values computed once with the reference arithmetic
(``((v / scale) - mean[c]) / std[c]``, float32, one rounding per operation, as
torchvision, Keras and GluonCV compute it). Gathering from that table is exact on any
device, so the CPU, a GPU and ONNX Runtime all receive the same bytes.
"""

from __future__ import annotations

import hashlib
import numpy as np

from xfverify.models.preprocess import PreprocessSpec


def normalisation_lut(spec: PreprocessSpec) -> np.ndarray:
    """(3, 256) float32 table: ``lut[c, v]`` is output channel c's value for uint8 value v."""
    values = np.arange(256, dtype=np.float32)
    lut = np.empty((3, 256), dtype=np.float32)
    for channel in range(3):
        x = values / np.float32(spec.scale)
        x = x - np.float32(spec.mean[channel])
        lut[channel] = x / np.float32(spec.std[channel])
    return lut


def source_channels(spec: PreprocessSpec) -> tuple[int, int, int]:
    """For each output channel, the RGB channel of the cached image it reads."""
    return (2, 1, 0) if spec.channel_order == "BGR" else (0, 1, 2)


def normalise(images: np.ndarray, spec: PreprocessSpec, lut: np.ndarray | None = None) -> np.ndarray:
    """uint8 RGB NHWC batch -> float32 batch in ``spec.layout`` and ``spec.channel_order``."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"expected a uint8 NHWC RGB batch, got {images.dtype} {images.shape}")
    lut = normalisation_lut(spec) if lut is None else lut
    n, h, w, _ = images.shape
    if spec.layout == "NCHW":
        out = np.empty((n, 3, h, w), dtype=np.float32)
        for channel, src in enumerate(source_channels(spec)):
            out[:, channel] = lut[channel][images[..., src]]
    else:
        out = np.empty((n, h, w, 3), dtype=np.float32)
        for channel, src in enumerate(source_channels(spec)):
            out[..., channel] = lut[channel][images[..., src]]
    return out


def image_digests(tensors: np.ndarray) -> list[bytes]:
    """sha256 of each image's float32 tensor (C order), independent of how images were batched."""
    return [hashlib.sha256(np.ascontiguousarray(t).data).digest() for t in tensors]
