"""Model cards: validated data, ids, defaults, and the catalogue command."""

from __future__ import annotations

import json

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
    assert len(find_cards("gluoncv")) == 6
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
    assert "torchvision weights.meta" in lines[row + 1]  # its source, right under it
    assert "gluoncv/resnet101" not in result.stdout
