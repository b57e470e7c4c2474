"""xfverify's framework-free preprocessing against each preset's source, on real photographs.

The references (:mod:`xfverify.evaluator.references`) are the frameworks' and the weights' origins' own
code, with their parameters written out as their sources state them; they import nothing from xfverify
(an import contract checks that). Each runs in its framework's worker, as `xfverify preprocess --verify`
does. Photos: the embedded sample, a few dozen of imagenet-sample-500, and real-world oddities made from
a real photo (CMYK, grayscale, PNG named .JPEG, EXIF-rotated).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import PHOTOS, SAMPLE_DIR, needs_mxnet, needs_tensorflow, needs_torch, odd_images, real_photos
from xfverify.evaluator.preprocess_cli import compare_with_reference, preprocess_files, reference_tensors
from xfverify.evaluator.references import REFERENCES
from xfverify.models.preprocess import PRESETS

MARKS = {"torch": needs_torch, "tensorflow": needs_tensorflow, "mxnet": needs_mxnet}

# The TensorFlow original never decodes these: its ImageNet conversion script (build_imagenet_data.py in
# tensorflow/tpu) re-encodes PNG and CMYK files as RGB JPEGs, and tf.image.decode_and_crop_jpeg refuses PNG.
NOT_FED_TO_THE_TPU_ORIGINAL = {"cmyk", "png_named_jpeg"}


def test_every_preset_has_a_reference():
    assert set(REFERENCES) == set(PRESETS)


def _photos(tmp_path: Path, preset: str) -> list[str]:
    odd = odd_images(tmp_path)
    if REFERENCES[preset].module == "tpu_efficientnet":
        odd = {kind: path for kind, path in odd.items() if kind not in NOT_FED_TO_THE_TPU_ORIGINAL}
        sample = [name for name in PHOTOS if name.endswith(".jpg")]
    else:
        sample = PHOTOS
    return [str(SAMPLE_DIR / name) for name in sample] + [str(p) for p in odd.values()] + real_photos(every=25)


@pytest.mark.parametrize("preset", [pytest.param(p, marks=MARKS[REFERENCES[p].framework]) for p in sorted(PRESETS)])
def test_preset_matches_its_source(preset, tmp_path):
    paths = _photos(tmp_path, preset)
    ours = preprocess_files(paths, PRESETS[preset])
    theirs, where = reference_tensors(preset, paths)
    reference = REFERENCES[preset]
    agreement = compare_with_reference(ours, theirs, reference)
    if reference.exact:
        assert agreement.identical, f"{preset} differs from {where}: {agreement.describe(reference, paths)}"
        return
    # Images whose crop window already has the input size: the original feeds them as uint8 / 255, every value
    # within [-127/128, -126/128] (see the reference's `why`); xfverify does not copy that. All others: in bound.
    fed_as_uint8_over_255 = tuple(i for i in range(len(paths)) if theirs[i].max() <= -126 / 128)
    assert agreement.outside == fed_as_uint8_over_255, agreement.describe(reference, paths)


@needs_tensorflow
def test_the_tpu_original_feeds_an_unresized_window_as_uint8_over_255(tmp_path):
    from PIL import Image

    path = tmp_path / "short_side_256.jpg"  # window = int(0.875 * 256) = 224: tf.compat.v1 resize returns it as is
    Image.open(SAMPLE_DIR / "rocket.jpg").convert("RGB").resize((300, 256)).save(path, quality=95)
    theirs, _ = reference_tensors("lite-tf-224", [str(path)])
    ours = preprocess_files([str(path)], PRESETS["lite-tf-224"])
    assert theirs.max() <= -126 / 128  # (x / 255 - 127) / 128: every value near -1
    assert ours.min() < -0.5 < 0.5 < ours.max()  # xfverify feeds the picture
