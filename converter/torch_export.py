"""torch.nn.Module -> ONNX with torch.onnx.export; runs only inside a torch worker process."""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import re
import time
import warnings
from pathlib import Path
from typing import Literal

import torch

from xfverify.converter.onnx_file import BATCH_AXIS, ExportResult, finish, one_line
from xfverify.models.errors import UserError

TorchExporter = Literal["dynamo", "torchscript"]
DEFAULT_OPSET = 18
DYNAMO_MIN_OPSET = 18  # below it the dynamo exporter keeps opset 18 when its version converter fails
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def choose_exporter(opset: int) -> TorchExporter:
    """torch's own default, the dynamo exporter, where it honours the opset; the TorchScript one below that."""
    return "dynamo" if opset >= DYNAMO_MIN_OPSET else "torchscript"


def exporter_identity(exporter: TorchExporter) -> tuple[str, str]:
    """The exporter's name and the versions that decide its output (for the report and the export cache)."""
    version = f"torch {torch.__version__}"
    if exporter == "dynamo":
        version += f", onnxscript {importlib.metadata.version('onnxscript')}"
    return f"torch.onnx.export (dynamo={exporter == 'dynamo'})", version


def export_torch(model: torch.nn.Module, path: Path, opset: int = DEFAULT_OPSET, *,
                 exporter: TorchExporter | None = None, input_shape: tuple[int, int, int] = (3, 224, 224)) -> ExportResult:
    """Export an NCHW classifier with a dynamic batch axis: input ``input``, output ``logits``. The dynamo
    exporter writes its weights to ``PATH.data`` beside the file; both are checked and described."""
    exporter = exporter or choose_exporter(opset)
    if exporter not in ("dynamo", "torchscript"):
        raise UserError(f"torch exporter {exporter!r}: choose dynamo or torchscript")
    if exporter == "dynamo" and opset < DYNAMO_MIN_OPSET:
        raise UserError(f"torch's dynamo exporter writes opset {DYNAMO_MIN_OPSET} or later, not {opset}: "
                        "ask for a later opset or the torchscript exporter")
    name, version = exporter_identity(exporter)
    path = Path(path)
    started = time.perf_counter()
    model.eval()
    device = next(model.parameters()).device
    example = (torch.zeros((2, *input_shape), device=device),)  # 2, not 1: a batch of one would be specialised
    captured = io.StringIO()
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(captured), \
                contextlib.redirect_stderr(captured):
            warnings.simplefilter("ignore")  # deprecation of the TorchScript exporter; export-time tracer notes
            if exporter == "dynamo":
                torch.onnx.export(model, example, str(path), dynamo=True, opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], external_data=True,
                                  dynamic_shapes=({0: torch.export.Dim(BATCH_AXIS)},), verbose=False)
            else:
                torch.onnx.export(model, example, str(path), dynamo=False, opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_axes={INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}})
    except Exception as exc:  # torch's exporters raise many types; each names its step and operator
        other = ("; --opset 17 exports with torch's TorchScript exporter instead" if exporter == "dynamo" else "")
        raise UserError(f"{name} could not export {type(model).__name__} to opset {opset}: {_failure(exc)}"
                        f"{other}") from None
    return finish(path, exporter=name, exporter_version=version, opset=opset, layout="NCHW", output_kind="logits",
                  started=started)


_OPERATOR = re.compile(r"(?:torch\.ops\.)?(aten(?:::|\.)\w+)")
_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_STEPS = {  # torch.onnx's dynamo exporter: the class of its error -> the step that failed
    "TorchExportError": "capturing the graph with torch.export",
    "ConversionError": "translating the captured graph to ONNX",
    "UnsupportedOperatorError": "translating an operator to ONNX",
}


def _failure(exc: Exception) -> str:
    """The failed step (from the outer error) and operator and reason (from its innermost cause)."""
    chain = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__)
    texts = [_TERMINAL_CODES.sub("", str(error)) for error in reversed(chain)]
    operator = next((found.group(1) for found in map(_OPERATOR.search, texts) if found), None)
    reason = next((line.strip() for text in texts for line in text.splitlines() if line.strip()), type(exc).__name__)
    step = _STEPS.get(type(exc).__name__, type(exc).__name__)
    return one_line(f"{step}: {f'operator {operator}; ' if operator else ''}{reason}", 400)
