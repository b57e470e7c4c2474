"""Every option of every command, typed, with its checks, in one place.

The CLI, the Python API and a study's cells all build these; each is checked once, when it is made, and a value no
run can take is refused with the one line the command line gives (``UserError``, naming the option as the CLI
spells it). Choices are ``Literal`` types: the CLI lists the same values in its help.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, Optional, get_args

from pydantic import BeforeValidator, TypeAdapter, ValidationError

from xfverify.converter.variant_spec import (
    CALIBRATED_NAMES,
    CALIBRATION_METHODS,
    MADE_KINDS,
    QUANTISED,
    VARIANT_NAMES,
    VariantSpec,
)
from xfverify.evaluator.analysis.agreement import ATOL_FRACTION, RTOL
from xfverify.models.errors import UserError
from xfverify.models.precision import PRECISIONS, Precision
from xfverify.models.user_input import not_regular_kind, shown

DEFAULT_MODEL = "pypi/efficientnet_lite0"
MAX_SEED = 2**32 - 1  # the largest seed every framework takes (numpy, Keras)

Device = Literal["auto", "cpu", "cuda"]
Provider = Literal["auto", "cpu", "cuda"]
Executor = Literal["local", "ray"]
OnBadImage = Literal["error", "skip"]
DEVICES: tuple[str, ...] = get_args(Device)
PROVIDERS: tuple[str, ...] = get_args(Provider)
EXECUTORS: tuple[str, ...] = get_args(Executor)
ON_BAD_IMAGE: tuple[str, ...] = get_args(OnBadImage)


def _path_text(value: Any) -> Any:
    """A path given as a ``Path`` (or any path-like) is taken as its text."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _names(value: Any) -> Any:
    """A list of names is taken as the command line's comma-separated text."""
    return ",".join(value) if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value) else value


def _repeated(value: Any) -> Any:
    """A repeatable option's values given as a list are taken as the tuple the command line makes; one value alone
    (a name, a path) as a tuple of one."""
    if isinstance(value, str | os.PathLike):
        return (_path_text(value),)
    return tuple(_path_text(v) for v in value) if isinstance(value, list | tuple) else value


PathText = Annotated[str, BeforeValidator(_path_text)]
Names = Annotated[str, BeforeValidator(_names)]  # comma-separated, as --variants and --precisions take them
Repeated = Annotated[tuple[str, ...], BeforeValidator(_repeated)]

# Where the option's name on the command line is not its Python name with dashes.
FLAGS = {"model": "MODEL", "target": "MODEL|FILE.onnx", "study": "STUDY", "overrides": "--set", "spec_files": "--spec"}


def flag(name: str, options: type | None = None) -> str:
    """How the command line spells the option ``name`` (of ``options``' command, where it spells it its own way)."""
    return {**FLAGS, **getattr(options, "FLAGS", {})}.get(name, "--" + name.replace("_", "-"))


class Checked:
    """Options checked when they are made: each field against its type (strictly: a wrong type is refused, not
    converted), then what no run can take; a bad value is one ``UserError`` line."""

    @classmethod
    def of(cls, **values: Any):
        """The options from keyword arguments (the Python API's): an unknown name is a user error too."""
        known = {f.name for f in dataclasses.fields(cls) if f.init} - {"extra_notes"}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown option {', '.join(map(repr, unknown))}; the options are: {', '.join(sorted(known))}")
        return cls(**values)

    def __post_init__(self) -> None:
        for name, adapter in _adapters(type(self)).items():
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, adapter.validate_python(value, strict=True))
            except ValidationError as exc:
                raise UserError(_one_line(flag(name, type(self)), value, exc)) from None
        self.check()

    def check(self) -> None:
        """What no run can take, across fields (the subclasses add theirs)."""


@functools.cache
def _adapters(cls: type) -> dict[str, TypeAdapter]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: TypeAdapter(hints[f.name]) for f in dataclasses.fields(cls) if f.init and f.name in hints}


def _one_line(option: str, value: Any, exc: ValidationError) -> str:
    error = exc.errors()[0]
    if error["type"] == "literal_error":
        choices = ", ".join(map(str, error["ctx"]["expected"].replace("'", "").replace(" or ", ", ").split(", ")))
        return f"{option} {shown(str(value))!r}: not one of {choices}"
    return f"{option} {shown(repr(value))[:80]}: {error['msg'][0].lower()}{error['msg'][1:]}"


@dataclass
class RunOptions(Checked):
    """What every evaluating command can be asked: images, preprocessing, batching, cache, weights."""

    data: Optional[PathText] = None
    devkit: Optional[PathText] = None
    out: Optional[PathText] = None
    preprocess: Optional[str] = None
    overrides: Repeated = ()
    limit: Optional[int] = None
    per_class: Optional[int] = None
    device: Device = "auto"
    batch_size: Optional[int] = None  # None: the worker's default for the device it resolves
    workers: Optional[int] = None
    cache_dir: Optional[PathText] = None
    weights: Optional[PathText] = None
    random_weights: bool = False
    seed: int = 0
    on_bad_image: OnBadImage = "error"
    calibration_split: Optional[int] = None  # the first N images by data.layouts.SPLIT_RULE held out to calibrate int8
    extra_notes: list[str] = field(default_factory=list)

    def check(self) -> None:
        if self.calibration_split is not None and self.calibration_split <= 0:
            raise UserError(f"--calibration-split must be positive, got {self.calibration_split}")
        if self.random_weights and self.weights:
            raise UserError("--weights and --random-weights exclude each other")
        for name in ("batch_size", "workers"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"{flag(name)} must be positive, got {value}"
                                + (" (leave it out to use every core)" if name == "workers" else ""))
        if self.weights:
            refuse_unless_regular(self.weights, "--weights", "a weights file")
            if os.path.getsize(self.weights) == 0:
                raise UserError(f"--weights {self.weights}: the file is empty")
        if not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"--seed must be between 0 and {MAX_SEED}, got {self.seed}")


@dataclass
class NativeOptions(RunOptions):
    """Everything ``xfverify native`` can be asked."""

    model: str = DEFAULT_MODEL
    precision: Precision = "fp32"
    cuda_graphs: bool = False

    def check(self) -> None:
        super().check()
        if not self.model.strip():
            raise UserError("MODEL is empty: give a model id (`xfverify models` lists them), or leave it out for the "
                            "default")
        if self.device == "cpu":  # the worker would say so too, after loading the model
            if self.precision == "tf32":
                raise UserError("--precision tf32 applies to CUDA GPUs only; use fp32 on the CPU")
            if self.cuda_graphs:
                raise UserError("--cuda-graphs needs a CUDA GPU (--device cuda or auto on a machine with one)")


@dataclass
class OnnxOptions(RunOptions):
    """Everything ``xfverify onnx`` can be asked; ``device`` is the native run's."""

    FLAGS: ClassVar[dict[str, str]] = {"variants": "--variant"}

    target: PathText = DEFAULT_MODEL  # a model id, or a user's .onnx file
    provider: Provider = "auto"
    opset: Optional[int] = None
    against: Optional[PathText] = None
    atol: float = ATOL_FRACTION
    rtol: float = RTOL
    localize: Optional[bool] = None  # the worst images node by node: always, never, or (None) when outputs disagree
    localize_images: int = 4
    localize_against: Optional[PathText] = None  # another ONNX file to localize against, not the native network
    variants: Repeated = ()  # deployment variants of the plain file (fp16, int8, ..., or a converted FILE.onnx)
    calibration: Optional[PathText] = None  # int8 static: the calibration images' folder, kept apart from --data
    calibration_limit: Optional[int] = None
    calibration_method: str = "minmax"  # one of converter.variant_spec.CALIBRATION_METHODS, checked with the variants
    per_channel: bool = True
    keep_float: Repeated = ()  # int8: nodes left out of quantisation
    keep_float_auto: int = 0  # int8: also rescored with its k costliest nodes kept in float
    max_top1_drop: Optional[float] = None  # exit status 3 when a variant costs more top-1 points than this
    fail_on_mismatch: bool = False  # exit status 3 when the ONNX file disagrees with the native run

    @property
    def is_file(self) -> bool:
        return self.target.endswith(".onnx") or os.path.isfile(self.target)

    def native_options(self, out: str) -> NativeOptions:
        """The native run this ONNX run compares with, when it makes one: the same images, preprocessing, weights
        and batching, into ``out``, at fp32."""
        return NativeOptions(
            data=self.data, devkit=self.devkit, out=out, preprocess=self.preprocess, overrides=self.overrides,
            limit=self.limit, per_class=self.per_class, device=self.device, batch_size=self.batch_size,
            workers=self.workers, cache_dir=self.cache_dir, weights=self.weights, random_weights=self.random_weights,
            seed=self.seed, on_bad_image=self.on_bad_image, calibration_split=self.calibration_split, model=self.target)

    def check(self) -> None:
        super().check()
        if not self.target.strip():
            raise UserError("MODEL is empty: give a model id (`xfverify models` lists them), or leave it out for the "
                            "default")
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise UserError(f"{flag(name)} must be a finite number, not negative, got {value}")
        if self.opset is not None and self.opset <= 0:
            raise UserError(f"--opset must be positive, got {self.opset} (leave it out for the exporter's default)")
        if self.localize_images <= 0:
            raise UserError(f"--localize-images must be positive, got {self.localize_images}")
        if self.localize is False and self.localize_against:
            raise UserError("--no-localize and --localize-against exclude each other")
        if self.localize_against and not os.path.isfile(self.localize_against):
            raise UserError(f"--localize-against {self.localize_against}: no such ONNX file")
        check_variant_options(self)
        if self.is_file:
            self._check_file_target()

    def _check_file_target(self) -> None:
        """A user's ONNX file: it exists, and only what applies to a file is asked of it."""
        if os.path.isdir(self.target):
            raise UserError(f"{self.target} is a folder, not an ONNX file: give the .onnx file in it")
        if not os.path.lexists(self.target):
            raise UserError(f"{self.target}: no such ONNX file")
        refuse_unless_regular(self.target, "ONNX file", "an ONNX file")
        if self.opset is not None:
            raise UserError(f"--opset applies to a model's export; {self.target} has its own opset: leave it out")
        if self.weights or self.random_weights:
            raise UserError(f"--weights and --random-weights apply to a model's export; {self.target} has its own "
                            "weights: leave them out")
        if not self.preprocess:
            raise UserError(f"{self.target}: a user's ONNX file needs --preprocess PRESET (how its model was "
                            "trained to be fed; `xfverify presets` lists them)")
        if self.localize and not self.against and not self.localize_against:
            raise UserError(f"--localize compares {self.target} with a native run (--against RUN_DIR) or with "
                            "another ONNX file (--localize-against FILE.onnx): give one")


@dataclass
class DiagnoseOptions(NativeOptions):
    """Everything ``xfverify diagnose`` can be asked: a native run's options, the variants, the runtime axis."""

    FLAGS: ClassVar[dict[str, str]] = {"onnx_variants": "--onnx-variant"}

    variants: Optional[Names] = None
    spec_files: Repeated = ()
    onnx: bool = False
    precisions: Optional[Names] = None
    onnx_variants: Repeated = ()  # deployment variants of the export on the runtime axis (as onnx --variant)
    calibration: Optional[PathText] = None  # their int8's calibration images
    calibration_limit: Optional[int] = None

    def onnx_options(self) -> OnnxOptions:
        """Diagnose's ONNX Runtime rows (--onnx, --onnx-variant): the model's export with the reference's weights,
        and its deployment variants, on the reference's tensors, under ONNX Runtime's default provider."""
        return DiagnoseOnnxOptions(
            data=self.data, devkit=self.devkit, limit=self.limit, per_class=self.per_class, device=self.device,
            batch_size=self.batch_size, workers=self.workers, cache_dir=self.cache_dir, weights=self.weights,
            random_weights=self.random_weights, seed=self.seed, on_bad_image=self.on_bad_image, target=self.model,
            variants=self.onnx_variants, calibration=self.calibration, calibration_limit=self.calibration_limit,
            calibration_split=self.calibration_split)

    def check(self) -> None:
        super().check()
        if self.onnx_variants or self.calibration or self.calibration_limit is not None or self.calibration_split:
            self.onnx_options()  # the variants and their calibration, checked as onnx checks them
        if self.precisions is not None:
            unknown = [n.strip() for n in self.precisions.split(",") if n.strip() and n.strip() not in PRECISIONS]
            if unknown:
                raise UserError(f"--precisions: unknown precision {', '.join(unknown)}; choose from "
                                f"{', '.join(PRECISIONS)}")


@dataclass
class DiagnoseOnnxOptions(OnnxOptions):
    """Diagnose's ONNX Runtime rows: ``onnx``'s options, its variants asked for as ``--onnx-variant``."""

    FLAGS: ClassVar[dict[str, str]] = {"variants": "--onnx-variant"}


@dataclass
class StudyOptions(Checked):
    """Everything ``xfverify study`` can be asked."""

    study: PathText = "lite"
    data: Optional[PathText] = None
    devkit: Optional[PathText] = None
    limit: Optional[int] = None
    per_class: Optional[int] = None
    out: Optional[PathText] = None
    device: Device = "auto"
    provider: Provider = "auto"
    batch_size: Optional[int] = None
    workers: Optional[int] = None
    cache_dir: Optional[PathText] = None
    seed: int = 0
    on_bad_image: OnBadImage = "error"
    random_weights: bool = False  # every cell with a seeded random model
    executor: Executor = "local"
    address: Optional[str] = None

    def check(self) -> None:
        # the options every cell shares, refused once here rather than by each cell in turn
        RunOptions(batch_size=self.batch_size, workers=self.workers, seed=self.seed)
        if self.address is not None and self.executor != "ray":
            raise UserError(f"--address {shown(self.address)} names a Ray cluster: add --executor ray, or leave "
                            "--address out to run the cells here")


def check_variant_options(options: OnnxOptions) -> list[VariantSpec]:
    """The variants asked for, as specs, or one line for an option no run can take."""
    asked = flag("variants", type(options))  # --variant, or diagnose's --onnx-variant
    if options.calibration_method not in CALIBRATION_METHODS:
        raise UserError(f"--calibration-method must be one of {', '.join(CALIBRATION_METHODS)}, "
                        f"got {options.calibration_method!r}")
    if options.keep_float_auto < 0:
        raise UserError(f"--keep-float-auto must be 0 or more, got {options.keep_float_auto}")
    if options.max_top1_drop is not None and not options.max_top1_drop >= 0:
        raise UserError(f"--max-top1-drop must be a number of points, 0 or more, got {options.max_top1_drop}")
    if options.calibration_limit is not None and options.calibration_limit <= 0:
        raise UserError(f"--calibration-limit must be positive, got {options.calibration_limit}")
    if options.max_top1_drop is not None and not options.variants:
        raise UserError(f"--max-top1-drop bounds what a variant costs: add {asked} NAME")
    specs = []
    for name in options.variants:
        if name.endswith(".onnx") or os.path.sep in name:
            refuse_unless_regular(name, asked, "an ONNX file")
            specs.append(VariantSpec(kind="file", path=os.path.abspath(name)))
        elif name in MADE_KINDS or name in CALIBRATED_NAMES:
            kind, _, method = name.partition("-") if name in CALIBRATED_NAMES else (name, "", "")
            quantised = kind in QUANTISED
            specs.append(VariantSpec(
                kind=kind, per_channel=options.per_channel if quantised else None,
                calibration_method=(method or options.calibration_method) if kind == "int8" else None,
                keep_io_types=True if kind == "fp16" else None,
                keep_float=tuple(options.keep_float) if quantised else ()))
        else:
            raise UserError(f"{asked} {name!r}: not a variant; give one of {', '.join(VARIANT_NAMES)} or a "
                            "converted FILE.onnx")
    if len({s.name for s in specs}) != len(specs):
        raise UserError(f"{asked}: the same variant is asked for twice")
    quantised = any(s.kind in QUANTISED for s in specs)
    if (options.keep_float or options.keep_float_auto) and not quantised:
        raise UserError(f"--keep-float and --keep-float-auto apply to an int8 variant: add {asked} int8")
    if options.calibration and options.calibration_split:
        raise UserError("--calibration DIR and --calibration-split N exclude each other: calibrate on a folder of "
                        "your own, or on N images held out of --data")
    for given in ("calibration", "calibration_split"):
        if getattr(options, given) and not any(s.calibrated for s in specs):
            raise UserError(f"{flag(given)} applies to {asked} int8 (static quantisation): add it, or leave it out")
    if any(s.calibrated for s in specs) and not (options.calibration or options.calibration_split):
        raise UserError(f"{asked} int8 needs calibration images kept apart from the scored ones: give "
                        "--calibration DIR (any layout --data takes) or --calibration-split N (N images held out "
                        "of --data)")
    if options.calibration and not os.path.isdir(options.calibration):
        raise UserError(f"--calibration {shown(options.calibration)}: no such folder")
    return specs


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
