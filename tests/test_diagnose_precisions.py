"""xfverify diagnose --precisions: the model at other precisions on the reference's own tensors (the runtime axis)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import (
    imagenet_sample_500,
    needs_mxnet,
    needs_tensorflow,
    needs_torch,
    run_cli,
)

from xfverify.evaluator.process.blocks import KerasPrecision, PlainPrecision, TorchPrecision
from xfverify.evaluator.process.tasks import EvaluateJob, EvaluateManyJob, VariantPart
from xfverify.evaluator.reports.diagnose import (
    DiagnoseReport,
    VariantRow,
    decomposition,
    ran_at,
)
from xfverify.models.cards import load_cards
from xfverify.models.errors import UserError
from xfverify.models.preprocess import PRESETS
from xfverify.models.variants import RUNTIME, card_variants, precision_variants


def test_precision_variants_are_runtime_rows_on_the_reference_spec_and_bad_names_are_one_line():
    variants = precision_variants(" bf16, fp16,bf16 ", "fp32", "torch")
    assert [(v.name, v.group, v.precision) for v in variants] == [("precision-bf16", RUNTIME, "bf16"),
                                                                  ("precision-fp16", RUNTIME, "fp16")]
    card = next(c for c in load_cards() if c.id.startswith("pypi/efficientnet_lite0"))
    reference = PRESETS[card.preprocess]
    reference_variant = card_variants(card)[0]
    assert all(v.resolve(reference) == reference_variant.resolve(reference) for v in variants)  # the same tensors
    assert "torch autocast" in variants[0].why
    assert precision_variants(None, "fp32", "torch") == []
    with pytest.raises(UserError, match="unknown precision fp64; choose from fp32, tf32, bf16, fp16"):
        precision_variants("bf16,fp64", "fp32", "torch")
    with pytest.raises(UserError, match="--precisions bf16: the reference already runs at it"):
        precision_variants("bf16", "bf16", "torch")


def test_an_evaluate_many_job_gives_each_pass_its_precision():
    base = EvaluateJob(model="pypi/efficientnet_lite0", preprocess=PRESETS["lite-tf-224"], device="cpu", precision="fp32", batch_size=4,
                       n_images=5, hw=(224, 224))
    parts = [VariantPart(name=n, preprocess=PRESETS["lite-tf-224"], hw=(224, 224), data_file=f"{n}.json", precision=p)
             for n, p in (("reference", None), ("precision-fp16", "fp16"), ("precision-bf16", "bf16"))]
    job = EvaluateManyJob(base=base, variants=parts)
    assert [job.for_variant(i).precision for i in range(3)] == ["fp32", "fp16", "bf16"]
    assert job.precisions() == ["fp32", "fp16", "bf16"]


def _row(name, delta, significant, group):
    return VariantRow.model_construct(name=name, group=group, top1_error=10.0 + delta, top1_error_ci95=None,
                                      delta=delta, delta_ci95=[delta - 1, delta + 1], significant=significant,
                                      right_to_wrong=3, wrong_to_right=1)


def test_the_decomposition_puts_the_runtime_axis_after_preprocessing_and_says_it_apart():
    rows = [_row("reference", 0.0, False, "reference"), _row("precision-fp16", 5.0, True, RUNTIME),
            _row("squash", 2.0, True, "resize rule"), _row("norm", 0.5, False, "normalisation"),
            _row("precision-bf16", 0.3, False, RUNTIME)]
    d = decomposition(20.0, rows[0], rows[1:])
    assert [(s.name, s.axis) for s in d.steps] == [("reference vs published", "published"),
                                                             ("squash", "preprocessing"), ("precision-fp16", RUNTIME)]
    assert d.ranked == ["squash", "precision-fp16"]
    preprocessing, runtime = d.sentence.split("; on the runtime axis")
    assert "squash (+2.0" in preprocessing and "precision-fp16" not in preprocessing
    assert "precision-fp16 (+5.0" in runtime and runtime.endswith("1 variant changes nothing measurable.")
    quiet = decomposition(20.0, rows[0], [rows[3], rows[4]]).sentence
    assert "the runtime axis (precision-bf16) changes nothing measurable" in quiet
    torch_cpu = dict(channels_last=False, cudnn_benchmark=None, cuda_graphs="off")
    assert ran_at(TorchPrecision(requested="bf16", tf32=False, autocast="bfloat16", **torch_cpu)) == "autocast bfloat16"
    assert ran_at(KerasPrecision(requested="fp16", tf32=False, policy="mixed_float16")) == "policy mixed_float16"
    assert ran_at(KerasPrecision(requested="fp32", tf32=False, policy="float32")) == "fp32"
    assert ran_at(TorchPrecision(requested="tf32", tf32=True, autocast=None, **torch_cpu)) == "fp32 + TF32"
    assert ran_at(PlainPrecision(requested="fp32", tf32=False)) == "fp32"


def _diagnose(out, cache, *args, timeout=600):
    done = run_cli("diagnose", *args, "--out", str(out), "--cache-dir", str(cache), "--batch-size", "4",
                   "--device", "cpu", timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return DiagnoseReport.model_validate_json((out / "report.json").read_text()), done


@needs_torch
def test_torch_precisions_run_on_the_reference_tensors_in_the_same_worker_and_leave_fp32_untouched(tmp_path):
    cache = tmp_path / "cache"
    native = run_cli("native", "--out", str(tmp_path / "native"), "--cache-dir", str(cache), "--batch-size", "4",
                     "--device", "cpu")
    assert native.returncode == 0, native.stderr[-3000:]
    report, done = _diagnose(tmp_path / "out", cache, "--variants", "norm-half-half", "--precisions", "bf16,fp16")
    assert "variant 4 of 4: precision-fp16" in done.stderr  # one worker ran all four passes
    assert [v.name for v in report.variants] == ["norm-half-half", "precision-bf16", "precision-fp16"]
    assert report.cost.model_loads == 1 and report.cost.precision_passes == 2
    assert report.cost.model_passes == 4 and report.cost.geometries == 1
    ran = {v.name: v for v in report.variants}
    for name, autocast in (("precision-bf16", "bfloat16"), ("precision-fp16", "float16")):
        row = ran[name]
        assert row.group == "runtime" and row.precision.requested == name[-4:]
        assert row.precision.autocast == autocast
        assert row.tensors_sha256 == report.reference.tensors_sha256 and row.spec == report.reference.spec
        assert row.n_scored == report.n_scored and row.delta_ci95[0] <= row.delta <= row.delta_ci95[1]
        assert 0 < row.max_output_difference < 0.2  # it did run at another precision, and close to fp32
    assert report.reference.max_output_difference is None and ran["norm-half-half"].max_output_difference is None
    assert report.reference.precision.autocast is None and report.precision.requested == "fp32"
    # fp32 untouched: the reference pass gives the native run's logits bit for bit
    reference_logits = np.load(tmp_path / "out" / "reference" / "logits.npy")
    assert np.array_equal(reference_logits, np.load(tmp_path / "native" / "logits.npy"), equal_nan=True)
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "| precision-bf16 | runtime | autocast bfloat16; outputs within " in markdown
    [reference_line] = [line for line in markdown.splitlines() if line.startswith("| reference |")]
    assert reference_line.endswith("| — | — | — | reference |")  # not paired with itself
    # four images cannot make a difference significant (McNemar p >= 1/8)
    sentence = report.decomposition.sentence
    assert "the runtime axis (precision-bf16, precision-fp16) changes nothing measurable" in sentence
    assert "autocast float16" in (tmp_path / "out" / "report.html").read_text()


@pytest.mark.parametrize("args, message", [
    (["--precisions", "fp64"], "--precisions: unknown precision fp64"),
    (["--precisions", "fp32"], "--precisions fp32: the reference already runs at it"),
])
def test_a_bad_precision_name_is_one_line_and_exit_2(tmp_path, args, message):
    done = run_cli("diagnose", *args, "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and message in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


@needs_torch
def test_tf32_on_the_cpu_is_one_line_and_exit_2(tmp_path):
    done = run_cli("diagnose", "--variants", "reference", "--precisions", "tf32", "--device", "cpu",
                   "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "--precisions tf32 applies to CUDA GPUs only" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "report.json").exists()


@needs_mxnet
def test_mxnet_refuses_precision_variants_in_one_line(tmp_path):
    done = run_cli("diagnose", "gluoncv/resnet50_v1:imagenet", "--random-weights", "--variants", "reference",
                   "--precisions", "bf16", "--device", "cpu", "--out", str(tmp_path / "out"),
                   "--cache-dir", str(tmp_path / "cache"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "--precisions bf16: the mxnet back-end cannot change precision" in done.stderr
    assert "torch and Keras" in done.stderr and "Traceback" not in done.stderr


@needs_tensorflow
def test_keras_precisions_rebuild_the_network_under_the_policy_with_the_same_weights(tmp_path):
    report, done = _diagnose(tmp_path / "out", tmp_path / "cache", "keras/MobileNetV2:imagenet", "--random-weights",
                             "--variants", "reference", "--precisions", "bf16")
    (row,) = report.variants
    assert row.name == "precision-bf16" and row.group == "runtime"
    assert row.precision.policy == "mixed_bfloat16" and report.reference.precision.policy == "float32"
    assert row.tensors_sha256 == report.reference.tensors_sha256 and row.max_output_difference is not None
    assert report.cost.model_loads == 1 and "variant 2 of 2: precision-bf16" in done.stderr


@pytest.mark.slow
@needs_torch
def test_bf16_changes_lite0_on_real_photos_by_a_small_delta_with_a_valid_interval(tmp_path):
    report, _ = _diagnose(tmp_path / "out", tmp_path / "cache", "--data", str(imagenet_sample_500()), "--limit", "50",
                          "--variants", "reference", "--precisions", "bf16", timeout=1800)
    (row,) = report.variants
    assert report.n_scored == row.n_scored == 50 and row.tensors_sha256 == report.reference.tensors_sha256
    lo, hi = row.delta_ci95
    assert -100 <= lo <= row.delta <= hi <= 100 and lo < hi
    assert abs(row.delta) <= 3 and row.right_to_wrong + row.wrong_to_right <= 6  # bf16 moves a few images at most
    assert not row.significant and 0 < row.max_output_difference < 0.2


@pytest.mark.parametrize("names", ["", " ", ",", " , ,"])
def test_precisions_that_name_nothing_are_one_line_not_a_silent_run_without_the_runtime_axis(names):
    with pytest.raises(UserError, match="--precisions names no precision; give some of tf32, bf16, fp16"):
        precision_variants(names, "fp32", "torch")
