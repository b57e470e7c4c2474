"""The zoos' catalogue: regenerated from its sources, numbers equal to theirs, hand cards equal to it, ids usable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from helpers import framework_available, run_cli
from xfverify.models import zoos
from xfverify.models.cards import catalogue_card, find_cards, get_card, load_cards, model_ids

ROOT = Path(__file__).resolve().parents[1]
needs_torch = pytest.mark.skipif(not framework_available("torch"), reason="torch is not installed")


def _python(code: str, timeout: int = 120) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


# Regenerating Keras's catalogue builds all 40 keras.applications models (minutes of CPU): run on demand with
# XFVERIFY_CATALOGUE_KERAS=1; test_keras_* below check its modes, sizes' sources and numbers fast.
REGENERATED = [s if s != "keras" else pytest.param(s, marks=pytest.mark.skipif(
    not os.environ.get("XFVERIFY_CATALOGUE_KERAS"), reason="builds every Keras model: XFVERIFY_CATALOGUE_KERAS=1"))
    for s in zoos.SOURCES]


@pytest.mark.parametrize("source", REGENERATED)
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


# Where a hand card cites its number's table otherwise than the catalogue does (same numbers, compared).
DECLARED_SOURCES = {
    "keras": "https://keras.io/api/applications/",  # the rendered page of keras-io's templates/api/applications/index.md
    "gluoncv": "dmlc/gluon-cv v0.10.5",  # the release; the catalogue cites the commit whose CSVs it keeps (v0.10.0's, equal)
}


def test_hand_cards_equal_their_generated_counterparts():
    """Each hand card that has a catalogue entry agrees with it field by field, but for the declared prose."""
    generated = {i: (s, e) for s, i, e in zoos.entries()}
    compared = 0
    for hand in load_cards():
        if hand.id not in generated:
            continue
        made = catalogue_card(*generated[hand.id])
        mine, theirs = hand.model_dump(exclude={"spec"}), made.model_dump(exclude={"spec"})
        mine["weights"] = {k: v for k, v in mine["weights"].items() if k != "license"}  # declared: weights.license
        theirs["weights"] = {k: v for k, v in theirs["weights"].items() if k != "license"}
        differing = {f for f in mine if mine[f] != theirs[f]}
        assert differing <= set(PROSE_FIELDS), (hand.id, differing - set(PROSE_FIELDS))
        assert hand.network_name == made.network_name, hand.id
        assert hand.reference_spec.replace(name="x", source="") == made.reference_spec.replace(name="x", source=""), \
            hand.id
        assert hand.preprocess == made.preprocess, hand.id  # the catalogue names the preset it equals
        mine_number, theirs_number = hand.primary_published, made.primary_published
        assert (mine_number.top1_error, mine_number.top5_error) == (theirs_number.top1_error, theirs_number.top5_error)
        if hand.source == "torchvision":
            assert mine_number == theirs_number, hand.id
        else:  # the same table, cited by its page (Keras) or its release (GluonCV): see DECLARED_SOURCES
            assert DECLARED_SOURCES[hand.source] in mine_number.source, hand.id
        compared += 1
    assert compared == 20  # every hand card but the three EfficientNet-Lite ports, which no zoo has


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
            assert number.primary == (benchmark == "imagenet") and number.benchmark == benchmark, card.id
            assert card.published_on(benchmark) is number
        if "imagenet" in numbers:
            with_rows += 1
            row = rows["imagenet"][tag]
            measured_otherwise = (int(row["img_size"]) != card.reference_spec.crop_size
                                  or row["interpolation"] != card.reference_spec.interpolation)
            assert measured_otherwise <= ("measured with" in card.notes), card.id
        else:
            assert card.primary_published is None and "no published number" in card.notes, card.id
    assert with_rows == 1266


def test_a_reports_real_error_is_compared_with_the_number_published_on_the_real_labels():
    """A ReaL error beside timm's ReaL row (never beside the ImageNet number, which is on other labels)."""
    import csv

    from xfverify.evaluator.analysis.metrics import RealError
    from xfverify.evaluator.pipeline.assemble import _with_published_real

    card = get_card("timm/resnet50:a1_in1k")
    real_rows = csv.DictReader(open(ROOT / "models/catalogue/sources/timm/results-imagenet-real.csv", newline=""))
    published = float(next(r for r in real_rows if r["model"] == "resnet50.a1_in1k"
                           and int(r["img_size"]) == card.reference_spec.crop_size)["top1_err"])
    assert card.primary_published.benchmark == "imagenet" and card.primary_published.top1_error != published
    measured = RealError(top1_error=published + 4.0, top1_error_ci95=[published + 1.0, published + 7.0], n_images=900,
                         source="ReaL")
    compared = _with_published_real(measured, card)
    assert compared.published_top1_error == published and "results-imagenet-real.csv" in compared.published_source
    assert compared.delta_vs_published.top1_error == 4.0 and compared.delta_vs_published.outside_ci95
    inside = measured.model_copy(update={"top1_error_ci95": [published - 1.0, published + 7.0]})
    assert not _with_published_real(inside, card).delta_vs_published.outside_ci95
    assert _with_published_real(measured, get_card("torchvision/resnet50:IMAGENET1K_V2")).delta_vs_published is None


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


@needs_torch
def test_a_torchvision_cards_random_network_is_built_as_its_weights_build_it():
    """Before: built with the builder's defaults, so a ViT of SWAG weights (384 x 384 input) refused its own
    preprocessing's images with a traceback, and GoogLeNet lacked the input transform its weights run with."""
    script = ("from xfverify.models.cards import get_card;"
              "from xfverify.evaluator.backends.torch.backend import _new_network;"
              "vit = _new_network(get_card('torchvision/vit_b_16:IMAGENET1K_SWAG_E2E_V1'));"
              "print(vit.image_size, get_card('torchvision/vit_b_16:IMAGENET1K_SWAG_E2E_V1').reference_spec.crop_size,"
              " _new_network(get_card('torchvision/googlenet')).transform_input,"
              " _new_network(get_card('torchvision/vit_b_16:IMAGENET1K_V1')).image_size)")
    built = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert built.stdout.split() == ["384", "384", "True", "224"], built.stderr[-2000:]


def test_a_study_names_a_zoo_and_a_filter(tmp_path):
    from xfverify.models.study import cells_of, load_study

    path = tmp_path / "s.toml"
    path.write_text('name = "s"\n[[cells]]\nmodels = "timm:convnext_tiny*"\nruns = ["native"]\nrandom_weights = true\n')
    models = [c.model for c in cells_of(load_study(str(path)))]
    assert models == [i for i in model_ids("convnext_tiny*", source="timm")] and len(models) >= 5
    assert all(m.startswith("timm/convnext_tiny") for m in models)
    path.write_text('name = "s"\n[[cells]]\nmodels = ["timm:no_such_net*"]\n')
    with pytest.raises(Exception, match="no timm model matches"):
        cells_of(load_study(str(path)))


def test_keras_numbers_equal_the_documentation_table():
    """Each Keras card's number is its row of keras-io's applications table (the committed file, read here as a
    markdown table); a model with no row has none."""
    text = (ROOT / "models" / "catalogue" / "sources" / "keras" / "index.md").read_text(encoding="utf-8")
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].startswith("[") and cells[2].endswith("%"):
            rows[cells[0][1:cells[0].index("]")]] = (cells[2], cells[3])
    cards = [catalogue_card(s, e) for s, _, e in zoos.entries("keras")]  # the hand cards: compared with these
    assert len(cards) == 40 and len(rows) == 33
    for card in cards:
        number = card.primary_published
        if card.name not in rows:
            assert number is None and "no published number" in card.notes, card.id
            continue
        top1, top5 = rows.pop(card.name)
        assert Decimal(repr(number.top1_error)) == 100 - Decimal(top1.rstrip("%")), card.id
        assert Decimal(repr(number.top5_error)) == 100 - Decimal(top5.rstrip("%")), card.id
    assert not rows  # every row has its card


@pytest.mark.skipif(not framework_available("tensorflow"), reason="TensorFlow is not installed")
def test_keras_specs_normalise_as_each_module_preprocess_input():
    """Each Keras card's normalisation computes what its module's own preprocess_input computes (run by Keras in a
    process of its own on the same pixels), so the mode and the channel order are the source's."""
    cards = {c.id: c for c in (catalogue_card(s, e) for s, _, e in zoos.entries("keras"))}
    modules = {card_id: c.notes.split("preprocess_input from ")[1].split(";")[0] for card_id, c in cards.items()}
    found = json.loads(_python(
        "import importlib, json, os\n"
        "os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'\n"
        "import numpy as np\n"
        "x = np.random.default_rng(1).integers(0, 256, (2, 5, 5, 3)).astype('float32')\n"
        f"modules = {json.dumps(modules)}\n"
        "out = {i: np.asarray(importlib.import_module(m).preprocess_input(x.copy())).tolist() for i, m in modules.items()}\n"
        "print(json.dumps(out))\n", timeout=300))
    import numpy as np

    pixels = np.random.default_rng(1).integers(0, 256, (2, 5, 5, 3)).astype("float32")
    for card_id, expected in found.items():
        spec = cards[card_id].reference_spec
        x = pixels[..., ::-1] if spec.channel_order == "BGR" else pixels
        mine = ((x / np.float32(spec.scale)) - np.float32(spec.mean)) / np.float32(spec.std)
        np.testing.assert_allclose(mine, np.asarray(expected, dtype=np.float32), rtol=0, atol=2e-5, err_msg=card_id)
        assert spec.layout == "NHWC" and cards[card_id].output == "softmax"


def test_gluoncv_numbers_equal_the_model_zoo_tables():
    """Each GluonCV card's number is the row of the committed model-zoo table it cites (read here with csv), whose
    hashtag begins the sha1 of the card's weights file; every other ImageNet row is listed with why it has no card."""
    import csv

    folder = ROOT / "models" / "catalogue" / "sources" / "gluoncv"
    rows = {}
    for table in sorted(folder.glob("*.csv")):
        for row in csv.DictReader(open(table, newline="", encoding="utf-8")):
            rows[(table.name, row["Model"].strip())] = row
    cards = [catalogue_card(s, e) for s, _, e in zoos.entries("gluoncv")]  # the hand cards: compared with these
    assert len(cards) == 69
    for card in cards:
        number = card.primary_published
        table = number.source.split("/")[-1].split(",")[0]
        row = rows.pop((table, number.source.split("the row '")[1].split("' with")[0]))
        assert Decimal(repr(number.top1_error)) == 100 - Decimal(row["Top-1"]), card.id
        assert Decimal(repr(number.top5_error)) == 100 - Decimal(row["Top-5"]), card.id
        assert card.weights.checksum.startswith(f"sha1:{row['Hashtag'].strip()}"), card.id
    explained = {(r["table"], r["model"].strip()) for r in zoos.catalogue("gluoncv")["rows_without_a_card"]}
    assert set(rows) == explained and len(explained) == 10
    assert get_card("gluoncv/inceptionv3").reference_spec.crop_size == 299
    assert get_card("gluoncv/inceptionv3").reference_spec.resize_size == 342  # ceil(299 / 0.875)


@pytest.mark.skipif(not framework_available("mxnet"), reason="mxnet/gluoncv not installed")
def test_a_pruned_gluoncv_card_runs_by_its_model_zoo_name(tmp_path):
    """A pruned ResNet's table name (get_model's) differs from its file's (model_store's): the network is built by
    the first, the weights named by the second."""
    card = get_card("gluoncv/resnet18_v1b_0.89")
    assert card.weights.file == "resnet18_v1b_2.6x-54f7742b.params" and card.network_name == "resnet18_v1b_0.89"
    ran = run_cli("native", card.id, "--random-weights", "--limit", "1", "--out", str(tmp_path / "r"))
    assert ran.returncode == 0, ran.stderr


@pytest.mark.skipif(not framework_available("tensorflow"), reason="TensorFlow is not installed")
def test_a_keras_card_with_in_graph_normalisation_runs_on_raw_pixels(tmp_path):
    ran = run_cli("native", "keras/MobileNetV3Small", "--random-weights", "--limit", "1", "--out", str(tmp_path / "r"))
    assert ran.returncode == 0, ran.stderr
    fed = json.loads((tmp_path / "r" / "report.json").read_text())["preprocess"]
    assert (fed["scale"], fed["mean"], fed["std"]) == (1.0, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
