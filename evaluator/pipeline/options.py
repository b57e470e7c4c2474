"""What the evaluating commands can be asked, as typed options (the CLI fills them; the Python API and tests can too),
and the checks of the options every run shares."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from xfverify.evaluator.analysis.agreement import ATOL_FRACTION, RTOL
from xfverify.models.errors import UserError
from xfverify.models.user_input import not_regular_kind, shown

DEFAULT_MODEL = "pypi/efficientnet_lite0"


MAX_SEED = 2**32 - 1  # the largest seed every framework takes (numpy, Keras)


@dataclass
class RunOptions:
    """What every evaluating command can be asked: images, preprocessing, batching, cache, weights."""

    data: str | None = None
    devkit: str | None = None
    out: str | None = None
    preprocess: str | None = None
    overrides: tuple[str, ...] = ()
    limit: int | None = None
    per_class: int | None = None
    device: str = "auto"
    batch_size: int | None = None  # None: the worker's default for the device it resolves
    workers: int | None = None
    cache_dir: str | None = None
    weights: str | None = None
    random_weights: bool = False
    seed: int = 0
    on_bad_image: str = "error"
    extra_notes: list[str] = field(default_factory=list)


@dataclass
class NativeOptions(RunOptions):
    """Everything ``xfverify native`` can be asked (the CLI fills it; tests and benchmarks can too)."""

    model: str = DEFAULT_MODEL
    precision: str = "fp32"
    cuda_graphs: bool = False


@dataclass
class OnnxOptions(RunOptions):
    """Everything ``xfverify onnx`` can be asked (the CLI fills it; tests can too); ``device`` is the native run's."""

    target: str = DEFAULT_MODEL  # a model id, or a user's .onnx file
    provider: str = "auto"
    opset: int | None = None
    against: str | None = None
    atol: float = ATOL_FRACTION
    rtol: float = RTOL
    localize: bool | None = None  # run the worst images node by node: always, never, or (None) when the outputs disagree
    localize_images: int = 4
    localize_against: str | None = None  # another ONNX file to localize against, instead of the native network
    variants: tuple[str, ...] = ()  # deployment variants of the plain file (fp16, int8, ..., or a converted FILE.onnx)
    calibration: str | None = None  # int8 static: the calibration images' folder, kept apart from --data
    calibration_limit: int | None = None
    calibration_method: str = "minmax"
    per_channel: bool = True
    keep_float: tuple[str, ...] = ()  # int8: nodes left out of quantisation
    keep_float_auto: int = 0  # int8: also rescored with its k costliest nodes kept in float
    max_top1_drop: float | None = None  # exit status 3 when a variant costs more top-1 points than this
    fail_on_mismatch: bool = False  # exit status 3 when the ONNX file disagrees with the native run

    @property
    def is_file(self) -> bool:
        return self.target.endswith(".onnx") or os.path.isfile(self.target)


def check_run_options(options: RunOptions) -> None:
    """Refuse, in one line each, the options every evaluating command shares that no run can take."""
    if options.random_weights and options.weights:
        raise UserError("--weights and --random-weights exclude each other")
    if options.on_bad_image not in ("error", "skip"):
        raise UserError(f"--on-bad-image must be error or skip, got {options.on_bad_image!r}")
    if options.batch_size is not None and options.batch_size <= 0:
        raise UserError(f"--batch-size must be positive, got {options.batch_size}")
    if options.weights:
        refuse_unless_regular(options.weights, "--weights", "a weights file")
    if options.weights and os.path.getsize(options.weights) == 0:
        raise UserError(f"--weights {options.weights}: the file is empty")
    if not 0 <= options.seed <= MAX_SEED:
        raise UserError(f"--seed must be between 0 and {MAX_SEED}, got {options.seed}")
    if options.workers is not None and options.workers <= 0:
        raise UserError(f"--workers must be positive, got {options.workers} (leave it out to use every core)")


def refuse_unless_regular(path: str, option: str, what: str) -> None:
    """``path`` is a regular file (links followed), else one line: missing, or what it is instead (a folder, a FIFO
    or a device, which a framework would wait on or read without end)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UserError(f"{option} {shown(path)}: no such file") from None
    except OSError as exc:
        raise UserError(f"{option} {shown(path)}: cannot read it ({exc.strerror or exc})") from None
    kind = not_regular_kind(mode)
    if kind is not None:
        raise UserError(f"{option} {shown(path)}: {kind}, not {what}")
