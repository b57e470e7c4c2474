"""``xfverify native``: the command line of a native run."""

from __future__ import annotations

import click

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
from xfverify.evaluator.pipeline.options import DEVICES, PRECISIONS


@click.command("native", context_settings=CONTEXT)
@click.argument("model", required=False, default=None, callback=model_id)
@click.option("--data", type=click.Path(), help="Images: an ImageNet validation layout (Kaggle, devkit, class folders) or any folder with an optional labels.csv. Default: the embedded sample.")
@click.option("--devkit", type=click.Path(), help="Folder holding ILSVRC2012_validation_ground_truth.txt and meta.mat (default: looked for beside --data).")
@click.option("--out", type=click.Path(file_okay=False), help="Report folder (default: ./xfverify-out/native-<model>-<time>).")
@preprocess_options
@option_group(*SUBSET_OPTIONS, CALIBRATION_SPLIT)
@click.option("--device", default="auto", **choice(DEVICES))
@click.option("--precision", default="fp32", **choice(PRECISIONS), help="fp32 keeps TF32 off: results as published, not as fast as possible.")
@option_group(*MODEL_RUN_OPTIONS)
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Tensor cache (default: $XFVERIFY_CACHE or ~/.cache/xfverify).")
@click.option("--cuda-graphs", is_flag=True, help="torch on a GPU: capture the forward pass of full batches in a CUDA graph and replay it (same kernels, checked bit-identical to eager; removes Python launch overhead at small batches).")
def native_command(model, **kwargs) -> None:
    """Evaluate MODEL in its own framework with its reference preprocessing (default: pypi/efficientnet_lite0 on the embedded sample)."""
    from xfverify.evaluator.pipeline.native import run_native
    from xfverify.evaluator.pipeline.options import DEFAULT_MODEL, NativeOptions
    from xfverify.evaluator.reports.run import summary_rows
    from xfverify.evaluator.system import console

    kwargs["overrides"] = tuple(kwargs["overrides"])
    options = NativeOptions(model=DEFAULT_MODEL if model is None else model, **kwargs)
    run = run_native(options)
    title = f"xfverify native: {run.report.model}"
    if run.report.random_weights:
        title += "   *** RANDOM WEIGHTS ***"
    output.print_table(title, summary_rows(run.report))
    output.print_notes(run.report.notes)
    if run.report.dataset.n_images <= 20:
        output.print_predictions(run.predictions)
    console.info(f"report: {run.out_dir}/report.json, report.md, report.html, logits.npy, predictions.csv")
