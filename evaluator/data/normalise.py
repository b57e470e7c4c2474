"""Cached images -> the exact float32 tensors a model is fed, and their fingerprint.

The arithmetic is ``((x / scale) - mean[c]) / std[c]`` in float32, one rounding per operation, as
torchvision, Keras, GluonCV and TensorFlow's EfficientNet compute it. For uint8 images every output
element depends on one value and its channel, so it is a lookup table of 3 x 256 float32 values
computed once with that arithmetic; gathering from it is exact on any device, so the CPU, a GPU and
ONNX Runtime all receive the same bytes. Float32 images (TensorFlow's resized floats, kept unrounded:
``PreprocessSpec.keeps_float``) go through the same three operations, each correctly rounded on every
IEEE device, so they too are the same bytes everywhere (the fed tensors' checksums prove it).
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
    """Cached RGB NHWC batch (uint8, or float32 for a spec that keeps TensorFlow's floats) -> float32 batch in
    ``spec.layout`` and ``spec.channel_order``."""
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.dtype(spec.cached_dtype):
        raise ValueError(f"expected a {spec.cached_dtype} NHWC RGB batch, got {images.dtype} {images.shape}")
    n, h, w, _ = images.shape
    shape = (n, 3, h, w) if spec.layout == "NCHW" else (n, h, w, 3)
    out = np.empty(shape, dtype=np.float32)
    if images.dtype == np.uint8:
        lut = normalisation_lut(spec) if lut is None else lut
    for channel, src in enumerate(source_channels(spec)):
        target = out[:, channel] if spec.layout == "NCHW" else out[..., channel]
        if images.dtype == np.uint8:
            target[...] = lut[channel][images[..., src]]
        else:
            np.divide(images[..., src], np.float32(spec.scale), out=target)
            np.subtract(target, np.float32(spec.mean[channel]), out=target)
            np.divide(target, np.float32(spec.std[channel]), out=target)
    return out


def image_digests(tensors: np.ndarray) -> list[bytes]:
    """sha256 of each image's float32 tensor (C order), independent of how images were batched."""
    return [hashlib.sha256(np.ascontiguousarray(t).data).digest() for t in tensors]
