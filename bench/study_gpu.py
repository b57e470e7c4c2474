"""The `article` study on one GPU with random weights: whole-study wall time, per-cell images/s, and what bounds it.

    python bench/study_gpu.py --out results.json [--images 10000] [--keep DIR]

Runs ``xfverify study`` on a study file made from the shipped `article` study: its models whose framework is
importable here (on a machine with torch alone: torchvision's V1 and V2 weights), each with the runs given
(default: native and onnx; onnx only where ONNX Runtime has its CUDA provider), ``--random-weights`` (speed does
not depend on the weights), on ``--images`` synthetic JPEGs (the same generator as gpu_native.py), an empty cache
and an empty --out. Then, read from the cells' own reports: per cell images/s, compute and data wait, and the
study's wall time set against the sum of its model passes, decodes (one per geometry) and exports; the rest is
process and framework start-up. A second run of the same study measures the reuse check (nothing to run).

Results are written after each part; ``--budget-s`` stops the study in time and keeps the cells it finished. ``--smoke`` runs it on the CPU, tiny, to check the script itself.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_native import make_dataset  # noqa: E402  (the same synthetic JPEGs as the native benchmark)
from study_cost import _cell_costs  # noqa: E402  (the same accounting as the CPU study benchmark)

FRAMEWORK_MODULES = {"torchvision": "torchvision", "keras": "tensorflow", "gluoncv": "gluoncv"}
PROBE_CUDA_PROVIDER = """
import onnxruntime
from onnx import TensorProto, helper
value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1])
graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [value("x")], [value("y")])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
getattr(onnxruntime, "preload_dlls", lambda: None)()
session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"])
print("CUDAExecutionProvider" in session.get_providers())
"""  # listed is not loaded: the CUDA provider's libraries must load for a session


def importable_article_models() -> list[str]:
    from xfverify.models.study import load_study

    article = load_study("article")
    return [model for group in article.cells for model in group.models
            if importlib.util.find_spec(FRAMEWORK_MODULES[model.split("/")[0]]) is not None]


def ort_has_cuda() -> bool:
    probe = subprocess.run([sys.executable, "-c", PROBE_CUDA_PROVIDER], capture_output=True, text=True)
    return probe.returncode == 0 and probe.stdout.strip() == "True"


def study_file(path: Path, models: list[str], runs: list[str]) -> None:
    quoted = ", ".join(json.dumps(model) for model in models)
    path.write_text(f'name = "article-gpu"\nabout = "the article study\'s importable models, random weights"\n\n'
                    f'[[cells]]\nmodels = [{quoted}]\nruns = {json.dumps(runs)}\nrandom_weights = true\n')


def per_cell(folder: Path) -> list[dict]:
    rows = []
    for report_path in sorted(folder.glob("cells/*/report.json")):
        report = json.loads(report_path.read_text())
        timing = report["timing"]
        row = {"cell": report_path.parent.name, "kind": report["kind"], "n_batches": timing["n_batches"],
               "images_per_s": timing["images_per_s"], "steady_images_per_s": timing.get("steady_images_per_s"),
               "compute_s": timing["compute_s"], "data_wait_s": timing["data_wait_s"],
               "loop_wall_s": timing["wall_s"], "warmup_s": timing["warmup_s"], "timeline_s": timing.get("timeline_s"),
               "decoded_here": report["cache"]["decoded"], "decode_s": report["cache"]["decode_s"],
               "tensors_sha256": report["tensors_sha256"][:16]}
        if report["kind"] == "onnx":
            row["providers"] = report["runtime"]["providers"]
            row["export_s"] = report["onnx"].get("export_s")
        rows.append(row)
    return rows


def _run_until(command: list[str], env: dict, deadline: float | None) -> subprocess.CompletedProcess | None:
    """The command's result, or None once the deadline passes (it and its workers killed, cells kept)."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(
            timeout=None if deadline is None else max(1.0, deadline - time.perf_counter()))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return None
    except BaseException:  # SIGTERM (an outer timeout) or Ctrl-C: the study is in its own session, end it too
        os.killpg(process.pid, signal.SIGKILL)
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _terminated(signum, frame) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    begun = time.perf_counter()  # --budget-s counts from here: start-up and the dataset are inside it
    signal.signal(signal.SIGTERM, _terminated)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--unique", type=int, default=2000, help="generated images; the rest are file copies")
    parser.add_argument("--runs", default="native,onnx")
    parser.add_argument("--budget-s", type=float, help="stop the study this long after the script began, keeping its finished cells")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--keep", type=Path, help="a folder for the study's study.json, .md, .csv and .html")
    parser.add_argument("--smoke", action="store_true", help="CPU, 40 images, two models: checks the script runs")
    options = parser.parse_args()
    device = "cpu" if options.smoke else "cuda"
    images = 40 if options.smoke else options.images
    models = importable_article_models()[: 2 if options.smoke else None]
    runs = options.runs.split(",")
    cuda_provider = ort_has_cuda()
    if "onnx" in runs and not cuda_provider and not options.smoke:
        runs.remove("onnx")  # ONNX Runtime on 16 CPU cores would measure the CPUs, not the study
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "onnxruntime_cuda": cuda_provider},
                     "models": models, "runs": runs, "images": images, "weights": "random (seeded)"}
    if not options.smoke:
        import torch

        results["machine"].update(gpu=torch.cuda.get_device_name(0), torch=torch.__version__)

    def save() -> None:
        options.out.write_text(json.dumps(results, indent=2) + "\n")

    scratch = Path(tempfile.mkdtemp(prefix="xfverify-study-gpu-"))
    try:
        data = scratch / "val"
        started = time.perf_counter()
        make_dataset(data, images, min(images, options.unique))
        results["dataset_seconds"] = round(time.perf_counter() - started, 1)
        study_file(scratch / "article-gpu.toml", models, runs)
        env = {**os.environ, "XFVERIFY_CACHE": str(scratch / "cache")}
        folder = scratch / "study"
        command = [sys.executable, "-m", "xfverify", "study", str(scratch / "article-gpu.toml"), "--data", str(data),
                   "--out", str(folder), "--device", device, "--provider", "cuda" if cuda_provider else "cpu"]
        deadline = begun + options.budget_s if options.budget_s else None
        for attempt in ("cold", "again"):
            started = time.perf_counter()
            try:
                finished = _run_until(command, env, deadline)
            except SystemExit:  # stopped from outside: keep what the finished cells measured
                results.update(stopped_after_s=round(time.perf_counter() - started, 3), per_cell=per_cell(folder))
                save()
                raise
            results[f"{attempt}_wall_s"] = round(time.perf_counter() - started, 3)
            if finished is None:  # out of time: what the finished cells measured, and no totals
                results.update(cut_short_after_s=results.pop(f"{attempt}_wall_s"), per_cell=per_cell(folder))
                save()
                raise SystemExit(f"study cut short after {options.budget_s} s; {len(results['per_cell'])} cells kept")
            if finished.returncode != 0:
                results.update({f"{attempt}_error": finished.stderr[-3000:], "per_cell": per_cell(folder)})
                save()
                raise SystemExit(f"study failed:\n{finished.stderr[-3000:]}")
            study = json.loads((folder / "study.json").read_text())
            results[f"{attempt}_ran"] = study["ran"]
            if attempt == "cold":
                costs = _cell_costs(folder)
                work = costs["model_passes_s"] + costs["decodes_s"] + costs["exports_s"]
                results.update(costs, cells=len(study["cells"]), per_cell=per_cell(folder),
                               rest_s=round(results["cold_wall_s"] - work, 3),
                               wall_over_passes_decodes_and_exports=round(results["cold_wall_s"] / work, 3))
                if options.keep:
                    options.keep.mkdir(parents=True, exist_ok=True)
                    for name in ("study.json", "study.md", "study.csv", "study.html"):
                        shutil.copyfile(folder / name, options.keep / name)
            save()
            print(json.dumps({k: v for k, v in results.items() if k != "per_cell"}), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
