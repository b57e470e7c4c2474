"""Framework-free decoding and geometry: file -> uint8 RGB HWC image, exactly as each library does it.

Decoders reproduce the loaders the frameworks use: torchvision's and Keras's
``PIL.Image.open(f).convert("RGB")``, OpenCV's ``imdecode`` (which MXNet wraps), and
TensorFlow's ``decode_jpeg`` defaults (libjpeg-turbo's fast integer DCT, through simplejpeg).
Resizing calls the named library itself, so a spec that says "PIL bicubic" gets PIL's
bicubic, not an approximation of it. The exceptions are the frameworks' own resizes, which
the decode pool must not import: ``tf1`` (TensorFlow 1's bilinear), ``tf2`` (``tf.image.resize``)
and ``torch`` (torchvision's resize of uint8 tensors), written out here in numpy from their
kernels and tested against the frameworks' own calls, bit for bit (TensorFlow's float32 output is
kept as it is: the cache stores float32 images for those specs).
"""

from __future__ import annotations

import io
import os
import warnings

import cv2
import numpy as np
import scipy.sparse
import simplejpeg
from PIL import Image, UnidentifiedImageError

from xfverify.models.errors import UserError
from xfverify.models.preprocess import PreprocessSpec, crop_fraction_window, crop_offset, shorter_side_size
from xfverify.models.user_input import UnreadableFile, read_regular

# MXNet's imdecode (OpenCV 3.x) does not rotate by EXIF; torchvision's PIL loader does not either.
_CV2_READ_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION

_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}
_CV2_FILTERS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}

cv2.setNumThreads(1)  # parallelism comes from worker processes; OpenCV threads would fight them


class BadImageError(UserError):
    """A file that is not a decodable image (truncated, empty, not an image)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(
            f"cannot decode image {self.path}: {reason} "
            "(fix or remove the file, or pass --on-bad-image skip to leave it out and list it in the report)"
        )


MAX_IMAGE_BYTES = 2**30  # a larger file is not one photograph (a sparse file, a disk image named .jpg)


def read_image_bytes(path: str | os.PathLike) -> bytes:
    """The file's bytes; a BadImageError naming it when it cannot be read, is empty, is not a regular file (a FIFO
    or a device named like an image is never waited on or read without end) or is larger than any photograph."""
    try:
        data = read_regular(path, "image", MAX_IMAGE_BYTES)
    except UnreadableFile as exc:
        raise BadImageError(path, exc.reason) from None
    except OSError as exc:
        raise BadImageError(path, exc.strerror or str(exc)) from None
    if not data:
        raise BadImageError(path, "the file is empty")
    return data


# Modes whose values go beyond 0-255: ``convert("RGB")`` clips them (a 16-bit PNG turns nearly white).
_WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def decode_pil_noting(path: str | os.PathLike) -> tuple[Image.Image, str | None]:
    """Decode like torchvision's ``default_loader`` and ``keras.utils.load_img`` (PIL, then RGB), with a caveat for
    the report when the faithful decode loses the picture (or None)."""
    data = read_image_bytes(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns about odd EXIF; we only want pixels
            with Image.open(io.BytesIO(data)) as img:
                img.load()  # raises on a truncated file instead of returning grey rows
                mode = img.mode
                rgb = img.convert("RGB")
    except UnidentifiedImageError:
        raise BadImageError(path, "not an image PIL can read (an unknown format, or a damaged header)") from None
    except Image.DecompressionBombError as exc:
        raise BadImageError(path, str(exc)) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(path, str(exc) or type(exc).__name__) from None
    caveat = None
    if mode in _WIDE_MODES:
        caveat = (f"PIL mode {mode} (more than 8 bits per value): converted to RGB as torchvision's and Keras's "
                  "loaders do, which clips values above 255, so it looks nearly white to the model")
    return rgb, caveat


def _refuse_bombs(path: str | os.PathLike, data: bytes) -> None:
    """Refuse a picture PIL would refuse as a decompression bomb, before a decoder without a limit expands it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns below its hard limit
            Image.open(io.BytesIO(data)).close()  # reads the header only, and checks the pixel count
    except Image.DecompressionBombError as exc:
        raise BadImageError(path, str(exc)) from None
    except Exception:  # noqa: BLE001 - a file PIL cannot read is the decoder's to judge
        pass


def decode_opencv(path: str | os.PathLike) -> np.ndarray:
    """Decode like ``cv2.imread(path, IMREAD_COLOR)`` (and MXNet's ``imread``), returned as RGB."""
    data = read_image_bytes(path)
    _check_not_truncated(path, data)
    _refuse_bombs(path, data)
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _CV2_READ_FLAGS)
    if bgr is None:
        raise BadImageError(path, "OpenCV could not decode it (not an image, or corrupt)")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def check_jpeg_bytes(path: str | os.PathLike, data: bytes) -> None:
    """What every decoder without PIL's checks needs first: not truncated, not a decompression bomb."""
    _check_not_truncated(path, data)
    _refuse_bombs(path, data)


def _check_not_truncated(path: str | os.PathLike, data: bytes) -> None:
    # libjpeg pads a truncated JPEG with grey and OpenCV returns it without complaint.
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-1024:]:
        raise BadImageError(path, "the JPEG is truncated (no end-of-image marker)")


def decode_tensorflow_noting(path: str | os.PathLike) -> tuple[Image.Image | np.ndarray, str | None]:
    """Decode like ``tf.io.decode_jpeg(data, channels=3)`` with its defaults (INTEGER_FAST DCT, fancy upsampling).

    Files libjpeg-turbo cannot turn into RGB here (PNG, CMYK JPEG) are decoded by PIL, with its caveat.
    """
    data = read_image_bytes(path)
    if data[:2] == b"\xff\xd8":
        _check_not_truncated(path, data)
        _refuse_bombs(path, data)
        try:
            return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, fastupsample=False), None
        except ValueError:
            pass  # e.g. a CMYK JPEG: PIL converts it as TensorFlow's ImageNet conversion scripts did
    return decode_pil_noting(path)


def _opencv_noting(path: str | os.PathLike) -> tuple[np.ndarray, None]:
    return decode_opencv(path), None


_DECODERS = {"pil": decode_pil_noting, "opencv": _opencv_noting, "tensorflow": decode_tensorflow_noting}


def decode_noting(path: str | os.PathLike, decoder: str) -> tuple[Image.Image | np.ndarray, str | None]:
    """The decoded picture (a PIL image or a uint8 RGB HWC array) and the decode's caveat for the report (or None)."""
    if decoder == "nvjpeg":
        raise ValueError("the nvjpeg decoder runs on the GPU, in a torch worker (evaluator/backends/torch/nvjpeg.py)")
    if decoder == "mxnet":
        raise ValueError("the mxnet decoder runs in an mxnet worker (evaluator/backends/mxnet/decode.py)")
    if decoder not in _DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}")
    return _DECODERS[decoder](path)


def decode(path: str | os.PathLike, decoder: str) -> np.ndarray:
    """Decode ``path`` to a uint8 RGB HWC array with the named decoder."""
    return np.asarray(decode_noting(path, decoder)[0])


def _tf1_bilinear_taps(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # TensorFlow's legacy scaler: source = destination * (in / out), all in float32.
    scale = np.float32(in_size) / np.float32(out_size)
    position = np.arange(out_size, dtype=np.float32) * scale
    floor = np.floor(position)
    upper = np.minimum(np.ceil(position).astype(np.int64), in_size - 1)
    lower = np.minimum(np.maximum(floor.astype(np.int64), 0), upper)
    return lower, upper, (position - floor).astype(np.float32)


def _tf_bilinear_lerp(image: np.ndarray, y_taps: tuple, x_taps: tuple) -> np.ndarray:
    # ResizeBilinear's compute_lerp, in float32: top/bottom across, then down.
    (y_lower, y_upper, y_lerp), (x_lower, x_upper, x_lerp) = y_taps, x_taps
    rows_lower, rows_upper = image[y_lower], image[y_upper]
    top_left = np.take(rows_lower, x_lower, axis=1).astype(np.float32)
    top = np.take(rows_lower, x_upper, axis=1).astype(np.float32)
    top -= top_left
    top *= x_lerp[None, :, None]
    top += top_left
    bottom_left = np.take(rows_upper, x_lower, axis=1).astype(np.float32)
    bottom = np.take(rows_upper, x_upper, axis=1).astype(np.float32)
    bottom -= bottom_left
    bottom *= x_lerp[None, :, None]
    bottom += bottom_left
    bottom -= top
    bottom *= y_lerp[:, None, None]
    bottom += top
    return bottom


def resize_tf1_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``tf.compat.v1.image.resize(..., BILINEAR)`` of a uint8 HWC image, float32 out, operation for operation."""
    y_taps, x_taps = _tf1_bilinear_taps(height, image.shape[0]), _tf1_bilinear_taps(width, image.shape[1])
    return _tf_bilinear_lerp(image, y_taps, x_taps)


def _tf1_bicubic_taps(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray]:
    """GetWeightsAndIndices<LegacyScaler, use_keys_cubic=false>: source = destination * (in / out); four taps of the
    a = -0.75 table, indices clamped to the image with their weights kept (no renormalisation)."""
    position = np.arange(out_size, dtype=_F32) * (_F32(in_size) / _F32(out_size))
    start = np.floor(position)
    offset = np.rint((position - start) * _F32(_TF_CUBIC_TABLE_SIZE)).astype(np.int64)  # lrintf
    table = _TF_LEGACY_CUBIC
    weights = np.stack([table[offset * 2 + 1], table[offset * 2], table[(_TF_CUBIC_TABLE_SIZE - offset) * 2],
                        table[(_TF_CUBIC_TABLE_SIZE - offset) * 2 + 1]], axis=1)
    indices = np.clip(start.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :], 0, in_size - 1)
    return indices, weights.astype(_F32)


def resize_tf1_bicubic(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``tf.compat.v1.image.resize_bicubic`` (align_corners and half_pixel_centers false) of a uint8 HWC image,
    float32 out: down the rows first, then across, as interpolate_with_caching."""
    columns = _weighted_sum(image, 0, *_tf1_bicubic_taps(height, image.shape[0]))
    return _weighted_sum(columns, 1, *_tf1_bicubic_taps(width, image.shape[1]))


_F32 = np.float32


def _weighted_sum(source: np.ndarray, axis: int, index: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``out[i] = sum_k weights[i, k] * source[index[i, k]]`` along ``axis`` (0 or 1 of an HWC image), the taps
    added in order from zero (a CSR product: the order TensorFlow's and torch's loops add them in)."""
    moved = source if axis == 0 else cv2.transpose(source)  # a pixel-wise transpose, far faster than numpy's
    flat = moved.astype(weights.dtype, copy=False).reshape(moved.shape[0], -1)
    out_size, taps = index.shape
    matrix = scipy.sparse.csr_matrix((weights.ravel(), index.ravel(), np.arange(0, out_size * taps + 1, taps)),
                                     shape=(out_size, flat.shape[0]))
    out = (matrix @ flat).reshape((out_size,) + moved.shape[1:])
    return out if axis == 0 else cv2.transpose(out)


# --- TensorFlow 2: tf.image.resize (half-pixel centres), float32 out -------------------------------------------
# From tensorflow/core/kernels/image: resize_nearest_neighbor_op.cc, resize_bilinear_op.cc and
# resize_bicubic_op.cc (half_pixel_centers=True), scale_and_translate_op.cc + sampling_kernels.h (antialias,
# lanczos3). Every step in float32 as TensorFlow computes it.

def _tf2_scale(in_size: int, out_size: int) -> np.float32:
    return _F32(in_size) / _F32(out_size)


def _tf2_nearest_indices(out_size: int, in_size: int) -> np.ndarray:
    # HalfPixelScalerForNN: (x + 0.5) * scale, floored, kept inside the image.
    position = (np.arange(out_size, dtype=_F32) + _F32(0.5)) * _tf2_scale(in_size, out_size)
    return np.clip(np.floor(position).astype(np.int64), 0, in_size - 1)


def _tf2_bilinear_taps(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # HalfPixelScaler: (x + 0.5) * scale - 0.5; lower/upper clamped to the image, lerp from the unclamped floor.
    position = (np.arange(out_size, dtype=_F32) + _F32(0.5)) * _tf2_scale(in_size, out_size) - _F32(0.5)
    floor = np.floor(position)
    lower = np.maximum(floor.astype(np.int64), 0)
    upper = np.minimum(np.ceil(position).astype(np.int64), in_size - 1)
    return lower, upper, (position - floor).astype(_F32)


def _tf2_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    y_taps, x_taps = _tf2_bilinear_taps(height, image.shape[0]), _tf2_bilinear_taps(width, image.shape[1])
    return _tf_bilinear_lerp(image, y_taps, x_taps)


_TF_CUBIC_TABLE_SIZE = 1024


def _tf_cubic_table(a: float) -> np.ndarray:
    # InitCoeffsTable(a): x in float32, each polynomial in double, stored as float32.
    x = (np.arange(_TF_CUBIC_TABLE_SIZE + 1) * 1.0 / _TF_CUBIC_TABLE_SIZE).astype(_F32).astype(np.float64)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    x = (x + 1.0).astype(_F32).astype(np.float64)
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.stack([near, far], axis=1).astype(_F32).reshape(-1)


_TF_KEYS_CUBIC = _tf_cubic_table(-0.5)
_TF_LEGACY_CUBIC = _tf_cubic_table(-0.75)  # the legacy kernel (half_pixel_centers=False)


def _tf2_bicubic_taps(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray]:
    """GetWeightsAndIndices<HalfPixelScaler, use_keys_cubic=true>: four (index, weight) per output pixel; taps
    outside the image get weight 0 and the rest are renormalised (as scale_and_translate does)."""
    position = (np.arange(out_size, dtype=_F32) + _F32(0.5)) * _tf2_scale(in_size, out_size) - _F32(0.5)
    start = np.floor(position)
    offset = np.rint((position - start) * _F32(_TF_CUBIC_TABLE_SIZE)).astype(np.int64)  # lrintf
    start = start.astype(np.int64)
    table = _TF_KEYS_CUBIC
    weights = np.stack([table[offset * 2 + 1], table[offset * 2], table[(_TF_CUBIC_TABLE_SIZE - offset) * 2],
                        table[(_TF_CUBIC_TABLE_SIZE - offset) * 2 + 1]], axis=1)
    wanted = start[:, None] + np.arange(-1, 3)[None, :]
    indices = np.clip(wanted, 0, in_size - 1)
    weights = np.where(indices == wanted, weights, _F32(0))
    total = ((weights[:, 0] + weights[:, 1]) + weights[:, 2]) + weights[:, 3]
    normalise = np.abs(total) >= _F32(1000) * np.finfo(_F32).tiny
    scale = np.where(normalise, _F32(1) / np.where(normalise, total, _F32(1)), _F32(1)).astype(_F32)
    return indices, (weights * scale[:, None]).astype(_F32)


def _tf2_bicubic(image: np.ndarray, height: int, width: int) -> np.ndarray:
    # interpolate_with_caching: each of the four columns interpolated down the rows first, then across.
    columns = _weighted_sum(image, 0, *_tf2_bicubic_taps(height, image.shape[0]))
    return _weighted_sum(columns, 1, *_tf2_bicubic_taps(width, image.shape[1]))


def _tf_triangle(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1, _F32(1) - x, _F32(0)).astype(_F32)


def _tf_keys_cubic(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    far = ((_F32(-0.5) * x + _F32(2.5)) * x - _F32(4)) * x + _F32(2)
    near = ((_F32(1.5) * x - _F32(2.5)) * x) * x + _F32(1)
    return np.where(x >= 2, _F32(0), np.where(x >= 1, far, near)).astype(_F32)


def _tf_lanczos3(x: np.ndarray) -> np.ndarray:
    radius, pi = _F32(3), _F32(3.14159265359)
    x = np.abs(x)
    safe = np.where(x <= _F32(1e-3), _F32(1), x)
    value = radius * np.sin(pi * safe) * np.sin(pi * safe / radius) / (pi * pi * safe * safe)
    return np.where(x > radius, _F32(0), np.where(x <= _F32(1e-3), _F32(1), value)).astype(_F32)


# ScaleAndTranslate's kernels: (function, radius); tf.image.resize's antialias path and its lanczos3 method.
_TF_KERNELS = {"bilinear": (_tf_triangle, 1.0), "bicubic": (_tf_keys_cubic, 2.0), "lanczos": (_tf_lanczos3, 3.0)}


def _tf2_spans(out_size: int, in_size: int, interpolation: str, antialias: bool) -> tuple[np.ndarray, np.ndarray]:
    """ComputeSpansCore with translate 0: per output pixel, span_size (index, weight) pairs (weight 0 past a
    pixel's own span); the kernel widens by the scale when shrinking with antialias."""
    kernel, radius = _TF_KERNELS[interpolation]
    scale = _F32(out_size) / _F32(in_size)
    inv_scale = _F32(1.0 / float(scale))
    kernel_scale = max(inv_scale, _F32(1)) if antialias else _F32(1)
    reach = _F32(radius) * kernel_scale
    span_size = min(2 * int(np.ceil(reach)) + 1, in_size)
    sample = (np.arange(out_size, dtype=_F32) + _F32(0.5)) * inv_scale
    start = np.clip(np.ceil(sample - reach - _F32(0.5)).astype(np.int64), 0, in_size - 1)
    end = np.clip(np.floor(sample + reach - _F32(0.5)).astype(np.int64), 0, in_size - 1) + 1
    source = start[:, None] + np.arange(span_size)[None, :]
    inside = source < end[:, None]
    position = (source.astype(_F32) + _F32(0.5)) - sample[:, None]
    weights = np.where(inside, kernel(position * (_F32(1) / kernel_scale)), _F32(0)).astype(_F32)
    total = np.zeros(out_size, _F32)
    for k in range(span_size):  # summed in order, in float32
        total = total + weights[:, k]
    normalise = np.abs(total) >= _F32(1000) * np.finfo(_F32).tiny
    inverse = np.where(normalise, _F32(1) / np.where(normalise, total, _F32(1)), _F32(0)).astype(_F32)
    weights = (weights * inverse[:, None]).astype(_F32)
    outside = (sample < 0) | (sample > in_size)  # no sample: an empty span
    weights[outside] = 0
    return np.minimum(source, in_size - 1), weights


def _tf2_scale_and_translate(image: np.ndarray, height: int, width: int, interpolation: str,
                             antialias: bool) -> np.ndarray:
    # GatherRows (into a float32 image of height x input width), then GatherColumns; taps added in order.
    rows = _weighted_sum(image, 0, *_tf2_spans(height, image.shape[0], interpolation, antialias))
    return _weighted_sum(rows, 1, *_tf2_spans(width, image.shape[1], interpolation, antialias))


def resize_tf2(image: np.ndarray, height: int, width: int, interpolation: str, antialias: bool) -> np.ndarray:
    """``tf.image.resize(image, (height, width), method, antialias)`` of a uint8 HWC image, float32 out
    (nearest keeps uint8, as TensorFlow does)."""
    if interpolation == "nearest":  # antialias does not apply
        return image[_tf2_nearest_indices(height, image.shape[0])][:, _tf2_nearest_indices(width, image.shape[1])]
    if antialias or interpolation == "lanczos":
        return _tf2_scale_and_translate(image, height, width, interpolation, antialias)
    if interpolation == "bilinear":
        return _tf2_bilinear(image, height, width)
    if interpolation == "bicubic":
        return _tf2_bicubic(image, height, width)
    raise ValueError(f"tf.image.resize has no {interpolation!r} here")


# --- torchvision on uint8 tensors: v2.functional.resize -> torch's uint8 interpolate kernels ---------------------
# From aten/src/ATen/native/cpu/UpSampleKernel.cpp (HelperInterpBase::_compute_index_ranges_weights,
# _compute_indices_min_size_weights[_aa], _compute_index_ranges_int16_weights) and UpSampleKernelAVX.h: weights in
# double, turned into int16 at the highest precision that fits, a horizontal pass then a vertical one, each
# rounded and clamped to uint8 in integer arithmetic. Bit-identical to torchvision's CPU output.


def _torch_triangle(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _torch_cubic(a: float):
    def cubic(x: np.ndarray) -> np.ndarray:
        x = np.abs(x)
        near = ((a + 2) * x - (a + 3)) * x * x + 1
        far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
        return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))

    return cubic


def _torch_weights_aa(out_size: int, in_size: int, scale: float, filter_fn, interp_size: int):
    support = interp_size * 0.5 * scale if scale >= 1.0 else interp_size * 0.5
    max_size = int(np.ceil(support)) * 2 + 1
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    center = scale * (np.arange(out_size) + 0.5)
    xmin = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    xsize = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    xsize = np.clip(xsize, 0, max_size)
    j = np.arange(max_size)[None, :]
    weights = filter_fn(((j + xmin[:, None]) - center[:, None] + 0.5) * invscale)
    weights = np.where(j < xsize[:, None], weights, 0.0)
    total = weights.sum(axis=1, keepdims=True)
    weights = np.where(total != 0.0, weights / np.where(total != 0.0, total, 1.0), weights)
    return xmin, weights, float(weights.max(initial=0.0))


def _torch_weights(out_size: int, in_size: int, scale: float, filter_fn, interp_size: int):
    """_compute_indices_min_size_weights: interp_size taps, the weights of taps past an edge added to the edge's."""
    cubic = interp_size > 2
    real = scale * (np.arange(out_size) + 0.5) - 0.5
    if not cubic:
        real = np.maximum(real, 0.0)
    index = np.minimum(np.floor(real.astype(_F32)).astype(np.int64), in_size - 1)  # floorf
    lam = np.clip(real - index, 0.0, 1.0)
    support = interp_size // 2
    unbound_min = index - support + 1
    index_min = np.maximum(unbound_min, 0)
    index_size = np.clip(np.minimum(index + support + 1, in_size) - index_min, 0, interp_size)
    weights = np.zeros((out_size, interp_size))
    rows = np.arange(out_size)
    w_index = np.zeros(out_size, np.int64)
    running_max = 0.0
    for j in range(interp_size):
        w = filter_fn((j + 1 - support) - lam)
        w_index = np.where(unbound_min + j <= 0, 0, np.where(unbound_min + j >= in_size - 1, index_size - 1, w_index))
        weights[rows, w_index] += w
        running_max = max(running_max, float(weights[rows, w_index].max(initial=0.0)))
        w_index = w_index + 1
    return index_min, weights, running_max


def _torch_int16_weights(out_size: int, in_size: int, interpolation: str, antialias: bool):
    """Start indices, int16 weights (out_size x taps) and their precision, as _compute_index_ranges_int16_weights."""
    scale = in_size / out_size
    if interpolation == "bilinear":
        filter_fn, interp_size = _torch_triangle, 2
    else:  # Keys' a = -0.5 with antialias (as PIL), -0.75 without (as OpenCV)
        filter_fn, interp_size = _torch_cubic(-0.5 if antialias else -0.75), 4
    compute = _torch_weights_aa if antialias else _torch_weights
    start, weights, weight_max = compute(out_size, in_size, scale, filter_fn, interp_size)
    precision = 0
    while precision < 22 and int(0.5 + weight_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = weights * (1 << precision)
    integer = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int32)
    return start, integer, precision


def _torch_pass(image: np.ndarray, out_size: int, axis: int, interpolation: str, antialias: bool) -> np.ndarray:
    start, weights, precision = _torch_int16_weights(out_size, image.shape[axis], interpolation, antialias)
    index = np.minimum(start[:, None] + np.arange(weights.shape[1])[None, :], image.shape[axis] - 1)
    total = _weighted_sum(image, axis, index, weights)  # int32: exact
    total += 1 << (precision - 1)
    total >>= precision
    return np.clip(total, 0, 255, out=total).astype(np.uint8)


def _torch_nearest_indices(out_size: int, in_size: int) -> np.ndarray:
    # HelperInterpNearest (interpolate's legacy "nearest"): floor(i * in / out) in float32.
    position = np.arange(out_size, dtype=_F32) * (_F32(in_size) / _F32(out_size))
    return np.minimum(np.floor(position).astype(np.int64), in_size - 1)


def resize_torch(image: np.ndarray, height: int, width: int, interpolation: str, antialias: bool) -> np.ndarray:
    """``torchvision.transforms.v2.functional.resize(uint8 CHW tensor, [height, width], interpolation, antialias)``
    on the CPU, for a uint8 HWC image; uint8 out, as torchvision returns it."""
    if interpolation == "nearest":  # torchvision turns antialias off
        return image[_torch_nearest_indices(height, image.shape[0])][:, _torch_nearest_indices(width, image.shape[1])]
    if interpolation not in ("bilinear", "bicubic"):
        raise ValueError(f"torchvision's tensor resize has no {interpolation!r} here")
    out = image
    if width != image.shape[1]:
        out = _torch_pass(out, width, 1, interpolation, antialias)
    if height != image.shape[0]:
        out = _torch_pass(out, height, 0, interpolation, antialias)
    return out


def resize(image: np.ndarray | Image.Image, height: int, width: int, spec: PreprocessSpec) -> np.ndarray:
    """``image`` resized to height x width by the spec's library, interpolation and antialias: uint8 HWC, or
    TensorFlow's float32 result for a spec that keeps it (``spec.keeps_float``)."""
    if spec.resize_library in ("tf1", "tf2"):
        array = np.asarray(image)
        if spec.resize_library == "tf1":
            tf1 = resize_tf1_bicubic if spec.interpolation == "bicubic" else resize_tf1_bilinear
            resized = tf1(array, height, width)
        else:
            resized = resize_tf2(array, height, width, spec.interpolation, spec.antialias)
        # TensorFlow resizes an image that already has the size too (its float copy; nearest keeps uint8).
        return resized if spec.keeps_float else resized.astype(np.uint8)
    if spec.resize_library == "torch":
        array = np.asarray(image)
        if array.shape[:2] == (height, width):
            return array
        return resize_torch(array, height, width, spec.interpolation, spec.antialias)
    if spec.resize_library == "pil":
        pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
        if pil.size != (width, height):
            pil = pil.resize((width, height), _PIL_FILTERS[spec.interpolation])
        return np.asarray(pil)
    array = np.asarray(image)
    if array.shape[:2] == (height, width):
        return array
    return cv2.resize(array, (width, height), interpolation=_CV2_FILTERS[spec.interpolation])


def _center_crop(image: np.ndarray, crop: int, rounding: str) -> np.ndarray:
    height, width = image.shape[:2]
    if height < crop or width < crop:  # torchvision pads with zeros on the short side(s)
        padded = np.zeros((max(height, crop), max(width, crop), image.shape[2]), dtype=image.dtype)
        top = (padded.shape[0] - height) // 2
        left = (padded.shape[1] - width) // 2
        padded[top : top + height, left : left + width] = image
        image, (height, width) = padded, padded.shape[:2]
    top = crop_offset(height, crop, rounding)
    left = crop_offset(width, crop, rounding)
    return image[top : top + crop, left : left + crop]


def crop_window(height: int, width: int, spec: PreprocessSpec) -> tuple[int, int, int]:
    """(top, left, side) of the centred square a crop_then_resize spec cuts from a height x width image."""
    side = max(1, crop_fraction_window(height, width, spec.crop_size, spec.crop_padding))
    return crop_offset(height, side, spec.crop_rounding), crop_offset(width, side, spec.crop_rounding), side


def resize_window(window: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """A crop_then_resize spec's window resized to its input size (contiguous; ``spec.cached_dtype``)."""
    return np.ascontiguousarray(resize(window, spec.crop_size, spec.crop_size, spec))


def apply_geometry(image: np.ndarray | Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Resize and centre-crop an RGB image (uint8 HWC array or PIL image) as ``spec`` says.

    Returns a contiguous HWC array of ``spec.cached_dtype``.
    """
    width, height = image.size if isinstance(image, Image.Image) else (image.shape[1], image.shape[0])
    if spec.order == "crop_then_resize":
        top, left, side = crop_window(height, width, spec)
        return resize_window(np.asarray(image)[top : top + side, left : left + side], spec)
    if spec.resize_mode == "shorter_side":
        image = resize(image, *shorter_side_size(height, width, spec.resize_size), spec)
    elif spec.resize_mode == "squash":
        image = resize(image, spec.resize_size, spec.resize_size, spec)
    image = np.asarray(image)
    if spec.crop_size:
        image = _center_crop(image, spec.crop_size, spec.crop_rounding)
    return np.ascontiguousarray(image)


def load_geometry(path: str | os.PathLike, spec: PreprocessSpec) -> np.ndarray:
    """File -> RGB HWC image after decode, resize and crop (what the tensor cache stores; ``spec.cached_dtype``)."""
    return load_geometry_noting(path, spec)[0]


def load_geometry_noting(path: str | os.PathLike, spec: PreprocessSpec) -> tuple[np.ndarray, str | None]:
    """:func:`load_geometry`, and the decode's caveat for the report (see :func:`decode_pil_noting`)."""
    image, caveat = decode_noting(path, spec.decoder)
    return apply_geometry(image, spec), caveat


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose output the cache depends on."""
    from PIL import __version__ as pil_version

    return {
        "pillow": pil_version,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "simplejpeg": simplejpeg.__version__,
    }
