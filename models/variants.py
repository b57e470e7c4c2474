"""Diagnosis variants as data: each is a base (the card's reference or a named preset) plus field overrides.

A variant changes one thing: the fields it names, and only those, differ from its base (the tests check it).
They come from the model card (its alternatives), the other frameworks' reference presets (in the card's
layout), one-field changes of the reference (interpolation, resize library: PIL, OpenCV, TensorFlow 2 and
torchvision's tensor resize with and without antialias; decoder, nvJPEG included; resize rule, channel order,
normalisation) and the traps people fall into (Keras ``load_img``'s nearest squash). A precision variant
changes no field: it feeds the reference's own tensors to the same weights at another precision (the runtime axis).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from xfverify.models.cards import ModelCard
from xfverify.models.errors import UserError
from xfverify.models.precision import DESCRIPTIONS, MIXED, PRECISIONS
from xfverify.models.preprocess import (
    LIBRARY_INTERPOLATIONS,
    NORMALISATIONS,
    PRESETS,
    PreprocessSpec,
    resolve_preprocess,
)
from xfverify.models.user_input import shown

REFERENCE = "reference"
GPU_ONLY = ("decoder-nvjpeg",)  # variants that need an NVIDIA GPU: left out of the default selection without one
FRAMEWORK_PRESETS = ("torchvision-256", "torchvision-232", "gluoncv", "keras-torch", "keras-caffe", "keras-tf")
TRAP_PRESETS = ("keras-caffe-load-img-nearest",)
# (variant name, resize library, antialias, how): the reference's interpolation through another library, where
# the library has it (PIL always antialiases, OpenCV never; tf2 and torch do either).
RESIZE_LIBRARY_VARIANTS = (
    ("resize-pil", "pil", True, "PIL's"),
    ("resize-opencv", "opencv", False, "OpenCV's"),
    ("resize-tf2", "tf2", False, "tf.image.resize's"),
    ("resize-tf2-antialias", "tf2", True, "tf.image.resize(antialias=True)'s"),
    ("resize-torch", "torch", False, "torchvision's tensor (antialias=False)"),
    ("resize-torch-antialias", "torch", True, "torchvision's tensor (antialias=True)"),
)
RUNTIME = "runtime"  # the group of the rows that change how the model runs, not what it is fed


@dataclass(frozen=True)
class Variant:
    """One preprocessing to compare with the reference: ``base`` (None: the reference) plus ``overrides``; or, with
    ``precision``, the reference's preprocessing run at another precision."""

    name: str
    group: str
    why: str
    base: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    precision: str | None = None

    def base_spec(self, reference: PreprocessSpec) -> PreprocessSpec:
        return reference if self.base is None else PRESETS[self.base]

    def resolve(self, reference: PreprocessSpec) -> PreprocessSpec:
        if self.precision is not None:
            return reference.replace(name=REFERENCE)  # the reference variant's own spec: its tensors, fed as they are
        spec = resolve_preprocess(self.base_spec(reference), overrides=dict(self.overrides) or None)
        return spec.replace(name=self.name)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "group": self.group, "why": self.why, "base": self.base,
                "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in self.overrides.items()}}


def changed_fields(first: PreprocessSpec, second: PreprocessSpec) -> set[str]:
    """The spec fields (name and source aside) in which two specs differ."""
    return {f.name for f in dataclasses.fields(PreprocessSpec) if f.name not in ("name", "source")
            and getattr(first, f.name) != getattr(second, f.name)}


def _one_change(reference: PreprocessSpec, name: str, group: str, why: str, **candidate: Any) -> Variant | None:
    """A one-change variant of the reference: the candidate's fields that differ from it; None when nothing
    differs or the result is not a valid spec (e.g. an interpolation the library lacks)."""
    overrides = {k: v for k, v in candidate.items() if getattr(reference, k) != v}
    if not overrides:
        return None
    try:
        reference.replace(**overrides)
    except UserError:
        return None
    return Variant(name=name, group=group, why=why, overrides=overrides)


def _preset_variant(reference: PreprocessSpec, preset: str, group: str, why: str) -> Variant | None:
    """A preset in the reference's layout (one field changed where it differs); None when its output size differs."""
    spec = PRESETS[preset]
    if spec.output_hw != reference.output_hw:
        return None
    overrides = {"layout": reference.layout} if spec.layout != reference.layout else {}
    return Variant(name=preset if not overrides else f"{preset}-{reference.layout}", group=group, why=why,
                   base=preset, overrides=overrides)


def _geometry_changes(ref: PreprocessSpec) -> list[Variant | None]:
    crop = ref.crop_size or ref.resize_size
    out: list[Variant | None] = []
    for interpolation in LIBRARY_INTERPOLATIONS[ref.resize_library]:
        out.append(_one_change(ref, f"interpolation-{interpolation}", "interpolation",
                               f"{ref.resize_library} {interpolation} instead of {ref.interpolation}",
                               interpolation=interpolation))
    for name, library, antialias, whose in RESIZE_LIBRARY_VARIANTS:
        out.append(_one_change(ref, name, "resize library",
                               f"{whose} {ref.interpolation} resize instead of {ref.resize_library}'s",
                               resize_library=library, antialias=antialias))
    for decoder in ("pil", "opencv", "tensorflow", "nvjpeg"):
        why = (f"{decoder} decodes the files" if decoder != "nvjpeg" else
               "nvJPEG decodes the files on the GPU (torchvision.io.decode_jpeg(device='cuda'))")
        out.append(_one_change(ref, f"decoder-{decoder}", "decoder", why, decoder=decoder))
    if ref.order == "resize_then_crop":
        for size in (256, 232):
            out.append(_one_change(ref, f"resize-{size}", "resize rule", f"shorter side {size}, then the centre crop",
                                   resize_mode="shorter_side", resize_size=size))
        out.append(_one_change(ref, "crop-then-resize", "resize rule",
                               "a centred square of crop/(crop+32) of the shorter side resized to the input, as "
                               "TensorFlow's EfficientNet", order="crop_then_resize", resize_mode="squash",
                               resize_size=crop, crop_padding=32))
        out.append(_one_change(ref, "squash", "resize rule", "the whole image squashed to the input size",
                               resize_mode="squash", resize_size=crop))
    else:
        out.append(_one_change(ref, "resize-then-crop-256", "resize rule",
                               "shorter side resized to crop/0.875, then the centre crop (torchvision's order)",
                               order="resize_then_crop", crop_padding=0, resize_mode="shorter_side",
                               resize_size=crop * 8 // 7))
        out.append(_one_change(ref, "squash", "resize rule", "the whole image squashed to the input size",
                               order="resize_then_crop", crop_padding=0))
        out.append(_one_change(ref, "crop-padding-0", "resize rule", "the centred square of the whole shorter side",
                               crop_padding=0))
    return out


def _normalisation_changes(ref: PreprocessSpec) -> list[Variant | None]:
    out: list[Variant | None] = [
        _one_change(ref, f"norm-{name}", "normalisation", f"normalised as {name.replace('-', ' ')}", **values)
        for name, values in NORMALISATIONS.items()
    ]
    other = "BGR" if ref.channel_order == "RGB" else "RGB"
    out.append(_one_change(ref, f"channels-{other}", "channel order", f"channels fed {other}", channel_order=other))
    return out


def _traps(ref: PreprocessSpec) -> list[Variant | None]:
    crop = ref.crop_size or ref.resize_size
    return [_one_change(ref, "load-img-nearest-squash", "trap",
                        "keras.utils.load_img(target_size=...): PIL decode, nearest squash to the input, no crop "
                        "(the model's own normalisation)", decoder="pil", order="resize_then_crop", crop_padding=0,
                        resize_mode="squash", resize_size=crop, interpolation="nearest", resize_library="pil",
                        antialias=True)]


def card_variants(card: ModelCard, reference: PreprocessSpec | None = None) -> list[Variant]:
    """Every variant for a card, reference first, each name once."""
    ref = reference or card.reference_spec
    found: list[Variant | None] = [Variant(name=REFERENCE, group="reference", why=f"the card's reference, {ref.name}")]
    found += [_preset_variant(ref, a.preset, "card alternative", a.reason) for a in card.alternatives]
    found += [_preset_variant(ref, p, "framework reference", PRESETS[p].source) for p in FRAMEWORK_PRESETS
              if p != card.preprocess]
    found += [_preset_variant(ref, p, "trap", PRESETS[p].source) for p in TRAP_PRESETS]
    found += _geometry_changes(ref) + _normalisation_changes(ref) + _traps(ref)
    variants: dict[str, Variant] = {}
    for variant in found:
        if variant is not None and variant.name not in variants:
            variants[variant.name] = variant
    return list(variants.values())


def select_variants(variants: list[Variant], names: str | None) -> list[Variant]:
    """The reference and the variants named (comma-separated); all when ``names`` is None."""
    if names is None:
        return variants
    by_name = {v.name: v for v in variants}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if not wanted:
        raise UserError(f"--variants {names!r} names no variant; give NAME,... or leave it out to run them all. "
                        f"This model's are: {', '.join(v.name for v in variants if v.name != REFERENCE)}")
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise UserError(f"--variants: unknown variant {', '.join(unknown)}; this model's are: "
                        f"{', '.join(v.name for v in variants if v.name != REFERENCE)}")
    return [variants[0]] + [by_name[n] for n in dict.fromkeys(wanted) if n != REFERENCE]


MAX_NAME = 80


def check_variant_name(name: Any, origin: str) -> str:
    """A variant name a report can show: a string of printable characters without the table's ``|`` or a backquote,
    not empty, at most MAX_NAME long; else one line naming the --spec file."""
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"--spec {shown(origin)}: name must be a non-empty string, got {shown(repr(name))[:60]}")
    bad = [ch for ch in name if not ch.isprintable() or ch in "|`"]
    if bad or len(name) > MAX_NAME or name != name.strip():
        raise UserError(f"--spec {shown(origin)}: variant name {shown(repr(name))[:80]} cannot be shown in a report "
                        f"(at most {MAX_NAME} printable characters, no '|', no backquote, no spaces at its ends); "
                        "rename it")
    return name


def user_variant(data: Mapping[str, Any], origin: str) -> Variant:
    """A user's variant from a JSON object: ``{"name": ..., "preset": optional, "set": {field: value}}``."""
    unknown = set(data) - {"name", "preset", "set", "why"}
    if unknown or "name" not in data:
        raise UserError(f"--spec {shown(origin)}: give a JSON object with name, optional preset and set "
                        f"(field: value){'; unknown keys ' + shown(', '.join(sorted(unknown))) if unknown else ''}")
    name = check_variant_name(data["name"], origin)
    preset = data.get("preset")
    if preset is not None and (not isinstance(preset, str) or preset not in PRESETS):
        raise UserError(f"--spec {shown(origin)}: unknown preset {shown(repr(preset))[:60]}; `xfverify presets` "
                        "lists them")
    overrides = data.get("set", {})
    if not isinstance(overrides, dict):
        raise UserError(f"--spec {shown(origin)}: set must be an object of field: value, got {type(overrides).__name__}")
    why = data.get("why", f"from {origin}")
    if not isinstance(why, str):
        raise UserError(f"--spec {shown(origin)}: why must be a string")
    return Variant(name=name, group="user", why=shown(why), base=preset, overrides=dict(overrides))


def precision_variants(names: str | None, reference_precision: str, framework: str) -> list[Variant]:
    """The runtime-axis variants of ``--precisions`` (comma-separated): the reference's tensors, the same weights,
    another precision; each name once, none the reference's own."""
    if names is None:
        return []
    wanted = list(dict.fromkeys(n.strip() for n in names.split(",") if n.strip()))
    if not wanted:
        others = ", ".join(p for p in PRECISIONS if p != reference_precision)
        raise UserError(f"--precisions names no precision; give some of {others}, or leave the option out")
    unknown = [n for n in wanted if n not in PRECISIONS]
    if unknown:
        raise UserError(f"--precisions: unknown precision {', '.join(unknown)}; choose from {', '.join(PRECISIONS)}")
    if reference_precision in wanted:
        raise UserError(f"--precisions {reference_precision}: the reference already runs at it (--precision "
                        f"{reference_precision}); name the other precisions to compare")
    engine = {"torch": "torch autocast", "tensorflow": "a Keras mixed-precision policy"}.get(framework, framework)
    return [Variant(name=f"precision-{p}", group=RUNTIME, precision=p,
                    why=f"the reference's tensors, the same weights, {DESCRIPTIONS[p]}"
                        + (f" ({engine})" if p in MIXED else ""))
            for p in wanted]
