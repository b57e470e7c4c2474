"""Preprocessing as data: a frozen, fully explicit spec, named presets and one resolver.

A spec has two halves:

* the *geometry* (decoder, resize, crop, and their order) turns a file into an RGB image of
  ``crop_size x crop_size``: uint8, or float32 where TensorFlow's resize computes floats that its
  sources feed unrounded (``keeps_float``); it is what the tensor cache is keyed on;
* the *normalisation* (scale, mean, std, channel order, layout, dtype) turns that
  image into the float tensor the model is fed.

Normalisation is ``((x / scale) - mean[c]) / std[c]`` in float32, one operation at a
time, the order in which torchvision, Keras and GluonCV all compute it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, get_args

import numpy as np
from pydantic import ConfigDict

from xfverify.models.errors import UserError

Decoder = Literal["pil", "opencv", "mxnet", "tensorflow", "nvjpeg"]
Order = Literal["resize_then_crop", "crop_then_resize"]
ResizeMode = Literal["shorter_side", "squash", "none"]
Interpolation = Literal["nearest", "bilinear", "bicubic", "area", "lanczos"]
ResizeLibrary = Literal["pil", "opencv", "tf1", "tf2", "torch"]
CropRounding = Literal["round_half_even", "floor", "round_half_up"]
ChannelOrder = Literal["RGB", "BGR"]
Layout = Literal["NCHW", "NHWC"]
DType = Literal["float32"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# The normalisations the presets use, by name (the diagnose variants swap them): (x / scale - mean) / std.
NORMALISATIONS: dict[str, dict[str, Any]] = {
    "imagenet-mean-std": dict(scale=255.0, mean=IMAGENET_MEAN, std=IMAGENET_STD, channel_order="RGB"),
    "half-half": dict(scale=255.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), channel_order="RGB"),
    "127-128": dict(scale=1.0, mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0), channel_order="RGB"),
    "keras-caffe": dict(scale=1.0, mean=CAFFE_MEAN_BGR, std=(1.0, 1.0, 1.0), channel_order="BGR"),
    "keras-tf": dict(scale=127.5, mean=(1.0, 1.0, 1.0), std=(1.0, 1.0, 1.0), channel_order="RGB"),
}
MAX_SIDE = 2048  # 3 x 2048 x 2048 values per image keep the fed tensors' int64 checksums exact (evaluator/cache/digests.py)

GEOMETRY_FIELDS = (
    "decoder",
    "order",
    "resize_mode",
    "resize_size",
    "interpolation",
    "resize_library",
    "antialias",
    "crop_size",
    "crop_padding",
    "crop_rounding",
)

# Which interpolations each library offers, and whether it filters when it shrinks.
LIBRARY_INTERPOLATIONS: dict[str, tuple[str, ...]] = {
    "pil": ("nearest", "bilinear", "bicubic", "area", "lanczos"),
    "opencv": ("nearest", "bilinear", "bicubic", "area", "lanczos"),
    "tf1": ("bilinear", "bicubic"),
    "tf2": ("nearest", "bilinear", "bicubic", "lanczos"),
    "torch": ("nearest", "bilinear", "bicubic"),
}


@dataclass(frozen=True)
class PreprocessSpec:
    """Every step from an image file to the float tensor a model is fed, explicit.

    Attributes:
        name: preset name, or a description of how it was derived.
        decoder: how the file becomes RGB pixels (``pil``: ``Image.open().convert("RGB")``
            as torchvision and Keras load images; ``opencv``: ``cv2.imdecode`` + BGR->RGB as
            OpenCV-based pipelines do; ``mxnet``: ``mx.image.imdecode``, MXNet's bundled OpenCV and
            libjpeg, as GluonCV loads images (in an mxnet worker: it decodes some JPEGs, 4:4:0 chroma
            subsampling among them, up to 2 levels apart from opencv-python's libjpeg-turbo);
            ``tensorflow``: as ``tf.io.decode_jpeg`` with its defaults, libjpeg-turbo's fast integer DCT
            with fancy upsampling, which differs from PIL's accurate DCT by up to ~20 levels; files that are not JPEG go
            through PIL; with crop_then_resize only the crop window is decoded, by
            ``tf.image.decode_and_crop_jpeg`` in a TensorFlow worker, as TensorFlow's
            EfficientNet does); ``nvjpeg``: ``torchvision.io.decode_jpeg(device="cuda")`` on an NVIDIA
            GPU (nvJPEG: ~10x faster than a CPU, ~5 levels from libjpeg-turbo on average; files
            it cannot decode go through PIL).
        order: ``resize_then_crop`` (torchvision, Keras, GluonCV: resize, then centre-crop
            ``crop_size``) or ``crop_then_resize`` (TensorFlow's EfficientNet: a centred
            square of crop_size / (crop_size + crop_padding) of the shorter side, resized to
            crop_size x crop_size; resize_mode must be ``squash`` with resize_size = crop_size).
        resize_mode: ``shorter_side`` keeps the aspect ratio (longer side =
            floor(resize_size * long / short)); ``squash`` resizes to resize_size x resize_size;
            ``none`` skips resizing.
        resize_size: target of the resize (see resize_mode).
        interpolation: resampling filter.
        resize_library: library that resizes (its filters differ even for the same name):
            ``pil``: ``Image.resize`` (torchvision's and Keras's PIL pipelines);
            ``opencv``: ``cv2.resize`` (MXNet/GluonCV, OpenCV pipelines);
            ``tf1``: TensorFlow 1's ``tf.compat.v1.image.resize`` bilinear and ``resize_bicubic``
            (Keys cubic, a = -0.75) with align_corners and half_pixel_centers false, no antialias;
            ``tf2``: TensorFlow 2's ``tf.image.resize(images, size, method, antialias)``: half-pixel
            centres; nearest, bilinear (ResizeBilinear), bicubic (Keys cubic, a = -0.5), lanczos
            (``lanczos3``); with antialias, ScaleAndTranslate's kernel widened by the scale when
            shrinking;
            ``torch``: ``torchvision.transforms.v2.functional.resize`` of a uint8 CHW tensor on the
            CPU: nearest (interpolate's legacy ``nearest``), bilinear and bicubic through torch's
            uint8 kernels (bicubic a = -0.75 without antialias, a = -0.5 with it, as PIL). On a GPU,
            or for float tensors, torchvision computes in float instead: measured up to 1 level apart
            for bilinear and up to 18 for bicubic at sharp edges (the uint8 kernel clips between its
            horizontal and vertical passes).
            tf1, tf2 and torch are computed in numpy (the decode pool imports no framework), tested
            against the framework's own call; TensorFlow's float32 output is kept as it is (the cache
            stores float32 images for these specs, as TensorFlow feeds them, overshoot included);
            tf2's nearest and torch's are uint8 already, bit for bit.
        antialias: whether the filter widens when shrinking (PIL always does; OpenCV never
            does, except ``area``; tf1 never does; tf2 and torch do when asked, except nearest,
            which never does: antialias must be false with it).
        crop_size: side of the centre crop (the output); 0 means no crop.
        crop_padding: with crop_then_resize, the padding that sets the crop fraction
            crop_size / (crop_size + crop_padding); 0 otherwise.
        crop_rounding: how the crop offset (size - crop) / 2 is rounded: torchvision uses
            Python's round() (half to even), MXNet int() (floor), TensorFlow's EfficientNet
            (size - crop + 1) // 2 (half up).
        scale: divisor applied to the uint8 values first.
        mean: per-channel value subtracted after scaling, in the output channel order.
        std: per-channel divisor applied last, in the output channel order.
        channel_order: order of channels in the tensor.
        layout: NCHW (torch, MXNet, ONNX exports of them) or NHWC (Keras).
        dtype: element type of the tensor.
        source: where this recipe is documented.
    """

    name: str
    decoder: Decoder
    order: Order
    resize_mode: ResizeMode
    resize_size: int
    interpolation: Interpolation
    resize_library: ResizeLibrary
    antialias: bool
    crop_size: int
    crop_padding: int
    crop_rounding: CropRounding
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: ChannelOrder
    layout: Layout
    dtype: DType = "float32"
    source: str = field(default="", compare=False)

    # Read from a job or a report (pydantic holds the spec itself): an unknown key is refused, not dropped.
    __pydantic_config__ = ConfigDict(extra="forbid")

    def __post_init__(self) -> None:
        problems = spec_problems(self)
        if problems:
            raise UserError(f"invalid preprocessing spec {self.name!r}: " + "; ".join(problems))

    # --- derived views -------------------------------------------------------------------
    @property
    def output_hw(self) -> tuple[int, int] | None:
        """Height and width of every output image, or None when they vary (no crop, no squash)."""
        if self.crop_size:
            return (self.crop_size, self.crop_size)
        if self.resize_mode == "squash":
            return (self.resize_size, self.resize_size)
        return None

    @property
    def keeps_float(self) -> bool:
        """Whether the geometry's output is TensorFlow's float32 resize, kept unrounded (the cache stores float32
        images): its sources feed the resize's floats, so rounding them to uint8 would change what is fed."""
        return self.resize_library in ("tf1", "tf2") and self.interpolation != "nearest"

    @property
    def decodes_window(self) -> bool:
        """Whether only the crop window is decoded, as ``tf.image.decode_and_crop_jpeg`` does (TensorFlow's decoder,
        crop then resize): libjpeg-turbo's partial decode upsamples the chroma of the window's edge columns as an
        image's edges, so it differs from a crop of the whole decoded image there; it runs in a TensorFlow worker."""
        return self.decoder == "tensorflow" and self.order == "crop_then_resize"

    @property
    def decode_worker(self) -> str | None:
        """The framework whose worker decodes for this spec (nvjpeg: torch; MXNet's decoder: mxnet; a TensorFlow
        window: tensorflow), or None where the CPU decode pool does."""
        if self.decoder == "nvjpeg":
            return "torch"
        if self.decoder == "mxnet":
            return "mxnet"
        return "tensorflow" if self.decodes_window else None

    @property
    def cached_dtype(self) -> str:
        """The element type of the geometry's images as the tensor cache stores them."""
        return "float32" if self.keeps_float else "uint8"

    def geometry(self) -> dict[str, Any]:
        """The fields that decide the uint8 image (the tensor cache's key)."""
        return {name: getattr(self, name) for name in GEOMETRY_FIELDS}

    def geometry_key(self) -> str:
        """A short stable hash of the geometry."""
        blob = json.dumps(self.geometry(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["mean"] = list(self.mean)
        out["std"] = list(self.std)
        return out

    def replace(self, **changes: Any) -> "PreprocessSpec":
        """A copy with some fields changed (validated like any spec)."""
        return dataclasses.replace(self, **changes)


def spec_problems(spec: PreprocessSpec) -> list[str]:
    """Everything wrong with a spec, as sentences (empty when it is valid)."""
    problems: list[str] = []
    for f in dataclasses.fields(PreprocessSpec):
        allowed = _literal_values(f.type)
        value = getattr(spec, f.name)
        if allowed and value not in allowed:
            problems.append(f"{f.name}={value!r} is not one of {', '.join(map(str, allowed))}")
    if problems:
        return problems
    if spec.resize_mode != "none" and spec.resize_size <= 0:
        problems.append("resize_size must be positive")
    if spec.crop_size < 0:
        problems.append("crop_size must be 0 (no crop) or positive")
    if max(spec.resize_size, spec.crop_size) > MAX_SIDE:
        problems.append(f"resize_size and crop_size must be at most {MAX_SIDE} (the largest image side xfverify "
                        "caches and proves exactly)")
    if spec.crop_padding < 0:
        problems.append("crop_padding must be 0 or positive")
    if spec.order == "crop_then_resize":
        if spec.crop_size <= 0:
            problems.append("order=crop_then_resize needs a crop_size")
        elif spec.resize_mode != "squash" or spec.resize_size != spec.crop_size:
            problems.append("order=crop_then_resize resizes the crop to crop_size: set resize_mode=squash, resize_size=crop_size")
    elif spec.crop_padding:
        problems.append("crop_padding applies only with order=crop_then_resize")
    if spec.interpolation not in LIBRARY_INTERPOLATIONS[spec.resize_library]:
        problems.append(f"{spec.resize_library} has no {spec.interpolation} interpolation; choose from "
                        + ", ".join(LIBRARY_INTERPOLATIONS[spec.resize_library]))
    if spec.resize_library == "pil" and not spec.antialias and spec.interpolation != "nearest":
        problems.append("PIL always antialiases when it shrinks: antialias must be true for resize_library=pil")
    if spec.resize_library == "opencv" and spec.antialias and spec.interpolation != "area":
        problems.append("OpenCV does not antialias except with interpolation=area: set antialias=false")
    if spec.resize_library == "tf1" and spec.antialias:
        problems.append("TensorFlow 1's resize does not antialias: set antialias=false")
    if spec.resize_library in ("tf2", "torch") and spec.antialias and spec.interpolation == "nearest":
        problems.append(f"{spec.resize_library}'s nearest resize ignores antialias: set antialias=false")
    if spec.scale <= 0 or not math.isfinite(spec.scale):
        problems.append("scale must be a positive number")
    for name in ("mean", "std"):
        values = getattr(spec, name)
        if len(values) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            problems.append(f"{name} must be three finite numbers")
    if len(spec.std) == 3 and any(v == 0 for v in spec.std):
        problems.append("std must not contain 0")
    return problems


def _literal_values(annotation: Any) -> tuple[Any, ...]:
    if isinstance(annotation, str):
        annotation = globals().get(annotation, None)
    return tuple(get_args(annotation)) if annotation is not None and get_args(annotation) else ()


def shorter_side_size(height: int, width: int, target: int) -> tuple[int, int]:
    """(new_h, new_w) when the shorter side becomes ``target`` (longer = floor(target*long/short))."""
    if height <= width:
        return target, target * width // height
    return target * height // width, target


def crop_offset(size: int, crop: int, rounding: CropRounding) -> int:
    """Offset of a centre crop of ``crop`` out of ``size`` (negative when the crop pads)."""
    if rounding == "round_half_even":
        return int(round((size - crop) / 2.0))
    if rounding == "round_half_up":
        return (size - crop + 1) // 2
    return int((size - crop) / 2)


def crop_fraction_window(height: int, width: int, crop: int, padding: int) -> int:
    """Side of the centred square a crop_then_resize spec cuts: crop / (crop + padding) of the shorter side.

    Computed in float32 and truncated, as TensorFlow's EfficientNet evaluation does.
    """
    fraction = np.float32(crop / (crop + padding))
    return int(fraction * np.float32(min(height, width)))


def resize_for_crop_pct(crop_size: int, crop_pct: float) -> int:
    """timm's rule: the shorter side is resized to floor(crop_size / crop_pct)."""
    return int(math.floor(crop_size / crop_pct))


# --- presets -----------------------------------------------------------------------------
# Each preset states where its recipe comes from; its parity test compares it with that
# source's own code (xfverify.evaluator.references), never with these numbers.

TORCHVISION_SOURCE = (
    "torchvision 0.29 weights.transforms() = ImageClassification(crop_size=224, resize_size=%d): PIL Resize "
    "bilinear (antialiased) on the shorter side, CenterCrop(224), ToTensor, Normalize(ImageNet mean/std) "
    "(torchvision/transforms/_presets.py; resize_size from torchvision/models/*.py, %s)"
)
TPU_LITE_SOURCE = (
    "the TensorFlow original's evaluation, tensorflow/tpu models/official/efficientnet: preprocessing.py "
    "_decode_and_center_crop (tf.image.decode_and_crop_jpeg of a centred square of size/(size+32) of the "
    "shorter side, offset (h - side + 1)//2; CROP_PADDING 32 as at the lite release, later revisions use "
    "round(size / 7)), resized with tf.compat.v1 tf.image.resize BILINEAR (main.py@01b67067: 'lite or edgetpu "
    "use bilinear'), run as main.py runs it (a tf.data map: graph mode, the resized float32 image fed unrounded), "
    "then (x - MEAN_RGB 127) / STDDEV_RGB 128 (lite/efficientnet_lite_builder.py)"
)
TIMM_LITE_SOURCE = (
    "timm 1.0.31 pretrained_cfg of tf_efficientnet_lite%d (timm/models/efficientnet.py: crop_pct %.3f, bicubic, "
    "mean = std = 0.5), through timm.data.resolve_data_config + create_transform: PIL Resize(%d) bicubic, "
    "CenterCrop(%d), ToTensor, Normalize"
)


def _resize_then_crop(name: str, source: str, **fields: Any) -> PreprocessSpec:
    return PreprocessSpec(name=name, order="resize_then_crop", crop_padding=0, source=source, **fields)


def _torchvision(name: str, resize: int, which: str) -> PreprocessSpec:
    return _resize_then_crop(
        name,
        TORCHVISION_SOURCE % (resize, which),
        decoder="pil",
        resize_mode="shorter_side",
        resize_size=resize,
        interpolation="bilinear",
        resize_library="pil",
        antialias=True,
        crop_size=224,
        crop_rounding="round_half_even",
        **NORMALISATIONS["imagenet-mean-std"],
        layout="NCHW",
    )


def _keras(name: str, mode: str, **geometry: Any) -> PreprocessSpec:
    norm = NORMALISATIONS[{"caffe": "keras-caffe", "tf": "keras-tf", "torch": "imagenet-mean-std"}[mode]]
    base: dict[str, Any] = dict(
        decoder="opencv",
        resize_mode="shorter_side",
        resize_size=256,
        interpolation="bicubic",
        resize_library="opencv",
        antialias=False,
        crop_size=224,
        crop_rounding="floor",
        layout="NHWC",
        source=(
            "keras.applications imagenet_utils.preprocess_input(mode=%r) (keras 3.15); geometry from the Keras "
            "maintainers' recipe for the published numbers (github.com/keras-team/keras-applications issues #88 and "
            "#99): cv2 decode, shorter side 256 with cv2.INTER_CUBIC, centre crop 224" % mode
        ),
    )
    base.update(geometry)
    source = base.pop("source")
    return _resize_then_crop(name, source, **base, **norm)


def _gluoncv(name: str, resize: int = 256) -> PreprocessSpec:
    return _resize_then_crop(
        name,
        "gluoncv 0.10.5 gluoncv/data/transforms/presets/imagenet.py transform_eval: mx.image.imread, gluon "
        "transforms Resize(256, keep_ratio=True, interpolation=1 bilinear), CenterCrop(224), ToTensor, Normalize",
        decoder="mxnet",
        resize_mode="shorter_side",
        resize_size=resize,
        interpolation="bilinear",
        resize_library="opencv",
        antialias=False,
        crop_size=224,
        crop_rounding="floor",
        **NORMALISATIONS["imagenet-mean-std"],
        layout="NCHW",
    )


# EfficientNet-Lite input sizes, and timm's crop_pct for each (224/256, 240/272, 260/292: padding 32).
LITE_SIZES = {0: (224, 0.875), 1: (240, 0.882), 2: (260, 0.890)}


def _lite_tpu(size: int) -> PreprocessSpec:
    return PreprocessSpec(
        name=f"lite-tf-{size}",
        decoder="tensorflow",
        order="crop_then_resize",
        resize_mode="squash",
        resize_size=size,
        interpolation="bilinear",
        resize_library="tf1",
        antialias=False,
        crop_size=size,
        crop_padding=32,
        crop_rounding="round_half_up",
        **NORMALISATIONS["127-128"],
        layout="NCHW",
        source=TPU_LITE_SOURCE.replace("size/(size+32)", f"{size}/({size}+32)"),
    )


TPU_LITE_BICUBIC_SOURCE = (
    "the TensorFlow original's evaluation as eval_ckpt_main.py runs it (the command lite/README.md gives): "
    "tensorflow/tpu models/official/efficientnet preprocessing.py _decode_and_center_crop as lite-tf-%d, but "
    "resize_method None, so _resize_image calls tf.compat.v1 tf.image.resize_bicubic (align_corners and "
    "half_pixel_centers false); main.py, which trained and evaluated the published numbers, sets BILINEAR for the "
    "lite models; then (x - 127) / 128 (eval_ckpt_main.py EvalCkptDriver.build_model, the lite builder's MEAN_RGB, "
    "STDDEV_RGB)"
)


def _lite_tpu_bicubic(size: int) -> PreprocessSpec:
    return _lite_tpu(size).replace(name=f"lite-tf-bicubic-{size}", interpolation="bicubic",
                                   source=TPU_LITE_BICUBIC_SOURCE % size)


def _lite_timm(variant: int) -> PreprocessSpec:
    size, crop_pct = LITE_SIZES[variant]
    resize = resize_for_crop_pct(size, crop_pct)
    return _resize_then_crop(
        f"lite-timm-{size}",
        TIMM_LITE_SOURCE % (variant, crop_pct, resize, size),
        decoder="pil",
        resize_mode="shorter_side",
        resize_size=resize,
        interpolation="bicubic",
        resize_library="pil",
        antialias=True,
        crop_size=size,
        crop_rounding="round_half_even",
        **NORMALISATIONS["half-half"],
        layout="NCHW",
    )


def _build_presets() -> dict[str, PreprocessSpec]:
    presets = [
        _torchvision("torchvision-256", 256, "V1 weights"),
        _torchvision("torchvision-232", 232, "most V2 weights"),
        _keras("keras-caffe", "caffe"),
        _keras("keras-tf", "tf"),
        _keras("keras-torch", "torch"),
        # The traps people fall into with Keras utilities (diagnosis variants).
        _keras(
            "keras-caffe-load-img-nearest",
            "caffe",
            decoder="pil",
            resize_mode="squash",
            resize_size=224,
            interpolation="nearest",
            resize_library="pil",
            antialias=True,
            crop_size=0,
            source="keras.utils.load_img(target_size=(224, 224)): squashes with PIL NEAREST; then preprocess_input",
        ),
        _keras(
            "keras-caffe-pil-bilinear",
            "caffe",
            decoder="pil",
            interpolation="bilinear",
            resize_library="pil",
            antialias=True,
            crop_rounding="round_half_even",
            source="hand-made Keras pipeline: PIL bilinear shorter side 256, centre crop 224, preprocess_input",
        ),
        _gluoncv("gluoncv"),
    ]
    for variant, (size, _) in LITE_SIZES.items():
        presets += [_lite_tpu(size), _lite_tpu_bicubic(size), _lite_timm(variant)]
    # The trap this project once fell into: the Lite weights fed ImageNet mean/std (a diagnosis variant).
    presets.append(
        _lite_timm(0).replace(
            name="lite-imagenet-norm-224",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            source=(
                "lite-timm-224 with torchvision's ImageNet mean/std instead of the weights' own normalisation "
                "(what a torchvision-style pipeline feeds the Lite ports; a diagnosis variant)"
            ),
        )
    )
    return {p.name: p for p in presets}


PRESETS: Mapping[str, PreprocessSpec] = _build_presets()


def _short(raw: Any) -> str:
    text = repr(raw)
    return text if len(text) <= 60 else text[:57] + "..."


def _finite(raw: Any) -> float:
    """A finite float from a number or its text (booleans are not numbers here); ValueError otherwise."""
    if isinstance(raw, bool):
        raise ValueError(raw)
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(raw)
    return value


def _whole(field_name: str, raw: Any) -> int:
    """A whole number from an int, a float with no fraction (224.0) or its text; 224.9, inf and true are refused."""
    try:
        if isinstance(raw, bool):
            raise ValueError(raw)
        if isinstance(raw, int):
            return raw
        if isinstance(raw, str):
            raw = raw.strip()
            try:
                return int(raw)
            except ValueError:
                pass
        value = float(raw)
        if not value.is_integer():
            raise ValueError(raw)
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{field_name} must be a whole number, got {_short(raw)}") from None


def _coerce(field_name: str, raw: Any) -> Any:
    """Turn a value given as text (the command line, a file) into the type the field wants."""
    if field_name in ("mean", "std"):
        if isinstance(raw, str):
            raw = [part for part in raw.replace(",", " ").split() if part]
        try:
            values = tuple(_finite(v) for v in raw)
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"{field_name} must be three finite numbers, got {_short(raw)}") from None
        return values
    if field_name in ("resize_size", "crop_size", "crop_padding"):
        return _whole(field_name, raw)
    if field_name == "scale":
        try:
            return _finite(raw)
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"scale must be a finite number, got {_short(raw)}") from None
    if field_name == "antialias":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise UserError(f"antialias must be true or false, got {raw!r}")
    return raw


OVERRIDABLE_FIELDS = frozenset(f.name for f in dataclasses.fields(PreprocessSpec)) - {"name", "source"}


def resolve_preprocess(
    preset: str | PreprocessSpec | None = None,
    *,
    default: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> PreprocessSpec:
    """The one place a spec is decided.

    Precedence, highest first: ``overrides`` (field -> value, text or typed), then ``preset`` (a preset
    name or a spec), then ``default`` (the model card's reference preset).
    ``crop_pct`` in the overrides sets resize_size = floor(crop_size / crop_pct).
    """
    chosen = preset if preset is not None else default
    if chosen is None:
        raise UserError("no preprocessing given: name a preset (--preprocess) or a model whose card has one")
    if isinstance(chosen, PreprocessSpec):
        spec = chosen
    elif chosen in PRESETS:
        spec = PRESETS[chosen]
    else:
        raise UserError(f"unknown preprocessing preset {chosen!r}; presets are: {', '.join(sorted(PRESETS))}")
    if not overrides:
        return spec
    fields = OVERRIDABLE_FIELDS
    unknown = sorted(str(key) for key in overrides if key not in fields and key != "crop_pct")
    if unknown:
        raise UserError(f"unknown preprocessing field {_short(unknown[0])}; fields are: {', '.join(sorted(fields))}, "
                        "crop_pct")
    changes = {key: _coerce(key, value) for key, value in overrides.items() if key != "crop_pct"}
    if "crop_pct" in overrides:
        try:
            crop_pct = _finite(overrides["crop_pct"])
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"crop_pct must be a number, got {overrides['crop_pct']!r}") from None
        if not 0 < crop_pct <= 1:
            raise UserError(f"crop_pct must be in (0, 1], got {crop_pct}")
        crop = changes.get("crop_size", spec.crop_size)
        changes["resize_size"] = resize_for_crop_pct(crop, crop_pct)
    described = ",".join(f"{k}={overrides[k]}" for k in sorted(overrides))
    return spec.replace(name=f"{spec.name}+{described}", **changes)

