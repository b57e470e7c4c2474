"""Parity per distinct preprocessing configuration of every zoo, against the source's own code, on real photos.

    nice -n 10 python bench/zoo_parity.py            # resumable: configurations already in --out are kept

Every catalogue card is grouped by its resolved spec (``card.reference_spec``: the preprocessing every verb feeds).
For each distinct spec, one card of the group (the first in the catalogue) is run through its source's own
evaluation transform (:data:`xfverify.evaluator.references.CATALOGUE_REFERENCES`: torchvision's
``weights.transforms()`` on its default loader, timm's ``create_transform`` of ``resolve_data_config`` on the tag's
registered pretrained_cfg on a PIL image converted to RGB), and compared, image by image, with the tensor xfverify
feeds (its cache's decode and ``apply_geometry``, then ``normalise``), on the 500 photographs of
imagenet-sample-500. Verdict ``pass``: every value of every image bit-identical (the bound of every catalogue
reference is 0).

The references run in a process of their framework (``--driver``, a batch of configurations of one source): each
photo is read once by the source's loader and once by xfverify's decoder, then every configuration of the batch
is applied to it (the transforms leave the image unchanged), so 169 configurations x 500 photos take minutes,
not hours. Results: ``bench/results/zoo_parity.json`` (per source: the distinct configurations, each with its
source configuration, spec, card count, images equal, max |diff|, verdict).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xfverify.evaluator.data.layouts import load_dataset  # noqa: E402
from xfverify.evaluator.pipeline.preprocess import catalogue_reference_tensors, preprocess_files  # noqa: E402
from xfverify.evaluator.process.warm import warm_workers  # noqa: E402
from xfverify.evaluator.references import CATALOGUE_REFERENCES  # noqa: E402
from xfverify.models import zoos  # noqa: E402
from xfverify.models.cards import get_card  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "imagenet-sample-500"
# the source's own words for an entry's preprocessing, as the catalogue keeps them
SOURCE_CONFIG = {"torchvision": "transforms", "timm": "data_config"}
# run through the framework's worker, a job per chunk of photos: GluonCV imports only as MXNet's worker sets it up
# (it refuses torch >= 2 beside it); Keras's reference offers catalogue_pipeline alone (it builds the network)
WORKER_ONLY = {"gluoncv", "keras"}


def source_config(source: str, entry: dict) -> object:
    """An entry's preprocessing in the source's own words, as the catalogue keeps them."""
    if source in SOURCE_CONFIG:
        return entry[SOURCE_CONFIG[source]]
    if source == "keras":
        return {"module": entry["module"], "preprocess_mode": entry["preprocess_mode"], "input_size": entry["input_size"]}
    if source == "gluoncv":
        return {"input_size": entry["input_size"], "crop_ratio": entry["crop_ratio"]}
    return None


def configurations(source: str) -> list[dict]:
    """The source's distinct specs, each with its cards (in catalogue order) and the source's own configuration."""
    groups: dict[str, dict] = {}
    for _, card_id, entry in zoos.entries(source):
        spec = get_card(card_id).reference_spec
        key = json.dumps({k: v for k, v in spec.to_dict().items() if k != "source"}, sort_keys=True)
        group = groups.setdefault(key, {"spec": spec, "cards": [], "source_configs": []})
        group["cards"].append(card_id)
        own = source_config(source, entry)
        if own not in group["source_configs"]:
            group["source_configs"].append(own)
    return list(groups.values())


def drive(source: str, cards: list[str], paths: list[str]) -> list[dict]:
    """In the framework's process: each card's source transform against xfverify's tensors on every photo."""
    from xfverify.evaluator.data.imaging import apply_geometry, decode_noting
    from xfverify.evaluator.data.normalise import normalise

    reference = importlib.import_module(f"xfverify.evaluator.references.{CATALOGUE_REFERENCES[source].module}")
    transforms = [reference.catalogue_transform(card[len(source) + 1 :]) for card in cards]
    specs = [get_card(card).reference_spec for card in cards]
    stats = [{"images": 0, "images_equal": 0, "max_abs_diff": 0.0, "differing": []} for _ in cards]
    for path in paths:
        theirs_image = reference.load(path)
        decoded = {decoder: decode_noting(path, decoder)[0] for decoder in {spec.decoder for spec in specs}}
        for transform, spec, stat in zip(transforms, specs, stats):
            theirs = np.asarray(transform(theirs_image), dtype=np.float32)
            ours = normalise(apply_geometry(decoded[spec.decoder], spec)[None], spec)[0]
            stat["images"] += 1
            if ours.shape != theirs.shape:
                stat["max_abs_diff"] = float("inf")
                stat["differing"].append(f"{Path(path).name}: shape {ours.shape} against {theirs.shape}")
            elif np.array_equal(ours, theirs):
                stat["images_equal"] += 1
            else:
                stat["max_abs_diff"] = max(stat["max_abs_diff"], float(np.abs(ours - theirs).max()))
                stat["differing"].append(Path(path).name)
    for stat in stats:
        stat["differing"] = stat["differing"][:10]
    stats[0]["reference"] = reference.describe() if stats else ""
    return stats


def through_worker(source: str, cards: list[str], paths: list[str], chunk: int = 50) -> list[dict]:
    """Each card's source pipeline run by the framework's worker (``preprocess --verify``'s path), ``chunk`` photos
    a job, against ``preprocess_files``."""
    stats = []
    for card in cards:
        spec = get_card(card).reference_spec
        stat = {"images": 0, "images_equal": 0, "max_abs_diff": 0.0, "differing": []}
        for start in range(0, len(paths), chunk):
            part = paths[start : start + chunk]
            theirs, stat["reference"] = catalogue_reference_tensors(card, part, spec.layout)
            ours = preprocess_files(part, spec)
            for path, a, b in zip(part, ours, theirs):
                stat["images"] += 1
                if a.shape == b.shape and np.array_equal(a, b):
                    stat["images_equal"] += 1
                    continue
                stat["max_abs_diff"] = max(stat["max_abs_diff"], float(np.abs(a - b).max()) if a.shape == b.shape
                                           else float("inf"))
                stat["differing"].append(Path(path).name)
        stat["differing"] = stat["differing"][:10]
        stats.append(stat)
    return stats


def run_driver(source: str, cards: list[str], paths: list[str], work: Path) -> list[dict]:
    if source in WORKER_ONLY:
        return through_worker(source, cards, paths)
    job = work / f"{source}-{abs(hash(tuple(cards)))}.json"
    job.write_text(json.dumps({"source": source, "cards": cards, "paths": paths}))
    one_thread = {**os.environ, "OMP_NUM_THREADS": "1"}  # torch's normalise would spread over busy cores
    done = subprocess.run([sys.executable, __file__, "--driver", str(job)], capture_output=True, text=True,
                          env=one_thread)
    if done.returncode != 0:
        raise RuntimeError(f"{source} driver failed: {done.stderr[-3000:]}")
    return json.loads(job.with_suffix(".out").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "zoo_parity.json"))
    parser.add_argument("--sources", default=",".join(zoos.SOURCES))
    parser.add_argument("--batch", type=int, default=12, help="configurations per framework process")
    parser.add_argument("--parallel", type=int, default=2, help="framework processes at once")
    parser.add_argument("--every", type=int, default=1, help="every N-th photo by image id (a sample across classes)")
    parser.add_argument("--work", default=str(Path.home() / ".cache" / "xfverify-zoo-parity"))
    parser.add_argument("--driver", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        job = json.loads(Path(args.driver).read_text())
        stats = drive(job["source"], job["cards"], job["paths"])
        Path(args.driver).with_suffix(".out").write_text(json.dumps(stats))
        return
    paths = [record.path for record in load_dataset(args.data).records][:: args.every]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    payload = json.loads(out.read_text()) if out.exists() else {}
    payload.update({
        "what": ("per source, every distinct resolved spec of its catalogue cards; one card of each against the "
                 "source's own evaluation transform, in the framework's process, on the photos: pass = every value "
                 "of every image bit-identical"),
        "data": "../shared/data/imagenet-sample-500 (each configuration's `images` says how many of its 500 photos, "
                "every N-th by image id, it was checked on)",
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
    })
    sources = payload.setdefault("sources", {})
    groups = {source: configurations(source) for source in args.sources.split(",")}
    previous = {(source, row["spec"]["name"]): row for source, part in sources.items()
                for row in part.get("configurations", [])}  # kept until checked on more photos
    current = {(source, g["spec"].name): g["spec"].to_dict() for source, part in groups.items() for g in part}
    done = {key: row for key, row in previous.items()  # a spec changed since its row (a new decoder) is checked again
            if row["images"] >= len(paths) and row["spec"] == current.get(key, row["spec"])}
    batches = []
    for source, source_groups in groups.items():
        if source not in CATALOGUE_REFERENCES:
            print(f"{source}: no reference pipeline for this source", file=sys.stderr)
            continue
        todo = [g for g in source_groups if (source, g["spec"].name) not in done]
        batches += [(source, todo[i : i + args.batch]) for i in range(0, len(todo), args.batch)]

    def record(source: str, batch: list[dict], stats: list[dict]) -> None:
        for group, stat in zip(batch, stats):
            spec, cards = group["spec"], group["cards"]
            verdict = "pass" if stat["images_equal"] == stat["images"] == len(paths) else "fail"
            done[source, spec.name] = {"spec": spec.to_dict(), "source_configs": group["source_configs"],
                                       "cards": len(cards), "checked_with": cards[0], **stat, "verdict": verdict}
            print(f"{source} {spec.name}: {stat['images_equal']}/{stat['images']} equal, max |diff| "
                  f"{stat['max_abs_diff']:.3g} ({len(cards)} cards)", flush=True)
        for name, source_groups in groups.items():
            rows = [done.get((name, g["spec"].name)) or previous[name, g["spec"].name] for g in source_groups
                    if (name, g["spec"].name) in done or (name, g["spec"].name) in previous]
            sources[name] = {
                "distinct_configurations": len(source_groups), "checked": len(rows),
                "passed": sum(r["verdict"] == "pass" for r in rows),
                "cards": sum(len(g["cards"]) for g in source_groups), "configurations": rows,
            }
        out.write_text(json.dumps(payload, indent=1) + "\n")

    with warm_workers(), ThreadPoolExecutor(args.parallel) as pool:  # worker-run sources: forked, imported once
        futures = [(source, batch, pool.submit(run_driver, source, [g["cards"][0] for g in batch], paths, work))
                   for source, batch in batches]
        for source, batch, future in futures:
            record(source, batch, future.result())


if __name__ == "__main__":
    main()
