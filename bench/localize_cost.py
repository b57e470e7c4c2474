"""What `xfverify onnx --localize` costs on top of the ONNX run it follows, measured in one run on one machine.

    python bench/localize_cost.py --out bench/results/localize_cost.json     # Lite0, the embedded sample

First a plain `xfverify onnx` of the model (its native run and export, into a temporary folder), then, each as a
whole process against that native run on the same warm tensor and export caches: the same ONNX run without
--localize (the baseline), and with --localize on 1 and on 4 images. For each: wall seconds, the largest
resident memory of any process of the run (the parent or a worker: ``ru_maxrss`` of the reaped descendants), and
the ``localization.cost`` block the report holds (each side's worker, the comparison, the bytes of intermediates
per image, written one tensor at a time to .npy files under the run's work folder, removed with it).
The claim: the extra time is two worker starts (a framework's and ONNX Runtime's) plus a pass per image, and the
memory does not grow with the number of images (one image's tensors at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "pypi/efficientnet_lite0"
MEASURE = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def run(args: list[str], env: dict) -> tuple[float, int]:
    """``python -m xfverify ARGS`` to its end in a process that measures it: (wall seconds, largest RSS in MiB)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "xfverify", *args],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"xfverify {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return round(wall, 2), int(done.stdout.strip().splitlines()[-1]) // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--data", default=None, help="images (default: the embedded sample)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="xfverify-localize-cost-") as scratch:
        root = Path(scratch)
        env = {**os.environ, "XFVERIFY_CACHE": str(root / "cache")}
        data = ["--data", args.data] if args.data else []
        common = ["--provider", "cpu", *data]
        first_s, first_mib = run(["onnx", args.model, *common, "--out", str(root / "plain")], env)
        against = ["--against", str(root / "plain" / "native")]
        baseline_s, baseline_mib = run(["onnx", args.model, *common, *against, "--out", str(root / "b")], env)
        result = {"model": args.model, "data": args.data or "the embedded sample",
                  "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                              "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
                  "first_run_with_native_and_export_s": first_s,
                  "baseline": {"wall_s": baseline_s, "max_rss_mib": baseline_mib}, "localize": {}}
        for images in (1, 4):
            out = root / f"k{images}"
            wall, mib = run(["onnx", args.model, *common, *against, "--out", str(out), "--localize",
                             "--localize-images", str(images)], env)
            report = json.loads((out / "report.json").read_text())
            localization = report["localization"]
            result["localize"][str(images)] = {
                "wall_s": wall, "extra_s": round(wall - baseline_s, 2), "max_rss_mib": mib,
                "cost": localization["cost"], "n_onnx_tensors": localization["n_onnx_tensors"],
                "n_matched": localization["n_matched"], "verdict": localization["verdict"]}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
