"""What an export made: the ONNX file's description and the export's result, as typed data (no onnx import: the
parent reads it)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

Layout = Literal["NCHW", "NHWC"]
OutputKind = Literal["logits", "softmax"]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FileDigest(Frozen):
    name: str  # relative to the .onnx file's folder
    size_bytes: int
    sha256: str


class TensorDescription(Frozen):
    name: str
    element_type: str  # numpy's name: float32, int64, ...
    shape: tuple[int | str, ...]  # symbolic dimensions by name, unknown ones as "?"


class OnnxDescription(Frozen):
    """What the report says about an ONNX file."""

    file: str
    sha256: str
    size_bytes: int
    external_data: tuple[FileDigest, ...]  # the tensors' data files beside it, when it has any
    total_size_bytes: int
    ir_version: int
    opsets: dict[str, int]  # domain ("" is ai.onnx) -> version
    producer_name: str
    producer_version: str
    exporter: str
    exporter_version: str
    inputs: tuple[TensorDescription, ...]
    outputs: tuple[TensorDescription, ...]
    layout: Layout

    @property
    def opset(self) -> int:
        return self.opsets.get("", self.opsets.get("ai.onnx", 0))


class ExportResult(Frozen):
    """One export: the checked file, its description, and how it was made."""

    path: Path
    description: OnnxDescription
    exporter: str
    exporter_version: str
    opset: int
    output_kind: OutputKind
    seconds: float
    notes: tuple[str, ...] = ()
