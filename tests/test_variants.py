"""Deployment variants (``xfverify onnx --variant``): made through the variant cache, scored on the plain run's
tensors, where precision breaks named per node, the gate's exit status, and bad input in one line. A small
classifier built here, the embedded sample, a few generated calibration images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import run_cli, write_jpeg
from xfverify.converter.variant_spec import ToolVersions, VariantSpec, cache_key
from xfverify.evaluator.data.layouts import SAMPLE_DIR
from xfverify.evaluator.pipeline.onnx import run_onnx
from xfverify.evaluator.pipeline.options import OnnxOptions
from xfverify.models.errors import UserError

PRESET = "torchvision-256"


def small_classifier(path: Path, opset: int = 17, activation: str = "Relu") -> Path:
    """Conv (3 -> 8, stride 4) -> activation -> global average pool -> Gemm to 1000 classes, fixed random weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {"conv.weight": rng.normal(0, 0.3, (8, 3, 3, 3)), "conv.bias": rng.normal(0, 0.1, 8),
               "fc.weight": rng.normal(0, 1.0, (1000, 8)), "fc.bias": rng.normal(0, 0.1, 1000)}
    nodes = [helper.make_node("Conv", ["image", "conv.weight", "conv.bias"], ["conv_out"], name="conv",
                              strides=[4, 4], pads=[1, 1, 1, 1]),
             helper.make_node(activation, ["conv_out"], ["act_out"], name="act"),
             helper.make_node("GlobalAveragePool", ["act_out"], ["pooled"], name="pool"),
             helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8), path)
    return path


def calibration_folder(folder: Path, n: int = 4) -> Path:
    for i in range(n):
        write_jpeg(folder / f"calib_{i}.jpg", seed=500 + i, width=160, height=120)
    return folder


def options(tmp_path: Path, target: Path, **more) -> OnnxOptions:
    return OnnxOptions(target=str(target), preprocess=PRESET, provider="cpu", workers=1, out=str(tmp_path / "out"),
                       cache_dir=str(tmp_path / "cache"), **more)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One run making fp16, int8 (static, calibrated) and opt-basic of the small classifier on the embedded sample."""
    tmp_path = tmp_path_factory.mktemp("variants")
    plain = small_classifier(tmp_path / "small.onnx")
    calibration = calibration_folder(tmp_path / "calibration")
    asked = options(tmp_path, plain, variants=("fp16", "int8", "opt-basic"), calibration=str(calibration))
    return {"run": run_onnx(asked), "options": asked, "tmp": tmp_path, "plain": plain}


def test_each_variant_is_made_run_on_the_plain_runs_tensors_and_scored_beside_it(made):
    report = made["run"].report
    block = report.variants
    assert [r.name for r in block.results] == ["fp16", "int8-minmax", "opt-basic"]
    for result in block.results:
        assert result.tensors_sha256 == report.tensors_sha256
        assert result.n_scored == report.n_scored
        assert result.time_over_plain is not None and result.time_over_plain > 0
        assert result.agreement_native is None  # a user's file without --against: no native run
    fp16, int8, optimised = block.results
    assert fp16.made.notes[0].endswith("(keep_io_types=True)")
    assert 0 < fp16.agreement_plain.max_abs_logit_diff < 1e-2 * fp16.agreement_plain.max_abs_native_output
    assert optimised.agreement_plain.within_tolerance == 1.0
    assert int8.made.n_quantised_nodes >= 2 and int8.made.n_calibration == 4
    assert block.calibration.n_images == 4 and len(block.calibration.manifest_sha256) == 64
    assert "Deployment variants" in (made["run"].out_dir / "report.md").read_text()


def test_a_made_variant_comes_from_the_cache_and_another_option_makes_another_entry(made):
    import xfverify

    asked = made["options"]
    again = xfverify.onnx(asked.target, preprocess=PRESET, provider="cpu", workers=1, out=asked.out,
                          cache_dir=asked.cache_dir, variants=["fp16", "int8", "opt-basic"],
                          calibration=asked.calibration).variants.results
    assert all(r.from_cache for r in again)
    assert [r.sha256 for r in again] == [r.sha256 for r in made["run"].report.variants.results]
    tools = ToolVersions(onnx="1", onnxruntime="1")
    spec = VariantSpec(kind="int8", per_channel=True, calibration_method="minmax")
    keys = {cache_key(spec, "a" * 64, "c", tools), cache_key(spec.model_copy(update={"per_channel": False}), "a" * 64,
                                                             "c", tools),
            cache_key(spec, "b" * 64, "c", tools), cache_key(spec, "a" * 64, "d", tools),
            cache_key(spec, "a" * 64, "c", ToolVersions(onnx="1", onnxruntime="2"))}
    assert len(keys) == 5


def test_a_planted_quantisation_fault_is_named_and_the_gate_exits_3(made):
    """One Conv's weight scale forced 30x off in the int8 file, scored on images labelled with the plain file's own
    answers: the per-node comparison names that Conv as the first node past tolerance and the one that adds most
    noise, and --max-top1-drop 0 fails the run with exit status 3, the report written first."""
    import csv
    import json

    import onnx
    from onnx import numpy_helper

    tmp = made["tmp"]
    int8 = made["run"].report.variants.results[1]
    model = onnx.load(int8.path)
    initialisers = {t.name: t for t in model.graph.initializer}
    dequantise = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("conv.weight"))
    scale = initialisers[dequantise.input[1]]
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 30, scale.name))
    planted = tmp / "planted.onnx"
    onnx.save(model, planted)
    data = tmp / "labelled"
    data.mkdir()
    answers = {row["image_id"]: row["top5"].split()[0]
               for row in csv.DictReader((made["run"].out_dir / "predictions.csv").open())}
    lines = ["image,labels"]
    for image in sorted(Path(SAMPLE_DIR).iterdir()):
        if image.stem in answers:
            (data / image.name).write_bytes(image.read_bytes())
            lines.append(f"{image.name},{answers[image.stem]}")
    (data / "labels.csv").write_text("\n".join(lines) + "\n")
    out = tmp / "gated"
    done = run_cli("onnx", str(made["plain"]), "--data", str(data), "--preprocess", PRESET, "--provider", "cpu",
                   "--out", str(out), "--cache-dir", str(tmp / "cache"), "--variant", str(planted),
                   "--localize-images", "2", "--max-top1-drop", "0")
    report = json.loads((out / "report.json").read_text())
    assert report["top1_error"] == 0.0
    result = report["variants"]["results"][0]
    assert result["vs_plain"]["delta"] > 0
    assert result["nodes"]["first_past_tolerance"] == "conv"
    assert result["nodes"]["costliest"][0] == "conv"
    assert done.returncode == 3, done.stderr
    assert "gate failed: variant file:" in done.stderr and "over --max-top1-drop 0" in done.stderr
    assert report["gate"]["failures"]


def test_keep_float_names_must_be_the_graphs_and_calibration_must_be_kept_apart(made, tmp_path):
    with pytest.raises(UserError, match=r"^--keep-float nowhere: no node of .* has that name"):
        run_onnx(options(tmp_path, made["plain"], variants=("int8-dynamic",), keep_float=("nowhere",)))
    overlapping = tmp_path / "overlapping"
    overlapping.mkdir()
    sample = Path(SAMPLE_DIR)
    (overlapping / "copy.jpg").write_bytes((sample / "rocket.jpg").read_bytes())
    with pytest.raises(UserError, match=r"^--calibration .*: image copy is also scored \(the same file as rocket"):
        run_onnx(options(tmp_path, made["plain"], variants=("int8",), calibration=str(overlapping)))
    with pytest.raises(UserError, match=r"^--variant int8 needs calibration images"):
        run_onnx(options(tmp_path, made["plain"], variants=("int8",)))
    with pytest.raises(UserError, match=r"^--variant 'int4': not a variant"):
        run_onnx(options(tmp_path, made["plain"], variants=("int4",)))
    with pytest.raises(UserError, match=r"^--variant .*missing\.onnx: no such file"):
        run_onnx(options(tmp_path, made["plain"], variants=(str(tmp_path / "missing.onnx"),)))
    with pytest.raises(UserError, match=r"^--max-top1-drop bounds what a variant costs: add --variant NAME"):
        run_onnx(options(tmp_path, made["plain"], max_top1_drop=0.5))


def test_bad_input_is_one_line_naming_the_opset_or_the_node_and_nothing_is_cached(tmp_path):
    old = small_classifier(tmp_path / "old.onnx", opset=11)
    done = run_cli("onnx", str(old), "--preprocess", PRESET, "--provider", "cpu", "--out", str(tmp_path / "o"),
                   "--cache-dir", str(tmp_path / "cache"), "--variant", "int8-dynamic")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "has opset 11, below 13" in done.stderr
    celu = small_classifier(tmp_path / "celu.onnx", activation="Celu")
    with pytest.raises(UserError, match=r"^--variant fp16: ONNX Runtime cannot run the made file .*node act \(Celu\) "
                                        r"does not take tensor\(float16\)"):
        run_onnx(options(tmp_path, celu, variants=("fp16",)))
    variants = tmp_path / "cache" / "onnx-variants"
    assert not variants.exists() or not list(variants.iterdir())
    assert not (tmp_path / "out" / "report.json").exists()


def test_the_gate_fails_on_a_mismatch_only_when_asked_and_bounds_each_variants_drop():
    from types import SimpleNamespace

    from xfverify.evaluator.pipeline.variants import gate

    def report(flips: int, within: float, deltas: list[float]):
        results = [SimpleNamespace(name=f"v{i}", vs_plain=SimpleNamespace(delta=d)) for i, d in enumerate(deltas)]
        return SimpleNamespace(agreement=SimpleNamespace(n_flips=flips, within_tolerance=within),
                               variants=SimpleNamespace(results=results))

    assert gate(OnnxOptions(), report(3, 0.5, [])) is None  # default unchanged: nothing gates
    assert gate(OnnxOptions(fail_on_mismatch=True), report(0, 1.0, [])).failures == []
    failed = gate(OnnxOptions(fail_on_mismatch=True), report(0, 0.999, [])).failures
    assert len(failed) == 1 and "99.900 % of elements within tolerance" in failed[0]
    bounded = gate(OnnxOptions(variants=("fp16",), max_top1_drop=0.5), report(0, 1.0, [0.4, 0.6, 0.5])).failures
    assert bounded == ["variant v1 costs 0.60 points of top-1 against the plain file, over --max-top1-drop 0.5"]


def test_int8_named_with_its_method_calibrates_so_and_the_tool_is_fed_strides(tmp_path):
    """``--variant int8-entropy`` (or -minmax, -percentile) carries its own calibration method beside plain ``int8``'s
    --calibration-method; the calibration tensors reach the quantisation tool in strides that divide them."""
    from xfverify.converter.variants import CALIBRATION_BATCH, CALIBRATION_STRIDE_IMAGES, _Reader, calibration_stride
    from xfverify.evaluator.pipeline.options import check_variant_options

    plain = small_classifier(tmp_path / "small.onnx")
    calibration = calibration_folder(tmp_path / "calibration", n=1)
    specs = check_variant_options(options(tmp_path, plain, variants=("int8-entropy", "int8", "int8-percentile"),
                                          calibration=str(calibration), calibration_method="minmax"))
    assert [(s.kind, s.calibration_method, s.name) for s in specs] == [
        ("int8", "entropy", "int8-entropy"), ("int8", "minmax", "int8-minmax"), ("int8", "percentile", "int8-percentile")]
    with pytest.raises(UserError, match=r"^--variant: the same variant is asked for twice"):
        options(tmp_path, plain, variants=("int8-entropy", "int8"), calibration=str(calibration),
                calibration_method="entropy")
    assert CALIBRATION_BATCH == 8 and CALIBRATION_STRIDE_IMAGES == 32

    def reader_of(n: int) -> _Reader:
        np.save(tmp_path / f"{n}.npy", np.arange(2 * n, dtype=np.float32).reshape(n, 2))
        return _Reader(tmp_path / f"{n}.npy", "image")

    # equal batches (the entropy and percentile histograms need them): 250 images in 50 of 5, strides of 25 images
    shapes = {n: (reader_of(n).batch, len(reader_of(n)), calibration_stride(reader_of(n))) for n in (250, 40, 11, 3)}
    assert shapes == {250: (5, 50, 5), 40: (8, 5, 1), 11: (1, 11, 11), 3: (3, 1, 1)}
    reader, seen = reader_of(250), []
    for start in range(0, len(reader), calibration_stride(reader)):
        reader.set_range(start_index=start, end_index=start + calibration_stride(reader))
        while (batch := reader.get_next()) is not None:
            assert batch["image"].shape == (5, 2)
            seen.append(batch["image"][:, 0])
    assert np.array_equal(np.concatenate(seen), np.arange(0, 500, 2))

    ten = calibration_folder(tmp_path / "ten", n=10)  # batches of 8 and 2 broke the histograms' np.asarray
    done = run_onnx(options(tmp_path, plain, variants=("int8-entropy", "int8-percentile"), calibration=str(ten)))
    assert [(r.name, r.made.n_calibration) for r in done.report.variants.results] == [
        ("int8-entropy", 10), ("int8-percentile", 10)]


def test_calibration_split_holds_images_out_of_data_by_its_rule_and_never_scores_them(made, tmp_path):
    """--calibration-split N: the first N images of a round robin over the classes (by image id) calibrate int8 and
    are left out of every scored prediction; the report gives their number, the rule and their manifest's sha256.
    N that leaves nothing to score, or beside --calibration DIR, is one line."""
    import csv

    from xfverify.evaluator.data.layouts import Dataset, ImageRecord, load_dataset

    toy = Dataset(root="toy", layout="folder", records=tuple(
        ImageRecord(image_id=i, path=i, labels=labels) for i, labels in
        (("a", (5,)), ("b", (5,)), ("c", (2,)), ("d", (2,)), ("e", (2,)), ("f", ()))))
    held, scored = toy.calibration_split(4)
    assert [r.image_id for r in held.records] == ["a", "c", "d", "f"]  # c, a, f (each group's first), then d
    assert [r.image_id for r in scored.records] == ["b", "e"] and "never scored" in scored.notes[-1]

    every = load_dataset(SAMPLE_DIR)
    expected_held, expected_scored = every.calibration_split(2)
    run = run_onnx(options(tmp_path, made["plain"], variants=("int8",), calibration_split=2))
    report = run.report
    predicted = [row["image_id"] for row in csv.DictReader((run.out_dir / "predictions.csv").open())]
    assert predicted == [r.image_id for r in expected_scored.records] and len(predicted) == len(every) - 2
    assert not {r.image_id for r in expected_held.records} & set(predicted)
    calibration = report.variants.calibration
    assert calibration.n_images == 2 and calibration.manifest_sha256 == expected_held.manifest_sha256()
    assert calibration.rule.startswith("--calibration-split 2: a round robin over the classes")
    assert report.variants.results[0].n_scored == report.n_scored == expected_scored.n_labelled
    assert report.dataset.manifest_sha256 == expected_scored.manifest_sha256()
    assert "Chosen by --calibration-split 2" in (run.out_dir / "report.md").read_text()

    with pytest.raises(UserError, match=rf"^--calibration-split {len(every)}: the images asked for .* are "
                                        rf"{len(every)}, none would be left to score"):
        run_onnx(options(tmp_path, made["plain"], variants=("int8",), calibration_split=len(every)))
    with pytest.raises(UserError, match=r"^--calibration DIR and --calibration-split N exclude each other"):
        options(tmp_path, made["plain"], variants=("int8",), calibration_split=2,
                calibration=str(made["options"].calibration))
    with pytest.raises(UserError, match=r"^--calibration-split applies to --variant int8"):
        options(tmp_path, made["plain"], variants=("fp16",), calibration_split=2)
