"""Deployment variants made from a plain ONNX file: float16 (onnxconverter-common), int8 QDQ static and dynamic (ONNX
Runtime's quantisation tool), ONNX Runtime's offline graph optimisation. Each is built in the variant cache's
temporary folder and moved in whole (``converter.cache``), keyed by the parent's sha256, every option, the
calibration tensors and the tools' versions. Imported only in the ONNX Runtime worker."""

from __future__ import annotations

import re
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Optional

import numpy as np
import onnx
import onnxruntime as ort

from xfverify.converter.cache import MODEL_FILE, cached_build
from xfverify.models.hashing import sha256_file
from xfverify.converter.onnx_file import one_line
from xfverify.converter.variant_spec import (
    QDQ_MIN_OPSET,
    ToolVersions,
    VariantFile,
    VariantSpec,
    cache_key,
    folder_name,
)
from xfverify.models.errors import UserError
from xfverify.models.user_input import cached_bytes

RECORD_FILE = "variant.json"
OPTIMISATION_LEVELS = {"opt-basic": "ORT_ENABLE_BASIC", "opt-extended": "ORT_ENABLE_EXTENDED", "opt-all": "ORT_ENABLE_ALL"}
INTEGER_OPS = {"ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "DynamicQuantizeLinear"}
CALIBRATION_BATCH = 8  # at most; the largest size up to it that divides the images (the histograms need equal batches)
# Entropy and percentile calibration keep every calibrated tensor of the images they are given in memory (tens of MB
# an image for EfficientNet-Lite0); the quantisation tool is fed them in strides of at most this many images
# (its CalibStridedMinMax), its histograms merged from stride to stride. MinMax keeps only each tensor's min and max.
CALIBRATION_STRIDE_IMAGES = 32


def tool_versions() -> ToolVersions:
    try:
        converter = version("onnxconverter-common")
    except PackageNotFoundError:
        converter = None
    return ToolVersions(onnx=onnx.__version__, onnxruntime=ort.__version__, onnxconverter_common=converter)


def _cached(folder: Path) -> Optional[VariantFile]:
    record = cached_bytes(folder / RECORD_FILE)
    if record is None:
        return None
    try:
        made = VariantFile.model_validate_json(record)
    except ValueError:
        return None
    path = folder / made.file
    intact = path.is_file() and not path.is_symlink() and sha256_file(path) == made.sha256
    return made if intact else None


def make_variant(parent: Path, spec: VariantSpec, cache_root: Path, providers: list[str],
                 calibration: Optional[Path] = None, calibration_sha256: Optional[str] = None
                 ) -> tuple[VariantFile, Path, bool]:
    """The variant ``spec`` of ``parent`` (cached, or made now), checked by opening it in ONNX Runtime on
    ``providers``; its record, its path, and whether it came from the cache. A graph the tool cannot convert, or
    that ONNX Runtime then cannot run, is one line naming the node or operator."""
    tools = tool_versions()
    parent_sha256 = sha256_file(parent)
    folder = cache_root / folder_name(spec, cache_key(spec, parent_sha256, calibration_sha256, tools))

    def build(building: Path) -> VariantFile:
        started = time.perf_counter()
        out = building / MODEL_FILE
        notes = _make(parent, spec, out, calibration)
        _runs(out, spec, providers)  # before it enters the cache: nothing half-made is kept
        model = onnx.load(str(out), load_external_data=False)
        made = VariantFile(
            spec=spec, parent_sha256=parent_sha256, calibration_sha256=calibration_sha256,
            n_calibration=len(np.load(calibration, mmap_mode="r")) if calibration is not None else 0,
            tools=tools, sha256=sha256_file(out), size_bytes=out.stat().st_size,
            seconds=round(time.perf_counter() - started, 3), n_nodes=len(model.graph.node),
            n_quantised_nodes=quantised_nodes(model), notes=notes)
        (building / RECORD_FILE).write_text(made.model_dump_json(indent=2))
        return made

    made, from_cache = cached_build(folder, build, _cached)
    if from_cache:
        _runs(folder / made.file, spec, providers)  # the providers may be others than when it was made
    return made, folder / made.file, from_cache


def _make(parent: Path, spec: VariantSpec, out: Path, calibration: Optional[Path]) -> list[str]:
    """Write the variant file ``out``; the notes a report should carry about how it was made."""
    model = onnx.load(str(parent))
    if spec.kind == "fp16":
        return _float16(model, spec, out)
    if spec.kind in OPTIMISATION_LEVELS:
        return _optimised(parent, spec, out)
    _check_quantisable(model, spec, parent)
    if spec.kind == "int8":
        if calibration is None:
            raise UserError("--variant int8 needs calibration images: give --calibration DIR")
        return _static(parent, spec, out, calibration, model.graph.input[0].name)
    return _dynamic(parent, spec, out)


def _float16(model: onnx.ModelProto, spec: VariantSpec, out: Path) -> list[str]:
    from onnxconverter_common import float16

    try:
        half = float16.convert_float_to_float16(model, keep_io_types=bool(spec.keep_io_types))
    except Exception as exc:  # the converter's own refusal of this graph (an op or type it cannot take)
        raise UserError(f"--variant fp16: onnxconverter-common cannot convert the graph: {one_line(exc)}") from None
    onnx.save(half, str(out))
    io = "float32 inputs and outputs (keep_io_types=True)" if spec.keep_io_types else "float16 inputs and outputs"
    return [f"float16 by onnxconverter-common's convert_float_to_float16, {io}"]


def _optimised(parent: Path, spec: VariantSpec, out: Path) -> list[str]:
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMISATION_LEVELS[spec.kind])
    options.optimized_model_filepath = str(out)
    whole = onnx.load(str(parent)).SerializeToString()  # its external data inline: the saved file refers to none
    try:
        ort.InferenceSession(whole, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime's refusal of the graph
        raise UserError(f"--variant {spec.kind}: ONNX Runtime cannot optimise {parent}: {_ort_reason(exc)}") from None
    notes = [f"ONNX Runtime's offline graph optimisation at {OPTIMISATION_LEVELS[spec.kind]}, saved for the "
             "CPUExecutionProvider"]
    if spec.kind == "opt-all":
        notes.append("ORT_ENABLE_ALL saves layout optimisations for this machine's CPU: the file may not run "
                     "elsewhere")
    return notes


def _check_quantisable(model: onnx.ModelProto, spec: VariantSpec, parent: Path) -> None:
    """An opset that has QDQ's per-axis scales, and --keep-float names that are the graph's nodes."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < QDQ_MIN_OPSET:
        raise UserError(f"--variant {spec.kind}: {parent} has opset {opset}, below {QDQ_MIN_OPSET}, the first whose "
                        "QuantizeLinear/DequantizeLinear take per-channel scales: export it with --opset "
                        f"{QDQ_MIN_OPSET} or later")
    names = {node.name for node in model.graph.node}
    unknown = [name for name in spec.keep_float if name not in names]
    if unknown:
        raise UserError(f"--keep-float {unknown[0]}: no node of {parent} has that name (the names are the plain "
                        "file's, as the report's per-node table gives them)")


class _Reader:
    """ONNX Runtime's calibration data reader over the calibration tensors (a float32 .npy, one row per image), in
    batches; ``set_range`` (batch indices) gives the tool one stride of them at a time."""

    def __init__(self, tensors: Path, input_name: str):
        self.tensors, self.input_name = np.load(tensors, mmap_mode="r"), input_name
        self.batch = _largest_divisor(len(self.tensors), CALIBRATION_BATCH)
        self.start, self.end = 0, len(self)

    def __len__(self) -> int:
        return len(self.tensors) // self.batch

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        if self.start >= self.end:
            return None
        first = self.start * self.batch
        batch = np.ascontiguousarray(self.tensors[first : first + self.batch], dtype=np.float32)
        self.start += 1
        return {self.input_name: batch}

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, min(end_index, len(self))

    def rewind(self) -> None:
        self.start, self.end = 0, len(self)


def _largest_divisor(n: int, at_most: int) -> int:
    return max(k for k in range(1, min(at_most, n) + 1) if n % k == 0)


def calibration_stride(reader: _Reader) -> int:
    """The stride, in batches, of at most CALIBRATION_STRIDE_IMAGES images that divides the batches (the tool asks
    for one that does)."""
    return _largest_divisor(len(reader), max(1, CALIBRATION_STRIDE_IMAGES // reader.batch))


def _static(parent: Path, spec: VariantSpec, out: Path, calibration: Path, input_name: str) -> list[str]:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(_Reader, CalibrationDataReader):
        pass

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[spec.calibration_method or "minmax"]
    reader = Reader(calibration, input_name)
    try:
        quantize_static(str(parent), str(out), reader, quant_format=QuantFormat.QDQ,
                        per_channel=bool(spec.per_channel), activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, calibrate_method=method, nodes_to_exclude=list(spec.keep_float),
                        extra_options={"CalibStridedMinMax": calibration_stride(reader)})
    except UserError:
        raise
    except Exception as exc:  # the quantisation tool's refusal of this graph
        raise UserError(f"--variant int8: ONNX Runtime's quantize_static cannot quantise {parent}: "
                        f"{one_line(exc)}") from None
    kept = f"; {len(spec.keep_float)} node(s) kept in float: {', '.join(spec.keep_float)}" if spec.keep_float else ""
    return [f"int8 by ONNX Runtime's quantize_static: QDQ format, int8 activations and weights, "
            f"{'per-channel' if spec.per_channel else 'per-tensor'} weight scales, calibration "
            f"{spec.calibration_method}{kept}"]


def _dynamic(parent: Path, spec: VariantSpec, out: Path) -> list[str]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The exporter's recorded intermediate shapes trip the tool's own shape inference (the classifier's Gemm, turned
    # into a MatMul, keeps its old shape): it infers them again from a copy without them.
    model = onnx.load(str(parent))
    del model.graph.value_info[:]
    source = out.with_name("parent-without-shapes.onnx")
    onnx.save(model, str(source))
    try:
        quantize_dynamic(str(source), str(out), per_channel=bool(spec.per_channel), weight_type=QuantType.QInt8,
                         nodes_to_exclude=list(spec.keep_float))
    except Exception as exc:  # the quantisation tool's refusal of this graph
        raise UserError(f"--variant int8-dynamic: ONNX Runtime's quantize_dynamic cannot quantise {parent}: "
                        f"{one_line(exc)}") from None
    finally:
        source.unlink(missing_ok=True)
    return ["int8 by ONNX Runtime's quantize_dynamic: int8 weights, activations quantised at run time "
            f"({'per-channel' if spec.per_channel else 'per-tensor'} weight scales)"]


def quantised_nodes(model: onnx.ModelProto) -> int:
    """Nodes computed on quantised tensors: integer operators, and (QDQ) nodes fed by a DequantizeLinear that are
    not themselves quantisation nodes."""
    dequantised = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    return sum(1 for node in model.graph.node
               if node.op_type in INTEGER_OPS
               or (node.op_type not in ("QuantizeLinear", "DequantizeLinear")
                   and any(name in dequantised for name in node.input)))


_NO_KERNEL = re.compile(r"Could not find an implementation for (\w+)\((\d+)\) node with name '([^']*)'")
_BAD_TYPE = re.compile(r"Type '([^']+)' of input parameter \(([^)]*)\) of operator \((\w+)\) in node \(([^)]*)\)")
_NODE_OP = re.compile(r"Node \(([^)]*)\) Op \((\w+)\)")


def _ort_reason(exc: Exception) -> str:
    text = str(exc)
    found = _NO_KERNEL.search(text)
    if found:
        op, opset, node = found.groups()
        return f"no kernel for node {node or '(unnamed)'} ({op}, opset {opset}) with these input types"
    found = _BAD_TYPE.search(text)
    if found:
        element, name, op, node = found.groups()
        return f"node {node or '(unnamed)'} ({op}) does not take {element} (its input {name})"
    found = _NODE_OP.search(text)
    if found:
        return f"node {found.group(1)} ({found.group(2)}): {one_line(text)}"
    return one_line(text)


def _runs(path: Path, spec: VariantSpec, providers: list[str]) -> None:
    """ONNX Runtime opens the file on ``providers``, else one line naming the node or operator it cannot run."""
    try:
        ort.InferenceSession(str(path), providers=providers)
    except Exception as exc:  # ONNX Runtime's refusal: a kernel missing for the variant's types, an invalid graph
        raise UserError(f"--variant {spec.kind}: ONNX Runtime cannot run the made file on {', '.join(providers)}: "
                        f"{_ort_reason(exc)}") from None
