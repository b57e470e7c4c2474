"""`xfverify onnx --localize`: a conversion bug planted in each framework's export (a scaled weight initialiser,
swapped Conv padding, a changed BatchNormalization epsilon, a wrong pooling attribute) is named node for node, a
faithful export names no node, and ONNX against ONNX names the node that differs.

The planted files are the exports as the exporters wrote them, one node edited with onnx.helper; the reference
side is the framework's own network (torch hooks, a Keras sub-model, MXNet's get_internals()) run in its worker."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from helpers import VAL_SIZES, needs_mxnet, needs_tensorflow, needs_torch, write_jpeg
from xfverify.evaluator.analysis.localize import localize, worst_rows
from xfverify.evaluator.pipeline.onnx import run_onnx
from xfverify.evaluator.pipeline.options import OnnxOptions
from xfverify.evaluator.process.tasks import CapturedTensor


def onnx_report(**options) -> dict:
    return run_onnx(OnnxOptions(provider="cpu", workers=1, **options)).report.model_dump(mode="json")


def images(root: Path, n: int = 2) -> Path:
    for i in range(n):
        w, h = VAL_SIZES[i % len(VAL_SIZES)]
        write_jpeg(root / f"img_{i:02d}.jpg", seed=200 + i, width=w, height=h)
    return root


# --- the comparison itself, on tensors written here ------------------------------------------------


def _tensor(folder: Path, name: str, order: int, values: np.ndarray, **details) -> CapturedTensor:
    path = folder / f"{name}.npy"
    np.save(path, values.astype(np.float32))
    return CapturedTensor(name=name, file=str(path), shape=list(values.shape[1:]), order=order, **details)


def test_the_first_divergent_node_is_named_with_its_inputs_and_not_the_nodes_after_it(tmp_path):
    rng = np.random.default_rng(0)
    a, b, c = (rng.normal(size=(2, 4, 3, 3)) for _ in range(3))
    native = [_tensor(tmp_path, "conv1", 0, a), _tensor(tmp_path, "bn1", 1, b), _tensor(tmp_path, "relu", 2, c)]
    graph = [_tensor(tmp_path, "t0", 0, a + 1e-9, node="Conv_0", op_type="Conv", inputs=["x"], scopes=["conv1"]),
             _tensor(tmp_path, "t1", 1, b * 1.01, node="BN_1", op_type="BatchNormalization", inputs=["t0"],
                     attributes={"epsilon": "0.1"}, scopes=["bn1"]),
             _tensor(tmp_path, "t2", 2, c * 1.01, node="Relu_2", op_type="Relu", inputs=["t1"], scopes=["relu"])]
    found = localize(graph, native, against="native", reference_name="test", image_ids=["a", "b"],
                     atol_fraction=1e-4, rtol=1e-3)
    assert found.matched_by == "names" and found.n_matched == 3
    assert found.culprit.node == "BN_1" and found.culprit.attributes == {"epsilon": "0.1"}
    assert [(i.tensor, i.divergent) for i in found.culprit.inputs] == [("t0", False)]
    assert [n.node for n in found.culprit.context] == ["Relu_2"] and found.curve[2].divergent
    faithful = localize(graph[:1], native, against="native", reference_name="test", image_ids=["a", "b"],
                        atol_fraction=1e-4, rtol=1e-3)
    assert faithful.culprit is None and "no divergent node" in faithful.verdict


def test_nhwc_layers_match_nchw_nodes_and_unnamed_graphs_match_by_order_and_shape(tmp_path):
    rng = np.random.default_rng(1)
    nhwc = rng.normal(size=(1, 5, 6, 4))
    native = [_tensor(tmp_path, "layer", 0, nhwc), _tensor(tmp_path, "dense", 1, rng.normal(size=(1, 10)))]
    graph = [_tensor(tmp_path, "x1", 0, nhwc.transpose(0, 3, 1, 2).copy(), node="n1", op_type="Conv", inputs=["in"]),
             _tensor(tmp_path, "x2", 1, np.zeros((1, 10)), node="n2", op_type="Gemm", inputs=["x1"])]
    found = localize(graph, native, against="native", reference_name="test", image_ids=["a"], atol_fraction=1e-4,
                     rtol=1e-3)
    assert found.matched_by == "order and shape" and found.n_matched == 2
    assert not found.curve[0].divergent and found.culprit.node == "n2"


def test_the_worst_images_are_the_flipped_then_the_farthest():
    reference = np.array([[0, 1.0], [0, 1.0], [0, 1.0], [0, 1.0]])
    candidate = np.array([[0, 1.0], [0, 1.5], [2.0, 1.0], [0, 1.1]])
    include = np.array([True, True, True, False])
    assert worst_rows(reference, candidate, include, 2) == [1, 2]
    assert worst_rows(None, candidate, include, 2) == [0, 1]


# --- torch: planted bugs in the dynamo exporter's file -------------------------------------------


def _attribute(node, name):
    return next(a for a in node.attribute if a.name == name)


def scale_a_conv_weight(model) -> str:
    from onnx import numpy_helper

    initialisers = {i.name: i for i in model.graph.initializer}
    node = [n for n in model.graph.node if n.op_type == "Conv"][10]
    weight = initialisers[node.input[1]]
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float32(1.5), weight.name))
    return node.name


def swap_a_conv_padding(model) -> str:
    node = [n for n in model.graph.node if n.op_type == "Conv" and list(_attribute(n, "pads").ints) == [1, 1, 1, 1]][3]
    pads = _attribute(node, "pads")
    del pads.ints[:]
    pads.ints.extend([0, 0, 2, 2])  # the same output size, shifted by one pixel
    return node.name


def planted(export: Path, target: Path, plant: Callable) -> tuple[Path, str]:
    import onnx

    model = onnx.load(str(export))
    name = plant(model)
    onnx.save(model, str(target))
    return target, name


def faithful_run(tmp_path_factory, target: str) -> dict:
    """A faithful random-weights run of ``target`` with --localize (its native run and export are reused)."""
    root = tmp_path_factory.mktemp("localize")
    report = onnx_report(target=target, data=str(images(root / "images")), out=str(root / "o"),
                         random_weights=True, limit=2, batch_size=2, localize=True, localize_images=2,
                         cache_dir=str(root / "cache"))
    [export] = (root / "cache" / "onnx").glob("*/model.onnx")
    return {"root": root, "report": report, "export": export}


def assert_no_divergent_node(run: dict) -> dict:
    found = run["report"]["localization"]
    assert found["culprit"] is None and found["verdict"].startswith("no divergent node")
    assert found["matched_by"] == "names" and found["n_matched"] >= 0.9 * found["n_onnx_tensors"]
    return found


def planted_report(run: dict, plant, tmp_path, **options) -> tuple[dict, str]:
    """``run``'s export with ``plant`` applied, run as a user's file against ``run``'s native run: the report and
    the node planted on."""
    path, node = planted(run["export"], tmp_path / "planted.onnx", plant)
    report = onnx_report(target=str(path), preprocess=run["report"]["preprocess"]["name"],
                         against=str(run["root"] / "o" / "native"), out=str(tmp_path / "o"),
                         cache_dir=str(run["root"] / "cache"), localize_images=2, **options)
    return report, node


def assert_named(culprit: dict, node: str, op_type: str, verdict: str) -> None:
    assert culprit["node"] == node and culprit["op_type"] == op_type, verdict
    assert culprit["inputs"] and not any(i["divergent"] for i in culprit["inputs"])


@pytest.fixture(scope="module")
def mobilenet_v2(tmp_path_factory):
    return faithful_run(tmp_path_factory, "torchvision/mobilenet_v2")


@needs_torch
@pytest.mark.torch
def test_a_faithful_torch_export_has_no_divergent_node(mobilenet_v2):
    found = assert_no_divergent_node(mobilenet_v2)
    assert found["cost"]["n_images"] == 2 and found["cost"]["bytes_per_image"] > 0
    out = mobilenet_v2["root"] / "o"
    assert "## Localization" in (out / "report.md").read_text() and "<svg" in (out / "localize.html").read_text()


@needs_torch
@pytest.mark.torch
@pytest.mark.parametrize("plant", [scale_a_conv_weight, swap_a_conv_padding])
def test_a_bug_planted_in_a_torch_export_is_named(plant, mobilenet_v2, tmp_path):
    report, node = planted_report(mobilenet_v2, plant, tmp_path)
    found = report["localization"]  # not asked for: the outputs are outside the tolerance
    assert found is not None and any("run node by node" in note for note in report["notes"])
    culprit = found["culprit"]
    assert_named(culprit, node, "Conv", found["verdict"])
    assert len(culprit["context"]) == 5 and culprit["reference"].startswith("features.")


@needs_torch
@pytest.mark.torch
def test_onnx_against_onnx_names_the_node_that_differs(mobilenet_v2, tmp_path):
    path, node = planted(mobilenet_v2["export"], tmp_path / "planted.onnx", scale_a_conv_weight)
    report = onnx_report(target=str(path), preprocess=mobilenet_v2["report"]["preprocess"]["name"],
                         data=str(mobilenet_v2["root"] / "images"), out=str(tmp_path / "o"),
                         cache_dir=str(mobilenet_v2["root"] / "cache"), localize_against=str(mobilenet_v2["export"]),
                         localize_images=1)
    found = report["localization"]
    assert found["against"] == "onnx" and found["matched_by"] == "names"
    assert found["culprit"]["node"] == node and found["culprit"]["reference"] == found["culprit"]["tensor"]


# --- Keras: a planted bug in tf2onnx's file (NHWC layers against the graph's NCHW tensors) --------------


def transpose_a_square_pointwise_weight(model) -> str:
    """A 1x1 Conv with as many outputs as inputs, its weight's two channel axes swapped (the same shape)."""
    from onnx import numpy_helper

    initialisers = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        weight = initialisers.get(node.input[1]) if node.op_type == "Conv" else None
        if weight is not None and list(weight.dims[2:]) == [1, 1] and weight.dims[0] == weight.dims[1]:
            swapped = np.ascontiguousarray(numpy_helper.to_array(weight).transpose(1, 0, 2, 3))
            weight.CopyFrom(numpy_helper.from_array(swapped, weight.name))
            return node.name
    raise AssertionError("no square 1x1 Conv in the export")


@pytest.fixture(scope="module")
def keras_mobilenet(tmp_path_factory):
    return faithful_run(tmp_path_factory, "keras/MobileNet")


@needs_tensorflow
@pytest.mark.tensorflow
def test_a_faithful_keras_export_has_no_divergent_node(keras_mobilenet):
    assert_no_divergent_node(keras_mobilenet)


@needs_tensorflow
@pytest.mark.tensorflow
@pytest.mark.parametrize("plant", [transpose_a_square_pointwise_weight, scale_a_conv_weight])
def test_a_bug_planted_in_a_keras_export_is_named(plant, keras_mobilenet, tmp_path):
    report, node = planted_report(keras_mobilenet, plant, tmp_path, localize=True)
    assert_named(report["localization"]["culprit"], node, "Conv", report["localization"]["verdict"])


# --- MXNet: planted bugs in mxnet.onnx.export_model's file (nodes named after MXNet's symbols) ------------


def change_a_batchnorm_epsilon(model) -> str:
    node = [n for n in model.graph.node if n.op_type == "BatchNormalization"][5]
    _attribute(node, "epsilon").f = 0.1
    return node.name or node.output[0]


def swap_a_named_conv_padding(model) -> str:
    node = [n for n in model.graph.node if n.op_type == "Conv" and list(_attribute(n, "pads").ints) == [1, 1, 1, 1]][3]
    pads = _attribute(node, "pads")
    del pads.ints[:]
    pads.ints.extend([0, 0, 2, 2])
    return node.name or node.output[0]


@pytest.fixture(scope="module")
def gluon_mobilenet(tmp_path_factory):
    return faithful_run(tmp_path_factory, "gluoncv/mobilenet1.0")


@needs_mxnet
@pytest.mark.mxnet
def test_a_faithful_mxnet_export_has_no_divergent_node(gluon_mobilenet):
    assert_no_divergent_node(gluon_mobilenet)


@needs_mxnet
@pytest.mark.mxnet
@pytest.mark.parametrize("plant, op_type", [(change_a_batchnorm_epsilon, "BatchNormalization"),
                                            (swap_a_named_conv_padding, "Conv")])
def test_a_bug_planted_in_an_mxnet_export_is_named(plant, op_type, gluon_mobilenet, tmp_path):
    report, node = planted_report(gluon_mobilenet, plant, tmp_path, localize=True)
    culprit = report["localization"]["culprit"]
    assert_named(culprit, node, op_type, report["localization"]["verdict"])
    if op_type == "BatchNormalization":
        assert float(culprit["attributes"]["epsilon"]) == pytest.approx(0.1)


def test_the_writer_puts_each_images_row_in_its_tensors_file_and_numbers_a_second_call(tmp_path):
    from xfverify.evaluator.backends.intermediates import TensorWriter

    data = np.random.default_rng(0).normal(size=(3, 4, 5, 6)).astype(np.float32)
    writer = TensorWriter(tmp_path, 3)
    for image in range(3):
        record = writer.recorder(image)
        record("conv", data[image : image + 1])
        record("conv", 2 * data[image : image + 1])  # the same module called again
        record("shape", np.array([1, 2, 3]))  # no batch axis: kept whole
    tensors = writer.close()
    assert [t.name for t in tensors] == ["conv", "conv#1", "shape"] and tensors[0].shape == [4, 5, 6]
    assert np.array_equal(np.load(tensors[0].file), data) and np.array_equal(np.load(tensors[1].file), 2 * data)
    assert writer.bytes_per_image == 2 * data[0].nbytes + 3 * 8
    with pytest.raises(RuntimeError, match="another shape"):
        writer.recorder(1)("conv", data[:1, :2])


def change_the_maxpool_padding(model) -> str:
    node = next(n for n in model.graph.node if n.op_type == "MaxPool")
    pads = _attribute(node, "pads")
    del pads.ints[:]
    pads.ints.extend([0, 0, 2, 2])
    return node.name


@needs_torch
@pytest.mark.torch
@pytest.mark.slow
def test_a_reused_module_is_matched_call_by_call_and_a_pool_attribute_is_named(tmp_path):
    """ResNet-50's blocks call one ReLU module three times (the third on the residual sum): each call is matched to
    its own node, so the faithful export has no divergent node; a MaxPool's changed padding is named."""
    report = onnx_report(target="torchvision/resnet50", data=str(images(tmp_path / "images")), out=str(tmp_path / "o"),
                         random_weights=True, limit=2, batch_size=2, localize=True, localize_images=1,
                         cache_dir=str(tmp_path / "cache"))
    found = report["localization"]
    assert found["culprit"] is None and found["n_matched"] >= found["n_onnx_tensors"] - 2, found["verdict"]
    references = {row["reference"] for row in found["curve"]}
    assert {"layer1.0.relu", "layer1.0.relu#1", "layer1.0.relu#2"} <= references
    [export] = (tmp_path / "cache" / "onnx").glob("*/model.onnx")
    path, node = planted(export, tmp_path / "planted.onnx", change_the_maxpool_padding)
    report = onnx_report(target=str(path), preprocess=report["preprocess"]["name"], out=str(tmp_path / "p"),
                         against=str(tmp_path / "o" / "native"), cache_dir=str(tmp_path / "cache"), localize_images=1)
    culprit = report["localization"]["culprit"]
    assert culprit["node"] == node and culprit["op_type"] == "MaxPool" and culprit["reference"] == "maxpool"


@needs_torch
@pytest.mark.torch
def test_no_localize_leaves_it_out_and_removes_an_earlier_page(mobilenet_v2, tmp_path):
    from xfverify.models.errors import UserError

    out = mobilenet_v2["root"] / "o"
    assert (out / "localize.html").is_file()
    report = onnx_report(target="torchvision/mobilenet_v2", out=str(out), random_weights=True, limit=2, batch_size=2,
                         data=str(mobilenet_v2["root"] / "images"), cache_dir=str(mobilenet_v2["root"] / "cache"),
                         localize=False)
    assert "localization" not in report and not (out / "localize.html").exists()
    assert "localization" not in (out / "report.md").read_text().lower()
    with pytest.raises(UserError, match="--no-localize and --localize-against exclude each other"):
        onnx_report(target="torchvision/mobilenet_v2", localize=False, localize_against=str(mobilenet_v2["export"]),
                    out=str(tmp_path / "x"))


def test_a_failed_localization_keeps_the_finished_onnx_run_and_says_so(tmp_path):
    from test_onnx import users_onnx_file
    from xfverify.models.errors import UserError

    path = users_onnx_file(tmp_path / "means.onnx")
    with pytest.raises(UserError, match=r"--localize compares .* \(--against RUN_DIR\) .* \(--localize-against"):
        onnx_report(target=str(path), preprocess="torchvision-256", localize=True, out=str(tmp_path / "refused"),
                    data=str(images(tmp_path / "images")))
    assert not (tmp_path / "refused").exists()  # refused before any work
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07\x12\x04test" + bytes(range(40)))
    with pytest.raises(UserError, match="broken.onnx: not a readable ONNX model .* without localization, is in"):
        onnx_report(target=str(path), preprocess="torchvision-256", localize_against=str(broken),
                    out=str(tmp_path / "o"), data=str(tmp_path / "images"))
    report = (tmp_path / "o" / "report.json").read_text()
    assert "localizing the first divergent node failed" in report and '"localization"' not in report


def test_a_fused_node_is_compared_with_the_layer_it_ends_in_and_torchscript_scopes_are_module_paths(tmp_path):
    from onnx import helper

    from xfverify.converter.onnx_file import node_details

    node = helper.make_node("Conv", ["x", "w"], ["y"], name="/features/features.1/conv/conv.0/conv.0.0/Conv")
    assert node_details(node, {"w"})["scopes"] == ["features", "features.1", "features.1.conv", "features.1.conv.0",
                                                   "features.1.conv.0.0"]
    rng = np.random.default_rng(2)
    conv, bn = rng.normal(size=(1, 4, 3, 3)), rng.normal(size=(1, 4, 3, 3))
    native = [_tensor(tmp_path, "conv", 0, conv), _tensor(tmp_path, "bn", 1, bn)]
    graph = [_tensor(tmp_path, "y", 0, bn, node="Conv_0", op_type="Conv", inputs=["x"], scopes=["conv"])]
    found = localize(graph, native, against="native", reference_name="test", image_ids=["a"], atol_fraction=1e-4,
                     rtol=1e-3)
    assert found.culprit is None and found.curve[0].reference == "bn"  # BatchNorm folded into the Conv
