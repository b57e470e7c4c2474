"""Framework-free decoding and geometry: file -> uint8 RGB HWC image, exactly as each library does it.

Decoders reproduce the loaders the frameworks use: torchvision's and Keras's
``PIL.Image.open(f).convert("RGB")``, OpenCV's ``imdecode`` (which MXNet wraps), and
TensorFlow's ``decode_jpeg`` defaults (libjpeg-turbo's fast integer DCT, through simplejpeg).
Resizing calls the named library itself, so a spec that says "PIL bicubic" gets PIL's
bicubic, not an approximation of it. The one exception is ``tf1``, TensorFlow 1's bilinear
resize, written out here in numpy (the decode pool must not import TensorFlow) and tested
equal to TensorFlow's own kernel.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from xfverify.models.errors import UserError
from xfverify.models.preprocess import PreprocessSpec, crop_fraction_window, crop_offset, shorter_side_size

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


def read_image_bytes(path: str | os.PathLike) -> bytes:
    """The file's bytes; a BadImageError naming it when it cannot be read or is empty."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BadImageError(path, exc.strerror or str(exc)) from None
    if not data:
        raise BadImageError(path, "the file is empty")
    return data


def decode_pil(path: str | os.PathLike) -> Image.Image:
    """Decode like torchvision's ``default_loader`` and ``keras.utils.load_img``: PIL, then RGB."""
    return decode_pil_noting(path)[0]


# Modes whose values go beyond 0-255: ``convert("RGB")`` clips them (a 16-bit PNG turns nearly white).
_WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def decode_pil_noting(path: str | os.PathLike) -> tuple[Image.Image, str | None]:
    """:func:`decode_pil`, and a caveat for the report when the faithful decode loses the picture (or None)."""
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
        raise ValueError("the nvjpeg decoder runs on the GPU, in a torch worker (evaluator/frameworks/nvjpeg.py)")
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


def resize_tf1_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``tf.compat.v1.image.resize(..., BILINEAR)`` of a uint8 HWC image, float32 out, operation for operation."""
    y_lower, y_upper, y_lerp = _tf1_bilinear_taps(height, image.shape[0])
    x_lower, x_upper, x_lerp = _tf1_bilinear_taps(width, image.shape[1])
    rows_lower = image[y_lower].astype(np.float32)
    rows_upper = image[y_upper].astype(np.float32)
    x_lerp = x_lerp[None, :, None]
    top = rows_lower[:, x_lower] + (rows_lower[:, x_upper] - rows_lower[:, x_lower]) * x_lerp
    bottom = rows_upper[:, x_lower] + (rows_upper[:, x_upper] - rows_upper[:, x_lower]) * x_lerp
    return top + (bottom - top) * y_lerp[:, None, None]


def _resize(image: np.ndarray | Image.Image, height: int, width: int, spec: PreprocessSpec) -> np.ndarray:
    if spec.resize_library == "tf1":
        array = np.asarray(image)
        if array.shape[:2] == (height, width):
            return array
        # The cache holds uint8: TensorFlow's float result, rounded (at most 0.5 level away).
        return np.clip(np.rint(resize_tf1_bilinear(array, height, width)), 0, 255).astype(np.uint8)
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


def apply_geometry(image: np.ndarray | Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Resize and centre-crop an RGB image (uint8 HWC array or PIL image) as ``spec`` says.

    Returns a contiguous uint8 HWC array.
    """
    width, height = image.size if isinstance(image, Image.Image) else (image.shape[1], image.shape[0])
    if spec.order == "crop_then_resize":
        side = max(1, crop_fraction_window(height, width, spec.crop_size, spec.crop_padding))
        top = crop_offset(height, side, spec.crop_rounding)
        left = crop_offset(width, side, spec.crop_rounding)
        window = np.asarray(image)[top : top + side, left : left + side]
        return np.ascontiguousarray(_resize(window, spec.crop_size, spec.crop_size, spec))
    if spec.resize_mode == "shorter_side":
        image = _resize(image, *shorter_side_size(height, width, spec.resize_size), spec)
    elif spec.resize_mode == "squash":
        image = _resize(image, spec.resize_size, spec.resize_size, spec)
    image = np.asarray(image)
    if spec.crop_size:
        image = _center_crop(image, spec.crop_size, spec.crop_rounding)
    return np.ascontiguousarray(image)


def load_geometry(path: str | os.PathLike, spec: PreprocessSpec) -> np.ndarray:
    """File -> uint8 RGB HWC image after decode, resize and crop (what the tensor cache stores)."""
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
