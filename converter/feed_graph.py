"""An ONNX model fed the cached uint8 images: normalisation inside the graph, as a gather from xfverify's table.

ONNX Runtime on a GPU should be fed the way native torch is: upload the uint8 batch (4x fewer bytes than
float32), normalise on the device. The prefix added here gathers each value from the same (3, 256) float32
table the CPU path uses (``evaluator/data/normalise.py``), so the model receives the same bytes by construction
(a gather copies table entries; no arithmetic is redone on the device). A second, small output lets the runner
prove what it fed without copying the tensors back: per image, the two exact integer checksums the tensor cache
stores (``evaluator/cache/digests.py``: the sum of the fed values' float32 bit patterns, and its position-weighted
sum), computed from the table's int32 view gathered with the very indices the model's input was gathered with.
They prove the indices (the uploaded image, channel order, layout); the values are the table's by construction.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from xfverify.models.errors import UserError

UINT8_INPUT = "xfverify_images_u8"
FED_CHECKS = "xfverify_fed_checksums"
_PREFIX = "xfverify_feed_"
_LOW_BASE = 2**16


def uint8_fed_model(model: onnx.ModelProto, lut: np.ndarray, source_channels: tuple[int, int, int],
                    layout: str, hw: tuple[int, int], checksum_weights: np.ndarray) -> onnx.ModelProto:
    """A copy of ``model`` whose one input is a uint8 NHWC RGB batch; it also outputs (batch, 2) int64 checksums
    of each image's fed tensor. ``lut[c, v]`` is output channel c's value for uint8 value v; ``checksum_weights``
    the int64 weight of each position of an image's flattened tensor (in ``layout``)."""
    if len(model.graph.input) != 1:
        names = ", ".join(i.name for i in model.graph.input)
        raise UserError(f"the ONNX model takes {len(model.graph.input)} inputs ({names}); xfverify feeds "
                        "classifiers with one image input")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        raise UserError(f"the ONNX model uses opset {opset}; feeding uint8 on the device needs opset 13 or newer "
                        "(export it again at opset 13 or newer; xfverify's own export: --opset 13)")
    if lut.shape != (3, 256) or lut.dtype != np.float32:
        raise ValueError(f"expected a (3, 256) float32 table, got {lut.dtype} {lut.shape}")
    height, width = hw
    image_shape = (3, height, width) if layout == "NCHW" else (height, width, 3)
    if checksum_weights.shape != (3 * height * width,) or checksum_weights.dtype != np.int64:
        raise ValueError(f"expected {3 * height * width} int64 checksum weights, got {checksum_weights.dtype} "
                         f"{checksum_weights.shape}")
    fed = model.graph.input[0].name
    wrapped = onnx.ModelProto()
    wrapped.CopyFrom(model)
    graph = wrapped.graph
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(UINT8_INPUT, TensorProto.UINT8, ["batch", height, width, 3]))

    def name(suffix: str) -> str:
        return _PREFIX + suffix

    constants = {
        name("offsets"): np.asarray([0, 256, 512], dtype=np.int32),
        name("table"): np.ascontiguousarray(lut.reshape(-1)),
        name("table_bits"): np.ascontiguousarray(lut.reshape(-1)).view(np.int32),
        name("weights"): np.ascontiguousarray(checksum_weights.reshape(image_shape)),
        name("image_axes"): np.asarray([1, 2, 3], dtype=np.int64),
        name("last_axis"): np.asarray([1], dtype=np.int64),
        name("low_base"): np.asarray(_LOW_BASE, dtype=np.int64),
    }
    graph.initializer.extend(numpy_helper.from_array(value, key) for key, value in constants.items())
    ordered = UINT8_INPUT
    nodes: list[onnx.NodeProto] = []
    if tuple(source_channels) != (0, 1, 2):
        ordered = name("ordered")
        graph.initializer.append(numpy_helper.from_array(np.asarray(source_channels, dtype=np.int64), name("channels")))
        nodes.append(helper.make_node("Gather", [UINT8_INPUT, name("channels")], [ordered], axis=3))
    nodes += [
        helper.make_node("Cast", [ordered], [name("values")], to=TensorProto.INT32),
        helper.make_node("Add", [name("values"), name("offsets")], [name("index")]),
        helper.make_node("Gather", [name("table"), name("index")], [name("nhwc") if layout == "NCHW" else fed], axis=0),
        helper.make_node("Gather", [name("table_bits"), name("index")], [name("bits_nhwc")], axis=0),
    ]
    bits = name("bits_nhwc")
    if layout == "NCHW":
        bits = name("bits")
        nodes += [helper.make_node("Transpose", [name("nhwc")], [fed], perm=[0, 3, 1, 2]),
                  helper.make_node("Transpose", [name("bits_nhwc")], [bits], perm=[0, 3, 1, 2])]
    nodes += [
        helper.make_node("Cast", [bits], [name("wide")], to=TensorProto.INT64),
        # ONNX Runtime's int64 ReduceSum is exact only below 2**53, which a weighted sum can pass: each bit pattern
        # is split into its low 16 bits and the rest, whose (weighted) sums over MAX_VALUES values stay below
        # 2**49, and the halves' sums are joined exactly.
        helper.make_node("Mod", [name("wide"), name("low_base")], [name("low")], fmod=0),
        helper.make_node("Sub", [name("wide"), name("low")], [name("high_scaled")]),
        helper.make_node("Div", [name("high_scaled"), name("low_base")], [name("high")]),
        *_exact_sum(name("low"), name("high"), name("sum")),
        helper.make_node("Mul", [name("low"), name("weights")], [name("weighted_low")]),
        helper.make_node("Mul", [name("high"), name("weights")], [name("weighted_high")]),
        *_exact_sum(name("weighted_low"), name("weighted_high"), name("weighted_sum")),
        helper.make_node("Unsqueeze", [name("sum"), name("last_axis")], [name("sum_column")]),
        helper.make_node("Unsqueeze", [name("weighted_sum"), name("last_axis")], [name("weighted_column")]),
        helper.make_node("Concat", [name("sum_column"), name("weighted_column")], [FED_CHECKS], axis=1),
    ]
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + body)
    graph.output.append(helper.make_tensor_value_info(FED_CHECKS, TensorProto.INT64, ["batch", 2]))
    return wrapped


def _exact_sum(low: str, high: str, out: str) -> list[onnx.NodeProto]:
    """``out`` = per image, sum(high) * 2**16 + sum(low): two sums that stay exact, joined in int64."""
    axes, base = _PREFIX + "image_axes", _PREFIX + "low_base"
    return [
        helper.make_node("ReduceSum", [low, axes], [f"{out}_low"], keepdims=0),
        helper.make_node("ReduceSum", [high, axes], [f"{out}_high"], keepdims=0),
        helper.make_node("Mul", [f"{out}_high", base], [f"{out}_high_part"]),
        helper.make_node("Add", [f"{out}_high_part", f"{out}_low"], [out]),
    ]
