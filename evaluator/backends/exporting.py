"""The exporter part of a back-end: a network it built, written as ONNX by the converter."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, NamedTuple

from xfverify.converter.exported import ExportResult
from xfverify.evaluator.backends.running import Device


class ExporterIdentity(NamedTuple):
    """What decides an export's output, as the export cache keys it: the exporter, its versions, the opset."""

    name: str
    version: str
    opset: int


class Exporter(ABC):
    """Exports the networks its back-end builds to ONNX."""

    @abstractmethod
    def exporter(self, opset: int | None) -> ExporterIdentity:
        """The exporter, the versions that decide its output, and the opset (None asked: its default)."""

    @abstractmethod
    def export_onnx(self, model: Any, path: Path, opset: int, hw: tuple[int, int], device: Device) -> ExportResult:
        """Export a network built by this back-end to ``path`` with the converter."""
