"""An ONNX model fed the cached uint8 images: normalisation inside the graph, as a gather from xfverify's table.

ONNX Runtime on a GPU should be fed the way native torch is: upload the uint8 batch (4x fewer bytes than
float32), normalise on the device. The prefix added here gathers each value from the same (3, 256) float32
table the CPU path uses (``evaluator/normalise.py``), so the model receives the same bytes by construction
(a gather copies table entries; no arithmetic is redone on the device). Two small outputs let the runner prove
what it fed without copying the tensors back: each image's float64 sum and sum of squares.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from xfverify.models.errors import UserError

UINT8_INPUT = "xfverify_images_u8"
FED_SUM, FED_SUM_OF_SQUARES = "xfverify_fed_sum", "xfverify_fed_sum_of_squares"
_PREFIX = "xfverify_feed_"


def uint8_fed_model(model: onnx.ModelProto, lut: np.ndarray, source_channels: tuple[int, int, int],
                    layout: str, hw: tuple[int, int]) -> onnx.ModelProto:
    """A copy of ``model`` whose one input is a uint8 NHWC RGB batch; it also outputs the fed tensor's per-image
    float64 sum and sum of squares. ``lut[c, v]`` is output channel c's value for uint8 value v."""
    if len(model.graph.input) != 1:
        names = ", ".join(i.name for i in model.graph.input)
        raise UserError(f"the ONNX model takes {len(model.graph.input)} inputs ({names}); xfverify feeds "
                        "classifiers with one image input")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        raise UserError(f"the ONNX model uses opset {opset}; feeding uint8 on the device needs opset 13 or newer "
                        "(export again with --opset 13)")
    if lut.shape != (3, 256) or lut.dtype != np.float32:
        raise ValueError(f"expected a (3, 256) float32 table, got {lut.dtype} {lut.shape}")
    fed = model.graph.input[0].name
    wrapped = onnx.ModelProto()
    wrapped.CopyFrom(model)
    graph = wrapped.graph
    del graph.input[:]
    height, width = hw
    graph.input.append(helper.make_tensor_value_info(UINT8_INPUT, TensorProto.UINT8, ["batch", height, width, 3]))

    def name(suffix: str) -> str:
        return _PREFIX + suffix

    constants = {
        name("offsets"): np.asarray([0, 256, 512], dtype=np.int32),
        name("table"): np.ascontiguousarray(lut.reshape(-1)),
        name("image_axes"): np.asarray([1, 2, 3], dtype=np.int64),
    }
    graph.initializer.extend(numpy_helper.from_array(value, key) for key, value in constants.items())
    ordered = UINT8_INPUT
    nodes = []
    if tuple(source_channels) != (0, 1, 2):
        ordered = name("ordered")
        graph.initializer.append(numpy_helper.from_array(np.asarray(source_channels, dtype=np.int64), name("channels")))
        nodes.append(helper.make_node("Gather", [UINT8_INPUT, name("channels")], [ordered], axis=3))
    nhwc = name("nhwc") if layout == "NCHW" else fed
    nodes += [
        helper.make_node("Cast", [ordered], [name("values")], to=TensorProto.INT32),
        helper.make_node("Add", [name("values"), name("offsets")], [name("index")]),
        helper.make_node("Gather", [name("table"), name("index")], [nhwc], axis=0),
    ]
    if layout == "NCHW":
        nodes.append(helper.make_node("Transpose", [nhwc], [fed], perm=[0, 3, 1, 2]))
    nodes += [
        helper.make_node("Cast", [fed], [name("wide")], to=TensorProto.DOUBLE),
        helper.make_node("ReduceSum", [name("wide"), name("image_axes")], [FED_SUM], keepdims=0),
        helper.make_node("Mul", [name("wide"), name("wide")], [name("squares")]),
        helper.make_node("ReduceSum", [name("squares"), name("image_axes")], [FED_SUM_OF_SQUARES], keepdims=0),
    ]
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + body)
    graph.output.extend([helper.make_tensor_value_info(FED_SUM, TensorProto.DOUBLE, ["batch"]),
                         helper.make_tensor_value_info(FED_SUM_OF_SQUARES, TensorProto.DOUBLE, ["batch"])])
    return wrapped
