"""xfverify's framework-free preprocessing is bit-identical to each framework's own functions.

Real photographs (the embedded sample, grayscale included) plus real-world oddities made from a real
photo: a CMYK JPEG, a grayscale JPEG, a PNG named .JPEG and an EXIF-rotated JPEG. Each reference runs
in its framework's worker process, exactly as `xfverify preprocess --verify` does.
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers import PHOTOS, SAMPLE_DIR, needs_mxnet, needs_tensorflow, needs_torch, odd_images
from xfverify.evaluator.preprocess_cli import REFERENCE_FRAMEWORK, preprocess_files, reference_tensors
from xfverify.models.preprocess import PRESETS

MARKS = {"torch": needs_torch, "tensorflow": needs_tensorflow, "mxnet": needs_mxnet}


def test_every_preset_has_a_reference():
    assert set(REFERENCE_FRAMEWORK) == set(PRESETS)


@pytest.mark.parametrize(
    "preset", [pytest.param(p, marks=MARKS[REFERENCE_FRAMEWORK[p]]) for p in sorted(PRESETS)]
)
def test_preset_is_bit_identical_to_framework(preset, tmp_path):
    paths = [str(SAMPLE_DIR / name) for name in PHOTOS] + [str(p) for p in odd_images(tmp_path).values()]
    ours = preprocess_files(paths, PRESETS[preset])
    reference, where = reference_tensors(preset, paths)
    assert reference.dtype == np.float32 and reference.shape == ours.shape, where
    differing = [p for p, a, b in zip(paths, ours, reference) if a.tobytes() != b.tobytes()]
    assert not differing, f"{preset} differs from {where} on {differing}"
