"""GluonCV / Gluon HybridBlock -> ONNX with MXNet 1.9.1's mx.onnx.export_model; runs only inside an mxnet worker."""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

if not hasattr(np, "bool"):  # MXNet 1.9.1 still uses the alias numpy 1.24 removed
    np.bool = bool  # type: ignore[attr-defined]

import mxnet as mx  # noqa: E402
import onnx  # noqa: E402

from xfverify.converter.onnx_file import (  # noqa: E402
    ExportResult,
    drop_initialisers_from_inputs,
    finish,
    name_batch_axis,
    one_line,
    save,
)
from xfverify.models.errors import UserError  # noqa: E402

OPSETS = (12, 13)  # what MXNet 1.9.1's translations cover
DEFAULT_OPSET = 13
EXPORTER = "mxnet.onnx.export_model"
_NUMPY_TYPES = (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
                np.uint8, np.uint16, np.uint32, np.uint64, np.bool_)


def exporter_identity() -> tuple[str, str]:
    """The exporter's name and the versions that decide its output (for the report and the export cache)."""
    return EXPORTER, f"mxnet {mx.__version__}, onnx {onnx.__version__}"


@contextlib.contextmanager
def _onnx_as_mxnet_expects(opset: int):
    """While MXNet exports: ``onnx.mapping`` (removed in onnx 1.19; without it MXNet says "Onnx and
    protobuf need to be installed") rebuilt from onnx.helper, and ``onnx.defs.onnx_opset_version``
    answering ``opset``, which MXNet takes for the opset to translate to and stamp."""
    to_tensor_type = {np.dtype(t): onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t)) for t in _NUMPY_TYPES}
    mapping = types.ModuleType("onnx.mapping")
    mapping.NP_TYPE_TO_TENSOR_TYPE = to_tensor_type
    mapping.TENSOR_TYPE_TO_NP_TYPE = {code: dtype for dtype, code in to_tensor_type.items()}
    saved_module, saved_attribute = sys.modules.get("onnx.mapping"), getattr(onnx, "mapping", None)
    saved_version = onnx.defs.onnx_opset_version
    sys.modules["onnx.mapping"], onnx.mapping = mapping, mapping
    onnx.defs.onnx_opset_version = lambda: opset
    try:
        yield
    finally:
        onnx.defs.onnx_opset_version = saved_version
        if saved_module is None:
            sys.modules.pop("onnx.mapping", None)
            del onnx.mapping
        else:
            sys.modules["onnx.mapping"], onnx.mapping = saved_module, saved_attribute


def export_gluon(net: mx.gluon.HybridBlock, path: Path, opset: int = DEFAULT_OPSET, *,
                 input_shape: tuple[int, int, int] = (3, 224, 224), ctx: mx.Context | None = None) -> ExportResult:
    """Export an NCHW classifier with a dynamic batch axis (input ``data``, MXNet's name). The parameters
    MXNet lists as graph inputs are removed from them, so ONNX Runtime folds them as constants."""
    if opset not in OPSETS:
        raise UserError(f"MXNet {mx.__version__}'s ONNX exporter translates to opsets {OPSETS[0]}-{OPSETS[-1]} "
                        f"only, not {opset}: ask for opset {DEFAULT_OPSET}")
    path = Path(path)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xfverify-mxnet-export-") as scratch:
        prefix = str(Path(scratch) / "net")
        net.hybridize()
        net(mx.nd.zeros((1, *input_shape), ctx=ctx or mx.cpu()))  # a hybridized net exports what it last ran
        net.export(prefix)
        raw = Path(scratch) / "raw.onnx"
        try:
            with _onnx_as_mxnet_expects(opset):
                mx.onnx.export_model(f"{prefix}-symbol.json", f"{prefix}-0000.params", [(1, *input_shape)],
                                     np.float32, str(raw), dynamic=True, dynamic_input_shapes=[(None, *input_shape)])
        except Exception as exc:  # MXNet raises AttributeError/KeyError for an operator it cannot translate
            raise UserError(f"{EXPORTER} could not export {type(net).__name__} to opset {opset}: "
                            f"{type(exc).__name__}: {one_line(str(exc))}") from None
        model = onnx.load(str(raw))
    del model.opset_import[:]
    model.opset_import.append(onnx.helper.make_opsetid("", opset))
    model.ir_version = onnx.helper.find_min_ir_version_for(model.opset_import)  # onnx stamps its newest IR
    model.producer_name, model.producer_version = "mxnet", mx.__version__  # MXNet leaves them empty
    dropped = drop_initialisers_from_inputs(model)
    name_batch_axis(model)
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)  # fills the output's shape
    save(model, path)
    return finish(path, exporter=EXPORTER, exporter_version=exporter_identity()[1], opset=opset, layout="NCHW",
                  output_kind="logits", started=started,
                  notes=(f"{dropped} parameters MXNet listed as graph inputs were removed from them",))
