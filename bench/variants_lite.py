"""EfficientNet-Lite0/1/2's deployment variants on the 500 photographs: fp16, int8 static (QDQ, per-channel, MinMax),
opt-all (and int8-dynamic for Lite0), each with its paired top-1 difference to the fp32 export, beside the TensorFlow
original's published int8 drop; the int8 file with its costliest nodes kept in float; and a planted quantisation fault.

    python bench/variants_lite.py --results bench/results/variants_lite
    python bench/variants_lite.py --results bench/results/variants_lite --deploy   # Lite0: every variant, one run

``--deploy`` scores Lite0's fp32 export and every variant (fp16, int8 static with MinMax, entropy and percentile
calibration, int8-dynamic, opt-all) in one run per fold under the CPU provider, so each speed ratio is the variant's
compute seconds over the plain file's in that same run.

Calibration is kept apart from evaluation by two folds: the photographs, in file-name order, alternate between halves
A and B; each half is scored by an int8 file calibrated on the other half (250 images), so every one of the 500 is
scored once, by a file whose calibration never saw it. The two runs' paired tables (right -> wrong, wrong -> right,
both wrong) are summed, and the interval and McNemar's p computed on the 500 with xfverify's own functions. Speed
ratios are each run's (variant / plain compute seconds, the same CPU provider, the same run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from xfverify.evaluator.analysis.metrics import mcnemar_exact_p, newcombe_paired_interval

PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet-sample-500"
MODELS = ("lite0", "lite1", "lite2")
# tensorflow/tpu models/official/efficientnet/lite/README.md: top-1 accuracy, fp32 -> post-training int8
PUBLISHED = {"lite0": (75.1, 74.4), "lite1": (76.7, 75.9), "lite2": (77.6, 77.0)}
PUBLISHED_SOURCE = "tensorflow/tpu models/official/efficientnet/lite/README.md (int8: 2,000 calibration images)"
KEEP_FLOAT = 3
PLANT_SCALE = 8.0  # the planted fault: one Conv's weight scale multiplied by this


def xfverify(*args: str, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "xfverify", *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"xfverify {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def folds(scratch: Path, photos: Path) -> dict[str, Path]:
    """Copies of the photographs in two class-folder halves, alternating in file-name order (the photographs are not
    changed or moved; the copies live in the scratch folder)."""
    files = sorted(p for p in photos.rglob("*") if p.is_file() and p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    out = {"A": scratch / "fold-A", "B": scratch / "fold-B"}
    for index, path in enumerate(files):
        target = out["AB"[index % 2]] / path.relative_to(photos)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not (target.is_file() and target.stat().st_size == path.stat().st_size):  # --scratch: copied already
            shutil.copyfile(path, target)
    return out


def table(n: int, reference_error: float, result: dict, key: str) -> dict[str, int]:
    """The paired 2 x 2 table of a variant against a reference, from a report's counts."""
    paired = result[key]
    reference_wrong = round(reference_error * n / 100)
    to_wrong, to_right = paired["right_to_wrong"], paired["wrong_to_right"]
    both_wrong = reference_wrong - to_right
    return {"n": n, "both_wrong": both_wrong, "to_wrong": to_wrong, "to_right": to_right,
            "both_right": n - both_wrong - to_wrong - to_right}


def summed(tables: list[dict[str, int]]) -> dict:
    total = {k: sum(t[k] for t in tables) for k in tables[0]}
    n = total["n"]
    reference_wrong = total["both_wrong"] + total["to_right"]
    variant_wrong = total["both_wrong"] + total["to_wrong"]
    low, high = newcombe_paired_interval(total["both_wrong"], total["to_wrong"], total["to_right"], total["both_right"])
    return {**total, "reference_top1_error": round(100 * reference_wrong / n, 2),
            "variant_top1_error": round(100 * variant_wrong / n, 2),
            "delta_points": round(100 * (variant_wrong - reference_wrong) / n, 2),
            "ci95": [round(low, 2), round(high, 2)], "mcnemar_p": round(mcnemar_exact_p(total["to_wrong"], total["to_right"]), 4)}


def run_model(model: str, fold_paths: dict[str, Path], scratch: Path, results: Path, env: dict,
              with_native: bool) -> dict:
    """Both folds of one model. Without the native run (``with_native`` false: the torch pass costs most on a busy
    machine), the export is made by a one-image run and scored as a file under the card's preprocessing."""
    reports = {}
    target, preprocess = f"pypi/efficientnet_{model}", []
    if not with_native:
        out = scratch / f"{model}-export"
        xfverify("onnx", target, "--data", str(fold_paths["A"]), "--limit", "1", "--provider", "cpu", "--out",
                 str(out), env=env)
        made = json.loads((out / "report.json").read_text())
        target, preprocess = made["onnx"]["path"], ["--preprocess", made["preprocess"]["name"]]
    for fold, other in (("A", "B"), ("B", "A")):
        out = scratch / f"{model}-{fold}"
        variants = ["fp16", "int8"]
        args = ["onnx", target, *preprocess, "--data", str(fold_paths[fold]), "--calibration",
                str(fold_paths[other]), "--provider", "cpu", "--out", str(out), "--localize-images", "2"]
        if model == "lite0":  # the remedy, on one model (the machine's time goes to Lite1/2's int8 and fp16)
            args += ["--keep-float-auto", str(KEEP_FLOAT)]
        for variant in variants:
            args += ["--variant", variant]
        print(f"{model} fold {fold}: xfverify {' '.join(args)}", flush=True)
        xfverify(*args, env=env)
        saved = results / f"{model}-{fold}"
        saved.mkdir(parents=True, exist_ok=True)
        for name in ("report.json", "report.md"):
            (saved / name).write_text((out / name).read_text().replace(str(scratch), "$TMP"))
        reports[fold] = json.loads((out / "report.json").read_text())
    return summarise(model, reports)


DEPLOY_VARIANTS = ("fp16", "int8-minmax", "int8-entropy", "int8-percentile", "int8-dynamic", "opt-all")


def machine() -> dict:
    """What the speed ratios were measured on (a shared machine: the ratios are each run's own)."""
    return {"cpus": os.cpu_count(), "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
            "niceness": os.nice(0)}


def run_deploy(fold_paths: dict[str, Path], scratch: Path, results: Path, env: dict, folds: str,
               limit: int | None) -> None:
    """Lite0's export and every deployment variant in ONE run per fold (the int8 files calibrated on the other fold):
    the speed ratios are each run's variant / plain compute seconds under the CPU provider. Each fold's report and
    the machine's load around it go into ``results`` (the folds may run in separate processes at once)."""
    for fold in folds.split(","):
        other = "B" if fold == "A" else "A"
        out = scratch / f"lite0-export-{fold}"
        xfverify("onnx", "pypi/efficientnet_lite0", "--data", str(fold_paths["A"]), "--limit", "1", "--provider",
                 "cpu", "--out", str(out), env=env)
        made = json.loads((out / "report.json").read_text())
        out = scratch / f"lite0-deploy-{fold}"
        args = ["onnx", made["onnx"]["path"], "--preprocess", made["preprocess"]["name"], "--data",
                str(fold_paths[fold]), "--calibration", str(fold_paths[other]), "--provider", "cpu", "--no-localize",
                "--out", str(out)]
        if limit:  # the first N of each fold scored, the first N of the other calibrating
            args += ["--limit", str(limit), "--calibration-limit", str(limit)]
        for variant in DEPLOY_VARIANTS:
            args += ["--variant", variant]
        print(f"lite0 deploy fold {fold}: xfverify {' '.join(args)}", flush=True)
        before = machine()
        xfverify(*args, env=env)
        saved = results / f"lite0-deploy-{fold}"
        saved.mkdir(parents=True, exist_ok=True)
        for name in ("report.json", "report.md"):
            (saved / name).write_text((out / name).read_text().replace(str(scratch), "$TMP"))
        (saved / "machine.json").write_text(json.dumps({"before": before, "after": machine()}, indent=2) + "\n")


def summarise_deploy(results: Path) -> dict:
    """summary-lite0-deploy.json's content from both folds' saved reports."""
    reports = {fold: json.loads((results / f"lite0-deploy-{fold}" / "report.json").read_text()) for fold in "AB"}
    machines = {fold: json.loads((results / f"lite0-deploy-{fold}" / "machine.json").read_text()) for fold in "AB"}
    found = summarise("lite0", reports)
    found["speed"] = {
        "provider": "CPUExecutionProvider",
        "machine": "a 2-core machine shared with other work (tests and benchmarks of other sessions), the two "
                   "folds' runs at the same time in two processes at nice 10: a ratio compares a variant with the "
                   "plain file within one run, never across runs",
        "load": machines,
        "images": {fold: {"scored": r["n_scored"], "calibration": r["variants"]["calibration"]["n_images"]}
                   for fold, r in reports.items()},
        "plain_images_per_s": {fold: r["variants"]["plain_images_per_s"] for fold, r in reports.items()},
        "images_per_s": {name: {fold: next(v for v in r["variants"]["results"] if v["name"] == name)["images_per_s"]
                                for fold, r in reports.items()} for name in found["variants"]}}
    return found


def summarise(model: str, reports: dict[str, dict]) -> dict:
    names = [r["name"] for r in reports["A"]["variants"]["results"]]
    native = all(r["native"] for r in reports.values())
    summary = {"model": f"pypi/efficientnet_{model}", "n_scored": sum(r["n_scored"] for r in reports.values()),
               "native_top1_error": round(sum(r["native"]["top1_error"] * r["n_scored"] for r in reports.values())
                                          / sum(r["n_scored"] for r in reports.values()), 2) if native else None,
               "published_fp32_int8_accuracy": PUBLISHED[model], "published_source": PUBLISHED_SOURCE,
               "published_int8_drop_points": round(PUBLISHED[model][0] - PUBLISHED[model][1], 2),
               "calibration": {fold: {k: r["variants"]["calibration"][k] for k in ("n_images", "manifest_sha256")}
                               for fold, r in reports.items()},
               "variants": {}}
    for name in names:
        per_fold = {fold: next(v for v in r["variants"]["results"] if v["name"] == name) for fold, r in reports.items()}
        plain = [table(r["n_scored"], r["top1_error"], per_fold[fold], "vs_plain") for fold, r in reports.items()]
        versus_native = [table(r["n_scored"], r["native"]["top1_error"], per_fold[fold], "vs_native")
                         for fold, r in reports.items()] if native else None
        entry = {"vs_fp32_onnx": summed(plain), "vs_native_torch": summed(versus_native) if native else None,
                 "time_over_plain": {fold: v["time_over_plain"] for fold, v in per_fold.items()},
                 "agreement_with_plain": {fold: v["agreement_plain"]["top1_agreement"] for fold, v in per_fold.items()}}
        remedied = per_fold["A"].get("remedy_of")
        if remedied:
            entry["remedy_of"] = remedied
            entry["kept_in_float"] = {fold: list(v["spec"]["keep_float"]) for fold, v in per_fold.items()}
            entry["recovered_points"] = {fold: v["recovered_points"] for fold, v in per_fold.items()}
            entry["time_over_remedied"] = {fold: v["time_over_remedied"] for fold, v in per_fold.items()}
        summary["variants"][name] = entry
    return summary


def plant(int8: Path, target: Path) -> tuple[str, str]:
    """Multiply the weight scale of one mid-network pointwise Conv's DequantizeLinear by PLANT_SCALE; the Conv's name
    and the DequantizeLinear's (the node whose scale is off)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(int8))
    initialisers = {t.name: t for t in model.graph.initializer}
    produced_by = {out: node for node in model.graph.node for out in node.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv" and any(
        a.name == "group" and a.i == 1 for a in n.attribute) and n.input[1] in produced_by]
    conv = convs[len(convs) // 2]
    dequantise = produced_by[conv.input[1]]
    scale = initialisers[dequantise.input[1]]
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * PLANT_SCALE, scale.name))
    onnx.save(model, str(target))
    return conv.name, dequantise.name


def planted_fault(scratch: Path, fold_paths: dict[str, Path], results: Path, env: dict) -> dict:
    """Lite0's int8 file (fold A) with one Conv's weight scale forced off, scored against the int8 file it came from
    and against the fp32 export: the node xfverify names against the node planted."""
    report = json.loads((scratch / "lite0-A" / "report.json").read_text())
    int8 = next(v for v in report["variants"]["results"] if v["name"] == "int8-minmax")
    node, dequantise = plant(Path(int8["path"]), scratch / "lite0-int8-planted.onnx")
    found = {"planted_node": node, "planted_dequantize_node": dequantise, "weight_scale_multiplied_by": PLANT_SCALE}
    for parent_name, parent in (("int8", int8["path"]), ("fp32", report["onnx"]["path"])):
        out = scratch / f"planted-vs-{parent_name}"
        xfverify("onnx", parent, "--preprocess", "lite-tf-224", "--data", str(fold_paths["A"]), "--provider", "cpu",
                 "--variant", str(scratch / "lite0-int8-planted.onnx"), "--localize-images", "2", "--out", str(out),
                 env=env)
        saved = results / f"planted-vs-{parent_name}"
        saved.mkdir(parents=True, exist_ok=True)
        for name in ("report.json", "report.md"):
            (saved / name).write_text((out / name).read_text().replace(str(scratch), "$TMP"))
        result = json.loads((out / "report.json").read_text())["variants"]["results"][0]
        nodes = result["nodes"] or {}
        found[f"against_{parent_name}"] = {
            "first_past_tolerance": nodes.get("first_past_tolerance"), "costliest": nodes.get("costliest"),
            "named_exactly": bool(nodes) and nodes["costliest"][:1] in ([node], [dequantise]),
            "flips_vs_parent": result["agreement_plain"]["n_flips"], "delta_points_vs_parent": result["vs_plain"]["delta"]}
    return found


def combine(results: Path) -> dict:
    """summary.json from the per-model files and the planted fault's, whichever runs have written them."""
    summary = {"photos": "imagenet-sample-500 (500 photographs, one per even-indexed class)",
               "calibration": "two folds: files in name order alternate between A and B; each half is scored by "
                              "an int8 file calibrated on the other half (250 images)",
               "provider": "CPUExecutionProvider",
               "models": {model: json.loads((results / f"summary-{model}.json").read_text())
                          for model in MODELS if (results / f"summary-{model}.json").is_file()}}
    if (results / "planted.json").is_file():
        summary["planted_fault"] = json.loads((results / "planted.json").read_text())
    if (results / "summary-lite0-deploy.json").is_file():
        summary["lite0_deploy"] = json.loads((results / "summary-lite0-deploy.json").read_text())
    (results / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def readme_table(summary: dict) -> str:
    """The README's table, from summary.json."""
    lines = ["| model | fp32 export top-1 error % | variant | top-1 error % | paired delta to fp32 (points, 95% CI) | "
             "McNemar p | time / fp32 (fold A, B) | TensorFlow's published int8 drop |", "|---|---|---|---|---|---|---|---|"]
    for model, found in summary["models"].items():
        for name, entry in found["variants"].items():
            delta = entry["vs_fp32_onnx"]
            times = ", ".join(f"{t:.2f}x" if t is not None else "n/a" for t in entry["time_over_plain"].values())
            published = (f"+{found['published_int8_drop_points']:.1f} ({found['published_fp32_int8_accuracy'][0]} -> "
                         f"{found['published_fp32_int8_accuracy'][1]} % top-1)" if name.startswith("int8-minmax") and
                         "remedy_of" not in entry else "")
            lines.append(f"| {model} | {delta['reference_top1_error']:.2f} | {name} | {delta['variant_top1_error']:.2f} | "
                         f"{delta['delta_points']:+.2f} ({delta['ci95'][0]:+.2f} to {delta['ci95'][1]:+.2f}) | "
                         f"{delta['mcnemar_p']:.3g} | {times} | {published} |")
    return "\n".join(lines)


def deploy_table(summary: dict) -> str:
    """The README's table of Lite0's variants in one run per fold, from summary.json."""
    found = summary["lite0_deploy"]
    lines = ["| variant | top-1 error % | paired delta to fp32 (points, 95% CI) | McNemar p | agreement with fp32 % "
             "(fold A, B) | time / fp32 (fold A, B) |", "|---|---|---|---|---|---|"]
    plain = next(iter(found["variants"].values()))["vs_fp32_onnx"]["reference_top1_error"]
    lines.append(f"| fp32 export | {plain:.2f} | | | | 1 |")
    for name, entry in found["variants"].items():
        delta = entry["vs_fp32_onnx"]
        times = ", ".join(f"{t:.2f}x" if t is not None else "n/a" for t in entry["time_over_plain"].values())
        agreement = ", ".join(f"{a:.1f}" for a in entry["agreement_with_plain"].values())
        lines.append(f"| {name} | {delta['variant_top1_error']:.2f} | {delta['delta_points']:+.2f} "
                     f"({delta['ci95'][0]:+.2f} to {delta['ci95'][1]:+.2f}) | {delta['mcnemar_p']:.3g} | {agreement} | "
                     f"{times} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--table", action="store_true", help="only print the README's table from --results")
    parser.add_argument("--no-native", action="store_true", help="score the export as a file, without the native "
                                                                  "run (its paired difference is to the fp32 export)")
    parser.add_argument("--scratch", type=Path, help="a folder kept between calls (copies, caches) instead of a "
                                                     "temporary one")
    parser.add_argument("--deploy", action="store_true", help="only Lite0's export with every deployment variant "
                                                              f"({', '.join(DEPLOY_VARIANTS)}) in one run per fold")
    parser.add_argument("--limit", type=int, help="--deploy: score the first N images of each fold, calibrated on "
                                                   "the first N of the other (a busy machine's time)")
    parser.add_argument("--folds", default="A,B", help="--deploy: the folds to run (A,B; a process each may run "
                                                       "one); the summary is written once both are in --results")
    args = parser.parse_args()
    if args.table:
        summary = combine(args.results)
        print(readme_table(summary))
        if "lite0_deploy" in summary:
            print("\n" + deploy_table(summary))
        return
    if args.deploy:
        args.results.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="xfverify-variants-lite-") as scratch_name:
            scratch = args.scratch.resolve() if args.scratch else Path(scratch_name)
            env = {**os.environ, "XFVERIFY_CACHE": str(scratch / "cache"), "COLUMNS": "160"}
            run_deploy(folds(scratch, args.photos), scratch, args.results, env, args.folds, args.limit)
        if all((args.results / f"lite0-deploy-{fold}" / "machine.json").is_file() for fold in "AB"):
            found = summarise_deploy(args.results)
            (args.results / "summary-lite0-deploy.json").write_text(json.dumps(found, indent=2) + "\n")
            print(deploy_table(combine(args.results)))
        return
    args.results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="xfverify-variants-lite-") as scratch_name:
        scratch = args.scratch.resolve() if args.scratch else Path(scratch_name)
        env = {**os.environ, "XFVERIFY_CACHE": str(scratch / "cache"), "COLUMNS": "160"}
        fold_paths = folds(scratch, args.photos)
        for model in args.models.split(","):  # one file per model: models may run in separate processes at once
            found = run_model(model, fold_paths, scratch, args.results, env, not args.no_native)
            (args.results / f"summary-{model}.json").write_text(json.dumps(found, indent=2) + "\n")
        if "lite0" in args.models.split(","):
            planted = planted_fault(scratch, fold_paths, args.results, env)
            (args.results / "planted.json").write_text(json.dumps(planted, indent=2) + "\n")
    print(readme_table(combine(args.results)))


if __name__ == "__main__":
    main()
