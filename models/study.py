"""A study as data: which models, and for each what to run (native, onnx, diagnose with its variants).

A study is a TOML file (``xfverify study FILE.toml``) or one shipped with xfverify by name (``lite``, ``article``)::

    name = "mine"
    [[cells]]
    models = ["torchvision/resnet50:IMAGENET1K_V1", "keras/ResNet*"]   # ids, or patterns as `xfverify models` takes
    # or a whole zoo filtered: models = "timm:convnext_*" (source:pattern, as `xfverify models --source --filter`)
    runs = ["native", "onnx", "diagnose"]
    variants = ["squash", "resize-pil"]   # diagnose's variants; [] for its whole selection
    precisions = ["bf16"]                 # diagnose's runtime axis (torch and Keras)
    random_weights = false
    [cells.onnx]                          # the onnx run's deployment variants, as `xfverify onnx --variant` takes them
    variants = ["fp16", "int8"]
    calibration = "calibration/"          # int8: a folder, relative to the study file
    calibration_method = "entropy"        # and calibration_limit, per_channel, keep_float, keep_float_auto
    # opset = 17                          # the export's opset (torch: below 18, its TorchScript exporter)

Expanding it gives the cells: one per (model, run), each checked against its card before anything runs.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from xfverify.models.cards import CARD_SOURCES, ModelCard, find_cards, get_card
from xfverify.models.errors import UserError
from xfverify.models.user_input import read_text, shown

Run = Literal["native", "onnx", "diagnose"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OnnxRun(_Strict):
    """What a cell's onnx run makes and scores beside the plain export: ``xfverify onnx``'s deployment-variant
    options, by the names its Python API takes (checked as the command checks them when the study is planned)."""

    variants: tuple[StrictStr, ...] = Field(default=(), description="--variant: fp16, int8, int8-entropy, ...")
    calibration: Optional[StrictStr] = Field(default=None, description="int8: a folder of calibration images, "
                                                                       "relative to the study file")
    calibration_limit: Optional[StrictInt] = None
    calibration_method: StrictStr = "minmax"
    per_channel: StrictBool = True
    keep_float: tuple[StrictStr, ...] = ()
    keep_float_auto: StrictInt = 0
    opset: Optional[StrictInt] = Field(default=None, description="--opset: below 18 torch exports with its "
                                                                 "TorchScript exporter (what dynamo cannot export)")

    @model_serializer(mode="wrap")
    def _opset_only_when_given(self, handler):  # cells without it keep the keys and folders they had
        dumped = handler(self)
        if dumped.get("opset") is None:
            dumped.pop("opset", None)
        return dumped


class CellGroup(_Strict):
    """Models, and what to run for each of them."""

    models: list[Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]] = Field(min_length=1)
    runs: list[Run] = Field(default=["native", "onnx", "diagnose"], min_length=1)
    variants: list[str] = Field(default_factory=list, description="diagnose's variants; empty: its whole selection")
    precisions: list[str] = Field(default_factory=list, description="diagnose's other precisions")
    random_weights: StrictBool = False  # true or false: "yes" or 1 is a mistake, not a yes
    onnx: Optional[OnnxRun] = Field(default=None, description="the onnx run's deployment variants and their options")

    @field_validator("models", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _onnx_options_need_an_onnx_run(self) -> "CellGroup":
        if self.onnx is not None and "onnx" not in self.runs:
            raise ValueError('[cells.onnx] holds the onnx run\'s options: add "onnx" to runs, or leave it out')
        return self


class StudySpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    about: str = ""
    cells: list[CellGroup] = Field(min_length=1)


class Cell(_Strict):
    """One model and one run: the unit a study executes, keys and resumes."""

    run: Run
    model: str  # the card's full id
    variants: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ()
    random_weights: bool = False
    onnx: Optional[OnnxRun] = None  # an onnx cell's deployment variants

    @property
    def name(self) -> str:
        """Its folder's name, one per cell: cells of one model that differ in their (diagnose's or deployment)
        variants or precisions are told apart by a digest of them."""
        name = f"{self.run}-{self.model.replace('/', '_').replace(':', '_')}" + ("-random" if self.random_weights else "")
        if self.variants or self.precisions or self.onnx:
            chosen = [self.variants, self.precisions, *([self.onnx.model_dump(mode="json")] if self.onnx else [])]
            name += f"-{hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:8]}"
        return name


def builtin_studies() -> dict[str, Path]:
    folder = resources.files("xfverify.models").joinpath("studies")
    return {Path(entry.name).stem: Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".toml")}


STUDY_LIMIT = 2**20  # a study file's bytes: a few dozen lines


def load_study(name_or_file: str) -> StudySpec:
    """A shipped study by name, or a TOML file; one line naming the problem otherwise."""
    shipped = builtin_studies()
    if name_or_file in shipped:
        path = shipped[name_or_file]
    else:
        path = Path(name_or_file)
        if not path.suffix == ".toml" and not path.exists():
            raise UserError(f"unknown study {name_or_file!r}: give a TOML file or one of {', '.join(sorted(shipped))}")
        if not path.exists():
            raise UserError(f"{shown(path)}: no such study file")
    text = read_text(path, "study file", STUDY_LIMIT)  # a FIFO or a device: one line, never waited on
    try:
        return _paths_from(path.parent, StudySpec.model_validate(tomllib.loads(text)))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{shown(path)}: not valid TOML ({shown(exc)})") from None
    except RecursionError:
        raise UserError(f"{shown(path)}: TOML nested too deeply to read; give the right file") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise UserError(f"{path}: {where}: {first['msg'].removeprefix('Value error, ')}") from None


def _paths_from(folder: Path, study: StudySpec) -> StudySpec:
    """The study with each cell's calibration folder taken relative to the study file's folder."""
    groups = [group.model_copy(update={"onnx": group.onnx.model_copy(
                  update={"calibration": str(folder / Path(group.onnx.calibration).expanduser())})})
              if group.onnx and group.onnx.calibration else group for group in study.cells]
    return study.model_copy(update={"cells": groups})


def cells_of(study: StudySpec) -> list[Cell]:
    """Every (model, run) the study asks for, in its order, once each; onnx cells need their native cell and get it."""
    cells: list[Cell] = []
    for group in study.cells:
        for card in _cards(group.models):
            runs = list(group.runs)
            if "onnx" in runs and "native" not in runs:
                runs.insert(runs.index("onnx"), "native")  # ONNX Runtime is compared with the native run's tensors
            for run in runs:
                diagnosing = run == "diagnose"
                cell = Cell(run=run, model=card.id, random_weights=group.random_weights,
                            variants=tuple(group.variants) if diagnosing else (),
                            precisions=tuple(group.precisions) if diagnosing else (),
                            onnx=group.onnx if run == "onnx" and group.onnx != OnnxRun() else None)
                if cell not in cells:
                    cells.append(cell)
    return cells


def _source_filter(pattern: str) -> tuple[str, str] | None:
    """``source:pattern`` (``timm:convnext_*``) as (source, pattern), or None for an id or a plain pattern."""
    source, colon, rest = pattern.partition(":")
    if colon and "/" not in source and source.lower() in {s.lower() for s in CARD_SOURCES}:
        return source.lower(), rest or "*"
    return None


def _cards(patterns: list[str]) -> list[ModelCard]:
    cards: list[ModelCard] = []
    for pattern in patterns:
        zoo = _source_filter(pattern)
        if zoo:
            found = find_cards(zoo[1], source=zoo[0])
            if not found:
                raise UserError(f"study models {pattern!r}: no {zoo[0]} model matches {zoo[1]!r}; "
                                f"`xfverify models --source {zoo[0]} --filter '{zoo[1]}'` lists them")
            cards += [card for card in found if card not in cards]
            continue
        try:
            found = [get_card(pattern)]
        except UserError:
            found = find_cards(pattern)
            if not found:
                raise UserError(f"study model {pattern!r} matches no card; `xfverify models` lists them") from None
        cards += [card for card in found if card not in cards]
    return cards
