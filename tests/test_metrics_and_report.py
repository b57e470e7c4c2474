"""Top-k with acceptable-label sets, Wilson intervals, ReaL error, and the report schema."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from xfverify.evaluator.analysis.metrics import compare_to_published, error_stats, real_error, top_k, wilson_interval
from xfverify.evaluator.reports.run import NativeReport
from xfverify.models.imagenet import real_labels
from xfverify.models.preprocess import PRESETS


def test_top_k_orders_best_first_and_breaks_ties_by_index():
    logits = np.array([[0.1, 0.9, 0.5, 0.9, 0.0, 0.2], [5, 4, 3, 2, 1, 0]], dtype=np.float32)
    assert top_k(logits, 3).tolist() == [[1, 3, 2], [0, 1, 2]]


def test_error_counts_accept_any_listed_label_and_skip_excluded_rows():
    topk = np.array([[1, 2, 3, 4, 5], [9, 8, 7, 6, 5], [0, 1, 2, 3, 4], [3, 3, 3, 3, 3]])
    labels = [(2, 1), (5,), (), (0,)]
    include = np.array([True, True, True, False])
    stats = error_stats(topk, labels, include)
    assert (stats.n, stats.top1_errors, stats.top5_errors) == (2, 1, 0)
    assert stats.top1_error == 50.0


def test_wilson_interval_known_values():
    low, high = wilson_interval(25, 100)
    assert low == pytest.approx(17.5, abs=0.1) and high == pytest.approx(34.4, abs=0.1)
    assert wilson_interval(0, 4)[0] == 0.0 and wilson_interval(0, 4)[1] == pytest.approx(48.99, abs=0.01)


def test_real_error_only_for_validation_images_and_skips_unlabelled_real_entries():
    relabels = real_labels()
    assert len(relabels) == 50000
    ids = ["ILSVRC2012_val_00000001", "ILSVRC2012_val_00000002", "ILSVRC2012_val_00000003"]
    assert relabels[0] == ()  # image 1 has no ReaL label and is left out
    topk = np.array([[0] * 5, [relabels[1][0]] * 5, [999] * 5])
    result = real_error(topk, ids, np.ones(3, dtype=bool))
    assert result.n_images == 2 and result.top1_error == 50.0
    assert real_error(topk, ["coffee", "x", "y"], np.ones(3, dtype=bool)) is None


def test_delta_vs_published():
    gap = compare_to_published(26.9, (26.5, 27.3), 25.1)
    assert (gap.top1_error, gap.outside_ci95) == (1.8, True)
    assert compare_to_published(25.0, (24.6, 25.4), 25.1).outside_ci95 is False


def minimal_report() -> dict:
    return {
        "model": "m/x:y", "architecture": "X", "builder": "x()", "random_weights": True, "framework": {"name": "torch", "version": "2"},
        "device": {"type": "cpu", "name": "a CPU"}, "precision": {"requested": "fp32", "tf32": False, "autocast": None, "channels_last": False, "cudnn_benchmark": None, "cuda_graphs": "off"}, "weights": {"source": "random", "sha256": "random", "seed": 0},
        "preprocess": PRESETS["torchvision-256"].to_dict(), "dataset": {"path": "/d", "layout": "folder", "n_images": 1, "n_labelled": 0, "manifest_sha256": "0" * 64},
        "tensors_sha256": "a" * 64, "output": "logits", "top1_error": None, "top5_error": None, "top1_error_ci95": None,
        "top5_error_ci95": None, "n_scored": 0, "published": None, "other_published": [], "delta_vs_published": None,
        "real_labels": None, "timing": {"data_wait_s": 0, "compute_s": 0, "wall_s": 0, "images_per_s": None,
                                        "steady_images_per_s": None, "batch_ms_mean": None, "batch_ms_std": None,
                                        "n_batches": 0, "first_batch_ms": None, "warmup_s": 0, "timeline_s": {}},
        "cache": {"directory": None, "decoded": 0, "reused_shards": 0, "built_shards": 0, "rebuilt_corrupt_shards": 0,
                  "decode_s": 0, "decode_images_per_s": 0, "workers": 1},
        "skipped_images": [], "notes": [], "created": "now", "xfverify_version": "0",
    }


def test_report_schema_requires_every_field_and_refuses_unknown_ones():
    NativeReport.model_validate(minimal_report())
    missing = minimal_report()
    del missing["tensors_sha256"]
    with pytest.raises(ValidationError):
        NativeReport.model_validate(missing)
    extra = minimal_report() | {"surprise": 1}
    with pytest.raises(ValidationError):
        NativeReport.model_validate(extra)
    bad_hash = minimal_report() | {"tensors_sha256": "xyz"}
    with pytest.raises(ValidationError):
        NativeReport.model_validate(bad_hash)


@pytest.mark.parametrize("preprocess", [{}, {"name": "torchvision-256"}])
def test_a_report_or_job_without_a_whole_spec_is_refused(preprocess):
    from xfverify.evaluator.process.tasks import EvaluateJob

    with pytest.raises(ValidationError, match="preprocess"):
        NativeReport.model_validate(minimal_report() | {"preprocess": preprocess})
    with pytest.raises(ValidationError, match="preprocess"):
        EvaluateJob.model_validate({"model": None, "preprocess": preprocess, "device": "cpu", "precision": "fp32",
                                    "n_images": 0, "hw": [8, 8]})


def test_a_report_holds_the_spec_itself_and_writes_it_as_before():
    report = NativeReport.model_validate(minimal_report())
    assert report.preprocess == PRESETS["torchvision-256"]
    written = json.loads(report.model_dump_json(indent=2))["preprocess"]
    assert list(written.items()) == list(PRESETS["torchvision-256"].to_dict().items())
