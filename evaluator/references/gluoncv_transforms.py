"""GluonCV's ``transform_eval`` on ``mx.image.imread`` (mxnet worker, which has made GluonCV importable)."""

from __future__ import annotations

import mxnet as mx
import numpy as np

LAYOUT = "NCHW"


def _transform_eval(paths: list[str]) -> np.ndarray:
    from gluoncv.data.transforms.presets.imagenet import transform_eval

    return np.stack([transform_eval(mx.image.imread(path)).asnumpy()[0] for path in paths])


PIPELINES = {"gluoncv": _transform_eval}


def describe() -> str:
    import gluoncv

    return f"gluoncv {gluoncv.__version__} transform_eval (mxnet {mx.__version__})"
