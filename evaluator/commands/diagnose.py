"""``xfverify diagnose``: the command line of a diagnosis."""

from __future__ import annotations

import click

from xfverify.evaluator.commands import output
from xfverify.evaluator.commands.options import (
    CALIBRATION_SPLIT,
    CONTEXT,
    MODEL_RUN_OPTIONS,
    SUBSET_OPTIONS,
    choice,
    model_id,
    option_group,
)
from xfverify.evaluator.pipeline.options import DEVICES, PRECISIONS


@click.command("diagnose", context_settings=CONTEXT)
@click.argument("model", required=False, default=None, callback=model_id)
@click.option("--data", type=click.Path(), help="Labelled images, as for `native` (default: the embedded sample).")
@click.option("--devkit", type=click.Path(), help="As for `native`.")
@click.option("--out", type=click.Path(file_okay=False), help="Report folder (default: ./xfverify-out/diagnose-<model>-<time>); the reference run goes into its reference/.")
@click.option("--variants", metavar="NAME,...", help="Only these variants (the reference always runs); a wrong name lists the model's.")
@click.option("--spec", "spec_files", multiple=True, type=click.Path(), metavar="FILE.json", help='Add your own variant: {"name": ..., "preset": optional, "set": {field: value}} (or a list of them); repeatable.')
@click.option("--onnx", is_flag=True, help="Also run the model's ONNX export under ONNX Runtime on the reference's tensors (the runtime axis).")
@click.option("--onnx-variant", "onnx_variants", multiple=True, metavar="NAME|FILE.onnx", help="Also run this deployment variant of the export on the reference's tensors, on the runtime axis (repeatable; implies --onnx): the names `onnx --variant` takes (fp16, int8, int8-entropy, int8-dynamic, opt-all, ...).")
@click.option("--calibration", type=click.Path(file_okay=False), help="--onnx-variant int8: calibration images (any layout --data takes), none of them among the scored ones.")
@click.option("--calibration-limit", type=int, help="--onnx-variant int8: calibrate on the first N calibration images by id.")
@click.option("--precisions", metavar="PRECISION,...", help="Also run the model at these precisions on the reference's tensors, in the same worker (the runtime axis): bf16 and fp16 (torch autocast, a Keras mixed-precision policy), tf32 on CUDA GPUs; --precision sets the reference's.")
@option_group(*SUBSET_OPTIONS, CALIBRATION_SPLIT)
@click.option("--device", default="auto", **choice(DEVICES))
@click.option("--precision", default="fp32", **choice(PRECISIONS), help="The reference's precision; fp32 keeps TF32 off.")
@option_group(*MODEL_RUN_OPTIONS)
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Tensor cache (default: $XFVERIFY_CACHE or ~/.cache/xfverify).")
def diagnose_command(model, **kwargs) -> None:
    """Evaluate MODEL under its reference preprocessing and under named variants on the same images; report each
    variant's paired difference (flips, McNemar p, 95% interval) and the decomposition of the gap to the published
    error (report.json, report.md, report.html)."""
    from xfverify.evaluator.pipeline.diagnose import run_diagnose
    from xfverify.evaluator.pipeline.options import DEFAULT_MODEL, DiagnoseOptions
    from xfverify.evaluator.system import console

    kwargs["spec_files"] = tuple(kwargs["spec_files"])
    kwargs["onnx_variants"] = tuple(kwargs["onnx_variants"])
    finished = run_diagnose(DiagnoseOptions(model=DEFAULT_MODEL if model is None else model, **kwargs))
    report, out_dir = finished.report, finished.out_dir
    rows = [(row.name, f"{row.top1_error:.1f} %, {row.delta:+.1f} (95 % CI {row.delta_ci95[0]:+.1f} to "
             f"{row.delta_ci95[1]:+.1f}); {row.right_to_wrong} right->wrong / {row.wrong_to_right} wrong->right; "
             f"McNemar p = {row.mcnemar_p:.2g}" + ("" if row.significant else "; within the noise"))
            for row in report.variants]
    output.print_table(f"xfverify diagnose: {report.model} (reference {report.reference.top1_error:.1f} %)", rows)
    console.info(report.decomposition.sentence)
    console.info(f"report: {out_dir}/report.json, report.md, report.html")
