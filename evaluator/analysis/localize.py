"""Where an ONNX graph first departs from its reference (the native network, or another ONNX file), node by node,
for ``xfverify onnx --localize``: pure numpy over the tensors both sides' workers wrote.

:func:`align` pairs the graph's tensors with the reference's. Where the exporter kept names (torch's module paths,
Keras layer names, MXNet symbol names: :func:`xfverify.converter.onnx_file.node_details`) they pair them. Values
pair them everywhere: a graph tensor equal within tolerance to a reference tensor (of fitting shape) is right, and so
is every tensor it was computed from; so is a shape or index tensor computed from right ones. A graph whose outputs
are right has no divergent node, whatever its names. Where it departs, the tensors after the last right ones are
paired by the graph (names stripped): each node with the first reference layer after the layers its inputs equal
whose kind its operator can compute and whose shape fits; a pair is confident only when few layers are passed over.
The first divergent node is the first paired tensor that is not right, said with the unmatched nodes before it (the
departure may be in one of them) and the reference layers between its inputs and its counterpart that no node
computes (a node left out); where that pairing is not confident, the verdict says the departure cannot be placed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from bisect import bisect_left
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from xfverify.evaluator.process.names import INPUT_SUFFIX
from xfverify.evaluator.analysis.comparison import output_difference, within_tolerance
from xfverify.evaluator.process.tasks import CapturedTensor
from xfverify.models.user_input import shown

CONTEXT_NODES = 5  # nodes said after the culprit
FUSED_LOOKAHEAD = 4  # reference tensors after a divergent match tried for a node that computes several layers;
# also the reference layers a pairing by the graph may pass over and stay confident
NHWC_TO_NCHW = (2, 0, 1)  # one image's (H, W, C) -> (C, H, W): Keras's layers against tf2onnx's graph
VALUE_CANDIDATES = 8  # reference tensors nearest in scale that a graph tensor is compared with to find its equal
SCAN_LIMIT = 64  # reference tensors looked through for a node's counterpart
SHOWN_NAME = 120  # characters of a name shown in a verdict, report.md and localize.html
CURVE_POINTS = 2000  # rows of the curve a report keeps (evenly thinned beyond, the culprit's neighbours kept)
LISTED = 8  # nodes or layers a verdict lists
HELD_BYTES = 256 * 2**20  # of tensors kept read while comparing

MatchedBy = Literal["name", "value", "graph"]


def shown_name(name: str, limit: int = SHOWN_NAME) -> str:
    """A node's or tensor's name as displayed: control characters escaped, cut in the middle when long (its length
    said); the report's culprit keeps the whole name."""
    text = shown(name)
    if len(text) <= limit:
        return text
    return f"{text[: limit * 2 // 3]}...{text[-(limit // 4):]} ({len(name)} characters)"


def _listed(names: Sequence[str]) -> str:
    more = len(names) - LISTED
    return ", ".join(names[:LISTED]) + (f" and {more} more" if more > 0 else "")


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NodeDifference(_Block):
    """One tensor of the graph, in topological order, and how far it is from the reference tensor matched to it."""

    index: int = Field(description="the producing node's position among the graph's captured tensors")
    node: str = Field(description="as displayed (a long name cut in the middle)")
    op_type: str
    tensor: str = Field(description="as displayed (a long name cut in the middle)")
    reference: Optional[str] = Field(description="the matched reference tensor (a module, layer or symbol); None: none")
    matched_by: Optional[MatchedBy] = Field(default=None, description="name: the exporter's names; value: equal "
                                            "within tolerance; graph: the first fitting layer after its inputs'")
    confident: bool = Field(default=True, description="false: a pairing by the graph that passed over several "
                            "layers, or a pair outside tolerance whose tensor feeds tensors that agree")
    max_abs_diff: Optional[float] = None
    scaled_diff: Optional[float] = Field(default=None, description="max |diff| / max |reference value|")
    within_tolerance: Optional[float] = Field(default=None, description="share of elements within tolerance")
    divergent: bool = False


class InputDifference(_Block):
    """An input of the culprit, traced back to the nearest tensors that have a reference."""

    tensor: str
    reference: Optional[str]
    scaled_diff: Optional[float] = Field(description="0 for the fed tensor (identical on both sides)")
    divergent: bool


class Culprit(_Block):
    """The first node whose output departs from the reference beyond the tolerance."""

    node: str = Field(description="the node's whole name")
    op_type: str
    tensor: str = Field(description="its output's whole name")
    attributes: dict[str, str]
    reference: str
    matched_by: MatchedBy
    max_abs_diff: float
    scaled_diff: float
    within_tolerance: float
    inputs: list[InputDifference] = Field(description="its inputs' own differences (the nearest matched tensors)")
    unmatched_between: list[str] = Field(description="nodes with no reference tensor between those inputs and it: "
                                                     "the departure is in one of them or in the culprit")
    missing: list[str] = Field(default=[], description="reference layers between the layers its inputs equal and "
                               "its counterpart that no node of the graph computes: a node may have been left out")
    context: list[NodeDifference] = Field(description="the next few nodes")


class LocalizeCost(_Block):
    """What capturing the intermediates cost (each side's worker, the tensors on disk)."""

    n_images: int
    reference_s: float
    onnx_s: float
    compare_s: float
    bytes_per_image: int = Field(description="the graph's and the reference's intermediates of one image together")
    bytes_written: int


class Localization(_Block):
    """The ``localization`` block of an ONNX report: the difference along the graph and the first divergent node,
    or why localization could not be done (``failed``; the ONNX run's own results stand)."""

    against: Literal["native", "onnx"]
    reference: str = Field(description="what the graph was compared with")
    image_ids: list[str] = Field(description="the images run (the worst-agreeing ones)")
    atol: float = Field(description="as a fraction of each tensor's largest |reference value|")
    rtol: float
    matched_by: Literal["names", "graph and values", "none"]
    n_onnx_tensors: int
    n_reference_tensors: int
    n_matched: int
    curve: list[NodeDifference] = Field(description="matched tensors, in topological order (at most "
                                                    f"{CURVE_POINTS}: evenly thinned beyond, the culprit's kept)")
    n_curve_left_out: int = Field(default=0, description="matched tensors thinned out of the curve")
    culprit: Optional[Culprit]
    placed: bool = Field(default=True, description="false: the graph departs but where cannot be said")
    suspects: list[str] = Field(default=[], description="where it cannot be placed: the first nodes after the last "
                                "tensors that agree")
    verdict: str
    failed: Optional[str] = Field(default=None, description="why localization could not be done")
    cost: Optional[LocalizeCost] = None

    @classmethod
    def could_not(cls, reason: str, *, against: Literal["native", "onnx"], reference: str, atol: float,
                  rtol: float) -> "Localization":
        """The block of a localization that failed: the reason, nothing compared."""
        return cls(against=against, reference=reference, image_ids=[], atol=atol, rtol=rtol, matched_by="none",
                   n_onnx_tensors=0, n_reference_tensors=0, n_matched=0, curve=[], culprit=None, placed=False,
                   verdict=f"could not localize: {reason}", failed=reason)


@dataclass(frozen=True)
class Pair:
    """A graph tensor and the reference tensor matched to it, how they were matched (a transposition from NHWC, or
    none) and whether the pairing is confident."""

    onnx: CapturedTensor
    reference: CapturedTensor
    transpose: Optional[tuple[int, ...]]
    matched_by: MatchedBy = "name"
    confident: bool = True


def _squeezed(shape: Sequence[int]) -> list[int]:
    return [d for d in shape if d != 1]


def _fit(onnx: CapturedTensor, reference: CapturedTensor, squeeze: bool = False) -> Optional[tuple[int, ...]] | bool:
    """() when the shapes agree (or, with ``squeeze``, differ only by axes of 1: (C, 1, 1) against (C,)),
    NHWC_TO_NCHW when the reference is the NHWC form of the graph's, False otherwise. Names pair strict shapes
    (a name covers a layer's nodes, of which one has its shape); values and the graph also squeezed ones."""
    if onnx.shape == reference.shape:
        return ()
    if len(reference.shape) == 3 and [reference.shape[i] for i in NHWC_TO_NCHW] == onnx.shape:
        return NHWC_TO_NCHW
    if squeeze and _squeezed(onnx.shape) == _squeezed(reference.shape):
        return ()
    return False


def _numbered(name: str) -> tuple[str, int]:
    """``name#k`` (the k-th call of a module, from 0) -> (name, k)."""
    base, _, count = name.partition("#")
    return base, int(count) if count.isdigit() else 0


def _scope_names(scope: str) -> list[str]:
    """A scope as named, and without the ``_<n>`` Keras 3 appends to a layer's name scope when it is called
    (tf2onnx's ``conv1_bn_1/...`` for layer ``conv1_bn``)."""
    base = re.sub(r"_\d+$", "", scope)
    return [scope, base] if base != scope else [scope]


def match_by_names(onnx: Sequence[CapturedTensor], reference: Sequence[CapturedTensor],
                   against: str) -> list[Pair]:
    """Each reference tensor matched to the last graph tensor of fitting shape among those its exporter named after
    it (in any of their scopes: a module's output is the last node computed inside it, the nodes of its children
    included; then the node's and the tensor's own names); a module called k times is matched to k such tensors
    in order, where there are exactly k. A graph tensor matched to several (a module and its last child) keeps the
    innermost."""
    calls: dict[str, list[CapturedTensor]] = {}
    for tensor in reference:
        calls.setdefault(_numbered(tensor.name)[0], []).append(tensor)
    groups: dict[str, list[CapturedTensor]] = {}
    rank: dict[tuple[str, str], int] = {}  # (graph tensor, key) -> how inner the key is (0: innermost)
    for tensor in onnx:
        keys = ([tensor.name, tensor.node] if against == "onnx"
                else [*(name for scope in reversed(tensor.scopes) for name in _scope_names(scope)), tensor.node,
                      tensor.name])
        for position, key in enumerate(k for k in dict.fromkeys(keys) if k in calls):
            groups.setdefault(key, []).append(tensor)
            rank[(tensor.name, key)] = position
    chosen: dict[str, tuple[int, Pair]] = {}
    for key, members in groups.items():
        wanted = calls[key]
        for ref, found in _calls_matched(members, wanted):
            pair = Pair(found, ref, _fit(found, ref) or None)
            inner = rank[(found.name, key)]
            if found.name not in chosen or inner < chosen[found.name][0]:
                chosen[found.name] = (inner, pair)
    pairs = {name: pair for name, (_, pair) in chosen.items()}
    _match_inputs(onnx, pairs, calls)
    return sorted(pairs.values(), key=lambda pair: pair.onnx.order)


def _calls_matched(members: list[CapturedTensor],
                   wanted: list[CapturedTensor]) -> list[tuple[CapturedTensor, CapturedTensor]]:
    """(reference, graph tensor) for one name: its one call matched to the last fitting member; several calls (a
    module called again, e.g. a ReLU reused in a block) each to the next fitting member after the previous call's."""
    if len(wanted) == 1:
        fitting = [t for t in members if _fit(t, wanted[0]) is not False]
        return [(wanted[0], fitting[-1])] if fitting else []
    matched, position = [], 0
    for ref in wanted:
        found = next((i for i in range(position, len(members)) if _fit(members[i], ref) is not False), None)
        if found is None:
            return []  # the calls do not line up with the nodes: none is matched rather than a wrong one
        matched.append((ref, members[found]))
        position = found + 1
    return matched




def _match_inputs(onnx: Sequence[CapturedTensor], pairs: dict[str, Pair],
                  calls: dict[str, list[CapturedTensor]]) -> None:
    """A matched node's one computed input, still unmatched and computed by a node of the module's parent, matched
    to the module's recorded input: a BatchNorm folded into a Conv is compared though timm's BatchNormAct2d only
    returns it after its activation (a sibling module's output feeding it is not: a folded Conv's input is not the
    BatchNorm's)."""
    by_name = {t.name: t for t in onnx}
    for pair in list(pairs.values()):
        base, count = _numbered(pair.reference.name)
        recorded = calls.get(f"{base}{INPUT_SUFFIX}", [])
        if count >= len(recorded) or len(pair.onnx.inputs) != 1:
            continue
        source = by_name.get(pair.onnx.inputs[0])
        parent = base.rpartition(".")[0]
        inside_parent = bool(source and source.scopes and source.scopes[-1] == parent)  # fused into the parent's
        if inside_parent and source.name not in pairs and _fit(source, recorded[count]) is not False:  # node
            pairs[source.name] = Pair(source, recorded[count], _fit(source, recorded[count]) or None)


# --- what a layer is, and which operators can compute it ------------------------------------------------------

# (a fragment of a layer's class or operator name, lower case) -> its kind; the first that occurs wins
_LAYER_KINDS = (
    ("conv", "conv"), ("batchnorm", "norm"), ("batch_norm", "norm"), ("layernorm", "norm"),
    ("instancenorm", "norm"), ("relu6", "clip"), ("hardtanh", "clip"), ("clip", "clip"), ("leakyrelu", "act"),
    ("prelu", "act"), ("relu", "relu"), ("hardswish", "act"), ("hardsigmoid", "act"), ("sigmoid", "act"),
    ("silu", "act"), ("swish", "act"), ("gelu", "act"), ("tanh", "act"), ("softmax", "softmax"),
    ("activation", "act"), ("linear", "dense"), ("dense", "dense"), ("fullyconnected", "dense"), ("avg", "pool"),
    ("average", "pool"), ("maxpool", "pool"), ("max_pool", "pool"), ("pool", "pool"), ("flatten", "reshape"),
    ("reshape", "reshape"), ("squeeze", "reshape"), ("permute", "reshape"), ("transpose", "reshape"), ("add", "add"),
    ("plus", "add"), ("sum", "add"), ("multiply", "mul"), ("mul", "mul"), ("concat", "concat"), ("pad", "pad"),
    ("dropout", "identity"), ("identity", "identity"),
)
# an ONNX operator -> the kinds of layer whose output it can compute (a layer folded into it, or ending in it)
_OPERATOR_KINDS: dict[str, frozenset[str]] = {op: frozenset(kinds.split()) for op, kinds in {
    "Conv": "conv norm dense", "ConvTranspose": "conv norm", "BatchNormalization": "norm",
    "InstanceNormalization": "norm", "LayerNormalization": "norm", "Relu": "relu act",
    "Clip": "clip relu act", "LeakyRelu": "act", "PRelu": "act", "HardSwish": "act", "HardSigmoid": "act",
    "Sigmoid": "act", "Tanh": "act", "Gelu": "act", "Softmax": "softmax act", "Gemm": "dense", "MatMul": "dense",
    "Add": "add norm dense", "Sum": "add", "Sub": "norm", "Mul": "mul act norm", "Div": "norm act",
    "GlobalAveragePool": "pool", "AveragePool": "pool", "ReduceMean": "pool", "MaxPool": "pool",
    "GlobalMaxPool": "pool", "ReduceMax": "pool", "Flatten": "reshape pool", "Reshape": "reshape pool",
    "Squeeze": "reshape pool", "Unsqueeze": "reshape", "Transpose": "reshape", "Concat": "concat", "Pad": "pad",
    "Identity": "identity", "Dropout": "identity",
}.items()}


def layer_kind(op_type: str) -> Optional[str]:
    """A reference layer's kind from its class or operator name (None: unknown)."""
    name = op_type.lower()
    return next((kind for fragment, kind in _LAYER_KINDS if fragment in name), None) if name else None


def can_compute(operator: str, layer: str) -> Optional[bool]:
    """Whether an ONNX operator can compute a reference layer's output (None: one of them is of an unknown kind)."""
    kind, kinds = layer_kind(layer), _OPERATOR_KINDS.get(operator)
    if kind is None or kinds is None:
        return None
    return kind in kinds


# --- comparing tensors ---------------------------------------------------------------------------------------


class Arrays:
    """Reads the tensors' files, keeping the smaller ones read (the least recently used dropped past ``limit``
    bytes): a graph of many small tensors is read file by file once, a large network's are read again rather than
    held together."""

    def __init__(self, limit: int = HELD_BYTES):
        self.limit, self.held, self.bytes = limit, OrderedDict(), 0

    def __call__(self, tensor: CapturedTensor) -> np.ndarray:
        if tensor.file in self.held:
            self.held.move_to_end(tensor.file)
            return self.held[tensor.file]
        if os.path.getsize(tensor.file) > self.limit // 8:
            return np.load(tensor.file, mmap_mode="r")
        array = np.load(tensor.file)
        self.held[tensor.file] = array
        self.bytes += array.nbytes
        while self.bytes > self.limit:
            self.bytes -= self.held.popitem(last=False)[1].nbytes
        return array


def _compare(reference: np.ndarray, candidate: np.ndarray, transpose: Optional[tuple[int, ...]], atol_fraction: float,
             rtol: float) -> tuple[float, float, float]:
    """(max |diff|, scaled diff, share within tolerance) over every captured image."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if transpose:
        reference = reference.transpose(0, *(1 + axis for axis in transpose))
    rows_reference = reference.reshape(len(reference), -1)
    rows_candidate = candidate.reshape(len(candidate), -1)
    difference = output_difference(rows_reference, rows_candidate)
    within = within_tolerance(rows_reference, rows_candidate, atol_fraction * difference.scale, rtol)
    max_abs = difference.max_abs if not difference.non_finite_rows else float("inf")
    scaled = max_abs / difference.scale if difference.scale else (0.0 if max_abs == 0 else float("inf"))
    return max_abs, scaled, float(within.mean()) if within.size else 1.0


def _difference(pair: Pair, atol_fraction: float, rtol: float, load: Arrays) -> tuple[float, float, float]:
    return _compare(load(pair.reference), load(pair.onnx), pair.transpose, atol_fraction, rtol)


@dataclass(frozen=True)
class _Spread:
    """What bounds a tensor's possible equals: its largest |value| and its mean (None: not comparable by value:
    integers, constant, or not finite)."""

    scale: float
    mean: float


def _spread(array: np.ndarray) -> Optional[_Spread]:
    if array.dtype.kind != "f" or not array.size:
        return None
    values = np.asarray(array, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if not (np.isfinite(low) and np.isfinite(high)) or low == high:
        return None
    return _Spread(max(abs(low), abs(high)), float(values.mean()))


def _shape_keys(reference: CapturedTensor) -> dict[tuple[int, ...], Optional[tuple[int, ...]]]:
    keys: dict[tuple[int, ...], Optional[tuple[int, ...]]] = {tuple(_squeezed(reference.shape)): None}
    if len(reference.shape) == 3:
        keys.setdefault(tuple(_squeezed([reference.shape[i] for i in NHWC_TO_NCHW])), NHWC_TO_NCHW)
    return keys


@dataclass(frozen=True)
class Compared:
    """A pair and its difference."""

    pair: Pair
    max_abs: float
    scaled: float
    within: float

    @property
    def divergent(self) -> bool:
        return self.within < 1.0


def match_by_values(onnx: Sequence[CapturedTensor], reference: Sequence[CapturedTensor], atol_fraction: float,
                    rtol: float, skip: frozenset[str] = frozenset(), load: Optional[Arrays] = None
                    ) -> dict[str, list[Compared]]:
    """Each graph tensor (but those in ``skip``) against the reference tensors of fitting shape whose largest
    |value| and mean could be within tolerance of its (the VALUE_CANDIDATES nearest in scale): every one it equals
    within tolerance (a module and the container ending in it hold the same values). Integer, constant and
    non-finite tensors equal nothing. Each file is read once, and a graph tensor's candidates found by bisection."""
    tolerance, load = atol_fraction + rtol, load or Arrays()
    buckets: dict[tuple[int, ...], list[tuple[float, float, CapturedTensor, Optional[tuple[int, ...]]]]] = {}
    for ref in reference:
        spread = _spread(load(ref))
        if spread is None:
            continue
        for key, transpose in _shape_keys(ref).items():
            buckets.setdefault(key, []).append((spread.scale, spread.mean, ref, transpose))
    scales = {}
    for key, bucket in buckets.items():
        bucket.sort(key=lambda entry: entry[0])
        scales[key] = [entry[0] for entry in bucket]
    found: dict[str, list[Pair]] = {}
    seen: dict[tuple, list[Compared]] = {}  # the same bytes: the same equals
    for tensor in onnx:
        key = tuple(_squeezed(tensor.shape))
        if tensor.name in skip or key not in buckets:
            continue
        array = load(tensor)
        spread = _spread(array)
        if spread is None:
            continue
        identity = (key, array.dtype.str, hashlib.blake2b(np.ascontiguousarray(array).data, digest_size=16).digest())
        if identity not in seen:
            seen[identity] = _equals(array, spread, buckets[key], scales[key], tolerance, atol_fraction, rtol,
                                     load, tensor)
        if seen[identity]:
            found[tensor.name] = [dataclasses.replace(c, pair=dataclasses.replace(c.pair, onnx=tensor))
                                  for c in seen[identity]]
    return found


def _equals(array: np.ndarray, spread: _Spread, bucket: list, scales: list[float], tolerance: float,
            atol_fraction: float, rtol: float, load: Arrays, tensor: CapturedTensor) -> list[Compared]:
    """The reference tensors of one shape bucket that ``array`` equals within tolerance (of those nearest in
    scale whose largest |value| and mean allow it)."""
    position = bisect_left(scales, spread.scale)
    nearby = sorted(bucket[max(0, position - VALUE_CANDIDATES): position + VALUE_CANDIDATES],
                    key=lambda entry: abs(entry[0] - spread.scale))[:VALUE_CANDIDATES]
    equal = []
    for scale, mean, ref, transpose in nearby:
        bound = tolerance * max(scale, spread.scale) * (1 + 1e-9)
        if abs(scale - spread.scale) > bound or abs(mean - spread.mean) > bound:
            continue
        result = Compared(Pair(tensor, ref, transpose, "value"), *_compare(load(ref), array, transpose, atol_fraction,
                                                                           rtol))
        if not result.divergent:
            equal.append(result)
    return equal


# --- the alignment ------------------------------------------------------------------------------------------------


@dataclass
class Alignment:
    """The graph's tensors against the reference's: the pairs compared (by name, value or graph), which graph
    tensors are shown right, and for the rest the reference position their inputs stand at."""

    by: Literal["names", "graph and values"]
    onnx: list[CapturedTensor]
    reference: list[CapturedTensor]
    compared: dict[str, Compared]  # graph tensor -> its pair (by name or graph; else the first it equals)
    equals: dict[str, list[Compared]]  # graph tensor -> every reference tensor it equals within tolerance
    right: set[str]  # shown right: equal to a reference tensor, fed, computed into one that is, or an index tensor
    fed: set[str]  # the graph's inputs: the fed tensors, identical on both sides
    anchor: dict[str, int]  # graph tensor -> the reference position it stands for (the first layer it equals; a
    # layer that changes nothing, as a BatchNorm of random statistics, equals the one before it too), or its inputs
    wrong_outputs: list[str]  # the graph's last tensors (consumed by none) that are not right
    departed: set[str] = field(default_factory=set)  # not right, and computed into a wrong output
    left_out: dict[str, list[CapturedTensor]] = field(default_factory=dict)  # paired by the graph: the layers
    # its alignment left out just before it

    def position(self, reference_name: str) -> int:
        return self._positions[reference_name]

    def __post_init__(self) -> None:
        self._positions = {t.name: i for i, t in enumerate(self.reference)}
        self.by_name = {t.name: t for t in self.onnx}


def align(onnx: Sequence[CapturedTensor], reference: Sequence[CapturedTensor], *, against: Literal["native", "onnx"],
          atol_fraction: float, rtol: float) -> Alignment:
    """Pair the graph's tensors with the reference's: by the exporter's names where they say enough, by value
    everywhere, and by the graph (:func:`_pair_by_graph`) for the tensors after the last right ones where the names
    say little. Linear in the number of tensors (each file read a bounded number of times)."""
    onnx = sorted(onnx, key=lambda t: t.order)
    reference = sorted(reference, key=lambda t: t.order)
    load = Arrays()
    produced = {t.name for t in onnx}
    fed = {name for t in onnx for name in t.inputs if name not in produced}
    named = match_by_names(onnx, reference, against)
    by: Literal["names", "graph and values"] = ("names" if len(named) >= max(1, len(reference) // 4)
                                                 else "graph and values")
    compared: dict[str, Compared] = {}
    if by == "names":
        positions = {t.name: i for i, t in enumerate(reference)}
        for pair in named:
            compared[pair.onnx.name] = _with_fused(pair, reference, positions, atol_fraction, rtol, load)
    agreeing = frozenset(name for name, c in compared.items() if not c.divergent)
    equals = match_by_values(onnx, reference, atol_fraction, rtol, skip=agreeing, load=load)
    for name, found in equals.items():
        compared.setdefault(name, found[0])
    alignment = Alignment(by, onnx, reference, compared, equals, set(), fed, {}, [])
    _find_right(alignment, agreeing | frozenset(equals), load)
    _pair_by_graph(alignment, atol_fraction, rtol, load)
    return alignment


def _with_fused(pair: Pair, reference: list[CapturedTensor], positions: dict[str, int], atol_fraction: float,
                rtol: float, load: Arrays) -> Compared:
    """A named pair compared; outside tolerance, the next few reference tensors are tried: a node the exporter fused
    (a Conv with the BatchNorm after it) computes a later layer's output."""
    result = Compared(pair, *_difference(pair, atol_fraction, rtol, load))
    if result.divergent:
        start = positions[pair.reference.name] + 1
        for later in reference[start: start + FUSED_LOOKAHEAD]:
            fit = _fit(pair.onnx, later)
            if fit is False:
                continue
            candidate = Pair(pair.onnx, later, fit or None)
            fused = Compared(candidate, *_difference(candidate, atol_fraction, rtol, load))
            if not fused.divergent:
                return fused
    return result


def _find_right(alignment: Alignment, equal: frozenset[str], load: Arrays) -> None:
    """Right: the fed tensors, those equal to a reference tensor, every tensor they were computed from, and an
    integer or constant tensor (a shape, an index) computed only from right ones; then each tensor's anchor, and
    the wrong outputs and the tensors that departed into them."""
    onnx, by_name = alignment.onnx, alignment.by_name
    right = set(alignment.fed) | set(equal)
    stack = list(equal)
    while stack:  # back from each equal tensor through what it was computed from
        for name in by_name[stack.pop()].inputs:
            if name not in right:
                right.add(name)
                stack.append(name)
    for tensor in onnx:  # forward: index tensors computed from right ones
        if tensor.name not in right and all(name in right for name in tensor.inputs) and \
                _spread(load(tensor)) is None:
            right.add(tensor.name)
    alignment.right = right
    for tensor in onnx:
        stands = [c.pair.reference.name for c in alignment.equals.get(tensor.name, [])]
        if tensor.name in alignment.compared and not alignment.compared[tensor.name].divergent:
            stands.append(alignment.compared[tensor.name].pair.reference.name)
        alignment.anchor[tensor.name] = (min(alignment.position(name) for name in stands) if stands
                                         else _anchor_of_inputs(alignment, tensor))
    consumed = {name for t in onnx for name in t.inputs}
    alignment.wrong_outputs = [t.name for t in onnx if t.name not in consumed and t.name not in right]
    departed, stack = set(alignment.wrong_outputs), list(alignment.wrong_outputs)
    while stack:
        for name in by_name[stack.pop()].inputs:
            if name not in right and name in by_name and name not in departed:
                departed.add(name)
                stack.append(name)
    alignment.departed = departed


def _anchor_of_inputs(alignment: Alignment, tensor: CapturedTensor) -> int:
    return max((alignment.anchor.get(name, -1) for name in tensor.inputs), default=-1)


def _candidate(reference: CapturedTensor) -> bool:
    """A layer's own output (not a module's recorded input, nor a container's output, which is a child's)."""
    return not reference.name.endswith(INPUT_SUFFIX) and not reference.composite


LAYOUT_OPERATORS = frozenset({"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast"})
GRAPH_WINDOW = 64  # departed graph tensors aligned with the reference layers after them
MATCH_REWARD = 0.01  # of each matched node: of two alignments of one cost, the one that matches more wins
_MATCH, _SKIP_LAYER, _SKIP_NODE = 0, 1, 2  # the moves of the alignment, in the order ties prefer them


def _pair_by_graph(alignment: Alignment, atol_fraction: float, rtol: float, load: Arrays) -> None:
    """The departed tensors (topological order) aligned with the reference layers after the position their inputs
    stand at (those no right graph tensor equals; not a module's recorded input, nor a container's output), as
    sequences (a node its name pairs matches its layer only, and keeps that pair):
    a node matches a run of up to FUSED_LOOKAHEAD + 1 consecutive layers that its operator can all compute (a Conv
    with its folded BatchNorm; compared with the run's last), the shape fitting; a layer left unmatched costs 1 (a
    node left out; a Dropout nothing), a node left unmatched 1 (an inserted node; a layout or index node nothing), a
    layer of unknown kind 1/2, a match gains MATCH_REWARD. Ties prefer a match, then a layer left out. A pair is
    confident where the layers' kinds are known and at most FUSED_LOOKAHEAD layers were left out just before it."""
    nodes = [t for t in alignment.onnx if t.name in alignment.departed][:GRAPH_WINDOW]
    if not nodes:
        return
    feeding = {name for t in nodes for name in t.inputs}  # what the departed nodes were fed may equal their layers
    equal = {c.pair.reference.name for name, found in alignment.equals.items() if name not in feeding for c in found}
    equal |= {c.pair.reference.name for name, c in alignment.compared.items()
              if not c.divergent and name not in feeding}
    named = {name: c.pair.reference.name for name, c in alignment.compared.items() if c.pair.matched_by == "name"}
    start = min(_anchor_of_inputs(alignment, t) for t in nodes) + 1
    layers = [r for r in alignment.reference[start: start + 4 * GRAPH_WINDOW]
              if _candidate(r) and r.name not in equal][: 2 * GRAPH_WINDOW]
    free = {t.name for t in nodes if t.op_type in LAYOUT_OPERATORS or _spread(load(t)) is None}
    n, m = len(nodes), len(layers)
    inf = (float("inf"), 0)
    cost = [[inf] * (m + 1) for _ in range(n + 1)]
    move: list[list[tuple[int, int]]] = [[(-1, 0)] * (m + 1) for _ in range(n + 1)]
    cost[0][0] = (0.0, 0)
    for i in range(n + 1):
        for j in range(m + 1):
            options = []
            if i and j and nodes[i - 1].name in named:  # a node its name pairs matches that layer only
                if named[nodes[i - 1].name] == layers[j - 1].name:
                    options.append(((cost[i - 1][j - 1][0] - 1.0, _MATCH), (_MATCH, 1)))
            elif i and j:
                node = nodes[i - 1]
                if _fit(node, layers[j - 1], squeeze=True) is not False:
                    added = -MATCH_REWARD
                    for k in range(1, min(j, FUSED_LOOKAHEAD + 1) + 1):
                        computes = can_compute(node.op_type, layers[j - k].op_type)
                        if computes is False:
                            break
                        added += 0.0 if computes else 0.5
                        options.append(((cost[i - 1][j - k][0] + added, _MATCH), (_MATCH, k)))
            if j:
                skip = 0.0 if layer_kind(layers[j - 1].op_type) == "identity" else 1.0
                options.append(((cost[i][j - 1][0] + skip, _SKIP_LAYER), (_SKIP_LAYER, 1)))
            if i:
                skip = 0.0 if nodes[i - 1].name in free else 1.0
                options.append(((cost[i - 1][j][0] + skip, _SKIP_NODE), (_SKIP_NODE, 1)))
            if options:
                cost[i][j], move[i][j] = min(options)
    j = min(range(m + 1), key=lambda column: cost[n][column])  # the reference may go on past the window: free
    i, path = n, []
    while i or j:
        kind, k = move[i][j]
        path.append((kind, i, j, k))
        i, j = (i - 1, j - k) if kind == _MATCH else (i, j - 1) if kind == _SKIP_LAYER else (i - 1, j)
    left_out: list[CapturedTensor] = []
    for kind, i, j, k in reversed(path):
        if kind == _SKIP_LAYER:
            left_out.append(layers[j - 1])
        elif kind == _MATCH:
            node, run = nodes[i - 1], layers[j - k: j]
            if node.name not in named:
                known = all(can_compute(node.op_type, layer.op_type) for layer in run)
                pair = Pair(node, run[-1], _fit(node, run[-1], squeeze=True) or None, "graph",
                            known and len(left_out) <= FUSED_LOOKAHEAD)
                alignment.compared[node.name] = Compared(pair, *_difference(pair, atol_fraction, rtol, load))
            alignment.left_out[node.name] = left_out
            left_out = []


def _missing(alignment: Alignment, tensor: CapturedTensor, counterpart: CapturedTensor) -> list[str]:
    """Reference layers between the position the tensor's inputs stand at and its counterpart that no graph tensor
    equals (a module's container left out: its last child is named); paired by the graph: those its alignment left
    out just before it."""
    if tensor.name in alignment.left_out:
        return [_layer(ref) for ref in alignment.left_out[tensor.name]]
    equal = {c.pair.reference.name for found in alignment.equals.values() for c in found}
    equal |= {c.pair.reference.name for c in alignment.compared.values() if not c.divergent}
    start, end = _anchor_of_inputs(alignment, tensor) + 1, alignment.position(counterpart.name)
    if end - start > SCAN_LIMIT:
        return []
    between = [ref for ref in alignment.reference[start:end] if _candidate(ref) and ref.name not in equal]
    return [_layer(ref) for ref in between]


def _layer(reference: CapturedTensor) -> str:
    return f"{shown_name(reference.name)} ({reference.op_type})" if reference.op_type else shown_name(reference.name)


def worst_rows(reference: Optional[np.ndarray], candidate: np.ndarray, include: np.ndarray, count: int) -> list[int]:
    """The ``count`` compared rows that agree worst: top-1 changed first, then by max |diff| (without a reference,
    the first rows), in row order."""
    rows = np.flatnonzero(include)
    if reference is None or not len(rows):
        return [int(r) for r in rows[:count]]
    a, b = reference[rows].astype(np.float64), candidate[rows].astype(np.float64)
    with np.errstate(invalid="ignore"):
        difference = np.nan_to_num(np.abs(a - b), nan=np.inf).max(axis=1)
    flipped = np.nan_to_num(a, nan=-np.inf).argmax(axis=1) != np.nan_to_num(b, nan=-np.inf).argmax(axis=1)
    order = np.lexsort((-difference, ~flipped))  # flips first, then the largest difference
    return sorted(int(r) for r in rows[order[:count]])


def localize(onnx: Sequence[CapturedTensor], reference: Sequence[CapturedTensor], *, against: Literal["native", "onnx"],
             reference_name: str, image_ids: list[str], atol_fraction: float, rtol: float) -> Localization:
    """Align (:func:`align`), and name the first divergent node: the first paired tensor, in topological order, that
    is not right and departs into a wrong output (None when the outputs are right, or when no such tensor has a
    confident pair: then the verdict says the departure cannot be placed)."""
    alignment = align(onnx, reference, against=against, atol_fraction=atol_fraction, rtol=rtol)
    rows = {name: _row(alignment, name) for name in alignment.compared}
    curve = [rows[t.name] for t in alignment.onnx if t.name in rows]
    first = next((alignment.compared[t.name] for t in alignment.onnx
                  if t.name in alignment.departed and t.name in alignment.compared
                  and alignment.compared[t.name].divergent), None)
    culprit, placed, suspects = None, True, []
    if first is not None and first.pair.confident:
        culprit = _culprit(alignment, first, rows)
        verdict = _verdict(culprit)
    elif alignment.departed:
        placed = False
        suspects = [_described(t) for t in alignment.onnx if t.name in alignment.departed
                    and all(name in alignment.right for name in t.inputs)][:LISTED]
        last = [t for t in alignment.onnx if t.name in alignment.compared and t.name in alignment.right
                and not alignment.compared[t.name].divergent]
        since = (f"after {shown_name(last[-1].node)} ({last[-1].op_type}), which agrees with "
                 f"{shown_name(alignment.compared[last[-1].name].pair.reference.name)}" if last
                 else "from its first node")
        why = (f"the first node outside tolerance, {_described(first.pair.onnx)}, is paired with "
               f"{shown_name(first.pair.reference.name)} only weakly" if first is not None
               else "no node after it is paired with a reference layer")
        verdict = (f"the graph departs from the reference {since}, but where cannot be placed: {why}; the departure "
                   f"starts in one of: {_listed(suspects)}")
    else:
        doubtful = sum(1 for row in curve if row.divergent)
        verdict = (f"no divergent node: all {len(curve)} matched tensors are within tolerance" if not doubtful else
                   f"no divergent node: the graph's outputs agree with the reference ({doubtful} of {len(curve)} "
                   "matched tensors outside tolerance feed tensors that agree: a doubtful match, or a difference "
                   "that vanishes)")
        if not curve:
            verdict = "no tensor of the graph could be matched with the reference's: nothing compared"
    kept, left_out = _thinned(curve, culprit)
    return Localization(
        against=against, reference=reference_name, image_ids=image_ids, atol=atol_fraction, rtol=rtol,
        matched_by=alignment.by, n_onnx_tensors=len(alignment.onnx), n_reference_tensors=len(alignment.reference),
        n_matched=len(curve), curve=kept, n_curve_left_out=left_out, culprit=culprit, placed=placed,
        suspects=suspects, verdict=verdict)


def _described(tensor: CapturedTensor) -> str:
    return f"{shown_name(tensor.node)} ({tensor.op_type})"


def _row(alignment: Alignment, name: str) -> NodeDifference:
    compared = alignment.compared[name]
    tensor, pair = compared.pair.onnx, compared.pair
    doubtful = compared.divergent and name in alignment.right  # it feeds tensors that agree: the pairing is doubtful
    return NodeDifference(index=tensor.order, node=shown_name(tensor.node), op_type=tensor.op_type,
                          tensor=shown_name(tensor.name), reference=shown_name(pair.reference.name),
                          matched_by=pair.matched_by, confident=pair.confident and not doubtful,
                          max_abs_diff=compared.max_abs, scaled_diff=compared.scaled,
                          within_tolerance=compared.within, divergent=compared.divergent)


def _thinned(curve: list[NodeDifference], culprit: Optional[Culprit]) -> tuple[list[NodeDifference], int]:
    """At most CURVE_POINTS rows: evenly spaced ones, and the culprit's neighbours."""
    if len(curve) <= CURVE_POINTS:
        return curve, 0
    keep = set(np.linspace(0, len(curve) - 1, CURVE_POINTS - 2 * CONTEXT_NODES - 1).astype(int).tolist())
    if culprit is not None:
        at = next((i for i, row in enumerate(curve) if row.tensor == shown_name(culprit.tensor)), None)
        if at is not None:
            keep |= set(range(max(0, at - CONTEXT_NODES), min(len(curve), at + CONTEXT_NODES + 1)))
    return [curve[i] for i in sorted(keep)], len(curve) - len(keep)


def _verdict(culprit: Culprit) -> str:
    verdict = (f"first divergent node: {shown_name(culprit.node)} ({culprit.op_type}), matching "
               f"{shown_name(culprit.reference)}: scaled difference {culprit.scaled_diff:.3g}, its inputs' "
               f"{max((i.scaled_diff or 0.0) for i in culprit.inputs) if culprit.inputs else 0.0:.3g}")
    if culprit.unmatched_between:
        verdict += f", or one of the unmatched nodes before it: {_listed(culprit.unmatched_between)}"
    if culprit.missing:
        verdict += (f"; the reference computes {_listed(culprit.missing)} between its inputs and it, which no node "
                    "of the graph matches: was a node left out?")
    if any(i.divergent for i in culprit.inputs):
        verdict += " (an input already differs: look at the unmatched nodes before it)"
    return verdict


def _culprit(alignment: Alignment, first: Compared, rows: dict[str, NodeDifference]) -> Culprit:
    """The culprit: its inputs traced back to the nearest paired or fed tensors, the unmatched nodes on the way,
    the reference layers no node computes, and the next nodes."""
    by_name, tensor = alignment.by_name, first.pair.onnx
    inputs: list[InputDifference] = []
    unmatched: list[str] = []
    seen: set[str] = set()
    pending = list(tensor.inputs)
    while pending:  # back from the culprit's inputs to the nearest tensors with a reference
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in rows:
            row = rows[name]
            inputs.append(InputDifference(tensor=row.tensor, reference=row.reference, scaled_diff=row.scaled_diff,
                                          divergent=row.divergent and name not in alignment.right))
        elif name in alignment.fed:
            inputs.append(InputDifference(tensor=shown_name(name), reference="the fed tensor", scaled_diff=0.0,
                                          divergent=False))
        elif name in alignment.right:  # computed into a tensor that agrees
            inputs.append(InputDifference(tensor=shown_name(name), reference=None, scaled_diff=None, divergent=False))
        elif name in by_name:
            producer = by_name[name]
            if name not in alignment.right:
                unmatched.append((producer.order, _described(producer)))
            pending.extend(producer.inputs)
    position = alignment.onnx.index(tensor)
    context = [rows.get(t.name) or NodeDifference(index=t.order, node=shown_name(t.node), op_type=t.op_type,
                                                  tensor=shown_name(t.name), reference=None)
               for t in alignment.onnx[position + 1: position + 1 + CONTEXT_NODES]]
    return Culprit(node=tensor.node, op_type=tensor.op_type, tensor=tensor.name, attributes=tensor.attributes,
                   reference=first.pair.reference.name, matched_by=first.pair.matched_by,
                   max_abs_diff=first.max_abs, scaled_diff=first.scaled, within_tolerance=first.within,
                   inputs=inputs, unmatched_between=[text for _, text in sorted(unmatched)],
                   missing=_missing(alignment, tensor, first.pair.reference), context=context)
