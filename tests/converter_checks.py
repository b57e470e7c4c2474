"""Exports random-weight models of one framework with xfverify.converter, runs each natively and under
ONNX Runtime (CPU) on the same seeded float32 batch, and writes what it found as JSON.

Run in its own process by tests/test_converter.py (the test process never imports a framework).
Usage: python converter_checks.py torch|tensorflow|mxnet OUTDIR; prints the JSON as its last line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from unittest import mock

import numpy as np

SEED = 0
BATCH = 3  # not the batch of 2 torch exports with, so the batch axis is shown to be dynamic


def seeded_batch(layout: str) -> np.ndarray:
    shape = (BATCH, 3, 224, 224) if layout == "NCHW" else (BATCH, 224, 224, 3)
    return np.random.default_rng(SEED).standard_normal(shape).astype(np.float32)


def agreement(native: np.ndarray, exported: np.ndarray) -> dict:
    """Differences scaled by the largest |native output| (random networks give near-ties and tiny
    values, so per-element relative error means nothing), and top-1 agreement where the margin is clear."""
    scale = float(np.abs(native).max())
    ranked = np.sort(native, axis=1)
    clear = (ranked[:, -1] - ranked[:, -2]) > 1e-3 * scale
    same_top1 = native.argmax(axis=1) == exported.argmax(axis=1)
    return {
        "shape": list(exported.shape),
        "max_abs_native": scale,
        "max_abs_diff": float(np.abs(native - exported).max()),
        "max_abs_diff_over_max_abs": float(np.abs(native - exported).max() / scale) if scale else None,
        "clear_rows": int(clear.sum()),
        "top1_equal_where_clear": bool(same_top1[clear].all()),
    }


def onnx_runtime(path: Path, batch: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def record(label: str, result, native_fn) -> dict:
    import onnx

    model = onnx.load(str(result.path), load_external_data=False)
    batch = seeded_batch(result.description.layout)
    return {
        "label": label,
        "result": json.loads(result.model_dump_json()),
        "initialisers_in_inputs": len({t.name for t in model.graph.initializer} & {v.name for v in model.graph.input}),
        "files_beside": sorted(p.name for p in result.path.parent.iterdir() if p.name.startswith(result.path.name)),
        "op_types": sorted({node.op_type for node in model.graph.node}),
        "agreement": agreement(native_fn(batch), onnx_runtime(result.path, batch)),
    }


def user_error(call) -> str | None:
    from xfverify.models.errors import UserError

    try:
        call()
    except UserError as exc:
        return str(exc)
    return None


def torch_checks(out: Path) -> dict:
    import torch
    import torchvision.models as tvm

    from xfverify.converter.torch_export import export_torch

    torch.manual_seed(SEED)
    model = tvm.get_model("resnet18", weights=None).eval()

    def native(batch):
        with torch.no_grad():
            return model(torch.from_numpy(batch)).numpy()

    class Unexportable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            return torch.linalg.eig(x[:, 0, :4, :4])[0].real * self.scale

    (out / "dynamo").mkdir()
    (out / "torchscript").mkdir()
    return {
        "exports": [
            record("resnet18 dynamo", export_torch(model, out / "dynamo" / "m.onnx"), native),
            record("resnet18 torchscript", export_torch(model, out / "torchscript" / "m.onnx", 17), native),
        ],
        "errors": {
            "unsupported operator": user_error(lambda: export_torch(Unexportable(), out / "bad.onnx", input_shape=(3, 8, 8))),
            "dynamo below its opset": user_error(lambda: export_torch(model, out / "old.onnx", 17, exporter="dynamo")),
        },
    }


def same_graph_but_names(first: Path, second: Path) -> bool:
    """The same nodes in the same order (type, attributes) and the same weights; names may differ (tf2onnx numbers
    the names it makes per process)."""
    import onnx
    from onnx import numpy_helper

    def content(path: Path) -> tuple:
        graph = onnx.load(path).graph
        nodes = [(node.op_type, [attribute.SerializeToString() for attribute in node.attribute])
                 for node in graph.node]
        return nodes, sorted(numpy_helper.to_array(tensor).tobytes() for tensor in graph.initializer)

    return content(first) == content(second)


def tensorflow_checks(out: Path) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from xfverify.converter import tensorflow_export
    from xfverify.converter.tensorflow_export import export_keras

    exports = []
    for activation in ("softmax", None):
        keras.utils.set_random_seed(SEED)
        model = keras.applications.MobileNet(weights=None, classifier_activation=activation)
        result = export_keras(model, out / f"mobilenet_{activation or 'logits'}.onnx")
        exports.append(record(f"MobileNet {activation or 'logits'}", result,
                              lambda batch, model=model: model(batch, training=False).numpy()))
    # ConvNeXt's block: a 7 x 7 convolution with one channel per group, then the exact GELU
    keras.utils.set_random_seed(SEED)
    image = keras.Input((224, 224, 3))
    x = keras.layers.Conv2D(16, 4, strides=4)(image)
    x = keras.layers.Conv2D(16, 7, padding="same", groups=16, name="grouped")(x)
    x = keras.layers.Activation(lambda t: keras.activations.gelu(t, approximate=False))(x)
    model = keras.Model(image, keras.layers.Dense(1000)(keras.layers.GlobalAveragePooling2D()(x)))
    grouped = record("grouped convolution and exact GELU", export_keras(model, out / "grouped.onnx"),
                     lambda batch: model(batch, training=False).numpy())
    # the threshold at 0: this small model exported as a large one is, garbage collected before each optimizer
    collections = []
    with mock.patch.object(tensorflow_export, "COLLECT_ABOVE_BYTES", 0), \
            mock.patch.object(tensorflow_export.gc, "collect", side_effect=lambda: collections.append(1)):
        export_keras(model, out / "collected.onnx")
    collected = {"collections": len(collections),
                 "same_graph": same_graph_but_names(out / "collected.onnx", out / "grouped.onnx")}
    return {"exports": exports, "grouped": grouped, "collected": collected, "errors": {}}


def mxnet_checks(out: Path) -> dict:
    from xfverify.converter import mxnet_export

    import mxnet as mx
    import onnx

    sys.modules["torch"] = None  # GluonCV refuses to import beside torch >= 2
    import gluoncv

    del sys.modules["torch"]
    mx.random.seed(SEED)
    np.random.seed(SEED)
    net = gluoncv.model_zoo.get_model("mobilenet1.0", pretrained=False)
    net.initialize(mx.init.Xavier(magnitude=2.0))
    result = mxnet_export.export_gluon(net, out / "mobilenet1.0.onnx")
    exported = record("mobilenet1.0", result, lambda batch: net(mx.nd.array(batch)).asnumpy())
    exported["onnx_mapping_left_behind"] = hasattr(onnx, "mapping") or "onnx.mapping" in sys.modules
    exported["ir_version"] = onnx.load(str(result.path)).ir_version
    return {
        "exports": [exported],
        "errors": {"opset 14": user_error(lambda: mxnet_export.export_gluon(net, out / "o14.onnx", 14))},
    }


def main() -> None:
    framework, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    checks = {"torch": torch_checks, "tensorflow": tensorflow_checks, "mxnet": mxnet_checks}[framework]
    found = checks(out)
    (out / "results.json").write_text(json.dumps(found, indent=2))
    print(json.dumps(found))


if __name__ == "__main__":
    main()
