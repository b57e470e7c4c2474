"""Parity per distinct preprocessing configuration of every zoo, against the source's own code, on real photos.

    nice -n 10 python bench/zoo_parity.py            # resumable: configurations already in --out are kept

Every catalogue card is grouped by its resolved spec (``card.reference_spec``: the preprocessing every verb feeds).
For each distinct spec, one card of the group (the first in the catalogue) is run through its source's own
evaluation transform in the framework's worker (:data:`xfverify.evaluator.references.CATALOGUE_REFERENCES`:
torchvision's ``weights.transforms()`` on its default loader, timm's ``create_transform`` of
``resolve_data_config`` on the tag's registered pretrained_cfg, ...), and compared with the tensors xfverify feeds
(``preprocess_files``: the decode, geometry and normalisation of its tensor cache) on the 500 photographs of
imagenet-sample-500, image by image. Verdict ``pass``: every value bit-identical (the bound of every catalogue
reference is 0). Results: ``bench/results/zoo_parity.json`` (per source: the distinct configurations, each with its
source configuration, spec, card count, images equal, max |diff|, verdict).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import threading
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xfverify.evaluator.data.layouts import load_dataset  # noqa: E402
from xfverify.evaluator.pipeline.preprocess import (  # noqa: E402
    catalogue_reference,
    catalogue_reference_tensors,
    preprocess_files,
)
from xfverify.evaluator.process.warm import warm_workers  # noqa: E402
from xfverify.models import zoos  # noqa: E402
from xfverify.models.cards import get_card  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "imagenet-sample-500"
# the source's own words for an entry's preprocessing, as the catalogue keeps them
SOURCE_CONFIG = {"torchvision": "transforms", "timm": "data_config", "keras": "preprocessing", "gluoncv": "transform"}


def configurations(source: str) -> list[dict]:
    """The source's distinct specs, each with its cards (in catalogue order) and the source's own configuration."""
    groups: dict[str, dict] = {}
    for _, card_id, entry in zoos.entries(source):
        spec = get_card(card_id).reference_spec
        key = json.dumps({k: v for k, v in spec.to_dict().items() if k != "source"}, sort_keys=True)
        group = groups.setdefault(key, {"spec": spec, "cards": [], "source_configs": []})
        group["cards"].append(card_id)
        own = entry.get(SOURCE_CONFIG.get(source, ""))
        if own not in group["source_configs"]:
            group["source_configs"].append(own)
    return list(groups.values())


def compare(card_id: str, spec, paths: list[str], chunk: int) -> dict:
    """xfverify's tensors against the source's own, ``chunk`` images at a time (the reference computed in its worker
    while xfverify's are computed here)."""
    equal, max_diff, differing, framework = 0, 0.0, [], ""
    for start in range(0, len(paths), chunk):
        part = paths[start : start + chunk]
        theirs: dict = {}
        worker = threading.Thread(target=lambda: theirs.update(
            result=catalogue_reference_tensors(card_id, part, spec.layout)))
        worker.start()
        ours = preprocess_files(part, spec)
        worker.join()
        if "result" not in theirs:
            raise RuntimeError(f"{card_id}: the reference worker failed")
        batch, framework = theirs["result"]
        if batch.shape != ours.shape:
            raise RuntimeError(f"{card_id}: the source gives {batch.shape}, xfverify {ours.shape}")
        for i, (a, b) in enumerate(zip(ours, batch)):
            if np.array_equal(a, b):
                equal += 1
            else:
                differing.append(Path(part[i]).name)
            max_diff = max(max_diff, float(np.abs(a - b).max()))
    return {"images": len(paths), "images_equal": equal, "max_abs_diff": max_diff, "differing": differing[:10],
            "reference": framework}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "zoo_parity.json"))
    parser.add_argument("--sources", default=",".join(zoos.SOURCES))
    parser.add_argument("--chunk", type=int, default=100, help="images per reference job")
    parser.add_argument("--limit", type=int, default=None, help="only the first N photos (a quick look)")
    args = parser.parse_args()
    paths = [record.path for record in load_dataset(args.data).records][: args.limit]
    out = Path(args.out)
    payload = json.loads(out.read_text()) if out.exists() else {}
    payload.update({
        "what": ("per source, every distinct resolved spec of its catalogue cards; one card of each against the "
                 "source's own evaluation transform in the framework's worker, on the photos: pass = every value "
                 "bit-identical"),
        "data": f"../shared/data/imagenet-sample-500 ({len(paths)} photos)",
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
    })
    sources = payload.setdefault("sources", {})
    with warm_workers():
        for source in args.sources.split(","):
            if catalogue_reference(f"{source}/") is None:
                print(f"{source}: no reference pipeline for this source", file=sys.stderr)
                continue
            groups = configurations(source)
            done = {row["spec"]["name"]: row for row in sources.get(source, {}).get("configurations", [])
                    if row["images"] == len(paths)}
            rows = []
            for group in groups:
                spec, cards = group["spec"], group["cards"]
                row = done.get(spec.name)
                if row is None or row["cards"] != len(cards):
                    result = compare(cards[0], spec, paths, args.chunk)
                    row = {"spec": spec.to_dict(), "source_configs": group["source_configs"], "cards": len(cards),
                           "checked_with": cards[0], **result,
                           "verdict": "pass" if result["images_equal"] == len(paths) else "fail"}
                    print(f"{source} {spec.name}: {row['images_equal']}/{len(paths)} equal, max |diff| "
                          f"{row['max_abs_diff']:.3g} ({len(cards)} cards)", flush=True)
                rows.append(row)
                done[spec.name] = row
                sources[source] = {
                    "distinct_configurations": len(groups), "checked": len(rows),
                    "passed": sum(r["verdict"] == "pass" for r in rows), "cards": sum(len(g["cards"]) for g in groups),
                    "configurations": rows,
                }
                out.write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
