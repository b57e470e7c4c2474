"""What a study cost against the work it had to do: `xfverify study` on an empty cache and an empty --out, then its
wall time set against the sum of its cells' model passes (the workers' loops and warm-ups), the decodes (one per
geometry), the exports and the rest (process and framework start-up, model builds), all read from the cells' own
reports; then a second run of the same study (nothing to run: its whole time is the reuse check).

    python bench/study_cost.py --study lite --data ../shared/data/imagenet-sample-500 \
        --out bench/results/study_lite_cost.json --keep bench/results/study_lite

``--keep`` copies the study's own outputs there (study.json, .md, .csv, .html, as the second run, reusing every
cell of the timed one, wrote them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(args: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "xfverify", *args], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def _cell_costs(study_dir: Path) -> dict:
    passes = decodes = exports = 0.0
    geometries: dict[str, float] = {}
    for report_path in sorted(study_dir.glob("cells/*/report.json")):
        report = json.loads(report_path.read_text())
        if report["kind"] == "diagnose":
            for one in report["cost"]["passes"]:
                passes += one["warmup_s"] + one["loop_wall_s"]
            decodes += report["cost"]["decode_s"]
            continue
        timing = report["timing"]
        passes += timing["warmup_s"] + timing["wall_s"]
        geometry = json.dumps(report["preprocess"], sort_keys=True)  # decoded by the first cell, reused by the others
        geometries[geometry] = max(geometries.get(geometry, 0.0), report["cache"]["decode_s"])
        if report["kind"] == "onnx" and report["onnx"].get("export_s"):
            exports += report["onnx"]["export_s"]
    decodes += sum(geometries.values())
    return {"model_passes_s": round(passes, 3), "decodes_s": round(decodes, 3), "exports_s": round(exports, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="lite")
    parser.add_argument("--data", required=True)
    parser.add_argument("--out")
    parser.add_argument("--keep", help="a folder for the timed run's study.json, .md, .csv and .html")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="xfverify-study-cost-") as scratch:
        env = {**os.environ, "XFVERIFY_CACHE": str(Path(scratch) / "cache")}
        folder = Path(scratch) / "study"
        args = ["study", options.study, "--data", options.data, "--out", str(folder)]
        cold = _run(args, env)
        again = _run(args, env)
        study = json.loads((folder / "study.json").read_text())
        costs = _cell_costs(folder)
        if options.keep:
            Path(options.keep).mkdir(parents=True, exist_ok=True)
            for name in ("study.json", "study.md", "study.csv", "study.html"):
                shutil.copyfile(folder / name, Path(options.keep) / name)
    work = costs["model_passes_s"] + costs["decodes_s"]
    result = {
        "study": options.study, "data": options.data, "cells": len(study["cells"]),
        "n_images": study["dataset"]["n_images"], "cores": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "load_average_at_end": os.getloadavg(),
        "study_wall_s": round(cold, 3), **costs,
        "wall_over_passes_and_decodes": round(cold / work, 3) if work else None,
        "wall_over_passes_decodes_and_exports": round(cold / (work + costs["exports_s"]), 3) if work else None,
        "rest_s": round(cold - work - costs["exports_s"], 3),
        "second_run_wall_s": round(again, 3), "second_run_ran": study["ran"],
    }
    text = json.dumps(result, indent=1)
    print(text)
    if options.out:
        Path(options.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
