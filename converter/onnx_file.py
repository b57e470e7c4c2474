"""An ONNX file checked (onnx's full checker and strict shape inference) and described; framework-free."""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

from xfverify.converter.exported import (  # noqa: F401 (re-exported: the exporters import them from here)
    ExportResult,
    FileDigest,
    Layout,
    OnnxDescription,
    OutputKind,
    TensorDescription,
)
from xfverify.models.hashing import sha256_file
from xfverify.models.errors import UserError
from xfverify.models.user_input import not_regular_kind, shown

BATCH_AXIS = "batch"
_PROTOBUF_LIMIT = 2**31 - 1  # one serialised ModelProto; beyond it tensors go to an external data file


def one_line(text: str, limit: int = 300) -> str:
    """An exception's message as one line of at most about ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3].rstrip() + "..."


def _load_structure(path: Path) -> onnx.ModelProto:
    """The model without its external tensor data; a file that is not ONNX is a UserError naming it."""
    if not path.is_file():
        raise UserError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except DecodeError:
        raise UserError(f"{path}: not a readable ONNX file (truncated, or another kind of file: protobuf "
                        "cannot parse it); export it again or check the download") from None
    if model.ir_version == 0 or not model.HasField("graph"):
        raise UserError(f"{path}: not an ONNX model (no IR version or graph: an empty file, or another format "
                        "that happens to parse); export it again or check the download")
    return model


def check(path: Path) -> None:
    """onnx's full checker and strict shape inference (both read from the path, so external data and
    files over 2 GB work); a failure is a UserError naming the file and, where onnx says, the node."""
    path = Path(path)
    model = _load_structure(path)
    if not model.graph.output:
        raise UserError(f"{shown(path)}: its graph has no outputs (onnx's checker allows that); xfverify scores a "
                        "classifier's class scores: export the model with its output")
    _check_external_sizes(path, model)
    try:
        onnx.checker.check_model(str(path), full_check=True)
        with tempfile.TemporaryDirectory(prefix="xfverify-shapes-") as scratch:
            onnx.shape_inference.infer_shapes_path(str(path), str(Path(scratch) / "inferred.onnx"),
                                                   check_type=True, strict_mode=True)
    except onnx.checker.ValidationError as exc:
        raise UserError(f"{path}: fails onnx.checker: {_onnx_reason(exc)}") from None
    except onnx.shape_inference.InferenceError as exc:
        raise UserError(f"{path}: fails ONNX shape inference: {_onnx_reason(exc)}") from None


_NODE_IN_MESSAGE = (  # how onnx names the node in a shape-inference error, and in a checker error
    re.compile(r"\(op_type:(?P<op>[^,]+), node name: (?P<name>[^)]*)\)"),
    re.compile(r"==> Context: Bad node spec for node\. Name: (?P<name>\S*) OpType: (?P<op>\S+)"),
)


def _onnx_reason(exc: Exception) -> str:
    """onnx's message in one line, the node and operator it names put first."""
    text = one_line(str(exc), 2000)
    for pattern in _NODE_IN_MESSAGE:
        found = pattern.search(text)
        if found:
            rest = " ".join(text.replace(found.group(0), "").split())
            return one_line(f"node {found['name'] or '(unnamed)'} (operator {found['op']}): {rest}")
    return one_line(text)


def _external_data(path: Path, model: onnx.ModelProto) -> list[tuple[onnx.TensorProto, ExternalDataInfo, Path]]:
    """Each tensor kept in an external data file, its entry and the file, checked by onnx's path rules before anything
    of the file is looked at: a location that is absolute, climbs out with '..', or leads out of the model's folder
    through a link is refused in one line (nothing outside the folder is opened or measured), as is an entry onnx
    cannot read (a negative or non-integer offset or length)."""
    folder = os.path.realpath(path.parent)
    found = []
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        try:
            info = ExternalDataInfo(tensor)
        except ValueError as exc:
            raise UserError(f"{shown(path)}: tensor {shown(tensor.name)}'s external data entry is invalid "
                            f"({one_line(exc)}); export the model again") from None
        location = info.location
        if (not location or os.path.isabs(location) or ".." in Path(location).parts
                or os.path.commonpath([folder, os.path.realpath(os.path.join(folder, location))]) != folder):
            raise UserError(f"{shown(path)}: tensor {shown(tensor.name)} names external data at {shown(location)!r}, "
                            "outside the model's folder; ONNX reads external data only from files beside the model "
                            "(a relative name without '..'): export the model again")
        for name, value in (("offset", info.offset), ("length", info.length)):
            if value is not None and value < 0:
                raise UserError(f"{shown(path)}: tensor {shown(tensor.name)}'s external data {name} is {value}, "
                                "negative; export the model again")
        found.append((tensor, info, path.parent / location))
    return found


def _check_external_sizes(path: Path, model: onnx.ModelProto) -> None:
    """Each external tensor's bytes lie inside its data file, a regular file: a truncated .data file is named as
    such (onnx would say only that it cannot parse the tensors)."""
    for tensor, info, data in _external_data(path, model):
        try:
            mode = os.stat(data).st_mode
        except FileNotFoundError:
            continue  # onnx's checker names the missing file
        kind = not_regular_kind(mode)
        if kind is not None:
            raise UserError(f"{shown(data)}: the external data file of {shown(path.name)} is {kind}, not a regular "
                            "file; put the model's data file there")
        end = (info.offset or 0) + (info.length or 0)
        size = os.stat(data).st_size
        if end > size:
            raise UserError(f"{shown(data)}: {size} bytes, but tensor {shown(tensor.name)} of {shown(path.name)} ends "
                            f"at byte {end}: the external data file is truncated; copy or export it again")


def _external_files(path: Path, model: onnx.ModelProto) -> list[str]:
    return sorted({info.location for _, info, _ in _external_data(path, model)})


def _digest(folder: Path, name: str) -> FileDigest:
    path = folder / name
    if not path.is_file():
        raise UserError(f"{shown(path)}: the external data file its ONNX model names is missing; keep it beside the "
                        ".onnx file")
    return FileDigest(name=name, size_bytes=path.stat().st_size, sha256=sha256_file(path))


def _dimension(dim: onnx.TensorShapeProto.Dimension) -> int | str:
    if dim.HasField("dim_value"):
        return dim.dim_value
    return dim.dim_param or "?"


def _tensor(value: onnx.ValueInfoProto) -> TensorDescription:
    tensor_type = value.type.tensor_type
    shape = tuple(_dimension(d) for d in tensor_type.shape.dim) if tensor_type.HasField("shape") else ()
    element = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name if tensor_type.elem_type else "?"
    return TensorDescription(name=value.name, element_type=element, shape=shape)


def describe(path: Path, exporter: str, exporter_version: str, layout: Layout) -> OnnxDescription:
    """The file's description; ``exporter`` and ``layout`` are what the caller knows (for a user's file:
    its producer, and the layout the preprocessing feeds)."""
    path = Path(path)
    model = _load_structure(path)
    initialisers = {t.name for t in model.graph.initializer}
    own = FileDigest(name=path.name, size_bytes=path.stat().st_size, sha256=sha256_file(path))
    external = tuple(_digest(path.parent, name) for name in _external_files(path, model))
    return OnnxDescription(
        file=path.name,
        sha256=own.sha256,
        size_bytes=own.size_bytes,
        external_data=external,
        total_size_bytes=own.size_bytes + sum(f.size_bytes for f in external),
        ir_version=model.ir_version,
        opsets={o.domain: o.version for o in model.opset_import},
        producer_name=model.producer_name,
        producer_version=model.producer_version,
        exporter=exporter,
        exporter_version=exporter_version,
        inputs=tuple(_tensor(v) for v in model.graph.input if v.name not in initialisers),
        outputs=tuple(_tensor(v) for v in model.graph.output),
        layout=layout,
    )


def files_intact(path: Path, description: OnnxDescription) -> bool:
    """Whether the .onnx file and its external data files still have the recorded sizes and digests."""
    expected = [FileDigest(name=description.file, size_bytes=description.size_bytes, sha256=description.sha256),
                *description.external_data]
    for recorded in expected:
        candidate = Path(path).parent / recorded.name
        if not candidate.is_file() or candidate.stat().st_size != recorded.size_bytes:
            return False
        if sha256_file(candidate) != recorded.sha256:
            return False
    return True


# --- edits the exporters share -------------------------------------------------------------


def name_batch_axis(model: onnx.ModelProto) -> None:
    """Call the first axis of every graph input and output ``batch`` (exporters leave it unnamed or
    'unk__N'), and rename that symbol wherever else the graph uses it."""
    initialisers = {t.name for t in model.graph.initializer}
    renamed: set[str] = set()
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if value.name in initialisers or not dims or dims[0].HasField("dim_value"):
            continue
        if dims[0].dim_param:
            renamed.add(dims[0].dim_param)
        dims[0].dim_param = BATCH_AXIS
    for value in model.graph.value_info:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renamed:
                dim.dim_param = BATCH_AXIS


def drop_initialisers_from_inputs(model: onnx.ModelProto) -> int:
    """Remove graph inputs that are initialisers (so ONNX Runtime may fold them as constants); how many."""
    initialisers = {t.name for t in model.graph.initializer}
    kept = [v for v in model.graph.input if v.name not in initialisers]
    dropped = len(model.graph.input) - len(kept)
    del model.graph.input[:]
    model.graph.input.extend(kept)
    return dropped


def save(model: onnx.ModelProto, path: Path) -> None:
    """Write the model; tensors go to ``NAME.onnx.data`` beside it when one file cannot hold them."""
    path = Path(path)
    if model.ByteSize() < _PROTOBUF_LIMIT:
        onnx.save_model(model, str(path))
        return
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{path.name}.data", size_threshold=1024)


def finish(path: Path, *, exporter: str, exporter_version: str, opset: int, layout: Layout,
           output_kind: OutputKind, started: float, notes: tuple[str, ...] = ()) -> ExportResult:
    """Check an exported file, make sure it says the opset asked for, and describe it."""
    check(path)
    description = describe(path, exporter, exporter_version, layout)
    if description.opset != opset:
        raise UserError(f"{path}: {exporter} wrote opset {description.opset}, not the {opset} asked for; "
                        f"ask for opset {description.opset}")
    return ExportResult(path=Path(path), description=description, exporter=exporter,
                        exporter_version=exporter_version, opset=opset, output_kind=output_kind,
                        seconds=round(time.perf_counter() - started, 3), notes=notes)


_TORCH_NAME_SCOPES = "pkg.torch.onnx.name_scopes"  # torch's dynamo exporter: module paths, outermost first


def _torchscript_paths(parts: list[str]) -> list[str]:
    """TorchScript's scope names (each a child's name, ``conv.0`` extending its sibling scope ``conv``) as module
    paths, outermost first: ``features, features.1, conv, conv.0`` -> ``features, features.1, features.1.conv,
    features.1.conv.0``."""
    components: list[str] = []
    paths = []
    for part in parts:
        if components and part.startswith(components[-1] + "."):
            components[-1] = part
        else:
            components.append(part)
        paths.append(".".join(components))
    return paths


def node_details(node: onnx.NodeProto, constants: set[str]) -> dict:
    """What ``--localize`` says of a node: its name (an unnamed node: its first output's), operator, attributes
    (as short text), its inputs that are computed (not initialisers), and the framework names its exporter left
    on it, innermost last: torch's dynamo exporter's module paths (metadata), else the scopes of a path-like name (torch's TorchScript exporter and
    tf2onnx name nodes ``/scope/scope/Op``), else the node's own name (MXNet names nodes after its symbols)."""
    import ast

    attributes = {}
    for attribute in node.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        elif isinstance(value, onnx.TensorProto) or attribute.type == onnx.AttributeProto.GRAPH:
            value = f"<{onnx.AttributeProto.AttributeType.Name(attribute.type).lower()}>"
        attributes[attribute.name] = one_line(str(value), 120)
    metadata = {prop.key: prop.value for prop in node.metadata_props}
    scopes: list[str] = []
    if _TORCH_NAME_SCOPES in metadata:
        try:
            found = ast.literal_eval(metadata[_TORCH_NAME_SCOPES])
            scopes = [str(s) for s in found[:-1] if s]  # the last is the traced operation's own name
        except (ValueError, SyntaxError):
            scopes = []
    elif node.name.startswith("/"):  # torch's TorchScript exporter: /features/features.1/conv/conv.0/Op
        scopes = _torchscript_paths([part for part in node.name.split("/")[:-1] if part])
    elif "/" in node.name:
        scopes = [part for part in node.name.split("/")[:-1] if part]
    else:
        scopes = [node.name] if node.name else []
    return {"node": node.name or node.output[0], "op_type": node.op_type, "attributes": attributes,
            "inputs": [name for name in node.input if name and name not in constants], "scopes": scopes}
