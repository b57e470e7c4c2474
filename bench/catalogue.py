"""Generate the model catalogue, ``models/catalogue/<source>.json``, from each zoo's own metadata.

Each source is read in its own process (``--emit SOURCE`` prints its JSON), importing only that zoo's packages
(TensorFlow, torch and MXNet cannot share one). The files are written with ``--write`` and compared with
``--check`` (exit 1 naming the first differences): tests/test_catalogue.py runs the check, so the committed
catalogue cannot drift from the installed packages and the committed source files.

    python bench/catalogue.py --write               # every source
    python bench/catalogue.py --check torchvision   # one source, compared with the committed file
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = ROOT / "models" / "catalogue"
SOURCES = ("torchvision", "timm", "keras", "gluoncv")


def dump(header: dict, models: list[dict]) -> str:
    """The catalogue file's text: the header's keys, then one model per line (small diffs, fast to read)."""
    lines = ["{"]
    for key, value in header.items():
        lines.append(f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)},")
    lines.append('"models": [')
    rows = [json.dumps(m, ensure_ascii=False, separators=(",", ":")) for m in models]
    lines.append(",\n".join(rows))
    lines.append("]}")
    return "\n".join(lines) + "\n"


# --- torchvision ---------------------------------------------------------------------------------


def emit_torchvision() -> str:
    """Every classification builder x every weights enum member, as torchvision's metadata states them."""
    import inspect
    import math

    import torch
    import torch.hub
    import torchvision
    import torchvision.models as tvm
    from torchvision.transforms._presets import ImageClassification

    version = torchvision.__version__.split("+")[0]
    models = []
    for builder in tvm.list_models(module=tvm):
        enum = tvm.get_model_weights(builder)
        module = inspect.getmodule(enum).__name__.replace(".", "/") + ".py"
        for weights in enum:
            transforms = weights.transforms()
            if not isinstance(transforms, ImageClassification):
                raise RuntimeError(f"{builder} {weights.name}: transforms are {type(transforms).__name__}")
            metrics = weights.meta.get("_metrics", {}).get("ImageNet-1K", {})
            published = {k: metrics[k] for k in ("acc@1", "acc@5") if k in metrics and not math.isnan(metrics[k])}
            file = weights.url.rsplit("/", 1)[-1]
            found = re.search(torch.hub.HASH_REGEX, file)
            models.append({
                "builder": builder,
                "weights": weights.name,
                "default": weights is enum.DEFAULT,
                "module": module,
                "url": weights.url,
                "file": file,
                "sha256": found.group(1) if found else "",
                "transforms": {
                    "resize_size": transforms.resize_size,
                    "crop_size": transforms.crop_size,
                    "interpolation": transforms.interpolation.value,
                    "antialias": transforms.antialias,
                    "mean": list(transforms.mean),
                    "std": list(transforms.std),
                },
                "published": published,
                "categories": len(weights.meta["categories"]) if weights.meta.get("categories") else 0,
                "license": weights.meta.get("license", ""),
            })
    header = {
        "source": "torchvision",
        "versions": {"torchvision": version, "torch": torch.__version__.split("+")[0]},
        "citation": f"pytorch/vision v{version}: torchvision.models.list_models(module=torchvision.models), "
                    "get_model_weights(builder); each weights member's url, transforms() (ImageClassification) "
                    "and meta['_metrics']['ImageNet-1K']",
    }
    return dump(header, models)


# --- timm ----------------------------------------------------------------------------------------

TIMM_RESULTS = {"imagenet": "results-imagenet.csv", "real": "results-imagenet-real.csv",
                "imagenetv2": "results-imagenetv2-matched-frequency.csv"}
TIMM_ROW_FIELDS = ("img_size", "top1_err", "top5_err", "crop_pct", "interpolation")


def _timm_rows() -> dict[str, dict[str, dict[str, str]]]:
    """The committed results files of timm, by benchmark and model (tag), the fields the cards use, as written."""
    import csv

    folder = CATALOGUE / "sources" / "timm"
    rows: dict[str, dict[str, dict[str, str]]] = {}
    for benchmark, name in TIMM_RESULTS.items():
        with open(folder / name, newline="", encoding="utf-8") as handle:
            rows[benchmark] = {r["model"]: {k: r[k] for k in TIMM_ROW_FIELDS} for r in csv.DictReader(handle)}
    return rows


def emit_timm() -> str:
    """Every pretrained tag whose head is ImageNet-1k (1000 classes), its preprocessing as timm resolves it
    (resolve_data_config of its pretrained_cfg), and the rows of timm's own results files for it."""
    import timm
    import torch
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    source = json.loads((CATALOGUE / "sources" / "timm" / "SOURCE.json").read_text(encoding="utf-8"))
    rows = _timm_rows()
    models, defaults = [], set()
    for name in timm.list_pretrained():
        cfg = get_pretrained_cfg(name)
        if cfg is None or cfg.num_classes != 1000:
            continue
        arch, tag = name.split(".", 1)
        config = resolve_data_config(pretrained_cfg=cfg.to_dict())
        entry = {
            "builder": arch,
            "weights": tag,
            "default": arch not in defaults,
            "hf_hub_id": cfg.hf_hub_id or "",
            "url": cfg.url or "",
            "license": cfg.license or "",
            "data_config": {
                "input_size": list(config["input_size"]),
                "interpolation": config["interpolation"],
                "crop_pct": config["crop_pct"],
                "crop_mode": config["crop_mode"],
                "mean": list(config["mean"]),
                "std": list(config["std"]),
            },
            "fixed_input_size": bool(cfg.fixed_input_size),
            "test_input_size": list(cfg.test_input_size) if cfg.test_input_size else None,
            "test_crop_pct": cfg.test_crop_pct,
            "results": {b: r[name] for b, r in rows.items() if name in r},
        }
        defaults.add(arch)
        models.append(entry)
    version = timm.__version__
    header = {
        "source": "timm",
        "versions": {"timm": version, "torch": torch.__version__.split("+")[0]},
        "citation": f"timm {version}: timm.list_pretrained(), each tag's pretrained_cfg with num_classes 1000 through "
                    "timm.data.resolve_data_config; results from " + f"{source['repository']}@{source['commit'][:7]}",
        "results": {"repository": source["repository"], "commit": source["commit"],
                    "files": {b: f"results/{n}" for b, n in TIMM_RESULTS.items()}},
        "default": "the first tag timm lists for an architecture among those with an ImageNet-1k head",
    }
    return dump(header, models)


# --- Keras applications ----------------------------------------------------------------------------


def keras_preprocess_mode(preprocess_input) -> str:
    """Which of imagenet_utils' modes a module's preprocess_input computes (``none``: it returns its input, the
    model normalising inside its graph), found by running it and the candidates on the same probe."""
    import numpy as np
    from keras.src.applications import imagenet_utils

    probe = np.random.default_rng(0).uniform(0, 255, (1, 4, 4, 3)).astype("float32")
    got = np.asarray(preprocess_input(probe.copy()))
    if np.array_equal(got, probe):
        return "none"
    for mode in ("caffe", "tf", "torch"):
        if np.array_equal(got, np.asarray(imagenet_utils.preprocess_input(probe.copy(), mode=mode))):
            return mode
    raise RuntimeError(f"{preprocess_input.__module__}.preprocess_input is none of imagenet_utils' modes")


def _keras_table() -> dict[str, dict[str, str]]:
    """The rows of the Keras documentation's applications table (the committed index.md), by model name."""
    text = (CATALOGUE / "sources" / "keras" / "index.md").read_text(encoding="utf-8")
    rows = {}
    for line in text.splitlines():
        found = re.match(r"\| \[(\w+)\]\([^)]*\) \| [^|]* \| ([\d.]+)% \| ([\d.]+)% \|", line)
        if found:
            rows[found.group(1)] = {"top1": found.group(2), "top5": found.group(3)}
    return rows


def emit_keras() -> str:
    """Every model of keras.applications: its module's preprocess_input mode, the input size its builder asks
    imagenet_utils.obtain_input_shape for, and the weights file, URL and hash it hands keras.utils.get_file (each
    model is built once with weights="imagenet" and get_file stopped: nothing is downloaded)."""
    import inspect
    import os
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import keras.applications as applications
    import tensorflow as tf
    from keras.src.applications import imagenet_utils
    from keras.src.utils import file_utils

    class Stop(Exception):
        pass

    seen: dict = {}
    obtain_input_shape = imagenet_utils.obtain_input_shape

    def spy_input_shape(*args, **kwargs):
        seen["default_size"] = kwargs.get("default_size", args[1] if len(args) > 1 else None)
        return obtain_input_shape(*args, **kwargs)

    def spy_get_file(fname=None, origin=None, file_hash=None, **kwargs):
        seen["file"] = {"file": fname, "url": origin, "hash": file_hash or ""}
        raise Stop

    imagenet_utils.obtain_input_shape = spy_input_shape
    file_utils.get_file = spy_get_file
    source = json.loads((CATALOGUE / "sources" / "keras" / "SOURCE.json").read_text(encoding="utf-8"))
    table = _keras_table()
    models = []
    for name in sorted(n for n in dir(applications) if n[:1].isupper()):
        builder = getattr(applications, name)
        module = inspect.getmodule(builder)
        seen.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                builder(weights="imagenet")
            except Stop:
                pass
        size = seen.get("default_size")
        if size is None:  # MobileNetV3 takes any size; it says which size its weights are for
            said = [re.search(r"Weights for input shape \((\d+), (\d+)\)", str(w.message)) for w in caught]
            size = next(int(m.group(1)) for m in said if m)
        public = module.__name__.replace("keras.src.applications.", "keras.applications.")
        models.append({
            "builder": name,
            "weights": "imagenet",
            "default": True,
            "module": public,
            "preprocess_mode": keras_preprocess_mode(module.preprocess_input),
            "input_size": size,
            **seen["file"],
            "published": table.get(name, {}),
        })
        keras.backend.clear_session()
    header = {
        "source": "keras",
        "versions": {"keras": keras.__version__, "tensorflow": tf.__version__},
        "citation": f"keras {keras.__version__} keras.applications: each builder's module preprocess_input, the "
                    "default_size it gives obtain_input_shape, the file, URL and hash it gives get_file; numbers "
                    f"from the Keras documentation's table, {source['repository']}@{source['commit'][:7]} "
                    f"{source['files']['index.md']['path']}",
        "table": {"repository": source["repository"], "commit": source["commit"],
                  "path": source["files"]["index.md"]["path"]},
    }
    return dump(header, models)


# --- GluonCV -------------------------------------------------------------------------------------


def gluoncv_row_name(model: str) -> str:
    """A model-zoo table's display name as a model_zoo name: references, tags and spaces dropped, lower case
    ('ResNet18_v1 [1]_' -> 'resnet18_v1', ':tag:`InceptionV3` [8]_' -> 'inceptionv3')."""
    name = re.sub(r"\[\d+\]_", "", model)
    name = re.sub(r":tag:`([^`]*)`", r"\1", name)
    return name.replace(" ", "").lower()


def emit_gluoncv() -> str:
    """Every row of GluonCV's ImageNet classification tables (committed byte for byte), matched by its hashtag to
    the file GluonCV's model_store names (sha1), with the input size GluonCV's evaluation uses for it; a row no
    installed file matches is listed with why, never guessed."""
    import csv

    import numpy

    if not hasattr(numpy, "bool"):  # MXNet 1.9 reads numpy.bool, removed in numpy 1.24 (as the mxnet worker does)
        numpy.bool = bool
    import scipy.stats  # noqa: F401  (imported while torch is visible: it looks torch up)

    sys.modules["torch"] = None  # GluonCV refuses to import beside torch >= 2; it tolerates torch missing
    try:
        import gluoncv
        import mxnet
        from gluoncv.model_zoo import model_store
    finally:
        del sys.modules["torch"]

    zoo_names = set(gluoncv.model_zoo.get_model_list())
    folder = CATALOGUE / "sources" / "gluoncv"
    source = json.loads((folder / "SOURCE.json").read_text(encoding="utf-8"))
    sizes = source["eval"]["sizes"]
    models, unmatched = [], []
    for table in sorted(source["files"]):
        with open(folder / table, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                wanted = gluoncv_row_name(row["Model"])
                hashtag = row["Hashtag"].strip()
                found = sorted(n for n, sha1 in model_store._model_sha1.items() if sha1.startswith(hashtag))
                known = wanted in model_store._model_sha1
                name = wanted if wanted in found else (
                    found[0] if len(found) == 1 and not known and not wanted.endswith("_int8") else None)
                if name is None:
                    why = ("a quantized model (int8)" if wanted.endswith("_int8") else
                           f"the installed model_store's {wanted} is {model_store._model_sha1[wanted][:8]}, the "
                           f"row's hashtag names {', '.join(found) or 'no installed file'}" if known else
                           "no file of the installed model_store has this hashtag" if not found else
                           f"the hashtag names several files: {', '.join(found)}")
                    unmatched.append({"table": table, "model": row["Model"], "hashtag": hashtag, "why": why})
                    continue
                builder = wanted if wanted in zoo_names else name  # pruned nets: get_model's name, the store's file
                if builder not in zoo_names:
                    raise RuntimeError(f"{row['Model']}: gluoncv.model_zoo.get_model knows no {builder!r}")
                models.append({
                    "builder": builder,
                    "weights": "imagenet",
                    "default": True,
                    "file": f"{name}-{hashtag}.params",
                    "table": table,
                    "row": row["Model"],
                    "hashtag": hashtag,
                    "top1": row["Top-1"].strip(),
                    "top5": row["Top-5"].strip(),
                    "sha1": model_store._model_sha1[name],
                    "input_size": sizes.get(name, source["eval"]["input_size"]),
                    "crop_ratio": source["eval"]["crop_ratio"],
                })
    names = [m["builder"] for m in models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RuntimeError(f"several rows name the same file: {duplicates}")
    header = {
        "source": "gluoncv",
        "versions": {"gluoncv": gluoncv.__version__, "mxnet": mxnet.__version__},
        "citation": f"gluoncv {gluoncv.__version__} model_store (each file's sha1); rows of "
                    f"{source['repository']}@{source['commit'][:7]} docs/model_zoo/csv_tables/Classifications/*.csv; "
                    f"input sizes from {source['eval']['path']} and {source['eval']['sizes_source']}",
        "tables": {"repository": source["repository"], "commit": source["commit"],
                   "folder": "docs/model_zoo/csv_tables/Classifications"},
        "eval": source["eval"],
        "rows_without_a_card": unmatched,
    }
    return dump(header, models)


EMITTERS = {"torchvision": emit_torchvision, "timm": emit_timm, "keras": emit_keras, "gluoncv": emit_gluoncv}


# --- driver --------------------------------------------------------------------------------------


def generate(source: str) -> str:
    """The catalogue text of one source, generated in a fresh process."""
    done = subprocess.run([sys.executable, __file__, "--emit", source], capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"generating {source} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*", metavar="SOURCE", help=f"any of {', '.join(SOURCES)} (default: all)")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="write models/catalogue/<source>.json")
    action.add_argument("--check", action="store_true", help="compare with the committed files; exit 1 on a difference")
    action.add_argument("--emit", choices=SOURCES, help="print one source's catalogue (run in its own process)")
    args = parser.parse_args(argv)
    unknown = set(args.sources) - set(SOURCES)
    if unknown:
        parser.error(f"unknown source {sorted(unknown)[0]}; sources are {', '.join(SOURCES)}")
    if args.emit:
        sys.stdout.write(EMITTERS[args.emit]())
        return 0
    different = []
    for source in args.sources or SOURCES:
        text = generate(source)
        path = CATALOGUE / f"{source}.json"
        if args.write:
            path.write_text(text, encoding="utf-8")
            print(f"{path.relative_to(ROOT)}: {len(json.loads(text)['models'])} models")
            continue
        committed = path.read_text(encoding="utf-8") if path.exists() else ""
        if committed != text:
            diff = difflib.unified_diff(committed.splitlines(), text.splitlines(), "committed", "generated", lineterm="", n=0)
            different.append(f"{source}:\n" + "\n".join(list(diff)[:12]))
    if different:
        print("the catalogue differs from its sources (regenerate: python bench/catalogue.py --write):\n"
              + "\n".join(different))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
