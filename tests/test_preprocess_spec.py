"""Preprocessing specs: validation, presets, the resolver's precedence, and the normalisation table."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from xfverify.evaluator.data.normalise import normalisation_lut, normalise
from xfverify.models.overrides import parse_overrides
from xfverify.models.cards import load_cards
from xfverify.models.errors import UserError
from xfverify.models.preprocess import PRESETS, PreprocessSpec, resolve_preprocess


def test_every_field_is_explicit_and_specs_are_frozen():
    spec = PRESETS["torchvision-256"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.resize_size = 300  # type: ignore[misc]
    required = [f.name for f in dataclasses.fields(PreprocessSpec) if f.default is dataclasses.MISSING]
    assert {"decoder", "interpolation", "resize_library", "antialias", "mean", "std", "layout"} <= set(required)


def test_a_spec_in_a_job_or_report_is_written_as_its_dict_and_read_back_whole():
    """Jobs and reports hold the frozen spec; their JSON is what the spec's dict was, key for key and byte for byte."""
    from pydantic import TypeAdapter

    from xfverify.models.cards import find_cards

    typed, plain = TypeAdapter(PreprocessSpec), TypeAdapter(dict)
    specs = {spec.to_dict()["source"] + spec.name: spec for spec in
             [*PRESETS.values(), *(card.reference_spec for card in find_cards())]}
    for spec in specs.values():
        written = typed.dump_json(spec)
        assert written == plain.dump_json(spec.to_dict()), spec.name
        read = typed.validate_json(written)
        assert isinstance(read, PreprocessSpec) and read.to_dict() == spec.to_dict()


@pytest.mark.parametrize("damage", ["empty", "partial", "unknown field", "invalid"])
def test_a_spec_that_is_not_whole_and_valid_is_refused_where_it_is_read(damage):
    from pydantic import TypeAdapter, ValidationError

    data = PRESETS["torchvision-256"].to_dict()
    data = {"empty": {}, "partial": {k: v for k, v in data.items() if k != "layout"},
            "unknown field": {**data, "gamma": 2.2}, "invalid": {**data, "crop_size": -1}}[damage]
    with pytest.raises(UserError if damage == "invalid" else ValidationError):
        TypeAdapter(PreprocessSpec).validate_python(data)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"interpolation": "cubic"}, "interpolation='cubic'"),
        ({"antialias": False}, "PIL always antialiases"),
        ({"resize_library": "opencv", "antialias": True}, "OpenCV does not antialias"),
        ({"std": (0.2, 0.0, 0.2)}, "std must not contain 0"),
        ({"layout": "CHW"}, "layout='CHW'"),
        ({"order": "crop_then_resize"}, "resize_mode=squash, resize_size=crop_size"),
        ({"crop_padding": 32}, "only with order=crop_then_resize"),
        ({"resize_library": "tf1", "antialias": False, "interpolation": "lanczos"},
         "tf1 has no lanczos interpolation; choose from bilinear, bicubic"),
        ({"resize_library": "tf2", "interpolation": "nearest"}, "tf2's nearest resize ignores antialias"),
        ({"resize_library": "torch", "interpolation": "nearest"}, "torch's nearest resize ignores antialias"),
        ({"resize_library": "torch", "interpolation": "lanczos"}, "torch has no lanczos interpolation; choose from nearest, bilinear, bicubic"),
        ({"resize_library": "tf2", "interpolation": "area"}, "tf2 has no area interpolation; choose from nearest, bilinear, bicubic, lanczos"),
        ({"crop_size": 2400}, "at most 2048"),
        ({"resize_size": 4096}, "at most 2048"),
    ],
)
def test_invalid_specs_are_refused(changes, message):
    with pytest.raises(UserError, match=message):
        PRESETS["torchvision-256"].replace(**changes)


def test_resolver_precedence_and_overrides():
    assert resolve_preprocess(None, default="torchvision-232") is PRESETS["torchvision-232"]
    assert resolve_preprocess("torchvision-256", default="torchvision-232") is PRESETS["torchvision-256"]
    spec = resolve_preprocess("torchvision-256", overrides=parse_overrides(["interpolation=bicubic", "crop_pct=0.95"]))
    assert spec.interpolation == "bicubic" and spec.resize_size == 235 and spec.crop_size == 224
    assert "interpolation=bicubic" in spec.name
    assert spec.geometry_key() != PRESETS["torchvision-256"].geometry_key()
    normalisation_only = resolve_preprocess("torchvision-256", overrides={"mean": "0.5 0.5 0.5"})
    assert normalisation_only.geometry_key() == PRESETS["torchvision-256"].geometry_key()


@pytest.mark.parametrize("items, message", [(["colour=red"], "unknown preprocessing field"), (["resize_size"], "field=value"),
                                            (["resize_size=big"], "whole number")])
def test_override_errors(items, message):
    with pytest.raises(UserError, match=message):
        resolve_preprocess("torchvision-256", overrides=parse_overrides(items))


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(UserError, match="torchvision-256"):
        resolve_preprocess("torchvision-999")


def test_every_card_names_a_known_preset_with_its_layout():
    for card in load_cards():
        assert PRESETS[card.preprocess].layout == card.input_layout


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_lookup_table_equals_direct_float32_arithmetic(preset):
    spec = PRESETS[preset]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 8, 9, 3), dtype=np.uint8)
    if spec.keeps_float:  # the cache keeps TensorFlow's resized floats: any float32, overshoot included
        images = (images + rng.uniform(-3, 3, size=images.shape)).astype(np.float32)
    tensors = normalise(images, spec)
    x = images.astype(np.float32)
    if spec.channel_order == "BGR":
        x = x[..., ::-1]
    direct = ((x / np.float32(spec.scale)) - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
    if spec.layout == "NCHW":
        direct = direct.transpose(0, 3, 1, 2)
    assert tensors.dtype == np.float32 and tensors.flags.c_contiguous
    assert tensors.tobytes() == np.ascontiguousarray(direct).tobytes()
    assert normalisation_lut(spec).shape == (3, 256)


def test_tf1_resize_refuses_antialias():
    with pytest.raises(UserError, match="does not antialias"):
        PRESETS["lite-tf-224"].replace(antialias=True)


def test_crop_padding_can_be_set_from_the_command_line():
    spec = resolve_preprocess("lite-tf-240", overrides=parse_overrides(["crop_padding=34"]))
    assert spec.crop_padding == 34 and spec.geometry_key() != PRESETS["lite-tf-240"].geometry_key()


@pytest.mark.parametrize("library", ["tf2", "torch"])
def test_tf2_and_torch_resize_offer_antialias_as_a_choice(library):
    for interpolation in ("bilinear", "bicubic"):
        with_aa = PRESETS["torchvision-256"].replace(resize_library=library, interpolation=interpolation)
        without = with_aa.replace(antialias=False)
        assert with_aa.antialias and not without.antialias
        assert with_aa.geometry_key() != without.geometry_key()
    nearest = PRESETS["torchvision-256"].replace(resize_library=library, interpolation="nearest", antialias=False)
    assert nearest.geometry_key() != PRESETS["torchvision-256"].geometry_key()


def test_existing_presets_keep_their_cache_keys():
    # Computed before tf2 and torch joined resize_library: adding choices must not move anyone's cache.
    assert {name: spec.geometry_key() for name, spec in PRESETS.items()} == {
        "torchvision-256": "d534798ba1008c0d", "torchvision-232": "1a30bef876e1993f",
        "keras-caffe": "0b141433b660805c", "keras-tf": "0b141433b660805c", "keras-torch": "0b141433b660805c",
        "keras-caffe-load-img-nearest": "3d2af8e0a9720b7f", "keras-caffe-pil-bilinear": "d534798ba1008c0d",
        "gluoncv": "74ba3d4080be274e",  # moved on purpose: decoded by MXNet's own decoder, as GluonCV does
        "lite-tf-224": "9a83f7f6cd71ce6a", "lite-timm-224": "5e2fb01921732533",
        "lite-tf-240": "b164cb9d6158ef63", "lite-timm-240": "cbdd091a057680b5", "lite-tf-260": "61dab8588352896e",
        "lite-timm-260": "4d2abeddcbadee68", "lite-imagenet-norm-224": "5e2fb01921732533",
        # added with tf1's bicubic (eval_ckpt_main.py's resize)
        "lite-tf-bicubic-224": "9c30e8cdfaf08b34", "lite-tf-bicubic-240": "b3d8428b0bf0fb9f",
        "lite-tf-bicubic-260": "99d8609e6e333f9e",
    }


def test_the_largest_allowed_image_keeps_the_fed_checksums_exact():
    from xfverify.evaluator.cache.digests import MAX_VALUES, checksum_weights
    from xfverify.models.preprocess import MAX_SIDE

    assert 3 * MAX_SIDE**2 <= MAX_VALUES
    assert len(checksum_weights(3 * MAX_SIDE**2)) == 3 * MAX_SIDE**2
