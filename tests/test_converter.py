"""xfverify.converter: each framework's export agrees with ONNX Runtime and is described right (run in
the framework's own process by converter_checks.py); bad files are one-line user errors; the export cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import needs_mxnet, needs_tensorflow, needs_torch
from xfverify.converter import cache
from xfverify.converter.onnx_file import ExportResult, check, describe, finish
from xfverify.models.errors import UserError

SCALED_TOLERANCE = 1e-4  # max |native - onnx| / max |native|


def run_checks(framework: str, out: Path) -> dict:
    script = Path(__file__).with_name("converter_checks.py")
    done = subprocess.run([sys.executable, str(script), framework, str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def torch_found(tmp_path_factory):
    return run_checks("torch", tmp_path_factory.mktemp("torch"))


@pytest.fixture(scope="module")
def keras_found(tmp_path_factory):
    return run_checks("tensorflow", tmp_path_factory.mktemp("tensorflow"))


@pytest.fixture(scope="module")
def mxnet_found(tmp_path_factory):
    return run_checks("mxnet", tmp_path_factory.mktemp("mxnet"))


def assert_agrees(export: dict) -> None:
    agreement = export["agreement"]
    assert agreement["shape"] == [3, 1000], export["label"]
    assert agreement["max_abs_diff_over_max_abs"] < SCALED_TOLERANCE, export["label"]
    assert agreement["top1_equal_where_clear"], export["label"]


def assert_classifier_io(description: dict, input_name: str, layout: str) -> None:
    channels_last = layout == "NHWC"
    assert description["layout"] == layout
    [tensor] = description["inputs"]
    assert tensor == {"name": input_name, "element_type": "float32",
                      "shape": ["batch", 224, 224, 3] if channels_last else ["batch", 3, 224, 224]}
    [output] = description["outputs"]
    assert output["shape"] == ["batch", 1000] and output["element_type"] == "float32"
    assert len(description["sha256"]) == 64 and description["total_size_bytes"] > 1_000_000


# --- one framework each, in its own process ------------------------------------------------


@needs_torch
@pytest.mark.torch
def test_torch_exports_agree_with_onnx_runtime_and_are_described(torch_found):
    dynamo, torchscript = torch_found["exports"]
    for export in (dynamo, torchscript):
        assert_agrees(export)
        assert_classifier_io(export["result"]["description"], "input", "NCHW")
        assert export["result"]["output_kind"] == "logits"
    assert dynamo["result"]["exporter"] == "torch.onnx.export (dynamo=True)"
    assert dynamo["result"]["description"]["opsets"][""] == dynamo["result"]["opset"] == 18
    assert torchscript["result"]["exporter"] == "torch.onnx.export (dynamo=False)"
    assert torchscript["result"]["description"]["opsets"][""] == 17
    assert "onnxscript" in dynamo["result"]["exporter_version"]


@needs_torch
@pytest.mark.torch
def test_torch_external_data_is_kept_and_hashed(torch_found):
    dynamo = torch_found["exports"][0]
    description = dynamo["result"]["description"]
    assert dynamo["files_beside"] == ["m.onnx", "m.onnx.data"]
    [data] = description["external_data"]
    assert data["name"] == "m.onnx.data" and data["size_bytes"] > 10_000_000 and len(data["sha256"]) == 64
    assert description["total_size_bytes"] == description["size_bytes"] + data["size_bytes"]


@needs_torch
@pytest.mark.torch
def test_a_failed_torch_export_names_the_step_and_operator(torch_found):
    unsupported = torch_found["errors"]["unsupported operator"]
    assert "\n" not in unsupported
    assert "translating the captured graph to ONNX" in unsupported and "aten.linalg_eig" in unsupported
    assert unsupported.endswith("--opset 17 exports with torch's TorchScript exporter instead")
    assert "opset 18 or later, not 17" in torch_found["errors"]["dynamo below its opset"]


@needs_tensorflow
@pytest.mark.tensorflow
def test_keras_exports_agree_and_record_softmax_or_logits(keras_found):
    softmax, logits = keras_found["exports"]
    for export in (softmax, logits):
        assert_agrees(export)
        assert_classifier_io(export["result"]["description"], "input", "NHWC")
        assert export["result"]["exporter"] == "tf2onnx.convert.from_keras"
        assert export["result"]["description"]["opsets"][""] == 17
    assert softmax["result"]["output_kind"] == "softmax"
    assert logits["result"]["output_kind"] == "logits"


@needs_tensorflow
@pytest.mark.tensorflow
def test_a_keras_grouped_convolution_and_exact_gelu_export_as_a_depthwise_convolution_and_erf(keras_found):
    """Before: tf2onnx left the XLA-compiled function Keras 3 runs a grouped convolution in as a
    StatefulPartitionedCall, and had no Erfc (the exact GELU): every Keras ConvNeXt failed onnx's checker."""
    export = keras_found["grouped"]
    assert_agrees(export)
    assert "Erf" in export["op_types"] and not {"StatefulPartitionedCall", "Erfc"} & set(export["op_types"])
    assert export["result"]["notes"][0].startswith("1 grouped convolutions (one channel per group) exported as")


@needs_tensorflow
@pytest.mark.tensorflow
def test_a_large_keras_model_collects_garbage_between_tf2onnx_optimizers_and_exports_the_same_graph(keras_found):
    """Before: the graph copies tf2onnx drops before each optimizer waited for Python's collector, and Keras VGG16's
    export was killed at 24 GiB (11 GiB with a collection per optimizer)."""
    collected = keras_found["collected"]
    assert collected["collections"] >= 12  # one per optimizer of tf2onnx 1.17, per pass over them
    assert collected["same_graph"]


@needs_mxnet
@pytest.mark.mxnet
def test_mxnet_export_says_opset_13_and_lists_no_parameters_as_inputs(mxnet_found):
    [export] = mxnet_found["exports"]
    assert_agrees(export)
    description = export["result"]["description"]
    assert_classifier_io(description, "data", "NCHW")
    assert description["opsets"] == {"": 13} and export["result"]["opset"] == 13
    assert export["initialisers_in_inputs"] == 0
    assert export["ir_version"] == 7  # ONNX Runtime refuses the newest IR onnx would stamp
    assert not export["onnx_mapping_left_behind"]
    assert "opsets 12-13 only, not 14" in mxnet_found["errors"]["opset 14"]


# --- files that are not (good) ONNX ----------------------------------------------------------


def tiny_model(external_data: bool, path: Path) -> Path:
    """input (batch, 3, 4, 4) + a bias initialiser -> Relu; with its initialiser in a .data file if asked."""
    bias = numpy_helper.from_array(np.arange(48, dtype=np.float32).reshape(3, 4, 4), "bias")
    graph = helper.make_graph(
        [helper.make_node("Add", ["input", "bias"], ["sum"], name="add"), helper.make_node("Relu", ["sum"], ["out"], name="relu")],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3, 4, 4])], [bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="test")
    model.ir_version = 7
    onnx.save_model(model, str(path), save_as_external_data=external_data, location=f"{path.name}.data", size_threshold=0)
    return path


def one_line_user_error(call, path: Path) -> str:
    with pytest.raises(UserError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    return message


def test_truncated_text_and_empty_files_are_one_line_user_errors(tmp_path):
    good = tiny_model(False, tmp_path / "good.onnx")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "text.onnx"
    text.write_text("this is not an ONNX model\n")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    for bad in (truncated, text, empty):
        assert "not " in one_line_user_error(lambda: check(bad), bad)
        one_line_user_error(lambda: describe(bad, "x", "1", "NCHW"), bad)
    one_line_user_error(lambda: check(tmp_path / "absent.onnx"), tmp_path / "absent.onnx")


def test_a_failed_check_names_the_node_and_operator(tmp_path):
    graph = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["out"], name="stem_conv", kernel_shape=[3, 3, 3])],
                              "broken", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8]),
                                         helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 3, 3])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4, 6, 6])])
    path = tmp_path / "broken.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    message = one_line_user_error(lambda: check(path), path)
    assert "node stem_conv (operator Conv)" in message and "kernel_shape" in message


def test_external_data_is_described_and_a_missing_data_file_is_named(tmp_path):
    path = tiny_model(True, tmp_path / "tiny.onnx")
    check(path)
    description = describe(path, "hand-made", "1", "NCHW")
    [data] = description.external_data
    assert data.name == "tiny.onnx.data" and data.size_bytes == 48 * 4
    assert description.total_size_bytes == description.size_bytes + 48 * 4
    assert description.opset == 13 and description.producer_name == "test"
    assert description.inputs[0].shape == ("batch", 3, 4, 4)
    json.loads(description.model_dump_json())  # JSON-ready
    whole = (tmp_path / "tiny.onnx.data").read_bytes()
    (tmp_path / "tiny.onnx.data").write_bytes(whole[:100])  # a copy cut short
    message = one_line_user_error(lambda: check(path), tmp_path / "tiny.onnx.data")
    assert "100 bytes" in message and "truncated" in message
    (tmp_path / "tiny.onnx.data").unlink()
    assert "tiny.onnx.data" in one_line_user_error(lambda: describe(path, "hand-made", "1", "NCHW"), tmp_path / "tiny.onnx.data")
    with pytest.raises(UserError):
        check(path)


def test_an_export_that_misses_the_opset_asked_for_is_refused(tmp_path):
    path = tiny_model(False, tmp_path / "tiny.onnx")
    assert "wrote opset 13, not the 17 asked for" in one_line_user_error(
        lambda: finish(path, exporter="hand", exporter_version="1", opset=17, layout="NCHW", output_kind="logits",
                       started=0.0), path)


# --- the export cache -------------------------------------------------------------------------


def test_the_export_cache_reuses_an_entry_and_rebuilds_a_damaged_one(tmp_path):
    made: list[Path] = []

    def export(path: Path) -> ExportResult:
        made.append(path)
        tiny_model(True, path)
        return finish(path, exporter="hand", exporter_version="1", opset=13, layout="NCHW", output_kind="logits",
                      started=0.0)

    key = ("torchvision/resnet50:IMAGENET1K_V2", "ab" * 32, "hand", "1", 13)
    first, from_cache = cache.cached_export(tmp_path, *key, export)
    assert not from_cache and first.path.is_file() and first.path.parent.name.startswith("torchvision_resnet50")
    again, from_cache = cache.cached_export(tmp_path, *key, export)
    assert from_cache and again == first and len(made) == 1
    other, from_cache = cache.cached_export(tmp_path, *key[:-1], 12, export)  # another opset, another entry
    assert not from_cache and other.path != first.path

    (first.path.parent / "model.onnx.data").write_bytes(b"\0" * (48 * 4))  # same size, other bytes
    rebuilt, from_cache = cache.cached_export(tmp_path, *key, export)
    assert not from_cache and len(made) == 3 and rebuilt.path == first.path
    check(rebuilt.path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.path.parent.name, other.path.parent.name])
    assert not (first.path.parent / cache.BUILDING_LOCK).exists()  # the build's lock stays out of the entry


_BUILD_THEN = """
import os, sys, time
from pathlib import Path
from xfverify.converter import cache

def export(path):
    path.write_bytes(b"half an export")
    Path(sys.argv[2]).write_text("building")
    if sys.argv[3] == "die":
        os._exit(9)  # killed mid-export: no finally runs
    time.sleep(120)

cache.cached_export(Path(sys.argv[1]), sys.argv[3], "ab" * 32, "hand", "1", 13, export)
"""


def _start_build(root: Path, tmp_path: Path, how: str) -> subprocess.Popen:
    started = tmp_path / f"{how}.started"
    build = subprocess.Popen([sys.executable, "-c", _BUILD_THEN, str(root), str(started), how])
    for _ in range(600):
        if started.exists() or build.poll() is not None:
            break
        subprocess.run(["sleep", "0.1"])
    assert started.exists()
    return build


def test_a_killed_exports_folder_is_removed_by_the_next_export_and_a_live_one_kept(tmp_path):
    root = tmp_path / "onnx"
    killed = _start_build(root, tmp_path, "die")
    assert killed.wait(timeout=60) == 9
    [dead] = root.iterdir()
    assert dead.name.startswith(".die-") and (dead / "model.onnx").exists()
    live = _start_build(root, tmp_path, "live")  # its export starts by removing what the killed one left
    try:
        [building] = root.iterdir()
        assert building.name.startswith(".live-")
        assert cache.remove_abandoned_builds(root) == [] and building.exists()  # in progress: kept
    finally:
        live.kill()
        live.wait()
    assert cache.remove_abandoned_builds(root) == [building] and list(root.iterdir()) == []


def test_the_sweep_of_killed_exports_follows_no_link(tmp_path):
    root, elsewhere = tmp_path / "onnx", tmp_path / "elsewhere"
    (elsewhere / "kept").mkdir(parents=True)
    (elsewhere / cache.BUILDING_LOCK).write_text("")
    root.mkdir()
    (root / ".linked").symlink_to(elsewhere)  # a folder reached through a link
    (root / ".locklink").mkdir()
    (root / ".locklink" / cache.BUILDING_LOCK).symlink_to(elsewhere / cache.BUILDING_LOCK)  # a lock that is a link
    assert cache.remove_abandoned_builds(root) == []
    assert (elsewhere / "kept").is_dir() and (root / ".locklink").is_dir()


_RUN_WITH_ORT = """
import sys, numpy as np, onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
batch = np.load(sys.argv[2])
fed, checks = session.run(None, {session.get_inputs()[0].name: batch})
np.savez(sys.argv[3], fed=fed, checks=checks)
"""


@pytest.mark.parametrize("preset, darkest", [("torchvision-256", 0), ("keras-caffe", 0), ("lite-timm-224", 0),
                                             ("torchvision-256", 200)])  # NCHW RGB, NHWC BGR, 0.5/0.5; bright
def test_the_uint8_feed_graph_feeds_the_tables_bytes_and_the_caches_checksums(preset, darkest, tmp_path):
    """The prefix ONNX Runtime runs on a GPU: its fed tensor is normalise()'s to the bit, and its checksums are
    the ones the tensor cache stores (an identity model exposes what it was fed). A bright image's weighted
    checksum passes 2**53, where ONNX Runtime's int64 ReduceSum is no longer exact."""
    from xfverify.converter.feed_graph import uint8_fed_model
    from xfverify.evaluator.cache.digests import checksum_weights, fed_checksums
    from xfverify.evaluator.data.normalise import normalisation_lut, normalise, source_channels
    from xfverify.models.preprocess import PRESETS

    spec = PRESETS[preset]
    image = [3, 224, 224] if spec.layout == "NCHW" else [224, 224, 3]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *image])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", *image])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    lut = normalisation_lut(spec)
    wrapped = uint8_fed_model(model, lut, source_channels(spec), spec.layout, (224, 224), checksum_weights(3 * 224 * 224))
    onnx.checker.check_model(wrapped, full_check=True)
    onnx.save(wrapped, tmp_path / "fed.onnx")
    batch = np.random.default_rng(3).integers(darkest, 256, (3, 224, 224, 3), dtype=np.uint8)
    np.save(tmp_path / "batch.npy", batch)
    subprocess.run([sys.executable, "-c", _RUN_WITH_ORT, str(tmp_path / "fed.onnx"), str(tmp_path / "batch.npy"),
                    str(tmp_path / "out.npz")], check=True, timeout=300)
    out = np.load(tmp_path / "out.npz")
    expected = normalise(batch, spec, lut)
    assert np.array_equal(out["fed"].view(np.uint32), expected.view(np.uint32))
    assert np.array_equal(out["checks"], fed_checksums(expected))
    assert darkest == 0 or np.abs(fed_checksums(expected)).max() > 2**53
    swapped = expected.copy()
    swapped[0, 0, 0, 0], swapped[0, 0, 0, 1] = expected[0, 0, 0, 1], expected[0, 0, 0, 0]
    if expected[0, 0, 0, 0] != expected[0, 0, 0, 1]:
        assert not np.array_equal(out["checks"], fed_checksums(swapped))


def test_the_uint8_feed_refuses_what_it_cannot_wrap():
    from xfverify.converter.feed_graph import uint8_fed_model

    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 3, 8, 8]) for n in ("a", "b")]
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "two", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 8, 8])])
    lut, weights = np.zeros((3, 256), np.float32), np.ones(3 * 8 * 8, np.int64)
    with pytest.raises(UserError, match="takes 2 inputs"):
        uint8_fed_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), lut, (0, 1, 2),
                        "NCHW", (8, 8), weights)
    old = helper.make_graph([helper.make_node("Identity", ["a"], ["y"])], "old", inputs[:1],
                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 8, 8])])
    with pytest.raises(UserError, match="opset 11; .* needs opset 13"):
        uint8_fed_model(helper.make_model(old, opset_imports=[helper.make_opsetid("", 11)]), lut, (0, 1, 2),
                        "NCHW", (8, 8), weights)
