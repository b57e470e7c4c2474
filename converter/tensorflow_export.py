"""Keras 3 model (TensorFlow back-end) -> ONNX with tf2onnx's from_keras; runs only inside a tensorflow worker."""

from __future__ import annotations

import time
from pathlib import Path

import keras
import tensorflow as tf
import tf2onnx

from xfverify.converter.onnx_file import ExportResult, OutputKind, finish, name_batch_axis, one_line, save
from xfverify.models.errors import UserError

DEFAULT_OPSET = 17
INPUT_NAME = "input"
EXPORTER = "tf2onnx.convert.from_keras"


def exporter_identity() -> tuple[str, str]:
    """The exporter's name and the versions that decide its output (for the report and the export cache)."""
    return EXPORTER, f"tf2onnx {tf2onnx.__version__}, tensorflow {tf.__version__}, keras {keras.__version__}"


def output_kind(model: keras.Model) -> OutputKind:
    """'softmax' when the last layer applies one (Keras applications do unless built with
    ``classifier_activation=None``), else 'logits'."""
    activation = getattr(model.layers[-1], "activation", None)
    return "softmax" if getattr(activation, "__name__", "") == "softmax" else "logits"


def export_keras(model: keras.Model, path: Path, opset: int = DEFAULT_OPSET) -> ExportResult:
    """Export an NHWC float32 classifier with a dynamic batch axis (input ``input``)."""
    path = Path(path)
    started = time.perf_counter()
    signature = (tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name=INPUT_NAME),)
    try:
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset)
    except Exception as exc:  # tf2onnx raises plain ValueError/KeyError/RuntimeError for unsupported ops
        raise UserError(f"{EXPORTER} could not export {model.name} to opset {opset}: "
                        f"{type(exc).__name__}: {one_line(str(exc))}") from None
    name_batch_axis(proto)
    save(proto, path)
    return finish(path, exporter=EXPORTER, exporter_version=exporter_identity()[1], opset=opset, layout="NHWC",
                  output_kind=output_kind(model), started=started)
