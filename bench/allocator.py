"""What the workers' allocator setting buys: a torch CPU pass with glibc's defaults against the launcher's.

    python bench/allocator.py --out bench/results/allocator.json

The launcher starts every framework worker with glibc's mmap and trim thresholds raised
(``ALLOCATOR_ENVIRONMENT`` in xfverify/evaluator/process/launcher.py). This runs ``xfverify native`` on the
photographs of imagenet-sample-500 (or --data) twice per model, on a warm decode cache, alternating the
setting, and records the native pass's compute seconds, the worker's whole time and the logits' sha256
(which must be the same: an allocator changes no arithmetic). Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample-500"
MODELS = ("pypi/efficientnet_lite0", "pypi/efficientnet_lite2")


def _run(model: str, data: str, out: Path, raised: bool) -> dict:
    import xfverify
    from xfverify.evaluator.process import launcher

    kept = dict(launcher.ALLOCATOR_ENVIRONMENT)
    if not raised:
        launcher.ALLOCATOR_ENVIRONMENT.clear()
    try:
        report = xfverify.native(model, data=data, out=str(out), batch_size=16)
    finally:
        launcher.ALLOCATOR_ENVIRONMENT.update(kept)
    return {"compute_s": round(report.timing.compute_s, 2), "images_per_s": round(report.timing.images_per_s, 1),
            "top1_error": report.top1_error,
            "logits_sha256": hashlib.sha256((out / "logits.npy").read_bytes()).hexdigest()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    from xfverify.evaluator.process.launcher import ALLOCATOR_ENVIRONMENT
    from xfverify.evaluator.system.devices import cpu_name

    for name in ALLOCATOR_ENVIRONMENT:
        if name in os.environ:
            raise SystemExit(f"unset {name}: this compares glibc's defaults with the launcher's setting")
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for model in MODELS:
            _run(model, args.data, Path(scratch) / f"warm-{model.replace('/', '_')}", True)  # fills the decode cache and the weights' import
            runs = {"glibc_defaults": [], "raised": []}
            for repeat in range(2):
                for raised in (False, True):
                    out = Path(scratch) / f"{model.replace('/', '_')}-{raised}-{repeat}"
                    runs["raised" if raised else "glibc_defaults"].append(_run(model, args.data, out, raised))
            hashes = {run["logits_sha256"] for kind in runs.values() for run in kind}
            best = {kind: min(run["compute_s"] for run in kind_runs) for kind, kind_runs in runs.items()}
            results[model] = {"runs": runs, "same_logits": len(hashes) == 1,
                              "compute_speedup": round(best["glibc_defaults"] / best["raised"], 2)}
    Path(args.out).write_text(json.dumps({"cpu": cpu_name(), "cores": os.cpu_count(), "load_at_start": os.getloadavg()[0],
                                          "setting": ", ".join(f"{n}={v}" for n, v in ALLOCATOR_ENVIRONMENT.items()),
                                          "batch_size": 16, "models": results}, indent=1) + "\n")
    print(json.dumps({m: (r["compute_speedup"], r["same_logits"]) for m, r in results.items()}))


if __name__ == "__main__":
    main()
