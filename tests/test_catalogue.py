"""The zoos' catalogue: regenerated from its sources, numbers equal to theirs, hand cards equal to it, ids usable."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from helpers import framework_available, run_cli
from xfverify.models import zoos
from xfverify.models.cards import find_cards, get_card, load_cards, model_ids

ROOT = Path(__file__).resolve().parents[1]
needs_torch = pytest.mark.skipif(not framework_available("torch"), reason="torch is not installed")


def _python(code: str, timeout: int = 120) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("source", zoos.SOURCES)
def test_catalogue_regenerates_from_its_sources(source):
    """The committed catalogue is what bench/catalogue.py generates from the installed packages, byte for byte."""
    done = subprocess.run([sys.executable, "bench/catalogue.py", "--check", source], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@needs_torch
def test_torchvision_cards_equal_the_installed_metadata():
    """Every torchvision weights member has a card whose weights, numbers and spec are its metadata's, read from
    torchvision itself (in a process of its own)."""
    source = json.loads(_python(
        "import json, math, torchvision.models as m\n"
        "rows = {}\n"
        "for b in m.list_models(module=m):\n"
        "    for w in m.get_model_weights(b):\n"
        "        t = w.transforms(); k = w.meta['_metrics']['ImageNet-1K'] if '_metrics' in w.meta else {}\n"
        "        rows[f'torchvision/{b}:{w.name}'] = dict(url=w.url, acc1=k.get('acc@1'), acc5=k.get('acc@5'),\n"
        "            default=w is m.get_model_weights(b).DEFAULT, resize=t.resize_size[0], crop=t.crop_size[0],\n"
        "            interpolation=t.interpolation.value, mean=list(t.mean), std=list(t.std))\n"
        "print(json.dumps(rows))\n"
    ))
    assert len(source) == 115
    for card_id, row in source.items():
        card = get_card(card_id)
        assert card.weights.url == row["url"] and card.default == row["default"], card_id
        number = card.primary_published
        if row["acc1"] is None or row["acc1"] != row["acc1"]:  # NaN: torchvision publishes none
            assert number is None, card_id
        else:
            assert Decimal(repr(number.top1_error)) == 100 - Decimal(repr(row["acc1"])), card_id
            assert Decimal(repr(number.top5_error)) == 100 - Decimal(repr(row["acc5"])), card_id
        spec = card.reference_spec
        assert (spec.resize_size, spec.crop_size, spec.interpolation) == (row["resize"], row["crop"],
                                                                          row["interpolation"]), card_id
        assert (list(spec.mean), list(spec.std), spec.scale) == (row["mean"], row["std"], 255.0), card_id


# The hand cards' fields that are prose, not the source's data: declared here, each with why.
PROSE_FIELDS = {
    "architecture": "a display name (ResNet50), where the catalogue names the builder (resnet50)",
    "weights.license": "the hand cards name torchvision's BSD-3-Clause; torchvision's meta names a licence only for "
                       "the SWAG weights",
    "published": "the hand cards add the article's numbers after the primary one; the primary is compared",
    "preprocess_reason": "hand prose", "alternatives": "hand-named diagnosis variants", "notes": "hand prose",
}


def test_hand_cards_equal_their_generated_counterparts():
    """Each hand card that has a catalogue entry agrees with it field by field, but for the declared prose."""
    generated = {i: (s, e) for s, i, e in zoos.entries()}
    compared = 0
    for hand in load_cards():
        if hand.id not in generated:
            continue
        from xfverify.models.cards import catalogue_card

        made = catalogue_card(*generated[hand.id])
        mine, theirs = hand.model_dump(), made.model_dump()
        for field in ("framework", "builder", "input_layout", "output", "default"):
            assert mine[field] == theirs[field], (hand.id, field)
        assert hand.network_name == made.network_name, hand.id
        weights = {k: v for k, v in mine["weights"].items() if k != "license"}
        assert weights == {k: v for k, v in theirs["weights"].items() if k != "license"}, hand.id
        assert hand.reference_spec.replace(name="x", source="") == made.reference_spec.replace(name="x", source=""), \
            hand.id
        assert hand.preprocess == made.preprocess, hand.id  # the catalogue names the preset it equals
        assert hand.primary_published == made.primary_published, hand.id
        compared += 1
    assert compared == 9  # the hand torchvision cards; the others' sources come in their own catalogues


def test_catalogue_ids_resolve_and_list():
    card = get_card("torchvision/convnext_tiny")
    assert card.id == "torchvision/convnext_tiny:IMAGENET1K_V1" and card.reference_spec.resize_size == 236
    assert get_card("TORCHVISION/ConvNeXt_Tiny:imagenet1k_v1").id == card.id
    assert get_card("torchvision/resnet50").preprocess_reason == ""  # the hand card, not the catalogue's
    assert len(model_ids(source="torchvision")) == 115
    assert {c.id for c in find_cards("convnext*", source="torchvision")} == {
        f"torchvision/convnext_{s}:IMAGENET1K_V1" for s in ("tiny", "small", "base", "large")}
    none = get_card("torchvision/vgg16:IMAGENET1K_FEATURES")
    assert none.primary_published is None and "no categories" in none.notes


def test_models_command_source_filter_json():
    result = run_cli("models", "--source", "torchvision", "--filter", "convnext*", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == 4 and all(r["spec"]["layout"] == "NCHW" for r in rows)
    listing = run_cli("models")
    assert listing.returncode == 0 and "torchvision/vit_h_14:IMAGENET1K_SWAG_E2E_V1" in listing.stdout
    assert f"{len(model_ids())} models" in listing.stdout
    refused = run_cli("models", "--source", "torchvision", "--filter", "no-such-net*")
    assert refused.returncode == 2 and "no model matches" in refused.stderr


@needs_torch
def test_a_catalogue_card_runs_with_random_weights_and_names_missing_weights(tmp_path):
    ran = run_cli("native", "torchvision/squeezenet1_1:IMAGENET1K_V1", "--random-weights", "--limit", "2",
                  "--out", str(tmp_path / "r"))
    assert ran.returncode == 0, ran.stderr
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["preprocess"]["name"] == "torchvision-256" and report["model"].startswith("torchvision/squeeze")
    missing = run_cli("native", "torchvision/convnext_tiny", "--limit", "1", "--out", str(tmp_path / "m"),
                      env={"TORCH_HOME": str(tmp_path / "torch-home")})
    assert missing.returncode == 2
    text = " ".join(missing.stderr.split())
    assert "https://download.pytorch.org/models/convnext_tiny-983f1562.pth" in text
    assert str(tmp_path / "torch-home") in text


def test_every_catalogue_number_cites_a_versioned_source():
    hand = {c.id for c in load_cards()}  # tests/test_cards.py checks theirs
    for card in find_cards():
        for number in card.published if card.id not in hand else ():
            assert number.source.split()[1].startswith("v") or "@" in number.source, (card.id, number.source)


def test_committed_source_files_are_the_recorded_bytes():
    """Each published file kept as data hashes as it did when it was copied from its repository at its commit."""
    import hashlib

    for manifest in (ROOT / "models" / "catalogue" / "sources").glob("*/SOURCE.json"):
        recorded = json.loads(manifest.read_text())
        assert len(recorded["commit"]) == 40 and recorded["repository"].count("/") == 1
        for name, meta in recorded["files"].items():
            assert hashlib.sha256((manifest.parent / name).read_bytes()).hexdigest() == meta["sha256"], name


def test_timm_numbers_equal_timms_results_files():
    """Every timm card's numbers are the rows of timm's own results files (read here with csv), each benchmark
    named; a tag with no row says so and has no number."""
    import csv

    folder = ROOT / "models" / "catalogue" / "sources" / "timm"
    files = {"imagenet": "results-imagenet.csv", "real": "results-imagenet-real.csv",
             "imagenetv2": "results-imagenetv2-matched-frequency.csv"}
    rows = {b: {r["model"]: r for r in csv.DictReader(open(folder / f, newline=""))} for b, f in files.items()}
    cards = find_cards(source="timm")
    assert len(cards) == len(model_ids(source="timm")) > 1300
    with_rows = 0
    for card in cards:
        tag = card.weights.name
        numbers = {next(b for b, f in files.items() if f in p.source): p for p in card.published}
        assert set(numbers) == {b for b in files if tag in rows[b]}, card.id
        for benchmark, number in numbers.items():
            row = rows[benchmark][tag]
            assert (number.top1_error, number.top5_error) == (float(row["top1_err"]), float(row["top5_err"])), card.id
            assert number.primary == (benchmark == "imagenet")
        if "imagenet" in numbers:
            with_rows += 1
            row = rows["imagenet"][tag]
            measured_otherwise = (int(row["img_size"]) != card.reference_spec.crop_size
                                  or row["interpolation"] != card.reference_spec.interpolation)
            assert measured_otherwise <= ("measured with" in card.notes), card.id
        else:
            assert card.primary_published is None and "no published number" in card.notes, card.id
    assert with_rows == 1266


@needs_torch
def test_timm_specs_equal_timms_own_eval_transform():
    """Each timm card's spec has the sizes, interpolation, mean and std of the transform timm itself builds for
    the tag (create_transform(**resolve_data_config(pretrained_cfg)), read in a process of its own)."""
    found = json.loads(_python(
        "import json, timm\n"
        "from timm.data import create_transform, resolve_data_config\n"
        "from timm.models import get_pretrained_cfg\n"
        "out = {}\n"
        "for name in timm.list_pretrained():\n"
        "    cfg = get_pretrained_cfg(name)\n"
        "    if cfg is None or cfg.num_classes != 1000: continue\n"
        "    t = create_transform(**resolve_data_config(pretrained_cfg=cfg.to_dict())).transforms\n"
        "    resize, crop, norm = t[0], t[1], t[-1]\n"
        "    out[name] = [type(resize).__name__, resize.size, resize.interpolation.value, crop.size,\n"
        "                 norm.mean.tolist(), norm.std.tolist()]\n"
        "print(json.dumps(out))\n", timeout=300))
    assert len(found) == len(model_ids(source="timm"))
    for tag, (kind, size, interpolation, crop, mean, std) in found.items():
        spec = get_card("timm/" + tag.replace(".", ":", 1)).reference_spec
        assert kind == "Resize" and crop == [spec.crop_size, spec.crop_size], tag
        expected_size = [spec.resize_size] if spec.resize_mode == "shorter_side" else [spec.resize_size] * 2
        assert (list(size) if isinstance(size, (list, tuple)) else [size]) == expected_size, tag
        assert interpolation == spec.interpolation and spec.resize_library == "pil", tag
        assert all(abs(a - b) < 1e-6 for a, b in zip(mean + std, spec.mean + spec.std)), tag  # float32 tensors


@needs_torch
def test_a_timm_card_runs_with_random_weights_and_names_missing_weights(tmp_path):
    ran = run_cli("native", "timm/resnet18:a1_in1k", "--random-weights", "--limit", "2", "--out", str(tmp_path / "r"))
    assert ran.returncode == 0, ran.stderr
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["preprocess"]["resize_size"] == 235 and report["preprocess"]["interpolation"] == "bicubic"
    missing = run_cli("native", "timm/convnext_tiny", "--limit", "1", "--out", str(tmp_path / "m"),
                      env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert missing.returncode == 2
    text = " ".join(missing.stderr.split())
    assert "https://huggingface.co/timm/convnext_tiny.fb_in1k" in text
    assert str(tmp_path / "hf" / "hub" / "models--timm--convnext_tiny.fb_in1k") in text
