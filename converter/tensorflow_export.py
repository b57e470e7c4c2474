"""Keras 3 model (TensorFlow back-end) -> ONNX with tf2onnx's from_keras; runs only inside a tensorflow worker."""

from __future__ import annotations

import gc
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
import tf2onnx
import tf2onnx.optimizer

from xfverify.converter.onnx_file import ExportResult, OutputKind, finish, name_batch_axis, one_line, save
from xfverify.models.errors import UserError

DEFAULT_OPSET = 17
INPUT_NAME = "input"
EXPORTER = "tf2onnx.convert.from_keras"
# Above this much weight, the garbage tf2onnx's optimizers leave is collected between them (see _collecting).
COLLECT_ABOVE_BYTES = 256 * 2**20


def exporter_identity() -> tuple[str, str]:
    """The exporter's name and the versions that decide its output (for the report and the export cache)."""
    return EXPORTER, f"tf2onnx {tf2onnx.__version__}, tensorflow {tf.__version__}, keras {keras.__version__}"


def output_kind(model: keras.Model) -> OutputKind:
    """'softmax' when the last layer applies one (Keras applications do unless built with
    ``classifier_activation=None``), else 'logits'."""
    activation = getattr(model.layers[-1], "activation", None)
    return "softmax" if getattr(activation, "__name__", "") == "softmax" else "logits"


def _erfc(ctx, node, name, args) -> None:
    """tf2onnx translates no Erfc (Keras 3's exact GELU is x/2 * erfc(-x/sqrt 2)): 1 - Erf(x)."""
    numpy_type = tf2onnx.utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    erf = ctx.make_node("Erf", [node.input[0]], op_name_scope=name)
    one = ctx.make_const(tf2onnx.utils.make_name(f"{name}_one"), np.array(1, dtype=numpy_type))
    node.type = "Sub"
    ctx.replace_inputs(node, [one.output[0], erf.output[0]])


def _one_channel_per_group(layer) -> bool:
    return (type(layer) is keras.layers.Conv2D and layer.groups > 1 and layer.groups == layer.filters
            and layer.kernel.shape[2] == 1)


def _grouped_as_depthwise(model: keras.Model) -> tuple[keras.Model, tuple[str, ...]]:
    """Keras 3 runs a grouped Conv2D through an XLA-compiled function, which tf2onnx leaves as a
    StatefulPartitionedCall no runtime has; one with one input channel per group is a depthwise convolution, the
    same kernel laid out (h, w, channels, 1). The model with those layers so replaced (the others shared), and a
    note; ``model`` itself when it has none."""
    grouped = {layer.name: layer for layer in model.layers if _one_channel_per_group(layer)}
    if not grouped or not hasattr(model, "_nodes_by_depth"):  # a subclassed model cannot be cloned: left as it is
        return model, ()

    def clone(layer):
        if layer.name not in grouped:
            return layer
        return keras.layers.DepthwiseConv2D(
            kernel_size=layer.kernel_size, strides=layer.strides, padding=layer.padding,
            data_format=layer.data_format, dilation_rate=layer.dilation_rate, depth_multiplier=1,
            activation=layer.activation, use_bias=layer.use_bias, name=layer.name, dtype=layer.dtype_policy)

    rewritten = keras.models.clone_model(model, clone_function=clone)
    for name, layer in grouped.items():
        kernel, *bias = layer.get_weights()
        rewritten.get_layer(name).set_weights([kernel.transpose(0, 1, 3, 2), *bias])
    return rewritten, (f"{len(grouped)} grouped convolutions (one channel per group) exported as the depthwise "
                       "convolutions they are: tf2onnx cannot translate the XLA-compiled function Keras 3 runs a "
                       "grouped convolution in",)


def _collecting(optimizers: dict) -> dict:
    """tf2onnx's optimizers, in its order, each started after a garbage collection. tf2onnx deep-copies the whole
    graph, weights included, before each optimizer; the copies it drops sit in reference cycles until Python's
    collector runs, and that counts objects, not bytes: Keras VGG16's export passed 24 GiB without, peaked at 11
    GiB with. The exported file is the same; a collection costs ~0.2 s, so small models skip it."""
    def collected_first(factory):
        def start():
            gc.collect()
            return factory()
        return start
    return {name: collected_first(factory) for name, factory in optimizers.items()}


def export_keras(model: keras.Model, path: Path, opset: int = DEFAULT_OPSET) -> ExportResult:
    """Export an NHWC float32 classifier with a dynamic batch axis (input ``input``)."""
    path = Path(path)
    started = time.perf_counter()
    signature = (tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name=INPUT_NAME),)
    kind = output_kind(model)
    model, notes = _grouped_as_depthwise(model)
    optimizers = None  # tf2onnx's own
    if model.count_params() * 4 > COLLECT_ABOVE_BYTES:
        optimizers = _collecting(tf2onnx.optimizer._get_optimizers())
    try:
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset,
                                              custom_op_handlers={"Erfc": (_erfc, [])}, optimizers=optimizers)
    except Exception as exc:  # tf2onnx raises plain ValueError/KeyError/RuntimeError for unsupported ops
        raise UserError(f"{EXPORTER} could not export {model.name} to opset {opset}: "
                        f"{type(exc).__name__}: {one_line(str(exc))}") from None
    name_batch_axis(proto)
    save(proto, path)
    return finish(path, exporter=EXPORTER, exporter_version=exporter_identity()[1], opset=opset, layout="NHWC",
                  output_kind=kind, started=started, notes=notes)
