"""Every model with real weights, on 500 real labelled ImageNet photographs, held to a stated error band.

Why these bands (top-1 error, %):
* The photos (../shared/data/imagenet-sample-500, one per even class) come from a collection that does not
  say which split they are from; every model scores far below its published validation error on them
  (Lite0: about 10 % against 24.9 %), so they are most likely training images. The published number is
  therefore no centre for a band, and not even a useful ceiling: the defect this test exists for, the Lite
  weights fed ImageNet mean/std instead of their own normalisation, measured 22.4 % here, under 24.9 %.
* The same 500 images are scored on every run, so there is no sampling noise between runs. A band of
  +-3 points (15 images) around the reference measurement (bench/results/imagenet_sample_500.json) absorbs
  library drift; preprocessing defects move the error by 10 points and more (Lite0's trap below shows one).
* Lite0 runs natively (torch) and its ONNX export, under ONNX Runtime on the native run's own tensors, agrees on
  every image. Lite1 and Lite2 are the same network family through the same code at other sizes: their reference
  error is scored by their export under ONNX Runtime (a sixth of torch's CPU time; their native runs are in
  bench/results/imagenet_sample_500.json), made by torch's TorchScript exporter (opset 17: seconds, where the
  default dynamo exporter takes a CPU half-minute; Lite0's is the default's), which keeps the suite within its time.
* Two independent sources must agree: timm's own pipeline for Lite0's weights lands within 2 points of the
  TensorFlow original's (measured: 1.2 points; 0.0 and 1.0 for Lite1 and Lite2, bench/results/
  imagenet_sample_500.json). Its tensors are scored by that same export under ONNX Runtime. Lite1's and Lite2's
  presets, both sources', are compared bit for bit with their sources' code by tests/test_parity.py, so here they
  are held to their band alone (each 500-photo pass costs the suite half a minute).
"""

from __future__ import annotations

import pytest

from helpers import imagenet_sample_500, native_json, needs_torch
from xfverify.evaluator.pipeline.onnx import run_onnx
from xfverify.evaluator.pipeline.onnx_pass import export_ahead
from xfverify.evaluator.pipeline.options import NativeOptions, OnnxOptions
from xfverify.models.cards import get_card

REFERENCE_ERROR = {"pypi/efficientnet_lite0": 10.8, "pypi/efficientnet_lite1": 11.2, "pypi/efficientnet_lite2": 8.6}
TIMM_PRESET = {"pypi/efficientnet_lite0": "lite-timm-224"}
TRAP = {"pypi/efficientnet_lite0": "lite-imagenet-norm-224"}  # the Lite weights fed ImageNet mean/std
BAND = 3.0
SOURCES_AGREE = 2.0

pytestmark = [needs_torch, pytest.mark.slow]


def _scored_by_the_export(onnx_file: str, preset: str, out) -> float:
    report = run_onnx(OnnxOptions(target=onnx_file, data=str(imagenet_sample_500()), preprocess=preset,
                                  out=str(out), provider="cpu", batch_size=50)).report
    assert report.n_scored == 500
    return report.top1_error


def test_reference_error_is_in_its_band_onnx_runtime_agrees_on_every_image_and_timm_agrees(tmp_path, shared_cache):
    model = "pypi/efficientnet_lite0"
    reference = native_json(NativeOptions(model=model, data=str(imagenet_sample_500()), out=str(tmp_path / "reference"),
                                          batch_size=16))
    assert reference["n_scored"] == 500
    assert abs(reference["top1_error"] - REFERENCE_ERROR[model]) <= BAND, reference["top1_error"]

    onnx = run_onnx(OnnxOptions(target=model, against=str(tmp_path / "reference"), out=str(tmp_path / "onnx"),
                                provider="cpu", batch_size=50)).report
    assert onnx.agreement.top1_agreement == 100.0, onnx.agreement.flips
    assert onnx.agreement.n_compared == 500 and onnx.tensors_sha256 == onnx.native.tensors_sha256

    timm = _scored_by_the_export(onnx.onnx.path, TIMM_PRESET[model], tmp_path / "timm")
    assert abs(timm - reference["top1_error"]) <= SOURCES_AGREE, (reference["top1_error"], timm)

    wrong = _scored_by_the_export(onnx.onnx.path, TRAP[model], tmp_path / "trap")  # the band catches its defect
    assert wrong > REFERENCE_ERROR[model] + BAND, wrong


@pytest.mark.parametrize("model", ["pypi/efficientnet_lite1", "pypi/efficientnet_lite2"])
def test_the_larger_lites_reference_error_is_in_its_band_through_their_export(model, tmp_path, shared_cache):
    exported = export_ahead(OnnxOptions(target=model, provider="cpu", opset=17)).export  # TorchScript: seconds
    reference = _scored_by_the_export(str(exported.path), get_card(model).preprocess, tmp_path / "reference")
    assert abs(reference - REFERENCE_ERROR[model]) <= BAND, reference
