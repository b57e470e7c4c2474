"""xfverify diagnose: variants as data, paired statistics, the decomposition, the report and its page."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from helpers import SAMPLE_DIR, imagenet_sample_500, needs_chromium, needs_torch, run_cli
from scipy.stats import binomtest, norm

from xfverify.evaluator.analysis.metrics import (
    newcombe_paired_interval,
    paired_difference,
)
from xfverify.evaluator.reports.diagnose import (
    DiagnoseReport,
    VariantRow,
    decomposition,
)
from xfverify.models.cards import get_card, load_cards
from xfverify.models.errors import UserError
from xfverify.models.preprocess import PRESETS
from xfverify.models.variants import (
    REFERENCE,
    _geometry_changes,
    card_variants,
    changed_fields,
    select_variants,
    user_variant,
)



@pytest.mark.parametrize("card", load_cards(), ids=lambda c: c.id)
def test_every_variant_resolves_and_differs_from_its_base_in_exactly_the_fields_it_names(card):
    reference = PRESETS[card.preprocess]
    variants = card_variants(card)
    assert variants[0].name == REFERENCE and len({v.name for v in variants}) == len(variants)
    groups = {v.group for v in variants}
    assert {"normalisation", "decoder", "resize rule", "channel order", "trap"} <= groups
    if reference.output_hw == (224, 224):  # the other frameworks' presets are 224 px
        assert "framework reference" in groups
    for variant in variants[1:]:
        spec = variant.resolve(reference)
        assert changed_fields(variant.base_spec(reference), spec) == set(variant.overrides), variant.name
        assert changed_fields(reference, spec), f"{variant.name} is the reference"
        assert spec.layout == card.input_layout
    for alternative in card.alternatives:
        assert alternative.preset in {v.base for v in variants}
    # Every card's reference resizes bilinear or bicubic, which TensorFlow 2 and torchvision both offer, either way.
    names = {v.name for v in variants}
    assert {"resize-tf2", "resize-tf2-antialias", "resize-torch", "resize-torch-antialias"} <= names


def test_resize_library_variants_change_only_the_library_and_antialias_and_skip_what_cannot_be():
    lite = {v.name: dict(v.overrides) for v in card_variants(get_card("pypi/efficientnet_lite0"))}  # tf1 bilinear
    assert lite["resize-tf2"] == {"resize_library": "tf2"}
    assert lite["resize-tf2-antialias"] == {"resize_library": "tf2", "antialias": True}
    torchvision = {v.name: dict(v.overrides) for v in card_variants(get_card("torchvision/resnet50:IMAGENET1K_V1"))}
    assert torchvision["resize-torch-antialias"] == {"resize_library": "torch"}  # PIL bilinear, antialiased
    assert torchvision["resize-torch"] == {"resize_library": "torch", "antialias": False}
    nearest = PRESETS["keras-caffe-load-img-nearest"]  # nearest: neither framework antialiases it
    names = {v.name for v in _geometry_changes(nearest) if v is not None}
    assert {"resize-tf2", "resize-torch"} <= names and not names & {"resize-tf2-antialias", "resize-torch-antialias"}


def test_variants_are_picked_by_name_and_a_users_own_resolves():
    card = next(c for c in load_cards() if c.id.startswith("pypi/efficientnet_lite0"))
    variants = card_variants(card)
    picked = select_variants(variants, "norm-half-half, squash")
    assert [v.name for v in picked] == [REFERENCE, "norm-half-half", "squash"]
    with pytest.raises(UserError, match="unknown variant nope; this model's are: .*norm-half-half"):
        select_variants(variants, "nope")
    for nothing in ("", ",", " , "):  # an empty list is a mistake, not "all" and not "the reference alone"
        with pytest.raises(UserError, match="names no variant.*leave it out"):
            select_variants(variants, nothing)
    assert select_variants(variants, None) == variants
    mine = user_variant({"name": "mine", "set": {"interpolation": "bicubic", "resize_library": "pil",
                                                 "antialias": "true"}}, "mine.json")
    spec = mine.resolve(PRESETS[card.preprocess])
    assert changed_fields(PRESETS[card.preprocess], spec) == {"interpolation", "resize_library", "antialias"}
    with pytest.raises(UserError, match="unknown preset"):
        user_variant({"name": "x", "preset": "nope"}, "x.json")


def test_gpu_decoding_is_left_out_without_a_gpu_and_refused_when_named(monkeypatch):
    from xfverify.evaluator.pipeline import diagnose
    from xfverify.evaluator.pipeline.diagnose import DiagnoseOptions, chosen_variants

    card = next(c for c in load_cards() if c.id.startswith("pypi/efficientnet_lite0"))
    reference = PRESETS[card.preprocess]
    assert "decoder-nvjpeg" in {v.name for v in card_variants(card)}
    monkeypatch.setattr(diagnose, "_gpu_decoding_possible", lambda: False)
    options = DiagnoseOptions()
    names = [v.name for v in chosen_variants(card, reference, options)]
    assert "decoder-nvjpeg" not in names and "decoder-opencv" in names
    assert options.extra_notes == ["left out without an NVIDIA GPU: decoder-nvjpeg"]
    with pytest.raises(UserError, match="decoder-nvjpeg: decodes on an NVIDIA GPU"):
        chosen_variants(card, reference, DiagnoseOptions(variants="squash,decoder-nvjpeg"))
    monkeypatch.setattr(diagnose, "_gpu_decoding_possible", lambda: True)
    assert "decoder-nvjpeg" in [v.name for v in chosen_variants(card, reference, DiagnoseOptions())]


def _wilson(k: int, n: int, z: float) -> tuple[float, float]:
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return ((centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n))


def test_newcombe_paired_interval_against_a_hand_computation():
    # 100 images: 10 wrong under both, 12 only under the variant, 3 only under the reference, 75 right under both.
    z = norm.ppf(0.975)
    p1, p2 = 22 / 100, 13 / 100
    l1, u1 = _wilson(22, 100, z)
    l2, u2 = _wilson(13, 100, z)
    phi = (10 * 75 - 12 * 3 - 50) / math.sqrt(22 * 78 * 13 * 87)  # B = 714 > n/2: corrected by n/2
    lower = (p1 - p2) - math.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    upper = (p1 - p2) + math.sqrt((p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2)
    got = newcombe_paired_interval(10, 12, 3, 75)
    assert got == pytest.approx((100 * lower, 100 * upper), abs=1e-9)
    assert got[0] < 9.0 < got[1]


def test_paired_difference_counts_flips_and_agrees_with_scipy_and_the_wald_interval_on_many_images():
    rng = np.random.default_rng(0)
    reference_wrong = rng.random(20000) < 0.25
    variant_wrong = reference_wrong.copy()
    variant_wrong[rng.choice(20000, 600, replace=False)] ^= True
    paired = paired_difference(variant_wrong, reference_wrong)
    b = int(np.sum(variant_wrong & ~reference_wrong))
    c = int(np.sum(~variant_wrong & reference_wrong))
    assert (paired.right_to_wrong, paired.wrong_to_right) == (b, c)
    assert paired.delta == pytest.approx(100 * (variant_wrong.mean() - reference_wrong.mean()))
    assert paired.p_value == pytest.approx(binomtest(b, b + c).pvalue)
    n = 20000
    half = norm.ppf(0.975) * math.sqrt((b + c) - (b - c) ** 2 / n) / n * 100  # Wald on the paired differences
    assert paired.ci95 == pytest.approx((paired.delta - half, paired.delta + half), abs=0.02)


def test_no_flip_is_no_difference_and_within_the_noise():
    same = np.array([True, False, False, True] * 50)
    paired = paired_difference(same, same)
    assert (paired.delta, paired.p_value, paired.significant) == (0.0, 1.0, False)
    assert paired.ci95[0] < 0 < paired.ci95[1]
    swapped = newcombe_paired_interval(5, 2, 9, 84)
    assert newcombe_paired_interval(5, 9, 2, 84) == pytest.approx((-swapped[1], -swapped[0]))


def _row(name, delta, significant, flips=(3, 1), ci95=None):
    return VariantRow.model_construct(name=name, group="resize rule", top1_error=10.0 + delta, top1_error_ci95=ci95,
                                      delta=delta, delta_ci95=[delta - 1, delta + 1], significant=significant,
                                      right_to_wrong=flips[0], wrong_to_right=flips[1])


def test_the_decomposition_ranks_only_what_is_outside_the_noise_each_from_the_reference():
    """Each variant is measured alone against the reference, so its step starts there: variants are alternatives
    (two of them may share a cause), and a running total of their deltas is an error no pipeline has."""
    rows = [_row("reference", 0.0, False), _row("small", 1.5, True), _row("noise", 3.0, False),
            _row("big", -4.0, True), _row("none", 0.0, False)]
    d = decomposition(25.0, rows[0], rows[1:])
    assert [s.name for s in d.steps] == ["reference vs published", "big", "small"]
    assert d.ranked == ["big", "small"] and d.within_noise == ["noise", "none"]
    assert d.steps[0].start == 25.0 and d.steps[0].end == 10.0
    assert [(s.start, s.end) for s in d.steps[1:]] == [(10.0, 6.0), (10.0, 11.5)]
    for step, row in zip(d.steps[1:], (rows[3], rows[1])):
        assert step.end == pytest.approx(row.top1_error)
    assert "15.0 points below the published 25.0 %" in d.sentence and "big (-4.0" in d.sentence
    assert d.sentence.endswith("2 variants change nothing measurable.")
    above = decomposition(8.0, rows[0], rows[1:]).sentence
    assert "2.0 points above the published 8.0 %, a gap preprocessing does not explain" in above
    inside = decomposition(10.5, _row("reference", 0.0, False, ci95=[8.1, 12.6]), rows[1:]).sentence
    assert "the published 10.5 % lies inside its 95 % CI (8.1 to 12.6)" in inside


def test_when_every_variant_is_significant_the_sentence_counts_no_quiet_ones():
    rows = [_row("reference", 0.0, False), _row("small", 1.5, True), _row("big", -4.0, True)]
    sentence = decomposition(25.0, rows[0], rows[1:]).sentence
    assert "nothing measurable" not in sentence and sentence.endswith("3 right->wrong / 1 wrong->right).")


@needs_torch
@needs_chromium
def test_diagnose_writes_a_checked_report_and_a_page_that_renders_without_console_errors(tmp_path, browser):
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"name": "mine-bicubic", "set": {"resize_library": "opencv", "interpolation": "bicubic"}}))
    out = tmp_path / "out"
    done = run_cli("diagnose", "--variants", "norm-imagenet-mean-std,squash", "--spec", str(mine), "--out", str(out),
                   "--cache-dir", str(tmp_path / "cache"), "--batch-size", "4")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "variant 4 of 4" in done.stderr
    report = DiagnoseReport.model_validate_json((out / "report.json").read_text())
    assert [v.name for v in report.variants] == ["norm-imagenet-mean-std", "squash", "mine-bicubic"]
    by_name = {v.name: v for v in report.variants}
    assert by_name["norm-imagenet-mean-std"].geometry_key == report.reference.geometry_key  # shards reused
    assert report.cost.geometries == 3 and report.cost.model_loads == 1
    assert report.reference.n_scored == report.n_scored == 4  # the sample has one unlabelled image
    assert (out / "reference" / "report.json").is_file()  # the reference as a native run's folder
    text = (out / "report.html").read_text()
    assert not re.findall(r"(?:src|href)\s*=\s*[\"']?(?:https?:|//)", text)  # nothing to fetch
    assert "<svg" in text and report.decomposition.sentence.split(";")[0][:40] in text
    browser.open(out / "report.html")  # the suite's one browser (tests/browser.py), as every page test opens its page
    assert browser.errors() == [] and browser.requests() == []
    assert browser.js("document.querySelectorAll('svg').length") >= 1  # the waterfall drawn
    shot = tmp_path / "page.png"
    browser.screenshot(shot)
    assert shot.stat().st_size > 10000


def test_a_wrong_variant_name_is_one_line_and_exit_2(tmp_path):
    done = run_cli("diagnose", "--variants", "nope", "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "unknown variant nope" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
@needs_torch
def test_the_demonstration_finds_the_imagenet_normalisation_as_the_largest_cause(tmp_path, shared_cache_dir):
    variants = "norm-imagenet-mean-std,squash"  # the trap, and a geometry change that is a smaller cause
    # the first 150 photographs (the same every run): the trap measures +10.0 (+4.7 to +15.7) there, +12.4 on all 500
    done = run_cli("diagnose", "--data", str(imagenet_sample_500()), "--limit", "150", "--variants", variants,
                   "--out", str(tmp_path / "o"), "--cache-dir", str(shared_cache_dir), timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    report = DiagnoseReport.model_validate_json((tmp_path / "o" / "report.json").read_text())
    largest = {v.name: v for v in report.variants}[report.decomposition.ranked[0]]
    assert largest.name == "norm-imagenet-mean-std"
    assert 8 < largest.delta < 16 and largest.significant and largest.delta_ci95[0] > 0


@pytest.mark.slow
@needs_torch
def test_the_runtime_axis_runs_onnx_runtime_on_the_reference_tensors(tmp_path, shared_cache_dir):
    out = tmp_path / "out"
    done = run_cli("diagnose", "--variants", "norm-half-half", "--onnx", "--out", str(out),
                   "--cache-dir", str(shared_cache_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    report = DiagnoseReport.model_validate_json((out / "report.json").read_text())
    onnx = report.variants[-1]
    assert onnx.name == "onnx-runtime" and onnx.group == "runtime"
    assert onnx.tensors_sha256 == report.reference.tensors_sha256 and onnx.spec == report.reference.spec
    assert onnx.precision.requested == "fp32" and onnx.max_output_difference < 1e-3  # a faithful export
    # the row is the ONNX pass alone (the one `xfverify onnx` runs): no whole ONNX run is left in --out
    assert sorted(p.name for p in out.iterdir()) == [".xfverify-outputs.json", "reference", "report.html",
                                                     "report.json", "report.md"]


@needs_torch
def test_deployment_variants_of_the_export_are_runtime_rows_on_the_reference_tensors(tmp_path, made_export):
    """--onnx-variant fp16 and int8 (calibrated on 2 images held out of --data, scored by no row): rows of the
    runtime axis after ONNX Runtime's, fed the reference's tensors, their outputs compared with the reference's, said
    apart from preprocessing in the decomposition; a bad name or an uncalibrated int8 is the onnx command's line,
    naming --onnx-variant."""
    from xfverify.evaluator.data.layouts import load_dataset

    model = "torchvision/mobilenet_v3_small:IMAGENET1K_V1"
    common = ["--random-weights", "--device", "cpu", "--limit", "5", "--variants", "norm-half-half",
              "--cache-dir", str(tmp_path / "cache")]
    made_export(tmp_path / "cache", model)
    for asked, message in ((["--onnx-variant", "int4"], "--onnx-variant 'int4': not a variant"),
                           (["--onnx-variant", "int8"], "--onnx-variant int8 needs calibration images")):
        refused = run_cli("diagnose", model, *common, *asked, "--out", str(tmp_path / "refused"))
        assert refused.returncode == 2 and message in refused.stderr and "Traceback" not in refused.stderr
        assert not (tmp_path / "refused").exists()
    out = tmp_path / "out"
    done = run_cli("diagnose", model, *common, "--onnx-variant", "fp16", "--onnx-variant", "int8",
                   "--calibration-split", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    report = DiagnoseReport.model_validate_json((out / "report.json").read_text())
    held, scored = load_dataset(SAMPLE_DIR).select(limit=5).calibration_split(2)
    assert report.dataset.manifest_sha256 == scored.manifest_sha256() and report.dataset.n_images == 3
    assert [v.name for v in report.variants] == ["norm-half-half", "onnx-runtime", "onnx-fp16", "onnx-int8-minmax"]
    for row in report.variants[1:]:
        assert row.group == "runtime" and row.tensors_sha256 == report.reference.tensors_sha256
        assert row.spec == report.reference.spec and row.max_output_difference is not None
    runtime, fp16, int8 = report.variants[1:]
    assert runtime.max_output_difference < 1e-3  # the plain export: the variants' differences are their own
    assert fp16.max_output_difference > 0 and int8.max_output_difference > 0 and "keep_io_types=True" in fp16.why
    assert f"calibrated on 2 images of {held.root} (manifest sha256 {held.manifest_sha256()[:16]}" in int8.why
    decomposition = report.decomposition
    if not decomposition.ranked:  # 3 images: nothing measurable, and the runtime axis is said apart
        assert "the runtime axis (onnx-runtime, onnx-fp16, onnx-int8-minmax) changes nothing" in decomposition.sentence
    assert all(s.axis == "runtime" for s in decomposition.steps if s.name.startswith("onnx-"))
    assert (fp16.ran_as, int8.ran_as, runtime.ran_as) == (
        "float16 file, float32 inputs and outputs", "int8 QDQ file, minmax calibration", None)
    assert "| onnx-int8-minmax | runtime | int8 QDQ file, minmax calibration; outputs within" in (
        out / "report.md").read_text()


@pytest.mark.parametrize("make, fragment", [
    (lambda out: (out / "report.html").mkdir(parents=True), "report.html there is a folder"),
    (lambda out: (out / "reference" / "logits.npy").mkdir(parents=True), "reference/logits.npy there is not a file xfverify writes"),
    (lambda out: (out.mkdir(), (out / "reference").write_text("")), "reference there is not a folder (a symbolic link or a file)"),
])
def test_an_output_that_cannot_be_replaced_is_refused_before_any_work(make, fragment, tmp_path, monkeypatch):
    """Before: the whole diagnosis ran, then os.replace's IsADirectoryError (or mkdir's FileExistsError) traceback."""
    from xfverify.evaluator.pipeline import diagnose
    from xfverify.evaluator.pipeline.diagnose import DiagnoseOptions, run_diagnose

    def no_work(*args, **kwargs):
        raise AssertionError("the variants ran before --out was checked")

    monkeypatch.setattr(diagnose, "evaluate_variants", no_work)
    out = tmp_path / "o"
    make(out)
    with pytest.raises(UserError, match=re.escape(fragment)):
        run_diagnose(DiagnoseOptions(out=str(out), limit=2, variants="lite-timm-224"))


@needs_torch
def test_a_variant_whose_tensors_are_infinite_is_counted_wrong_and_said(tmp_path):
    """Before: the NaN outputs of infinite tensors were scored with invented predictions and no note."""
    infinite = tmp_path / "x.json"
    infinite.write_text(json.dumps({"name": "x", "set": {"scale": 1e-300}}))
    out = tmp_path / "out"
    done = run_cli("diagnose", "--variants", "squash", "--spec", str(infinite), "--limit", "3", "--out", str(out),
                   "--cache-dir", str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr[-3000:]
    report = DiagnoseReport.model_validate_json((out / "report.json").read_text())
    by_name = {v.name: v for v in report.variants}
    assert by_name["x"].top1_error == 100.0 and by_name["squash"].top1_error == report.reference.top1_error
    said = (f"variant x: 3 of 3 image(s) gave outputs holding NaN or +-inf, the first {SAMPLE_DIR / 'camera.png'}: "
            "they have no predictions and count as wrong")
    assert [note for note in report.notes if "NaN or +-inf" in note] == [said]
