"""`xfverify onnx`: each framework's export under ONNX Runtime on the native run's very tensors, agreement
on real weights, a user's ONNX file, and the refusals (different tensors, no GPU, bad files), one line each.

The test process stays framework-free: exports and ONNX Runtime run in worker processes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import needs_chromium, needs_mxnet, needs_tensorflow, needs_torch, run_cli, without_gpus
from test_native import assert_user_error
from xfverify.evaluator.analysis.agreement import compare_outputs
from xfverify.evaluator.analysis.comparison import within_tolerance
from xfverify.evaluator.pipeline.onnx import run_onnx
from xfverify.evaluator.pipeline.options import OnnxOptions

SCALED_TOLERANCE = 1e-4  # max |native - onnx| / max |native output|


def onnx_json(**options) -> dict:
    return run_onnx(OnnxOptions(provider="cpu", workers=1, **options)).report.model_dump(mode="json")


ONNX_REPORT_FIELDS = {  # report.json's fields beyond the native report's, as the README documents them
    "runtime", "onnx", "native", "onnx_over_native_time", "agreement"}


def assert_same_tensors_and_close(report: dict, out: Path) -> None:
    native = json.loads((out / "native" / "report.json").read_text())
    assert set(json.loads((out / "report.json").read_text())) == set(native) | ONNX_REPORT_FIELDS
    assert report["tensors_sha256"] == native["tensors_sha256"] == report["native"]["tensors_sha256"]
    assert report["runtime"]["providers"] == ["CPUExecutionProvider"]
    assert report["runtime"]["options"]["graph_optimization_level"] == "ORT_ENABLE_ALL"
    agreement = report["agreement"]
    assert agreement["max_abs_diff_over_max_abs_logit"] < SCALED_TOLERANCE, agreement
    assert agreement["n_compared"] == report["dataset"]["n_images"] and agreement["n_nan"] == 0
    assert report["random_weights"] and report["onnx_over_native_time"] > 0
    assert np.load(out / "logits.npy").shape == (report["dataset"]["n_images"], 1000)


# --- each framework's export, random weights ------------------------------------------------


EXPORTS = [
    pytest.param("torchvision/mobilenet_v2", "torch.onnx.export (dynamo=True)", 18, "logits",
                 marks=[needs_torch, pytest.mark.torch]),
    pytest.param("keras/MobileNet", "tf2onnx.convert.from_keras", 17, "softmax",
                 marks=[needs_tensorflow, pytest.mark.tensorflow]),
    pytest.param("gluoncv/mobilenet1.0", "mxnet.onnx.export_model", 13, "logits", marks=[needs_mxnet, pytest.mark.mxnet]),
]


@pytest.mark.parametrize("model, exporter, opset, output_kind", EXPORTS)
def test_each_frameworks_export_runs_on_the_native_tensors(model, exporter, opset, output_kind, tmp_path,
                                                            generated_folder, made_export):
    if exporter.startswith("torch"):  # made once for the run by the same export job (the localize tests use it too)
        made_export(Path(os.environ["XFVERIFY_CACHE"]), model)
    report = onnx_json(target=model, data=str(generated_folder), out=str(tmp_path / "o"), random_weights=True,
                       limit=3, batch_size=3)
    assert_same_tensors_and_close(report, tmp_path / "o")
    assert (report["onnx"]["exporter"], report["onnx"]["opset"]) == (exporter, opset)
    assert report["onnx"]["output_kind"] == report["agreement"]["compared"] == output_kind
    assert report["agreement"]["native_varies"] is True  # calibrated random weights: the export is really compared
    if output_kind == "softmax":  # Keras applications end in softmax, and so does their export: like with like
        assert any("compares probabilities with probabilities" in note for note in report["notes"])
    if exporter.startswith("torch"):
        assert report["onnx"]["description"]["external_data"]  # the dynamo exporter's .onnx.data, described


# --- real weights: EfficientNet-Lite0 on the embedded sample --------------------------------


@pytest.fixture(scope="module")
def lite0(tmp_path_factory, shared_cache_dir):
    """`xfverify onnx` of the default model on the embedded sample (native run first, into --out/native)."""
    root = tmp_path_factory.mktemp("lite0")
    env = {"XFVERIFY_CACHE": str(shared_cache_dir)}
    done = run_cli("onnx", "--provider", "cpu", "--out", str(root / "o"), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"out": root / "o", "env": env, "stdout": done.stdout,
            "report": json.loads((root / "o" / "report.json").read_text())}


@needs_torch
@pytest.mark.torch
def test_real_weights_agree_on_every_image(lite0):
    report = lite0["report"]
    agreement = report["agreement"]
    assert agreement["top1_agreement"] == 100.0 and agreement["n_flips"] == 0 and agreement["n_compared"] == 5
    assert agreement["within_tolerance"] == 1.0 and agreement["mcnemar_p"] == 1.0
    assert report["top1_error"] == report["native"]["top1_error"] == 0.0
    assert report["random_weights"] is False and report["onnx"]["source"] == "export"
    assert report["runtime"]["requested_providers"] == ["CPUExecutionProvider"]
    assert "top-1 agreement" in lite0["stdout"] and "ONNX / native time" in lite0["stdout"]
    assert "## Preprocessing" in (lite0["out"] / "report.md").read_text()


def _links(browser) -> list[str]:
    return browser.js("[...document.querySelectorAll('a[href]')].map(a => new URL(a.getAttribute('href'), "
                      "document.baseURI).pathname)")


@needs_torch
@needs_chromium
@pytest.mark.torch
def test_the_onnx_and_native_pages_show_the_numbers_the_citation_and_the_time_and_link_each_other(lite0, browser):
    out, report = lite0["out"], lite0["report"]
    browser.open(out / "report.html")
    assert browser.errors() == [] and browser.requests() == []
    text = browser.js("document.body.innerText")
    assert f"Published top-1 error {report['published']['top1_error']:.2f} %: {report['published']['source']}" in text
    assert "top-1 agreement\t100.00 % (0 flips of 5" in text and "95% CI 0.00-" in text
    assert "Images whose top-1 differs (native -> ONNX Runtime): 0 of 5" in text
    assert browser.js("document.querySelectorAll('svg').length") == 2  # the errors, the timeline
    legend = browser.js("[...document.querySelectorAll('svg text')].map(t => t.textContent).join('|')")
    assert "framework imported" in legend and "framework worker" in legend
    links = _links(browser)
    assert all(Path(link).is_file() for link in links) and str(out / "native" / "report.html") in links
    browser.open(out / "native" / "report.html")
    assert browser.errors() == [] and browser.requests() == []
    assert "xfverify native: pypi/efficientnet_lite0" in browser.js("document.title")
    assert all(Path(link).is_file() for link in _links(browser))


@needs_torch
@needs_chromium
@pytest.mark.torch
def test_the_onnx_page_shows_each_flipped_image_with_both_answers_and_its_output_difference(lite0, tmp_path, browser):
    from xfverify.evaluator.reports.run import OnnxReport
    from xfverify.evaluator.reports.run_page import run_page

    native = np.zeros((3, 1000), np.float32)
    native[0, 1], native[1, 2], native[2, 3] = 4.0, 4.0, 4.0
    onnx = native.copy()
    onnx[0, 7], onnx[1, 2] = 5.0, np.nan
    agreement = compare_outputs(native, onnx, ["a.jpg", "<b>.jpg", "c.jpg"], [(1,), (2,), (3,)], np.ones(3, bool),
                                "logits")
    assert [(f.image_id, f.max_abs_diff) for f in agreement.flips] == [("a.jpg", 5.0), ("<b>.jpg", None)]
    report = OnnxReport.model_validate(lite0["report"]).model_copy(update={"agreement": agreement})
    picture = np.full((40, 60, 3), 200, np.uint8)
    page = tmp_path / "report.html"
    page.write_text(run_page(report, tmp_path, {"a.jpg": picture}))
    browser.open(page)
    assert browser.errors() == [] and browser.requests() == []
    captions = browser.js("[...document.querySelectorAll('figure.flip figcaption')].map(c => c.innerText)")
    assert len(captions) == 2 and browser.js("document.querySelectorAll('figure.flip img').length") == 1
    assert "native: goldfish ✓" in captions[0] and "ONNX: " in captions[0] and "✗" in captions[0]
    assert "max |diff|: 5 (1.2 x)" in captions[0]
    assert "<b>.jpg" in captions[1] and "none (NaN or +-inf output)" in captions[1] and "n/a (NaN" in captions[1]
    assert browser.js("document.querySelector('figure.flip img').naturalWidth") == 60  # shown, not re-encoded away


@needs_torch
@pytest.mark.torch
def test_the_device_feed_gives_the_host_feeds_logits_proven_by_the_stored_digests(lite0, tmp_path):
    """How ONNX Runtime is fed on a GPU (uint8 bound with IO binding, normalised in the graph, checksums checked
    against the cache's digests), taken on the CPU: the same tensors_sha256 and bit-identical logits (a uint8
    cache: timm's preprocessing of the same weights)."""
    host_out, device_out = tmp_path / "h", tmp_path / "d"
    done = run_cli("onnx", "--preprocess", "lite-timm-224", "--provider", "cpu", "--out", str(host_out),
                   env=lite0["env"])
    assert done.returncode == 0, done.stderr[-3000:]
    done = run_cli("onnx", "--preprocess", "lite-timm-224", "--provider", "cpu", "--against", str(host_out / "native"),
                   "--out", str(device_out), env={**lite0["env"], "XFVERIFY_ORT_FEED": "device"})
    assert done.returncode == 0, done.stderr[-3000:]
    device = json.loads((device_out / "report.json").read_text())
    host = json.loads((host_out / "report.json").read_text())
    assert device["runtime"]["options"]["io_binding"] is True and host["runtime"]["options"]["io_binding"] is False
    assert device["tensor_proof"].startswith("device checksums") and host["tensor_proof"] == "hashed on host"
    assert device["tensors_sha256"] == host["tensors_sha256"]
    assert np.array_equal(np.load(device_out / "logits.npy"), np.load(host_out / "logits.npy"))


@needs_torch
@pytest.mark.torch
def test_a_cache_of_tensorflows_floats_is_fed_from_the_host_under_the_device_feed(lite0, tmp_path):
    """lite-tf-224's cache keeps TensorFlow's resized floats, which the uint8 feed graph cannot take: ONNX Runtime is
    fed them from the host, hashed there, and says so; the same tensors and logits."""
    done = run_cli("onnx", "--provider", "cpu", "--against", str(lite0["out"] / "native"), "--out",
                   str(tmp_path / "d"), env={**lite0["env"], "XFVERIFY_ORT_FEED": "device"})
    assert done.returncode == 0, done.stderr[-3000:]
    device = json.loads((tmp_path / "d" / "report.json").read_text())
    assert device["runtime"]["options"]["io_binding"] is False and device["tensor_proof"] == "hashed on host"
    assert "fed float32 tensors from the host" in json.dumps(device)
    assert device["tensors_sha256"] == lite0["report"]["tensors_sha256"]
    assert np.array_equal(np.load(tmp_path / "d" / "logits.npy"), np.load(lite0["out"] / "logits.npy"))


@needs_torch
@pytest.mark.torch
def test_provider_auto_feeds_as_the_provider_that_ran(lite0, tmp_path):
    """onnxruntime-gpu always offers its CUDA provider; where it does not load, auto runs on the CPU, and is fed as
    the CPU is (the export as it is, host tensors hashed), not through the GPU feed's wrapped graph."""
    done = run_cli("onnx", "--against", str(lite0["out"] / "native"), "--out", str(tmp_path / "a"), env=lite0["env"])
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    on_cuda = report["runtime"]["providers"][0] == "CUDAExecutionProvider"
    assert report["runtime"]["options"]["io_binding"] is on_cuda
    assert report["tensor_proof"].startswith("device checksums" if on_cuda else "hashed on host")
    assert report["tensors_sha256"] == lite0["report"]["tensors_sha256"]


@needs_torch
@pytest.mark.torch
def test_a_second_run_reuses_the_native_run_and_the_export(lite0):
    done = run_cli("onnx", "--provider", "cpu", "--out", str(lite0["out"]), env=lite0["env"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "comparing with the native run in" in done.stderr
    report = json.loads((lite0["out"] / "report.json").read_text())
    assert report["onnx"]["from_cache"] is True
    assert report["native"]["tensors_sha256"] == lite0["report"]["tensors_sha256"]


@needs_torch
@pytest.mark.torch
def test_runs_whose_tensors_differ_are_not_compared(lite0, tmp_path):
    done = run_cli("onnx", "--provider", "cpu", "--against", str(lite0["out"] / "native"), "--preprocess",
                   "lite-imagenet-norm-224", "--out", str(tmp_path / "o"), env=lite0["env"])
    assert_user_error(done, "was fed lite-tf-224, this run lite-imagenet-norm-224",
                      "compares only runs fed the same tensors")  # known from the specs: before any work
    assert not (tmp_path / "o").exists()
    other = tmp_path / "native-of-other-bytes"  # the same spec, other bytes (another decoder build, say)
    shutil.copytree(lite0["out"] / "native", other)
    report = json.loads((other / "report.json").read_text())
    report["tensors_sha256"] = "0" * 64
    (other / "report.json").write_text(json.dumps(report))
    done = run_cli("onnx", "--provider", "cpu", "--against", str(other), "--out", str(tmp_path / "o"),
                   env=lite0["env"])
    assert_user_error(done, "the tensors differ", "tensors_sha256")
    assert not (tmp_path / "o").exists()


@needs_torch
@pytest.mark.torch
def test_a_users_onnx_file_with_a_preset_and_against_a_native_run(lite0, tmp_path):
    path = Path(lite0["report"]["onnx"]["path"])
    done = run_cli("onnx", str(path), "--preprocess", "lite-tf-224", "--provider", "cpu", "--out", str(tmp_path / "a"),
                   env=lite0["env"])
    assert done.returncode == 0, done.stderr[-3000:]
    alone = json.loads((tmp_path / "a" / "report.json").read_text())
    assert alone["onnx"]["source"] == "file" and alone["native"] is None and alone["agreement"] is None
    assert alone["model"] == str(path) and alone["top1_error"] == 0.0
    done = run_cli("onnx", str(path), "--preprocess", "lite-tf-224", "--provider", "cpu", "--against",
                   str(lite0["out"] / "native"), "--out", str(tmp_path / "b"), env=lite0["env"])
    assert done.returncode == 0, done.stderr[-3000:]
    against = json.loads((tmp_path / "b" / "report.json").read_text())
    assert against["agreement"]["top1_agreement"] == 100.0


@needs_torch
@pytest.mark.torch
def test_cuda_provider_without_a_gpu_is_one_line_not_a_cpu_run(lite0, tmp_path):
    path = Path(lite0["report"]["onnx"]["path"])
    done = run_cli("onnx", str(path), "--preprocess", "lite-tf-224", "--provider", "cuda", "--out",
                   str(tmp_path / "o"), env={**lite0["env"], **without_gpus()})
    assert_user_error(done, "--provider cuda", "does not fall back to the CPU")
    assert not (tmp_path / "o").exists()


# --- user errors, one line each ----------------------------------------------------------------


def test_a_corrupt_onnx_file_is_one_line(tmp_path):
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(b"\x08\x07\x12\x04test" + bytes(range(40)))
    done = run_cli("onnx", str(truncated), "--preprocess", "lite-tf-224", "--provider", "cpu", "--out",
                   str(tmp_path / "o"))
    assert_user_error(done, str(truncated), "not ")


@pytest.mark.parametrize("feed", ["host", "device"])
def test_a_users_file_with_two_inputs_is_one_line_on_either_feed(feed, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 224, 224]),
              helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["N", 1000])]
    nodes = [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[2, 3], keepdims=0),
             helper.make_node("Tile", ["mean", "repeats"], ["tiled"]),
             helper.make_node("Slice", ["tiled", "start", "stop", "axis"], ["wide"]),
             helper.make_node("Add", ["wide", "bias"], ["logits"])]
    constants = [onnx.numpy_helper.from_array(np.asarray(v, dtype=np.int64), n)
                 for n, v in (("repeats", [1, 334]), ("start", [0]), ("stop", [1000]), ("axis", [1]))]
    graph = helper.make_graph(nodes, "two", inputs,
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])], constants)
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7), path)
    done = run_cli("onnx", str(path), "--preprocess", "torchvision-256", "--provider", "cpu", "--out",
                   str(tmp_path / "o"), "--cache-dir", str(tmp_path / "cache"), env={"XFVERIFY_ORT_FEED": feed})
    assert_user_error(done, str(path), "takes 2 inputs (image, bias)", "export it with the image as its only input")


def test_a_users_opset_11_file_under_the_device_feed_is_one_line_naming_it(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 224, 224])
    graph = helper.make_graph([helper.make_node("ReduceMean", ["image"], ["logits"], axes=[2, 3], keepdims=0)], "op11",
                              [image], [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])])
    path = tmp_path / "op11.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=7), path)
    done = run_cli("onnx", str(path), "--preprocess", "torchvision-256", "--provider", "cpu", "--out",
                   str(tmp_path / "o"), "--cache-dir", str(tmp_path / "cache"), env={"XFVERIFY_ORT_FEED": "device"})
    assert_user_error(done, f"{path}: the ONNX model uses opset 11", "opset 13 or newer")


def users_onnx_file(path: Path, classes: int = 1000, element: str = "FLOAT", batch: str | int = "N") -> Path:
    """A valid one-input classifier over 224 x 224 NCHW images: per image, the channel means, tiled to ``classes``
    (its input of another ``element`` type is cast to float inside; ``batch`` its input's first dimension)."""
    import onnx
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("image", getattr(TensorProto, element), [batch, 3, 224, 224])
    cast = [] if element == "FLOAT" else [helper.make_node("Cast", ["image"], ["image_f"], to=TensorProto.FLOAT)]
    nodes = [*cast, helper.make_node("ReduceMean", ["image_f" if cast else "image"], ["mean"], axes=[2, 3], keepdims=0),
             helper.make_node("Tile", ["mean", "repeats"], ["tiled"]),
             helper.make_node("Slice", ["tiled", "start", "stop", "axis"], ["logits"])]
    constants = [onnx.numpy_helper.from_array(np.asarray(v, dtype=np.int64), n)
                 for n, v in (("repeats", [1, -(-classes // 3)]), ("start", [0]), ("stop", [classes]), ("axis", [1]))]
    graph = helper.make_graph(nodes, "means", [image],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])], constants)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7), path)
    return path


@pytest.mark.parametrize("option, value", [("batch_size", 0), ("workers", 0), ("seed", -1)])
def test_a_users_file_refuses_the_run_options_native_refuses(option, value, tmp_path):
    from xfverify.models.errors import UserError

    path = users_onnx_file(tmp_path / "means.onnx")
    named = "--" + option.replace("_", "-")
    with pytest.raises(UserError, match=f"^{named} must be"):
        run_onnx(OnnxOptions(target=str(path), preprocess="torchvision-256", provider="cpu", limit=2,
                             out=str(tmp_path / "o"), cache_dir=str(tmp_path / "cache"), **{option: value}))


def test_export_options_are_refused_for_a_users_file_and_the_opset_must_be_positive(tmp_path):
    from xfverify.models.errors import UserError

    path = users_onnx_file(tmp_path / "means.onnx")
    with pytest.raises(UserError, match=r"^--opset applies to a model's export; .*means\.onnx has its own opset"):
        run_onnx(OnnxOptions(target=str(path), preprocess="torchvision-256", provider="cpu", limit=2, opset=17,
                             out=str(tmp_path / "o"), cache_dir=str(tmp_path / "cache")))
    with pytest.raises(UserError, match=r"^--weights and --random-weights apply to a model's export"):
        run_onnx(OnnxOptions(target=str(path), preprocess="torchvision-256", provider="cpu", limit=2,
                             random_weights=True, out=str(tmp_path / "o"), cache_dir=str(tmp_path / "cache")))
    with pytest.raises(UserError, match=r"^--opset must be positive, got 0"):  # 0 was read as "the default"
        run_onnx(OnnxOptions(target="torchvision/resnet18", opset=0, out=str(tmp_path / "p"),
                             cache_dir=str(tmp_path / "cache")))


@pytest.mark.parametrize("feed", ["host", "device"])
def test_a_users_file_that_does_not_output_1000_classes_is_one_line(feed, tmp_path):
    path = users_onnx_file(tmp_path / "three.onnx", classes=3)
    done = run_cli("onnx", str(path), "--preprocess", "torchvision-256", "--provider", "cpu", "--limit", "2", "--out",
                   str(tmp_path / "o"), "--cache-dir", str(tmp_path / "cache"), env={"XFVERIFY_ORT_FEED": feed})
    assert_user_error(done, str(path), "first output has shape [3] per image", "1000 ImageNet classes")


def rows_changed_onnx_file(path: Path, rows: str) -> Path:
    """:func:`users_onnx_file`'s classifier whose output keeps only row 0 ("first", a Slice), has none ("none") or
    twice the batch's rows ("double", a Concat)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(users_onnx_file(path))
    graph = model.graph
    graph.node[-1].output[0] = "per_image"
    if rows == "double":
        graph.node.append(helper.make_node("Concat", ["per_image", "per_image"], ["logits"], axis=0))
    else:
        graph.node.append(helper.make_node("Slice", ["per_image", "row_start", "row_stop", "row_axis"], ["logits"]))
        graph.initializer.extend(onnx.numpy_helper.from_array(np.asarray(v, dtype=np.int64), n) for n, v in
                                 (("row_start", [0]), ("row_stop", [1 if rows == "first" else 0]), ("row_axis", [0])))
    graph.output[0].CopyFrom(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["M", 1000]))
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("feed", ["host", "device"])
@pytest.mark.parametrize("rows, shape", [("first", [1, 1000]), ("double", [4, 1000]), ("none", [0, 1000])])
def test_a_users_file_whose_output_has_other_rows_than_the_batch_is_one_line(feed, rows, shape, tmp_path):
    """Before: one row was broadcast into every image's (scored), and twice or no rows crashed the worker."""
    path = rows_changed_onnx_file(tmp_path / f"{rows}.onnx", rows)
    done = run_cli("onnx", str(path), "--preprocess", "torchvision-256", "--provider", "cpu", "--limit", "2", "--out",
                   str(tmp_path / "o"), "--cache-dir", str(tmp_path / "cache"), env={"XFVERIFY_ORT_FEED": feed})
    assert_user_error(done, f"{path}: its output for a batch of 2 images has shape {shape}, not [2, 1000]")
    assert not (tmp_path / "o").exists()


def non_finite_onnx_file(path: Path, value: float) -> Path:
    """:func:`users_onnx_file`'s classifier with every output multiplied by ``value`` (NaN, or inf: the channel
    means have either sign, so +-inf)."""
    import onnx
    from onnx import helper

    model = onnx.load(users_onnx_file(path))
    model.graph.node[-1].output[0] = "finite"
    model.graph.node.append(helper.make_node("Mul", ["finite", "factor"], ["logits"]))
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.full([1, 1000], value, dtype=np.float32), "factor"))
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_outputs_holding_nan_or_inf_predict_nothing_count_as_wrong_and_are_said(value, tmp_path):
    """Before: argsort of NaN invented top-5 predictions, scored with no note."""
    import csv

    path = non_finite_onnx_file(tmp_path / "bad.onnx", value)
    done = run_cli("onnx", str(path), "--preprocess", "torchvision-256", "--provider", "cpu", "--limit", "2", "--out",
                   str(tmp_path / "o"), "--cache-dir", str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    with open(tmp_path / "o" / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["top5"], row["status"]) for row in rows] == [("", "non-finite")] * 2
    assert report["top1_error"] == report["top5_error"] == 100.0 and report["n_scored"] == report["dataset"]["n_labelled"]
    assert any("2 of 2 image(s) gave outputs holding NaN or +-inf" in note and "count as wrong" in note
               for note in report["notes"])


def test_agreement_with_nan_or_inf_on_either_side_says_so_and_gives_no_top1():
    """Before: a native run of NaN agreed with "max |diff| 0" and argmax named class 0 as its top-1."""
    from xfverify.evaluator.analysis.metrics import NO_CLASS

    onnx = np.zeros((3, 1000), dtype=np.float32)
    onnx[:, 996] = 2.0
    native = onnx.copy()
    native[0] = np.nan
    native[1, 5] = np.inf
    labels = [(996,), (996,), (996,)]
    agreement = compare_outputs(native, onnx, ["a", "b", "c"], labels, np.ones(3, dtype=bool), "logits")
    assert agreement.n_non_finite == 2 and agreement.max_abs_logit_diff == 0.0  # over image c only
    assert [(f.image_id, f.native_top1, f.onnx_top1) for f in agreement.flips] == [("a", NO_CLASS, 996),
                                                                                    ("b", NO_CLASS, 996)]
    assert agreement.onnx_only_right == 2 and agreement.top1_agreement < 100
    both_nan = compare_outputs(np.full_like(onnx, np.nan), np.full_like(onnx, np.nan), ["a", "b", "c"], labels,
                               np.ones(3, dtype=bool), "logits")
    assert both_nan.n_non_finite == 3 and both_nan.within_tolerance == 0.0


@needs_torch
def test_a_native_run_of_nan_is_not_reported_as_agreeing(tmp_path):
    native = tmp_path / "native"
    done = run_cli("native", "torchvision/resnet50:IMAGENET1K_V1", "--random-weights", "--limit", "2", "--out",
                   str(native), "--cache-dir", str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr[-3000:]
    np.save(native / "logits.npy", np.full((2, 1000), np.nan, dtype=np.float32))
    report = json.loads((native / "report.json").read_text())  # as a native run whose outputs were NaN writes it
    report["logits_sha256"] = hashlib.sha256((native / "logits.npy").read_bytes()).hexdigest()
    if report["n_scored"]:
        report["top1_error"] = report["top5_error"] = 100.0
    (native / "report.json").write_text(json.dumps(report))
    path = users_onnx_file(tmp_path / "means.onnx")
    done = run_cli("onnx", str(path), "--preprocess", "torchvision-256", "--provider", "cpu", "--against", str(native),
                   "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["agreement"]["n_non_finite"] == 2 and report["agreement"]["n_flips"] == 2
    assert any("2 of the 2 compared images have outputs holding NaN or +-inf" in note for note in report["notes"])
    assert "2 image(s) with NaN or +-inf outputs left out" in (tmp_path / "o" / "report.md").read_text()
    page = (tmp_path / "o" / "report.html").read_text()  # each flipped image's crop, as both runtimes were fed it
    assert page.count('<figure class="flip"><img src="data:image/png;base64,') == 2
    assert page.count("native: none (NaN or +-inf output)") == 2 and page.count("max |diff|: n/a (NaN or +-inf)") == 2
    links = re.findall(r'<a href="([^"]+)"', page)
    assert "../native/report.html" in links and all((tmp_path / "o" / link).is_file() for link in links)


@pytest.mark.parametrize("option", ["--atol", "--rtol"])
@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_tolerances_must_be_finite_and_not_negative(option, value, tmp_path):
    done = run_cli("onnx", str(users_onnx_file(tmp_path / "m.onnx")), "--preprocess", "torchvision-256", option, value,
                   "--out", str(tmp_path / "o"))
    assert_user_error(done, f"{option} must be a finite number, not negative, got")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("feed", ["host", "device"])
def test_a_users_file_with_tf_slims_1001_classes_is_scored_without_the_background_class(feed, tmp_path):
    outputs = {}
    for classes in (1000, 1001):
        path = users_onnx_file(tmp_path / f"c{classes}.onnx", classes=classes)
        done = run_cli("onnx", str(path), "--preprocess", "torchvision-256", "--provider", "cpu", "--limit", "2",
                       "--out", str(tmp_path / f"o{classes}"), "--cache-dir", str(tmp_path / "cache"),
                       env={"XFVERIFY_ORT_FEED": feed})
        assert done.returncode == 0, done.stderr[-2000:]
        outputs[classes] = np.load(tmp_path / f"o{classes}" / "logits.npy")
        notes = json.loads((tmp_path / f"o{classes}" / "report.json").read_text())["notes"]
        assert any("class 0 (TF-slim's background class) is left out" in n for n in notes) == (classes == 1001)
    assert outputs[1001].shape == (2, 1000)
    assert np.array_equal(outputs[1001][:, :-1], outputs[1000][:, 1:])  # class k is the file's output k + 1


@pytest.mark.parametrize("feed", ["host", "device"])
@pytest.mark.parametrize("element, batch, options, fragments", [
    ("FLOAT16", "N", [], ["takes input image as tensor(float16)", "float32 image input"]),
    ("INT8", "N", [], ["takes input image as tensor(int8)"]),
    ("FLOAT", 1, [], ["takes batches of exactly 1 image", "feeds batches of 2", "--batch-size 1"]),
    ("FLOAT", 2, ["--batch-size", "2", "--limit", "3"], ["takes batches of exactly 2", "divisible by 2 (--limit)"]),
])
def test_a_users_file_with_another_input_type_or_a_fixed_batch_is_one_line(feed, element, batch, options, fragments,
                                                                          tmp_path):
    """Before: ONNX Runtime's INVALID_ARGUMENT traceback (exit 1) at the first batch."""
    path = users_onnx_file(tmp_path / "m.onnx", element=element, batch=batch)
    done = run_cli("onnx", str(path), "--preprocess", "torchvision-256", "--provider", "cpu", "--limit", "2",
                   "--batch-size", "2", *options, "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "cache"),
                   env={"XFVERIFY_ORT_FEED": feed})
    assert_user_error(done, str(path), *fragments)


def test_a_users_file_with_a_fixed_batch_of_1_runs_at_batch_size_1(tmp_path):
    path = users_onnx_file(tmp_path / "m.onnx", batch=1)
    done = run_cli("onnx", str(path), "--preprocess", "torchvision-256", "--provider", "cpu", "--limit", "2",
                   "--batch-size", "1", "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_native_run_is_reused_only_for_the_same_weights(tmp_path):
    from types import SimpleNamespace

    from xfverify.evaluator.pipeline.native_pass import _answers
    from xfverify.evaluator.pipeline.options import NativeOptions
    from xfverify.evaluator.pipeline.request import prepare
    from xfverify.evaluator.process.blocks import FileWeights, RandomWeights

    weights_file = tmp_path / "mine.pth"
    weights_file.write_bytes(b"weights")
    card, spec, dataset = prepare(NativeOptions(limit=2))

    def native(source: str, random_weights: bool = False, seed: int = 0) -> SimpleNamespace:
        weights = RandomWeights(seed=seed) if random_weights else FileWeights(source=source, sha256="0" * 64)
        return SimpleNamespace(model=card.id, preprocess=spec, random_weights=random_weights,
                               dataset=SimpleNamespace(manifest_sha256=dataset.manifest_sha256()), weights=weights)

    pretrained, own_file = NativeOptions(limit=2), NativeOptions(limit=2, weights=str(weights_file))
    assert _answers(native(card.weights_source), pretrained)
    assert not _answers(native(str(weights_file)), pretrained)
    assert _answers(native(str(weights_file)), own_file)
    assert not _answers(native(card.weights_source), own_file)
    assert _answers(native("random", True, 3), NativeOptions(limit=2, random_weights=True, seed=3))
    assert not _answers(native("random", True, 3), NativeOptions(limit=2, random_weights=True, seed=4))
    assert not _answers(native("random", True, 0), pretrained)


def test_a_users_file_needs_a_preset_and_against_needs_a_native_report(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    assert_user_error(run_cli("onnx", str(model), "--out", str(tmp_path / "o")), "--preprocess PRESET")
    (tmp_path / "empty").mkdir()
    assert_user_error(run_cli("onnx", str(model), "--preprocess", "lite-tf-224", "--against", str(tmp_path / "empty"),
                              "--out", str(tmp_path / "o")), "--against", "no native report")


def native_folder(folder: Path, n_images: int = 2, **fields) -> Path:
    """A native run's folder as `xfverify native` leaves it (report.json and logits.npy), nothing run."""
    from test_metrics_and_report import minimal_report
    from xfverify.models.cards import get_card
    from xfverify.models.preprocess import resolve_preprocess

    card = get_card("pypi/efficientnet_lite0")
    report = minimal_report()
    report["dataset"]["n_images"] = n_images
    folder.mkdir(parents=True)
    np.save(folder / "logits.npy", np.zeros((n_images, 1000), np.float32))
    logits_sha256 = hashlib.sha256((folder / "logits.npy").read_bytes()).hexdigest()
    report.update(model=card.id, preprocess=resolve_preprocess(None, default=card.reference_spec).to_dict(),
                  logits_sha256=logits_sha256, **fields)
    (folder / "report.json").write_text(json.dumps(report))
    return folder


def _replace_report(folder: Path, text: bytes) -> None:
    (folder / "report.json").write_bytes(text)


def _replace_logits(folder: Path, array) -> None:
    np.save(folder / "logits.npy", array)


DAMAGED_NATIVE_RUNS = {
    "not UTF-8": (lambda f: _replace_report(f, b"\xff\xfe{"), "report.json is damaged"),
    "truncated": (lambda f: _replace_report(f, (f / "report.json").read_bytes()[:300]), "report.json is damaged"),
    "a JSON list": (lambda f: _replace_report(f, b"[1, 2]"), "report.json is damaged"),
    "an onnx report": (lambda f: _replace_report(f, b'{"kind": "onnx"}'), "`xfverify onnx` report", "/native"),
    "a diagnose report": (lambda f: _replace_report(f, b'{"kind": "diagnose"}'), "`xfverify diagnose` report",
                          "/reference"),
    "a preprocessing of no spec": (lambda f: _replace_report(f, (f / "report.json").read_bytes().replace(
        b'"decoder"', b'"decodr"')), "report.json is damaged"),
    "logits missing": (lambda f: (f / "logits.npy").unlink(), "logits.npy is missing"),
    "too few rows": (lambda f: _replace_logits(f, np.zeros((1, 1000), np.float32)), "float32 (1, 1000)", "(2, 1000)"),
    "ten classes": (lambda f: _replace_logits(f, np.zeros((2, 10), np.float32)), "float32 (2, 10)"),
    "a scalar": (lambda f: _replace_logits(f, np.float32(1)), "float32 ()"),
    "integers": (lambda f: _replace_logits(f, np.zeros((2, 1000), np.int64)), "int64 (2, 1000)"),
    "float64": (lambda f: _replace_logits(f, np.zeros((2, 1000), np.float64)), "float64 (2, 1000)"),
}


@pytest.mark.parametrize("case", DAMAGED_NATIVE_RUNS)
def test_against_a_damaged_or_foreign_native_run_is_one_line_naming_it(case, tmp_path):
    from xfverify.evaluator.pipeline.native_run import load_native
    from xfverify.models.errors import UserError

    damage, *fragments = DAMAGED_NATIVE_RUNS[case]
    folder = native_folder(tmp_path / "run")
    load_native(folder)
    damage(folder)
    with pytest.raises(UserError) as raised:
        load_native(folder)
    for fragment in (f"--against {folder}", *fragments):
        assert fragment in str(raised.value), (fragment, str(raised.value))


def test_against_a_missing_folder_says_so(tmp_path):
    from xfverify.evaluator.pipeline.native_run import load_native
    from xfverify.models.errors import UserError

    with pytest.raises(UserError, match="no such folder"):
        load_native(tmp_path / "nowhere")


def test_an_output_that_is_a_folder_is_refused_before_the_native_run_and_the_export(tmp_path):
    """Before: the whole run, then os.replace's IsADirectoryError traceback, with the earlier report's other
    files already replaced."""
    from xfverify.models.errors import UserError

    out = tmp_path / "o"
    (out / "report.json").mkdir(parents=True)
    (out / "report.md").write_text("the earlier report")
    with pytest.raises(UserError, match="report.json there is a folder"):
        run_onnx(OnnxOptions(against=str(native_folder(tmp_path / "run")), out=str(out)))
    assert (out / "report.md").read_text() == "the earlier report"


def test_a_damaged_native_run_in_out_native_is_run_again_not_refused(tmp_path, monkeypatch):
    """--out/native is xfverify's own folder: a damaged run there (a truncated report.json) was a refusal
    telling the user to 'give the --out folder of an xfverify native run'; it is now made again."""
    from xfverify.evaluator.pipeline import native_pass

    folder = native_folder(tmp_path / "o" / "native")
    (folder / "report.json").write_bytes((folder / "report.json").read_bytes()[:200])
    ran = []

    class Ran(Exception):
        pass

    def run_native(wanted):
        ran.append(wanted.out)
        raise Ran

    monkeypatch.setattr(native_pass, "native_run", run_native)
    with pytest.raises(Ran):
        native_pass.ensure_native_run(OnnxOptions(limit=2), tmp_path / "o", tmp_path / "work")
    assert ran == [str(tmp_path / "work" / "native")]  # made in the work folder, moved in when the ONNX run ends


@pytest.mark.parametrize("options, fragments", [
    ({"target": "torchvision/densenet121"}, ["a native run of pypi/efficientnet_lite0", "not of torchvision/densenet121"]),
    ({"preprocess": "lite-timm-224"}, ["was fed lite-tf-224, this run lite-timm-224", "interpolation"]),
    ({"overrides": ["channel_order=BGR"]}, ["(channel_order differ)"]),
])
def test_against_a_native_run_of_another_model_or_preprocessing_is_refused_before_any_work(options, fragments,
                                                                                          tmp_path):
    """Before: the other model's native run was compared with this one's export (a full run, a meaningless
    agreement), and other preprocessing was found only after decoding and running every image."""
    from xfverify.models.errors import UserError

    folder = native_folder(tmp_path / "run")
    out = tmp_path / "o"
    out.mkdir()
    (out / "report.json").write_text("an earlier report")
    (out / ".xfverify-outputs.json").write_text('{"files": ["report.json"]}')  # an earlier run's, so not refused
    with pytest.raises(UserError) as raised:
        run_onnx(OnnxOptions(against=str(folder), out=str(out), **options))
    for fragment in fragments:
        assert fragment in str(raised.value), (fragment, str(raised.value))
    assert (out / "report.json").read_text() == "an earlier report"


# --- the comparison's rules, in numbers ------------------------------------------------------


def test_polygraphy_rule_fails_an_element_only_over_both_tolerances_and_always_on_nan():
    reference = np.array([1.0, 1.0, 100.0, np.nan, 1.0], dtype=np.float32)
    candidate = np.array([1.0, 1.5, 100.05, 1.0, np.nan], dtype=np.float32)
    # 1.5: over atol 0.1 and over rtol; 100.05: over atol but within rtol 1e-3 of 100.05
    assert within_tolerance(reference, candidate, atol=0.1, rtol=1e-3).tolist() == [True, False, True, False, False]


def test_agreement_counts_flips_and_which_run_was_right():
    native = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 2.0]], dtype=np.float32)
    onnx = np.array([[3.0, 1.0, 0.0], [0.0, 1.0, 2.0], [2.0, 0.0, 1.0]], dtype=np.float32)
    found = compare_outputs(native, onnx, ["a", "b", "c"], [(0,), (1,), ()], np.ones(3, bool), "logits")
    assert found.n_flips == 2 and round(found.top1_agreement, 2) == 33.33
    assert [(f.image_id, f.right) for f in found.flips] == [("b", "native"), ("c", "unlabelled")]
    assert found.native_only_right == 1 and found.onnx_only_right == 0 and found.mcnemar_p == 1.0
    assert found.max_abs_logit_diff == 1.0 and found.max_abs_diff_over_max_abs_logit == pytest.approx(1 / 3)


# (the real weights' ONNX agreement on the 500 photographs: tests/test_real_photos.py, on its reference runs)


def test_agreeing_with_native_outputs_that_never_change_is_said_to_prove_little():
    from types import SimpleNamespace

    from xfverify.evaluator.pipeline.onnx import _agreement
    from xfverify.evaluator.pipeline.options import OnnxOptions

    constant = np.tile(np.linspace(-1, 1, 10, dtype=np.float32), (3, 1))  # a zero head plus a bias: every image alike
    varying = constant + np.float32(1e-3) * np.arange(3, dtype=np.float32)[:, None]
    records = [SimpleNamespace(image_id=name, labels=(1,)) for name in "abc"]

    class Dataset(list):
        @property
        def records(self):
            return self
    for native, varies in ((constant, False), (varying, True), (np.zeros_like(constant), False)):
        notes: list[str] = []
        agreement = _agreement(OnnxOptions(), object(), SimpleNamespace(report=SimpleNamespace(output="logits"),
                                                                         outputs=native),
                               SimpleNamespace(logits=native.copy(), skipped=set()), Dataset(records),
                               notes)
        assert agreement.native_varies is varies and agreement.top1_agreement == 100.0
        assert any("the same for every one of the 3 compared images" in note for note in notes) is not varies
    one = compare_outputs(constant[:1], constant[:1], ["a"], [(1,)], np.ones(1, dtype=bool), "logits")
    assert one.native_varies is None  # one image: nothing to vary between
