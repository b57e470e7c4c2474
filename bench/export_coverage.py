"""Export coverage: every torchvision and Keras model and one timm model per ``timm.models`` module, with random
weights, exported to ONNX on the CPU by xfverify's own exporter, checked, and scored against the native run on the
same tensors.

    nice -n 10 python bench/export_coverage.py --chunk 4 --max-models 20   # resumable: rows already done are kept

Each chunk of models is one ``xfverify study`` (runs native + onnx, ``--random-weights``, the embedded sample, CPU)
in ``--work``; a model's row is written to ``--out`` (JSON, and a Markdown table beside it) as soon as its chunk
ends, done or failed, and a rerun skips models that already have a row. A failed cell is a row with the command's
own message (the exporter's, for an export that fails). Models run smallest first (torchvision's ``num_params``,
timm's ``param_count`` from its results file, Keras's weights file size where known). ``--remake-rows`` makes every
row again from the studies in ``--work``; with ``--torchscript-retry`` each model the dynamo exporter could not
export is exported again by torch's TorchScript exporter (``--opset 17``, as the failure's message advises).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xfverify.evaluator.analysis.agreement import outputs_vary  # noqa: E402
from xfverify.evaluator.pipeline.study import StudyOptions, run_study  # noqa: E402
from xfverify.models import zoos  # noqa: E402
from xfverify.models.errors import UserError  # noqa: E402

TIMM_RESULTS = ROOT / "models" / "catalogue" / "sources" / "timm" / "results-imagenet.csv"

# Asked of the installed packages in their own processes (the parent imports no framework).
TORCHVISION_SIZES = """
import json, torchvision.models as tvm
print(json.dumps({b: max(w.meta.get("num_params", 0) for w in tvm.get_model_weights(b))
                  for b in tvm.list_models(module=tvm)}))
"""
TIMM_MODULES = """
import json, timm
print(json.dumps({name: module for module in timm.list_modules() for name in timm.list_models(module=module)}))
"""


def _ask(script: str) -> dict:
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def torchvision_models() -> list[tuple[str, float]]:
    """One card per builder (its default weights: random weights make the others the same network)."""
    sizes = _ask(TORCHVISION_SIZES)
    chosen: dict[str, str] = {}
    for _, card_id, entry in zoos.entries("torchvision"):
        if entry["default"] or entry["builder"] not in chosen:
            chosen[entry["builder"]] = card_id
    return [(card_id, sizes.get(builder, 0) / 1e6) for builder, card_id in chosen.items()]


def timm_models() -> list[tuple[str, float]]:
    """Per ``timm.models`` module, the catalogue's tag with the fewest parameters in timm's results file (timm's
    ``test_*`` networks, tiny stand-ins for its own tests, only where a module has nothing else)."""
    modules = _ask(TIMM_MODULES)
    with TIMM_RESULTS.open(newline="") as handle:
        params = {row["model"]: float(row["param_count"].replace(",", "")) for row in csv.DictReader(handle)}
    best: dict[str, tuple[bool, float, str]] = {}
    for _, card_id, entry in zoos.entries("timm"):
        size = params.get(f"{entry['builder']}.{entry['weights']}", float("inf"))
        module = modules.get(entry["builder"], "?")
        key = (entry["builder"].startswith("test_"), size, card_id)
        if module not in best or key < best[module]:
            best[module] = key
    return [(card_id, size) for _, size, card_id in best.values()]


def keras_models() -> list[tuple[str, float]]:
    """Every Keras application, sized by the Parameters column of the documentation's table (committed byte for
    byte); a model with no row goes last."""
    table = (ROOT / "models" / "catalogue" / "sources" / "keras" / "index.md").read_text()
    params = {name: float(count) for name, count in re.findall(r"^\| \[(\w+)\]\([^)]*\) \| [^|]* \| [^|]* \| [^|]* \| "
                                                                r"([\d.]+)M \|", table, flags=re.M)}
    return [(card_id, params.get(entry["builder"], float("inf"))) for _, card_id, entry in zoos.entries("keras")]


SELECTIONS = {"torchvision": torchvision_models, "keras": keras_models, "timm": timm_models}


def _why_outside(report: dict, native_folder: Path) -> str:
    """What the run's own evidence says of outputs outside tolerance: a saturated softmax, localization's verdict."""
    parts = []
    if (report.get("agreement") or {}).get("compared") == "softmax":
        top = np.load(native_folder / "logits.npy").max(axis=1)
        parts.append(f"the native softmax is saturated (top probability >= 0.999) on {int((top >= 0.999).sum())} of "
                     f"{top.size} images, so a rounding-size difference in the logits moves a whole unit of "
                     "probability")
    verdict = (report.get("localization") or {}).get("verdict")
    if verdict:
        parts.append(f"localization: {verdict}")
    return "".join(f"; {part}" for part in parts)


def _cells_by_model(out: Path) -> dict[str, dict[str, dict]]:
    """A study's cells from its study.json, by model and run."""
    cells: dict[str, dict[str, dict]] = {}
    for cell in json.loads((out / "study.json").read_text())["cells"]:
        cells.setdefault(cell["model"], {})[cell["run"]] = cell
    return cells


def rows_from_work(work: Path) -> dict[str, dict]:
    """Every model's row made again from the newest chunk study in ``work`` that ran it."""
    rows: dict[str, dict] = {}
    for study in sorted(work.glob("chunk-*"), key=lambda folder: int(folder.name.split("-")[1])):
        out = study / "out"
        if not (out / "study.json").exists():
            continue
        rows.update({model: _row(model, runs, out) for model, runs in _cells_by_model(out).items()})
    return rows


def _row(model: str, cells: dict, out_dir: Path) -> dict:
    """A model's row from its study cells: the export's exporter, opset and check, the ONNX run's agreement."""
    native, onnx = cells.get("native"), cells.get("onnx")
    row = {"model": model, "exporter": None, "opset": None, "status": "fail", "message": None,
           "top1_agreement": None, "within_tolerance": None, "max_scaled_diff": None, "same_tensors": None,
           "native_varies": None}
    if native is None or native["status"] != "done":
        row["message"] = "native run: " + (native or {}).get("error", "not run")
        return row
    if onnx is None or onnx["status"] != "done":
        row["message"] = (onnx or {}).get("error") or "onnx run not finished"
        row["native_folder"] = str(out_dir / native["folder"])
        return row
    row["native_folder"] = str(out_dir / native["folder"])
    row["native_varies"] = outputs_vary(np.load(out_dir / native["folder"] / "logits.npy"))
    report = json.loads((out_dir / onnx["folder"] / "report.json").read_text())
    agreement = report.get("agreement") or {}
    row.update(exporter=onnx["onnx"]["exporter"], opset=onnx["onnx"]["opset"],
               top1_agreement=onnx["onnx"]["top1_agreement"],
               within_tolerance=agreement.get("within_tolerance"),
               max_scaled_diff=onnx["onnx"]["max_abs_diff_over_max_abs_logit"],
               same_tensors=onnx["onnx"]["tensors_sha256"] == native["native"]["tensors_sha256"])
    if not row["same_tensors"]:
        row["message"] = "the ONNX run was fed other tensors than the native run"
    elif row["within_tolerance"] is not None and row["within_tolerance"] < 1.0:
        row["message"] = (f"{100 * row['within_tolerance']:.3f} % of output elements within atol/rtol "
                          f"(max |diff| / max |native| {row['max_scaled_diff']:.3g})"
                          + _why_outside(report, out_dir / native["folder"]))
    else:
        row["status"] = "pass"
        row["message"] = "exported, checked, every output element within tolerance" + (
            "; but the native outputs are the same for every image, so agreeing with them proves little"
            if row["native_varies"] is False else "")
    return row


def run_chunk(models: list[str], work: Path) -> list[dict]:
    study = work / f"chunk-{int(time.time())}"
    study.mkdir(parents=True)
    toml = study / "study.toml"
    toml.write_text('name = "export-coverage"\n[[cells]]\nmodels = [' + ", ".join(json.dumps(m) for m in models)
                    + ']\nruns = ["native", "onnx"]\nrandom_weights = true\n')
    out = study / "out"
    try:
        run_study(StudyOptions(study=str(toml), out=str(out), device="cpu", provider="cpu", random_weights=True,
                               cache_dir=str(work / "cache")))
    except UserError as exc:  # some cells failed: each one's row says why
        print(f"study: {exc}", file=sys.stderr)
    cells = _cells_by_model(out)
    return [_row(model, cells.get(model, {}), out) for model in models]


DYNAMO = "torch.onnx.export (dynamo=True)"
TORCHSCRIPT_OPSET = 17  # below the dynamo exporter's 18, xfverify exports with torch's TorchScript exporter


def with_torchscript_retry(row: dict, work: Path) -> dict:
    """A model the dynamo exporter could not export, exported again by the TorchScript exporter (``--opset 17``,
    as the failure's own message advises) against the same native run; its outcome kept beside the failure."""
    if (row["status"] == "pass" or "native_folder" not in row
            or not (row["message"] or "").startswith(f"{DYNAMO} could not export")):
        return row
    from xfverify import onnx as run_onnx

    out = work / "torchscript" / row["model"].replace("/", "_").replace(":", "_")
    try:
        report = run_onnx(row["model"], against=str(row["native_folder"]), opset=TORCHSCRIPT_OPSET,
                          random_weights=True, device="cpu", provider="cpu", out=str(out),
                          cache_dir=str(work / "cache"))
    except UserError as exc:
        retry = {"status": "fail", "message": str(exc)}
    else:
        agreement = report.agreement
        within = agreement.within_tolerance if agreement else None
        retry = {"status": "pass" if within == 1.0 else "fail", "exporter": report.onnx.exporter,
                 "opset": report.onnx.opset, "top1_agreement": agreement.top1_agreement if agreement else None,
                 "within_tolerance": within,
                 "max_scaled_diff": agreement.max_abs_diff_over_max_abs_logit if agreement else None}
    return {**row, "torchscript_retry": retry}


def markdown(payload: dict) -> str:
    lines = [f"# Export coverage ({payload['covered']} of {payload['selected']} models)", "", payload["what"], "",
             "| model | exporter | opset | result | top-1 agreement % | max scaled diff | message |",
             "|---|---|---|---|---|---|---|"]
    for row in payload["rows"]:
        diff = "" if row["max_scaled_diff"] is None else f"{row['max_scaled_diff']:.3g}"
        message = (row["message"] or "")
        retry = row.get("torchscript_retry")
        if retry:
            message += (f" — TorchScript exporter, opset {TORCHSCRIPT_OPSET}: {retry['status']}"
                        + (f", top-1 agreement {retry['top1_agreement']} %, max scaled diff "
                           f"{retry['max_scaled_diff']:.3g}" if retry.get("max_scaled_diff") is not None else
                           f" ({retry.get('message', '')})"))
        message = message.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {row['model']} | {row['exporter'] or ''} | {row['opset'] or ''} | {row['status']} | "
                     f"{'' if row['top1_agreement'] is None else row['top1_agreement']} | {diff} | {message} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "export_coverage.json"))
    parser.add_argument("--work", default=str(Path.home() / ".cache" / "xfverify-export-coverage"))
    parser.add_argument("--sources", default="torchvision,keras,timm")
    parser.add_argument("--chunk", type=int, default=4, help="models per study")
    parser.add_argument("--max-models", type=int, default=None, help="stop after this many new rows")
    parser.add_argument("--remake-rows", action="store_true",
                        help="make every row again from the studies in --work (no model is run)")
    parser.add_argument("--rerun", default="",
                        help="comma-separated patterns (keras/*, torchvision/vit_*): their rows are dropped and run again")
    parser.add_argument("--first", default="", help="comma-separated patterns: these models run before the others")
    parser.add_argument("--torchscript-retry", action="store_true",
                        help="export again with the TorchScript exporter each model the dynamo exporter failed")
    args = parser.parse_args()
    out = Path(args.out)
    selected = sorted((size, model) for source in args.sources.split(",") for model, size in SELECTIONS[source]())
    previous = json.loads(out.read_text())["rows"] if out.exists() else []
    rows = {row["model"]: row for row in previous}
    if args.remake_rows:
        chosen = {model for _, model in selected}
        rows = {model: row for model, row in rows_from_work(Path(args.work)).items() if model in chosen}
    if args.rerun:
        patterns = args.rerun.split(",")
        rows = {model: row for model, row in rows.items()
                if not any(fnmatch.fnmatchcase(model, pattern) for pattern in patterns)}
    first = [pattern for pattern in args.first.split(",") if pattern]
    todo = sorted((model for _, model in selected if model not in rows),
                  key=lambda model: not any(fnmatch.fnmatchcase(model, pattern) for pattern in first))[: args.max_models]
    retry = (lambda row: with_torchscript_retry(row, Path(args.work))) if args.torchscript_retry else (lambda row: row)
    rows = {model: row if "torchscript_retry" in row else retry(row) for model, row in rows.items()}
    write(out, selected, rows)
    for start in range(0, len(todo), args.chunk):
        for row in run_chunk(todo[start : start + args.chunk], Path(args.work)):
            rows[row["model"]] = retry(row)
        write(out, selected, rows)


def write(out: Path, selected: list[tuple[float, str]], rows: dict[str, dict]) -> None:
    order = {model: i for i, (_, model) in enumerate(selected)}
    ordered = sorted(rows.values(), key=lambda r: order.get(r["model"], len(order)))
    payload = {
        "what": ("random weights (seed 0), the embedded sample's images, CPU; `xfverify study` runs native + "
                 "onnx per model: the export by xfverify's exporter (checked by onnx's checker and strict shape "
                 "inference), ONNX Runtime fed the native run's tensors; pass = every output element within "
                 "onnx's default atol 1e-4 x max |native output| or rtol 1e-3; a model the dynamo exporter "
                 f"could not export is exported again with --opset {TORCHSCRIPT_OPSET} (torch's TorchScript "
                 "exporter) against the same native run: torchscript_retry"),
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "selected": len(selected),
        "covered": len(ordered),
        "passed": sum(r["status"] == "pass" for r in ordered),
        "passed_on_outputs_that_vary": sum(r["status"] == "pass" and r.get("native_varies") is True
                                           for r in ordered),
        "passed_with_torchscript_retry": sum((r.get("torchscript_retry") or {}).get("status") == "pass"
                                             for r in ordered),
        "rows": [{key: value for key, value in row.items() if key != "native_folder"} for row in ordered],
    }
    out.write_text(json.dumps(payload, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(payload))
    print(f"{len(ordered)} of {len(selected)} rows", flush=True)

if __name__ == "__main__":
    main()
