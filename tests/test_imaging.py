"""Decoding odd and broken files, and the geometry rules (sizes, crop offsets, padding)."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import broken_images, odd_images
from xfverify.evaluator.imaging import BadImageError, decode, load_geometry
from xfverify.models.preprocess import PRESETS, crop_offset, shorter_side_size


@pytest.mark.parametrize("decoder", ["pil", "opencv"])
def test_odd_images_decode_to_rgb(tmp_path, decoder):
    for kind, path in odd_images(tmp_path).items():
        image = decode(path, decoder)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, kind
        if kind == "gray":
            assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])
        if kind == "exif_rotated":  # neither torchvision's loader nor MXNet's imdecode applies EXIF rotation
            assert image.shape[:2] == (200, 300)


@pytest.mark.parametrize("decoder", ["pil", "opencv"])
@pytest.mark.parametrize("kind", ["truncated", "empty", "text"])
def test_broken_files_raise_naming_the_file(tmp_path, decoder, kind):
    path = broken_images(tmp_path)[kind]
    with pytest.raises(BadImageError) as info:
        decode(path, decoder)
    assert str(path) in str(info.value)
    assert "--on-bad-image skip" in str(info.value)


def test_shorter_side_and_crop_rules():
    assert shorter_side_size(375, 500, 256) == (256, 341)
    assert shorter_side_size(500, 375, 232) == (309, 232)
    assert crop_offset(341, 224, "round_half_even") == 58  # round(58.5) -> 58, as torchvision
    assert crop_offset(343, 224, "round_half_even") == 60  # round(59.5) -> 60
    assert crop_offset(341, 224, "floor") == 58


def test_small_images_are_padded_like_torchvision(tmp_path):
    from PIL import Image

    path = tmp_path / "tiny.png"
    Image.new("RGB", (10, 6), (200, 10, 10)).save(path)
    spec = PRESETS["torchvision-256"].replace(resize_mode="none")
    image = load_geometry(path, spec)
    assert image.shape == (224, 224, 3)
    assert image.sum() == 200 * 10 * 6 + 10 * 10 * 6 * 2  # the picture, zeros around it
