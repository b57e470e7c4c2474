"""Deployment variants of an ONNX file as data: what each one is made with (:class:`VariantSpec`), the record a made
file keeps in the variant cache (:class:`VariantFile`), and the names ``--variant`` takes; framework-free."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

Kind = Literal["fp16", "int8", "int8-dynamic", "opt-basic", "opt-extended", "opt-all", "file"]
MADE_KINDS: tuple[str, ...] = ("fp16", "int8", "int8-dynamic", "opt-basic", "opt-extended", "opt-all")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
QUANTISED = ("int8", "int8-dynamic")
CALIBRATED_NAMES = tuple(f"int8-{method}" for method in CALIBRATION_METHODS)  # int8 naming its calibration method
VARIANT_NAMES = (*MADE_KINDS, *CALIBRATED_NAMES)  # what --variant takes, besides a FILE.onnx
# How xfverify drives the tools, beyond the options: part of the cache key.
RECIPE = "calibration-strides-2"  # equal batches, strides of at most 32 images
QDQ_MIN_OPSET = 13  # QuantizeLinear/DequantizeLinear with a per-axis scale (ONNX opset 13); ONNX Runtime asks for it


class VariantSpec(BaseModel):
    """One ``--variant`` and every option that makes its file (all part of its cache key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind
    path: Optional[str] = Field(default=None, description="kind 'file': the user's converted .onnx file")
    per_channel: Optional[bool] = Field(default=None, description="int8: per-channel weight scales")
    calibration_method: Optional[str] = Field(default=None, description="int8: minmax, entropy or percentile")
    keep_io_types: Optional[bool] = Field(default=None, description="fp16: the file keeps float32 inputs and outputs")
    keep_float: tuple[str, ...] = Field(default=(), description="int8: nodes left in float (not quantised)")

    @property
    def name(self) -> str:
        """How reports name it: the kind, and what sets it apart from the plain kind."""
        if self.kind == "file":
            return f"file:{self.path}"
        name = self.kind
        if self.kind == "int8":
            name += f"-{self.calibration_method}" + ("" if self.per_channel else "-per-tensor")
        if self.kind == "fp16" and not self.keep_io_types:
            name += "-io16"
        if self.keep_float:
            name += f"+float({len(self.keep_float)})"
        return name

    @property
    def calibrated(self) -> bool:
        return self.kind == "int8"

    @property
    def arithmetic(self) -> str:
        """What the made file computes in, in a few words (ONNX Runtime itself runs it as asked, at fp32)."""
        if self.kind == "fp16":
            return "float16 file" + (", float32 inputs and outputs" if self.keep_io_types else "")
        if self.kind == "int8":
            return f"int8 QDQ file, {self.calibration_method} calibration"
        if self.kind == "int8-dynamic":
            return "int8 weights, activations quantised at run time"
        if self.kind == "file":
            return "the user's file, in its own types"
        return "fp32 file, graph optimised offline"


class ToolVersions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    onnx: str
    onnxruntime: str
    onnxconverter_common: Optional[str] = None


class VariantFile(BaseModel):
    """A made variant file, as the variant cache records it (``variant.json`` beside ``model.onnx``)."""

    model_config = ConfigDict(extra="forbid")

    spec: VariantSpec
    parent_sha256: str
    calibration_sha256: Optional[str] = Field(description="the calibration tensors' sha256 (int8 static), else None")
    n_calibration: int = 0
    tools: ToolVersions
    file: str = "model.onnx"
    sha256: str
    size_bytes: int
    seconds: float = Field(description="what making it took")
    n_nodes: int
    n_quantised_nodes: int = Field(description="int8: nodes computed on quantised tensors (QDQ pairs or integer ops)")
    notes: list[str] = []


def cache_key(spec: VariantSpec, parent_sha256: str, calibration_sha256: Optional[str], tools: ToolVersions) -> str:
    """The variant cache's key: the parent file, every option, the calibration tensors, the tools' versions."""
    text = json.dumps([spec.model_dump(mode="json"), parent_sha256, calibration_sha256, tools.model_dump(),
                       RECIPE], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def folder_name(spec: VariantSpec, key: str) -> str:
    return f"{re.sub(r'[^A-Za-z0-9_.+-]+', '_', spec.name)[:60]}-{key}"
