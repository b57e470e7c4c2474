"""``xfverify study``: the command line of a whole comparison."""

from __future__ import annotations

import click

from xfverify.evaluator.commands import output
from xfverify.evaluator.commands.options import CONTEXT, SUBSET_OPTIONS, choice, option_group
from xfverify.evaluator.pipeline.options import DEVICES, EXECUTORS, ON_BAD_IMAGE, PROVIDERS


@click.command("study", context_settings=CONTEXT)
@click.argument("study", required=False, default="lite", metavar="[NAME|FILE.toml]")
@click.option("--data", type=click.Path(), help="Labelled images, as for `native` (default: the embedded sample).")
@click.option("--devkit", type=click.Path(), help="As for `native`.")
@click.option("--out", type=click.Path(file_okay=False), help="The study's folder (default: ./xfverify-out/study-<name>): each cell's command writes into its cells/<cell>/; a rerun there resumes.")
@option_group(*SUBSET_OPTIONS)
@click.option("--device", default="auto", **choice(DEVICES), help="Where the native and diagnose cells run.")
@click.option("--provider", default="auto", **choice(PROVIDERS), help="ONNX Runtime's provider in the onnx cells.")
@click.option("--batch-size", type=int, help="Images per batch (default: chosen where each model runs).")
@click.option("--workers", type=int, help="Decoding processes (default: all cores).")
@click.option("--random-weights", is_flag=True, help="Every cell with a seeded random model (speed runs; errors say nothing).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds random weights.")
@click.option("--on-bad-image", default="error", **choice(ON_BAD_IMAGE))
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Tensor cache shared by the cells (default: $XFVERIFY_CACHE or ~/.cache/xfverify).")
@click.option("--executor", default="local", **choice(EXECUTORS), help="local: the cells in turn on this machine; ray: each cell a Ray task (pip install 'xfverify[ray]').")
@click.option("--address", metavar="auto|HOST:PORT", help="The Ray cluster to join (--executor ray; default: a local Ray instance).")
def study_command(study, **kwargs) -> None:
    """Run a whole comparison: a study's models x native, ONNX Runtime and diagnose, into one table (study.json,
    study.md, study.csv, study.html). STUDY is a shipped study (lite: EfficientNet-Lite0/1/2, offline; article: ResNet50,
    ResNet101, MobileNet, DenseNet121 from torchvision, Keras and GluonCV) or a TOML file. Finished cells are kept:
    a rerun, or a study killed mid-way, runs only what is missing or changed."""
    from xfverify.evaluator.pipeline.options import StudyOptions
    from xfverify.evaluator.pipeline.study import run_study
    from xfverify.evaluator.reports.study import COLUMNS, row_cells
    from xfverify.evaluator.system import console

    finished = run_study(StudyOptions(study=study, **kwargs))
    report, out_dir = finished.report, finished.out_dir
    output.print_grid(f"xfverify study: {report.name} ({report.ran} cells run, {report.reused} already done)",
                      COLUMNS, [row_cells(row) for row in report.rows])
    console.info(f"study: {out_dir}/study.json, study.md, study.csv, study.html; each cell's report in {out_dir}/cells/")
