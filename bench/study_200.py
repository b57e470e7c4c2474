"""A real study of 204 cells with random weights, for the study page at zoo scale: the models are chosen cheap
for a 2-core CPU (the smallest networks of each source, at most 224 px), the images a handful of photos.

    python bench/study_200.py > bench/study_200.toml     # the selection, from the catalogue's own sizes
    nice -n 10 python -m xfverify study bench/study_200.toml --random-weights --device cpu --provider cpu \\
        --data ../shared/data/imagenet-sample-500 --limit 16 --out STUDY_DIR      # resumable: rerun to finish
    python bench/study_page.py regenerate STUDY_DIR --copy-to bench/results/study_page_200

Sizes: torchvision's ``num_params`` of each builder's weights, timm's ``param_count`` from its results file, the
Keras documentation's Parameters column (as ``bench/export_coverage.py`` reads them); GluonCV's catalogue has no
sizes, so its smallest families are named here. One card per network: random weights make a builder's other
weights the same network. Every model gets a native cell; the smallest torch ones an ONNX Runtime cell too, and
two a diagnose cell with two variants, so every column of the page holds real numbers.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from export_coverage import TIMM_RESULTS, keras_models, torchvision_models  # noqa: E402

from xfverify.models import zoos  # noqa: E402

MODELS = 178  # native cells; with the ONNX and diagnose cells, 204
MAX_SIZE = 224  # input pixels
MAX_PARAMS_M = 30.0
# attention at full resolution costs many times what their size says: coat_mini's 10 M parameters took 67 s of
# compute for 16 images on the loaded 2 cores, a MobileNet's a second
EXPENSIVE = ("coat_", "convit_", "xcit_")
KERAS = 8  # the smallest Keras applications (a TensorFlow worker's model build costs more than torch's)
GLUONCV = ["gluoncv/mobilenet0.25:imagenet", "gluoncv/mobilenet0.5:imagenet", "gluoncv/mobilenetv2_0.25:imagenet",
           "gluoncv/mobilenetv2_0.5:imagenet", "gluoncv/squeezenet1.1:imagenet", "gluoncv/resnet18_v1:imagenet"]
ONNX = 24  # the smallest torch models also under ONNX Runtime
DIAGNOSE = {"models": ["torchvision/squeezenet1_1:IMAGENET1K_V1", "timm/mobilenetv3_small_050:lamb_in1k"],
            "variants": ["squash", "resize-opencv"]}


def timm_models() -> list[tuple[str, float]]:
    """One card per timm builder (its smallest tag in timm's results file), at most MAX_SIZE px, no ``test_*``
    stand-ins, none of the EXPENSIVE families."""
    with TIMM_RESULTS.open(newline="") as handle:
        params = {row["model"]: float(row["param_count"].replace(",", "")) for row in csv.DictReader(handle)}
    best: dict[str, tuple[float, str]] = {}
    for _, card_id, entry in zoos.entries("timm"):
        size = params.get(f"{entry['builder']}.{entry['weights']}")
        if (size is None or entry["builder"].startswith(("test_", *EXPENSIVE))
                or entry["data_config"]["input_size"][-1] > MAX_SIZE):
            continue
        if entry["builder"] not in best or (size, card_id) < best[entry["builder"]]:
            best[entry["builder"]] = (size, card_id)
    return [(card_id, size) for size, card_id in best.values()]


def small_torchvision() -> list[tuple[str, float]]:
    crops = {card_id: entry["transforms"]["crop_size"][0] for _, card_id, entry in zoos.entries("torchvision")}
    return [(card_id, size) for card_id, size in torchvision_models() if 0 < size and crops[card_id] <= MAX_SIZE]


def selection() -> dict[str, list[str]]:
    keras = sorted(keras_models(), key=lambda pair: pair[1])[:KERAS]
    torch = sorted(small_torchvision() + timm_models(), key=lambda pair: (pair[1], pair[0]))
    torch = [card_id for card_id, size in torch if size <= MAX_PARAMS_M][:MODELS - KERAS - len(GLUONCV)]
    natives = [card_id for card_id, _ in keras] + GLUONCV + torch
    return {"native": sorted(natives), "onnx": torch[:ONNX]}


def toml(chosen: dict[str, list[str]]) -> str:
    """The study file: ten ONNX cells and the diagnose cells first, then the native ones, then the other ONNX cells
    (run in that order, a study cut short still has every kind of cell)."""
    def strings(items: list[str]) -> str:
        return "[\n" + "".join(f"    {json.dumps(item)},\n" for item in items) + "]"

    return "\n".join([
        "# Made by bench/study_200.py (the smallest networks of each source, random weights): the study page at zoo scale.",
        'name = "page-200"',
        f'about = "{len(chosen["native"])} small torchvision, timm, Keras and GluonCV networks with random weights: '
        'native, ONNX Runtime for the smallest torch ones, two diagnosed (the numbers say nothing of the models)"',
        "", "[[cells]]", f"models = {strings(chosen['onnx'][:10])}", 'runs = ["onnx"]', "random_weights = true",
        "", "[[cells]]", f"models = {strings(DIAGNOSE['models'])}", 'runs = ["diagnose"]',
        f"variants = {json.dumps(DIAGNOSE['variants'])}", "random_weights = true",
        "", "[[cells]]", f"models = {strings(chosen['native'])}", 'runs = ["native"]', "random_weights = true",
        "", "[[cells]]", f"models = {strings(chosen['onnx'][10:])}", 'runs = ["onnx"]', "random_weights = true", ""])


if __name__ == "__main__":
    print(toml(selection()), end="")
