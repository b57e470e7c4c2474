"""The click options the evaluating commands share, and the checks of their arguments."""

from __future__ import annotations

import click

from xfverify.evaluator.pipeline.options import ON_BAD_IMAGE
from xfverify.models.errors import UserError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def choice(values: tuple[str, ...]) -> dict:
    """A choice shown in --help; the value is checked with the options (pipeline/options.py), so a wrong one gets the
    same line from the command line, the Python API and a study."""
    return {"metavar": "[" + "|".join(values) + "]", "show_default": True}


def preprocess_options(func):
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


SUBSET_OPTIONS = (
    click.option("--limit", type=int, help="Only the first N images by image id."),
    click.option("--per-class", type=int, help="A class-balanced subset: the first K images of each class."),
)
CALIBRATION_SPLIT = click.option(
    "--calibration-split", type=int, metavar="N",
    help="Hold N of these images out to calibrate int8 (the first image of every class by image id, then the second, "
         "...): never scored; onnx --variant int8 and diagnose --onnx-variant int8 calibrate on them, a native run "
         "scores the others as such a run does.")
MODEL_RUN_OPTIONS = (
    click.option("--batch-size", type=int,
                 help="Images per batch (default: chosen where the model runs: 4 on a CPU, 32 on a GPU)."),
    click.option("--workers", type=int, help="Decoding processes (default: all cores)."),
    click.option("--weights", type=click.Path(),
                 help="A local weights file (torch: a state_dict, loaded with weights_only=True)."),
    click.option("--random-weights", is_flag=True, help="A seeded, well-scaled random model (smoke tests, speed runs)."),
    click.option("--seed", type=int, default=0, show_default=True, help="Seeds random weights (0 to 2**32-1)."),
    click.option("--on-bad-image", default="error", **choice(ON_BAD_IMAGE),
                 help="skip: leave undecodable files out and list them in the report."),
)


def option_group(*options):
    """Apply a group of click options, in the order given (shared by native, onnx and diagnose)."""

    def apply(func):
        for option in reversed(options):
            func = option(func)
        return func

    return apply


def model_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An empty MODEL ('') is a mistake, not a request for the default model."""
    if value is not None and not value.strip():
        raise UserError("MODEL is empty: give a model id (`xfverify models` lists them), or leave it out for the default")
    return value
