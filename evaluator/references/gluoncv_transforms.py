"""GluonCV's ``transform_eval`` on ``mx.image.imread`` (mxnet worker, which has made GluonCV importable)."""

from __future__ import annotations

import math

import mxnet as mx
import numpy as np

LAYOUT = "NCHW"


def _transform_eval(paths: list[str]) -> np.ndarray:
    from gluoncv.data.transforms.presets.imagenet import transform_eval

    return np.stack([transform_eval(mx.image.imread(path)).asnumpy()[0] for path in paths])


PIPELINES = {"gluoncv": _transform_eval}

# The model zoo's evaluation, dmlc/gluon-cv scripts/classification/imagenet/verify_pretrained.py: --input-size 224
# and --crop-ratio 0.875 by default, resize = int(math.ceil(input_size / crop_ratio)); the model zoo's page
# (docs/model_zoo/classification_mxnet.rst): "InceptionV3 is evaluated with input size of 299x299".
_INPUT_SIZES = {"inceptionv3": 299}


def catalogue_pipeline(name: str):
    """``model:imagenet`` (a catalogue entry): verify_pretrained.py's transform_test for that model."""
    from mxnet.gluon.data.vision import transforms

    input_size = _INPUT_SIZES.get(name.split(":")[0], 224)
    resize = int(math.ceil(input_size / 0.875))
    transform = transforms.Compose([
        transforms.Resize(resize, keep_ratio=True),
        transforms.CenterCrop(input_size),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])

    def run(paths: list[str]) -> np.ndarray:
        return np.stack([transform(mx.image.imread(path)).asnumpy() for path in paths])

    return run


def describe() -> str:
    import gluoncv

    return f"gluoncv {gluoncv.__version__} transform_eval (mxnet {mx.__version__})"
