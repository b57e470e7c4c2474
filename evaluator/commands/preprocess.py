"""``xfverify preprocess``: the exact tensor a model is fed, and its check against the preset's source."""

from __future__ import annotations

import click

from xfverify.evaluator.commands.options import CONTEXT, model_id, preprocess_options


@click.command("preprocess", context_settings=CONTEXT)
@click.argument("model", callback=model_id)
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Where to write the float32 tensor (.npy).")
@preprocess_options
@click.option(
    "--verify",
    is_flag=True,
    help="Also run the framework's own preprocessing in its worker and report the largest difference.",
)
def preprocess_command(model, images, out, preprocess, overrides, verify) -> None:
    """Write exactly the float32 tensor MODEL is fed for IMAGES (layout as the spec says) to --out."""
    from xfverify.evaluator.pipeline.preprocess import run_preprocess

    run_preprocess(model, list(images), out, preprocess, overrides, verify)
