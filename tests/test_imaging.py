"""Decoding odd and broken files, and the geometry rules (sizes, crop offsets, padding)."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import SAMPLE_DIR, broken_images, decompression_bomb, odd_images
from xfverify.evaluator.data.imaging import BadImageError, decode, load_geometry, resize
from xfverify.models.preprocess import (LIBRARY_INTERPOLATIONS, PRESETS, crop_fraction_window, crop_offset,
                                        shorter_side_size)


@pytest.mark.parametrize("decoder", ["pil", "opencv", "tensorflow"])
def test_odd_images_decode_to_rgb(tmp_path, decoder):
    for kind, path in odd_images(tmp_path).items():
        image = decode(path, decoder)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, kind
        if kind == "gray":
            assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])
        if kind == "exif_rotated":  # neither torchvision's loader nor MXNet's imdecode applies EXIF rotation
            assert image.shape[:2] == (200, 300)


@pytest.mark.parametrize("decoder", ["pil", "opencv", "tensorflow"])
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
    assert crop_offset(341, 224, "round_half_up") == 59  # (341 - 224 + 1) // 2, as TensorFlow's EfficientNet


def test_crop_fraction_window_follows_tensorflows_float32_arithmetic():
    assert crop_fraction_window(375, 500, 224, 32) == 328  # int(0.875 * 375) = 328.125 -> 328
    assert crop_fraction_window(256, 300, 224, 32) == 224  # the window already has the input size
    assert crop_fraction_window(293, 500, 260, 32) == 260  # float32(260 / 292) * 293 = 260.89
    assert crop_fraction_window(500, 333, 240, 32) == 293  # float32(240 / 272) * 333 = 293.82


def test_crop_then_resize_cuts_the_centre_window_then_resizes_it(tmp_path):
    from PIL import Image

    image = np.zeros((300, 400, 3), np.uint8)
    image[:, 200:] = 255  # right half white
    path = tmp_path / "halves.png"
    Image.fromarray(image).save(path)
    spec = PRESETS["lite-tf-224"]
    out = load_geometry(path, spec)
    assert out.shape == (224, 224, 3)
    # window: 262 px wide centred on x = 200, so the output is half black, half white, split in the middle
    assert out[:, :100].max() == 0 and out[:, 124:].min() == 255


def test_tensorflow_decoder_uses_libjpegs_fast_dct(tmp_path):
    photo = SAMPLE_DIR / "grace_hopper.jpg"
    fast, accurate = decode(photo, "tensorflow"), decode(photo, "pil")
    assert fast.shape == accurate.shape
    assert 0 < np.abs(fast.astype(int) - accurate).max() <= 32  # libjpeg's IFAST vs ISLOW DCT: close, not equal
    png = SAMPLE_DIR / "coffee.png"
    assert np.array_equal(decode(png, "tensorflow"), decode(png, "pil"))  # not a JPEG: decoded by PIL
    cmyk = odd_images(tmp_path)["cmyk"]
    assert decode(cmyk, "tensorflow").shape[2] == 3


def test_small_images_are_padded_like_torchvision(tmp_path):
    from PIL import Image

    path = tmp_path / "tiny.png"
    Image.new("RGB", (10, 6), (200, 10, 10)).save(path)
    spec = PRESETS["torchvision-256"].replace(resize_mode="none")
    image = load_geometry(path, spec)
    assert image.shape == (224, 224, 3)
    assert image.sum() == 200 * 10 * 6 + 10 * 10 * 6 * 2  # the picture, zeros around it


def test_garbage_bytes_name_the_file_not_a_buffer(tmp_path):
    path = tmp_path / "garbage.jpg"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(BadImageError) as info:
        decode(path, "pil")
    assert str(path) in str(info.value) and "BytesIO" not in str(info.value)


def test_a_decompression_bomb_is_a_bad_image(tmp_path):
    import struct

    from helpers import decompression_bomb

    bomb = decompression_bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 200_000
    assert struct.unpack(">II", bomb.read_bytes()[16:24]) == (20000, 20000)  # its header's width and height
    with pytest.raises(BadImageError, match="bomb.png: .*exceeds limit"):
        load_geometry(bomb, PRESETS["torchvision-256"])


def test_a_16_bit_grayscale_png_decodes_as_torchvision_does_with_a_caveat(tmp_path):
    from PIL import Image

    from xfverify.evaluator.data.imaging import load_geometry_noting

    path = tmp_path / "depth.png"
    Image.fromarray(np.full((40, 50), 1000, dtype=np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    image, caveat = load_geometry_noting(path, PRESETS["torchvision-256"])
    assert (image == 255).all()  # PIL's convert("RGB"), torchvision's loader, clips: parity kept
    assert "I;16" in caveat and "nearly white" in caveat
    assert load_geometry_noting(path, PRESETS["keras-caffe"])[1] is None  # OpenCV scales 16 bits down: no caveat


@pytest.mark.parametrize("decoder", ["pil", "opencv", "tensorflow"])
def test_a_decompression_bomb_is_a_bad_image_in_every_decoder(tmp_path, decoder):
    bomb = decompression_bomb(tmp_path / "bomb.png")
    with pytest.raises(BadImageError, match="exceeds limit"):
        decode(bomb, decoder)
    big_jpeg = tmp_path / "big.jpg"  # a JPEG past the limit too: its header says so before any decoding
    data = bytearray((SAMPLE_DIR / "grace_hopper.jpg").read_bytes())
    marker = data.index(b"\xff\xc0")  # baseline start-of-frame: length, precision, height, width
    data[marker + 5 : marker + 9] = (30000).to_bytes(2, "big") + (30000).to_bytes(2, "big")
    big_jpeg.write_bytes(bytes(data))
    if decoder != "pil":  # PIL itself refuses it in decode_pil_noting (tested by the bomb above)
        with pytest.raises(BadImageError, match="exceeds limit"):
            decode(big_jpeg, decoder)


def _framework_resize_specs():
    for library in ("tf2", "torch"):
        for interpolation in LIBRARY_INTERPOLATIONS[library]:
            for antialias in ((False,) if interpolation == "nearest" else (False, True)):
                yield PRESETS["torchvision-256"].replace(resize_library=library, interpolation=interpolation,
                                                         antialias=antialias)


@pytest.mark.parametrize("spec", list(_framework_resize_specs()),
                         ids=lambda s: f"{s.resize_library}-{s.interpolation}{'-aa' if s.antialias else ''}")
def test_framework_resizes_give_the_size_asked_and_keep_a_flat_picture_flat(spec):
    flat = np.full((37, 53, 3), (200, 3, 77), np.uint8)
    for height, width in ((20, 70), (80, 11), (37, 20), (1, 1)):
        out = resize(flat, height, width, spec)
        assert out.dtype == np.dtype(spec.cached_dtype) and out.shape == (height, width, 3)
        # the weights of every output pixel sum to 1 (in float32, TensorFlow's floats within its rounding)
        assert np.abs(out - flat[0, 0].astype(np.float64)).max() <= (1e-3 if spec.keeps_float else 0), (height, width)
    same = resize(flat, 37, 53, spec)
    if spec.resize_library == "torch":
        assert same is flat  # torchvision leaves the same size alone
    else:  # tf.image.resize resizes it anyway (float32 but for nearest): the same values
        assert same.dtype == np.dtype(spec.cached_dtype) and (same == flat).all()


@pytest.mark.parametrize("library", ["tf2", "torch"])
def test_antialias_filters_a_shrinking_checkerboard_and_without_it_aliases(library):
    board = ((np.indices((120, 120)).sum(axis=0) % 2) * 255).astype(np.uint8)[..., None].repeat(3, axis=2)
    spec = PRESETS["torchvision-256"].replace(resize_library=library, interpolation="bilinear")
    filtered = resize(board, 40, 40, spec).astype(int)
    aliased = resize(board, 40, 40, spec.replace(antialias=False)).astype(int)
    assert np.abs(filtered - 127.5).max() <= 4  # the kernel, widened 3x, averages the board to grey
    assert aliased.std() > 100  # half-pixel centres land on single pixels: a coarser black and white board


def test_a_tf2_geometry_decodes_and_resizes_end_to_end():
    spec = PRESETS["lite-tf-224"].replace(resize_library="tf2", antialias=True, interpolation="bicubic")
    image = load_geometry(SAMPLE_DIR / "grace_hopper.jpg", spec)
    assert image.shape == (224, 224, 3) and image.dtype == np.float32 and 20 < image.mean() < 235
