"""Each preset's preprocessing as its source wrote it: the framework's or the weights' origin's own code.

These modules are what xfverify is checked against (``xfverify preprocess --verify`` and the parity
tests), so they share nothing with it: no module here imports xfverify (an import contract checks it),
every parameter is written out as its source states it, and each one runs in its framework's worker.
This file only says, framework-free, which module holds which preset and how close xfverify must come.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reference:
    """Where a preset's reference pipeline lives and how close xfverify's tensors must be to it.

    Attributes:
        framework: the worker that runs it.
        module: the module in this package whose ``PIPELINES`` holds it.
        bound: largest |difference| allowed on a tensor value (0: bit-identical).
        outlier_fraction: share of values per image that may exceed ``bound`` (0: none).
        why: the reason a bound is not 0.
        jpeg_only: it reads files with JPEG-only ops (as its source reads ImageNet's JPEGs).
    """

    framework: str
    module: str
    bound: float = 0.0
    outlier_fraction: float = 0.0
    why: str = ""
    jpeg_only: bool = False

    @property
    def exact(self) -> bool:
        return self.bound == 0.0 and self.outlier_fraction == 0.0


_TPU_LITE = Reference(
    framework="tensorflow",
    module="tpu_efficientnet",
    jpeg_only=True,  # tf.image.extract_jpeg_shape and decode_and_crop_jpeg
)

REFERENCES: dict[str, Reference] = {
    "torchvision-256": Reference("torch", "torchvision_weights"),
    "torchvision-232": Reference("torch", "torchvision_weights"),
    "keras-caffe": Reference("tensorflow", "keras_applications"),
    "keras-tf": Reference("tensorflow", "keras_applications"),
    "keras-torch": Reference("tensorflow", "keras_applications"),
    "keras-caffe-load-img-nearest": Reference("tensorflow", "keras_applications"),
    "keras-caffe-pil-bilinear": Reference("tensorflow", "keras_applications"),
    "gluoncv": Reference("mxnet", "gluoncv_transforms"),
    "lite-tf-224": _TPU_LITE,
    "lite-tf-240": _TPU_LITE,
    "lite-tf-260": _TPU_LITE,
    "lite-tf-bicubic-224": _TPU_LITE,
    "lite-tf-bicubic-240": _TPU_LITE,
    "lite-tf-bicubic-260": _TPU_LITE,
    "lite-timm-224": Reference("torch", "timm_transforms"),
    "lite-timm-240": Reference("torch", "timm_transforms"),
    "lite-timm-260": Reference("torch", "timm_transforms"),
    "lite-imagenet-norm-224": Reference("torch", "timm_transforms"),
}

# The zoos' catalogue: per source, the module whose ``catalogue_pipeline(name)`` runs the source's own evaluation
# transform for one catalogue entry on image files (``name``: its id after ``source/``, e.g.
# ``resnet50:IMAGENET1K_V1``), made of ``load(path)`` (the source's loader) and ``catalogue_transform(name)`` (the
# transform on a loaded image, a float32 array), so a bench can read each photo once for every configuration.
CATALOGUE_REFERENCES: dict[str, Reference] = {
    "torchvision": Reference("torch", "torchvision_weights"),
    "timm": Reference("torch", "timm_transforms"),
    "keras": Reference("tensorflow", "keras_applications"),
    "gluoncv": Reference("mxnet", "gluoncv_transforms"),
}
