"""`xfverify diagnose pypi/efficientnet_lite0` on 500 real labelled ImageNet photographs, every variant and bf16, cold
cache.

    python bench/diagnose_lite0.py --out bench/results/diagnose_lite0.json

Records the decomposition, every variant's paired difference to the reference, and the run's cost next to
what it is made of (decoding each distinct geometry once, one model pass per variant, one model load), all
measured in this one run. The README quotes this file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from xfverify.evaluator.pipeline.diagnose import DiagnoseOptions, run_diagnose

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample-500"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--out", default="bench/results/diagnose_lite0.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="xfverify-bench-") as work:
        started = time.perf_counter()
        report = run_diagnose(DiagnoseOptions(model="pypi/efficientnet_lite0", data=args.data, precisions="bf16",
                                              out=str(Path(work) / "out"), cache_dir=str(Path(work) / "cache"))).report
        wall = time.perf_counter() - started
    rows = [report.reference, *report.variants]
    payload = {
        "what": "xfverify diagnose pypi/efficientnet_lite0 on imagenet-sample-500 (500 ImageNet photos, one per even "
                "class), cold tensor cache: top-1 error (%) per variant, paired with the reference",
        "data": "../shared/data/imagenet-sample-500",
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "device": report.device.name,
        "cores": os.cpu_count(),
        "published_top1_error": report.published.top1_error if report.published else None,
        "sentence": report.decomposition.sentence,
        "decomposition": report.decomposition.model_dump(mode="json"),
        "variants": [{k: v for k, v in row.model_dump(mode="json").items() if k not in ("spec", "flips")}
                     for row in rows],
        "cost": {**report.cost.model_dump(mode="json"), "diagnose_wall_s": round(wall, 1)},
    }
    Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
    print(json.dumps({k: payload[k] for k in ("sentence", "cost")}, indent=1))


if __name__ == "__main__":
    main()
