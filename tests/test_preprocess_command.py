"""`xfverify preprocess`: writes exactly the tensor the model is fed; --verify compares with the framework."""

from __future__ import annotations

import numpy as np

from helpers import SAMPLE_DIR, needs_mxnet, needs_tensorflow, needs_torch, odd_images, run_cli
from xfverify.evaluator.pipeline.preprocess import preprocess_files
from xfverify.models.preprocess import PRESETS


def test_writes_the_model_input_in_its_layout(tmp_path):
    images = [str(SAMPLE_DIR / "coffee.png"), str(SAMPLE_DIR / "camera.png")]
    out = tmp_path / "x.npy"
    result = run_cli("preprocess", "keras/ResNet50", *images, "--out", str(out))
    assert result.returncode == 0, result.stderr
    tensor = np.load(out)
    assert tensor.dtype == np.float32 and tensor.shape == (2, 224, 224, 3)  # Keras: NHWC, caffe mode (BGR)
    assert tensor.tobytes() == preprocess_files(images, PRESETS["keras-caffe"]).tobytes()
    assert "NHWC" in result.stderr


def test_overrides_and_missing_image(tmp_path):
    out = tmp_path / "x.npy"
    result = run_cli("preprocess", "torchvision/resnet50", str(SAMPLE_DIR / "rocket.jpg"), "--out", str(out),
                     "--set", "crop_size=160", "--set", "layout=NHWC")
    assert result.returncode == 0, result.stderr
    assert np.load(out).shape == (1, 160, 160, 3)
    missing = run_cli("preprocess", "torchvision/resnet50", str(tmp_path / "nope.jpg"), "--out", str(out))
    assert missing.returncode == 2 and "no such image file" in missing.stderr
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    unwritable = run_cli("preprocess", "torchvision/resnet50", str(SAMPLE_DIR / "rocket.jpg"), "--out",
                         str(blocker / "x.npy"))
    assert unwritable.returncode == 2 and "cannot create this folder" in unwritable.stderr
    assert "Traceback" not in unwritable.stderr
    unverifiable = tmp_path / "set.npy"
    refused = run_cli("preprocess", "torchvision/resnet50", str(SAMPLE_DIR / "rocket.jpg"), "--out", str(unverifiable),
                      "--set", "crop_size=160", "--verify")
    assert refused.returncode == 2 and "cannot check --set overrides" in refused.stderr
    assert not unverifiable.exists()  # refused before anything was written


@needs_tensorflow
def test_verify_reports_bit_identity(tmp_path):
    result = run_cli("preprocess", "keras/MobileNet", str(SAMPLE_DIR / "grace_hopper.jpg"), "--out",
                     str(tmp_path / "x.npy"), "--verify")
    assert result.returncode == 0, result.stderr
    assert "bit-identical" in result.stderr


@needs_tensorflow
def test_verify_of_a_jpeg_only_source_names_the_file_it_cannot_read(tmp_path):
    """The TensorFlow original's Lite evaluation reads ImageNet's JPEGs with JPEG-only ops: a PNG is one line, not
    the reference worker's traceback; a JPEG named .png is a JPEG and is verified."""
    from test_native import assert_user_error

    result = run_cli("preprocess", "pypi/efficientnet_lite0", str(SAMPLE_DIR / "rocket.jpg"),
                     str(SAMPLE_DIR / "chelsea.png"), "--out", str(tmp_path / "x.npy"), "--verify")
    assert_user_error(result, "lite-tf-224", "JPEG", "chelsea.png", "1 of 2")
    assert not (tmp_path / "x.npy").exists()
    disguised = tmp_path / "rocket.png"
    disguised.write_bytes((SAMPLE_DIR / "rocket.jpg").read_bytes())
    verified = run_cli("preprocess", "pypi/efficientnet_lite0", str(disguised), "--out", str(tmp_path / "y.npy"),
                       "--verify")
    assert verified.returncode == 0, verified.stderr
    assert "within the expected bound" in verified.stderr or "bit-identical" in verified.stderr


def test_a_folder_given_as_an_image_or_an_onnx_file_says_it_is_a_folder(tmp_path):
    """Before: '<folder>: no such image file' / 'no such ONNX file', about a folder that is there."""
    import pytest

    from xfverify.evaluator.data.layouts import records_from_paths
    from xfverify.evaluator.pipeline.onnx import run_onnx
    from xfverify.evaluator.pipeline.options import OnnxOptions
    from xfverify.models.errors import UserError

    with pytest.raises(UserError, match="is a folder, not an image file: give the image files"):
        records_from_paths([str(SAMPLE_DIR / "coffee.png"), str(SAMPLE_DIR)])
    folder = tmp_path / "model.onnx"
    folder.mkdir()
    with pytest.raises(UserError, match="is a folder, not an ONNX file"):
        run_onnx(OnnxOptions(target=str(folder), preprocess="torchvision-256", out=str(tmp_path / "o")))


@needs_torch
def test_verify_checks_a_catalogue_card_against_its_source(tmp_path):
    """A catalogue card's own spec (no preset of xfverify's) is compared with its source's transform for that entry:
    timm's create_transform of the tag's pretrained_cfg; a --set override of it is refused, as for a preset."""
    image = str(SAMPLE_DIR / "chelsea.png")
    result = run_cli("preprocess", "timm/vit_base_patch16_224:augreg_in21k_ft_in1k", image, "--out",
                     str(tmp_path / "x.npy"), "--verify")
    assert result.returncode == 0, result.stderr
    assert "timm" in result.stderr and "create_transform: bit-identical" in result.stderr
    refused = run_cli("preprocess", "timm/vit_base_patch16_224:augreg_in21k_ft_in1k", image, "--out",
                      str(tmp_path / "y.npy"), "--set", "crop_size=160", "--verify")
    assert refused.returncode == 2 and "cannot check --set overrides" in refused.stderr


@needs_mxnet
def test_gluoncv_images_are_decoded_by_mxnets_own_decoder_and_a_bad_one_is_one_line(tmp_path):
    """GluonCV loads images with mx.image.imread (MXNet's bundled libjpeg): a 4:4:0 JPEG, which opencv-python decodes
    up to 2 levels apart, is fed bit-identical to GluonCV's transform; a file MXNet cannot decode is one line."""
    from test_native import assert_user_error

    odd = odd_images(tmp_path / "odd")["chroma_440"]
    result = run_cli("preprocess", "gluoncv/resnet50_v1b:imagenet", str(odd), "--out", str(tmp_path / "x.npy"),
                     "--verify")
    assert result.returncode == 0, result.stderr
    assert "transform_eval" in result.stderr and "bit-identical" in result.stderr
    as_opencv = run_cli("preprocess", "gluoncv/resnet50_v1b:imagenet", str(odd), "--out", str(tmp_path / "y.npy"),
                        "--set", "decoder=opencv")
    assert as_opencv.returncode == 0, as_opencv.stderr
    assert 0 < np.abs(np.load(tmp_path / "x.npy") - np.load(tmp_path / "y.npy")).max() < 0.1  # the decoders differ
    text = tmp_path / "text.JPEG"
    text.write_text("not an image\n")
    bad = run_cli("preprocess", "gluoncv/resnet50_v1b:imagenet", str(text), "--out", str(tmp_path / "z.npy"))
    assert_user_error(bad, "cannot decode image", "text.JPEG", "MXNet could not decode it", "Invalid image file")
    assert not (tmp_path / "z.npy").exists()
