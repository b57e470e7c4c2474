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
SOURCES = ("torchvision", "timm")


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


EMITTERS = {"torchvision": emit_torchvision, "timm": emit_timm}


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
