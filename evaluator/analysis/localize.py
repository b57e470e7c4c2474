"""Where an ONNX graph first departs from its reference (the native network, or another ONNX file), node by node,
for ``xfverify onnx --localize``: pure numpy over the tensors both sides' workers wrote.

The reference's tensors are matched to the graph's by the names the exporters keep (torch's module paths, Keras
layer names, MXNet symbol names: :func:`xfverify.converter.onnx_file.node_details`), else by order and shape along
the graph. Each matched tensor is compared as the outputs are (Polygraphy's elementwise rule, atol a fraction of
the largest |reference value| of that tensor), and the first divergent node in topological order is the culprit,
said with its inputs' own difference, so that a node fed a bad input is not the one blamed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from xfverify.evaluator.process.names import INPUT_SUFFIX
from xfverify.evaluator.analysis.comparison import output_difference, within_tolerance
from xfverify.evaluator.process.tasks import CapturedTensor

CONTEXT_NODES = 5  # nodes said after the culprit
FUSED_LOOKAHEAD = 4  # reference tensors after a divergent match tried for a node that computes several layers
NHWC_TO_NCHW = (2, 0, 1)  # one image's (H, W, C) -> (C, H, W): Keras's layers against tf2onnx's graph


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NodeDifference(_Block):
    """One tensor of the graph, in topological order, and how far it is from the reference tensor matched to it."""

    index: int = Field(description="the producing node's position among the graph's captured tensors")
    node: str
    op_type: str
    tensor: str
    reference: Optional[str] = Field(description="the matched reference tensor (a module, layer or symbol); None: none")
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

    node: str
    op_type: str
    tensor: str
    attributes: dict[str, str]
    reference: str
    max_abs_diff: float
    scaled_diff: float
    within_tolerance: float
    inputs: list[InputDifference] = Field(description="its inputs' own differences (the nearest matched tensors)")
    unmatched_between: list[str] = Field(description="nodes with no reference tensor between those inputs and it: "
                                                     "the departure is in one of them or in the culprit")
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
    """The ``localization`` block of an ONNX report: the difference along the graph and the first divergent node."""

    against: Literal["native", "onnx"]
    reference: str = Field(description="what the graph was compared with")
    image_ids: list[str] = Field(description="the images run (the worst-agreeing ones)")
    atol: float = Field(description="as a fraction of each tensor's largest |reference value|")
    rtol: float
    matched_by: Literal["names", "order and shape"]
    n_onnx_tensors: int
    n_reference_tensors: int
    n_matched: int
    curve: list[NodeDifference] = Field(description="every matched tensor, in topological order")
    culprit: Optional[Culprit]
    verdict: str
    cost: Optional[LocalizeCost] = None


@dataclass(frozen=True)
class Pair:
    """A graph tensor and the reference tensor matched to it, and how (a transposition from NHWC, or none)."""

    onnx: CapturedTensor
    reference: CapturedTensor
    transpose: Optional[tuple[int, ...]]


def _fit(onnx: CapturedTensor, reference: CapturedTensor) -> Optional[tuple[int, ...]] | bool:
    """() when the shapes agree, NHWC_TO_NCHW when the reference is the NHWC form of the graph's, False otherwise."""
    if onnx.shape == reference.shape:
        return ()
    if len(reference.shape) == 3 and [reference.shape[i] for i in NHWC_TO_NCHW] == onnx.shape:
        return NHWC_TO_NCHW
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


def match_by_order(onnx: Sequence[CapturedTensor], reference: Sequence[CapturedTensor]) -> list[Pair]:
    """Reference tensors in order matched along the graph: each to the last graph tensor of a fitting shape in
    the run of such tensors that follows the previous match."""
    pairs, position = [], 0
    for ref in reference:
        found = next((i for i in range(position, len(onnx)) if _fit(onnx[i], ref) is not False), None)
        if found is None:
            continue
        while found + 1 < len(onnx) and _fit(onnx[found + 1], ref) is not False:
            found += 1
        pairs.append(Pair(onnx[found], ref, _fit(onnx[found], ref) or None))
        position = found + 1
    return pairs


def _difference(pair: Pair, atol_fraction: float, rtol: float) -> tuple[float, float, float, float]:
    """(max |diff|, scale, scaled diff, share within tolerance) over every captured image."""
    reference = np.load(pair.reference.file, mmap_mode="r").astype(np.float64)
    candidate = np.load(pair.onnx.file, mmap_mode="r").astype(np.float64)
    if pair.transpose:
        reference = reference.transpose(0, *(1 + axis for axis in pair.transpose))
    rows_reference = reference.reshape(len(reference), -1)
    rows_candidate = candidate.reshape(len(candidate), -1)
    difference = output_difference(rows_reference, rows_candidate)
    within = within_tolerance(rows_reference, rows_candidate, atol_fraction * difference.scale, rtol)
    max_abs = difference.max_abs if not difference.non_finite_rows else float("inf")
    scaled = max_abs / difference.scale if difference.scale else (0.0 if max_abs == 0 else float("inf"))
    return max_abs, difference.scale, scaled, float(within.mean()) if within.size else 1.0


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
    """Match, compare every matched tensor, and name the first divergent node (None when every one is within
    tolerance). The graph's inputs (computed by no node) are the fed tensors: identical on both sides."""
    onnx = sorted(onnx, key=lambda t: t.order)
    produced = {t.name for t in onnx}
    fed = {name for t in onnx for name in t.inputs if name not in produced}
    pairs = match_by_names(onnx, reference, against)
    matched_by: Literal["names", "order and shape"] = "names"
    if len(pairs) < max(1, len(reference) // 4):  # the names say little: the file's exporter kept none we know
        by_order = match_by_order(onnx, reference)
        if len(by_order) > len(pairs):
            pairs, matched_by = by_order, "order and shape"
    rows: dict[str, NodeDifference] = {}
    following = sorted(reference, key=lambda t: t.order)
    position = {t.name: index for index, t in enumerate(following)}
    for pair in pairs:
        max_abs, _, scaled, share = _difference(pair, atol_fraction, rtol)
        if share < 1.0:  # a node the exporter fused (a Conv with the BatchNorm after it) computes a later tensor
            start = position[pair.reference.name] + 1
            for later in following[start : start + FUSED_LOOKAHEAD]:
                fit = _fit(pair.onnx, later)
                if fit is False:
                    continue
                fused = Pair(pair.onnx, later, fit or None)
                result = _difference(fused, atol_fraction, rtol)
                if result[3] == 1.0:
                    pair, (max_abs, _, scaled, share) = fused, result
                    break
        rows[pair.onnx.name] = NodeDifference(
            index=pair.onnx.order, node=pair.onnx.node, op_type=pair.onnx.op_type, tensor=pair.onnx.name,
            reference=pair.reference.name, max_abs_diff=max_abs, scaled_diff=scaled, within_tolerance=share,
            divergent=share < 1.0)
    curve = [rows[t.name] for t in onnx if t.name in rows]
    first = next((row for row in curve if row.divergent), None)
    culprit = _culprit(first, onnx, rows, fed) if first else None
    if culprit is None:
        verdict = (f"no divergent node: all {len(curve)} matched tensors are within tolerance"
                   if curve else "no tensor of the graph could be matched with the reference's: nothing compared")
    else:
        bad_inputs = [i for i in culprit.inputs if i.divergent]
        verdict = (f"first divergent node: {culprit.node} ({culprit.op_type}), matching {culprit.reference}: "
                   f"scaled difference {culprit.scaled_diff:.3g}, its inputs' "
                   f"{max((i.scaled_diff or 0.0) for i in culprit.inputs) if culprit.inputs else 0.0:.3g}")
        if bad_inputs:
            verdict += " (an input already differs: look at the unmatched nodes before it)"
    return Localization(
        against=against, reference=reference_name, image_ids=image_ids, atol=atol_fraction, rtol=rtol,
        matched_by=matched_by, n_onnx_tensors=len(onnx), n_reference_tensors=len(reference), n_matched=len(curve),
        curve=curve, culprit=culprit, verdict=verdict)


def _culprit(first: NodeDifference, onnx: Sequence[CapturedTensor], rows: dict[str, NodeDifference],
             fed: set[str]) -> Culprit:
    by_name = {t.name: t for t in onnx}
    tensor = by_name[first.tensor]
    inputs: list[InputDifference] = []
    unmatched: list[str] = []
    seen: set[str] = set()
    pending = list(tensor.inputs)
    while pending:  # back from the culprit's inputs to the nearest tensors with a reference
        name = pending.pop(0)
        if name in seen:
            continue
        seen.add(name)
        if name in fed:
            inputs.append(InputDifference(tensor=name, reference="the fed tensor", scaled_diff=0.0, divergent=False))
        elif name in rows:
            row = rows[name]
            inputs.append(InputDifference(tensor=name, reference=row.reference, scaled_diff=row.scaled_diff,
                                          divergent=row.divergent))
        elif name in by_name:
            producer = by_name[name]
            unmatched.append(f"{producer.node} ({producer.op_type})")
            pending.extend(producer.inputs)
    position = next(i for i, t in enumerate(onnx) if t.name == tensor.name)
    context = [rows.get(t.name) or NodeDifference(index=t.order, node=t.node, op_type=t.op_type, tensor=t.name,
                                                  reference=None)
               for t in onnx[position + 1: position + 1 + CONTEXT_NODES]]
    return Culprit(node=tensor.node, op_type=tensor.op_type, tensor=tensor.name, attributes=tensor.attributes,
                   reference=first.reference or "", max_abs_diff=first.max_abs_diff or 0.0,
                   scaled_diff=first.scaled_diff or 0.0, within_tolerance=first.within_tolerance or 0.0,
                   inputs=inputs, unmatched_between=list(reversed(unmatched)), context=context)
