"""``xfverify onnx``: the command line of an ONNX Runtime run compared with its native run."""

from __future__ import annotations

import click

from xfverify.evaluator.analysis.agreement import ATOL_FRACTION, RTOL
from xfverify.evaluator.commands import output
from xfverify.evaluator.commands.options import (
    CALIBRATION_SPLIT,
    CONTEXT,
    choice,
    MODEL_RUN_OPTIONS,
    SUBSET_OPTIONS,
    model_id,
    option_group,
    preprocess_options,
)
from xfverify.converter.variant_spec import CALIBRATION_METHODS
from xfverify.evaluator.pipeline.options import DEVICES, PROVIDERS


@click.command("onnx", context_settings=CONTEXT)
@click.argument("target", metavar="[MODEL|FILE.onnx]", required=False, default=None, callback=model_id)
@click.option("--data", type=click.Path(), help="Images, as for `native` (default: the native run's, else the embedded sample).")
@click.option("--devkit", type=click.Path(), help="As for `native`.")
@click.option("--out", type=click.Path(file_okay=False), help="Report folder (default: ./xfverify-out/onnx-<model>-<time>); the native run goes into its native/ unless --against names one.")
@preprocess_options
@click.option("--against", type=click.Path(file_okay=False), help="Compare with the native run in this folder (the --out of `xfverify native`).")
@click.option("--provider", default="auto", **choice(PROVIDERS), help="ONNX Runtime's execution provider; cuda never falls back to the CPU.")
@click.option("--device", default="auto", **choice(DEVICES), help="Where the native run computes, when one is run.")
@click.option("--opset", type=int, help="ONNX opset of the export (default: the exporter's: torch 18, tf2onnx 17, MXNet 13).")
@option_group(*SUBSET_OPTIONS, CALIBRATION_SPLIT)
@option_group(*MODEL_RUN_OPTIONS)
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Tensor and export cache (default: $XFVERIFY_CACHE or ~/.cache/xfverify).")
@click.option("--atol", type=float, default=ATOL_FRACTION, show_default=True, help="Absolute tolerance, as a fraction of the largest |native output|.")
@click.option("--rtol", type=float, default=RTOL, show_default=True, help="Relative tolerance (an element fails only over both, as in Polygraphy).")
@click.option("--localize/--no-localize", default=None, help="Run the worst-agreeing images node by node in ONNX Runtime and the native framework and name the first node that departs beyond the tolerance [default: when the outputs disagree].")
@click.option("--localize-images", type=int, default=4, show_default=True, help="Images --localize runs node by node (the worst-agreeing ones).")
@click.option("--localize-against", type=click.Path(dir_okay=False), help="Localize against this ONNX file (say, the plain export of an optimised or quantised FILE.onnx) instead of the native network.")
@click.option("--variant", "variants", multiple=True, metavar="NAME|FILE.onnx", help="A deployment variant of the plain file, made, run on the same tensors and scored beside it (repeatable): fp16, int8 (static QDQ, calibrated by --calibration-method), int8-minmax, int8-entropy, int8-percentile (each its own method), int8-dynamic, opt-basic, opt-extended, opt-all, or your converted FILE.onnx.")
@click.option("--calibration", type=click.Path(file_okay=False), help="int8: calibration images (any layout --data takes), none of them among the scored ones.")
@click.option("--calibration-limit", type=int, help="int8: calibrate on the first N calibration images by id.")
@click.option("--calibration-method", default="minmax", **choice(CALIBRATION_METHODS), help="int8: ONNX Runtime's calibration method.")
@click.option("--per-channel/--per-tensor", default=True, show_default=True, help="int8: weight scales per output channel or per tensor.")
@click.option("--keep-float", callback=lambda ctx, param, value: tuple(n for n in (value or "").split(",") if n), help="int8: NODE,... left in float (the plain file's node names, as the report's table gives them).")
@click.option("--keep-float-auto", type=int, default=0, show_default=True, metavar="K", help="int8: also rescore it with its K costliest nodes (SQNR lost) kept in float.")
@click.option("--max-top1-drop", type=float, metavar="POINTS", help="Exit with status 3 when a variant's top-1 error exceeds the plain file's by more than POINTS (report written first).")
@click.option("--fail-on-mismatch", is_flag=True, help="Exit with status 3 when the ONNX file disagrees with the native run (a top-1 flip, or an element past tolerance).")
def onnx_command(target, **kwargs) -> None:
    """Run MODEL's ONNX export (or a user's FILE.onnx, with --preprocess) under ONNX Runtime on exactly the tensors
    of a native run, and compare: errors, time, top-1 agreement and output differences."""
    from xfverify.evaluator.pipeline.onnx import run_onnx
    from xfverify.evaluator.pipeline.options import DEFAULT_MODEL, OnnxOptions
    from xfverify.evaluator.reports.run import OnnxReport, summary_rows
    from xfverify.evaluator.system import console

    kwargs["overrides"] = tuple(kwargs["overrides"])
    kwargs["variants"] = tuple(kwargs["variants"])
    run = run_onnx(OnnxOptions(target=DEFAULT_MODEL if target is None else target, **kwargs))
    title = f"xfverify onnx: {run.report.model}"
    if run.report.random_weights:
        title += "   *** RANDOM WEIGHTS ***"
    output.print_table(title, summary_rows(run.report))
    output.print_notes(run.report.notes)
    extra = ", localize.html" if isinstance(run.report, OnnxReport) and run.report.localization else ""
    console.info(f"report: {run.out_dir}/report.json, report.md, report.html, logits.npy, predictions.csv{extra}")
    gate = run.report.gate if isinstance(run.report, OnnxReport) else None
    if gate and gate.failures:
        for failure in gate.failures[1:]:
            console.info(f"gate failed: {failure}")
        console.fail(f"gate failed: {gate.failures[0]}", code=3)
