"""Where a deployment variant's precision breaks: its intermediate tensors against its plain parent's, node by node.

A variant made from a file keeps that file's tensor names (a QDQ file adds QuantizeLinear/DequantizeLinear nodes
around the original ones; a float16 file adds Casts), so the two are matched by name. Each matched tensor gets the
signal-to-quantisation-noise ratio (SQNR, as TensorFlow Lite's QuantizationDebugger reports per layer) and the
scaled difference (max |diff| / max |plain value|, as ``localize`` compares), and each node the SQNR it loses
against its inputs and the noise power it adds itself (relative to its signal), which ranks the nodes that cost
most."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from xfverify.evaluator.analysis.comparison import within_tolerance
from xfverify.evaluator.process.tasks import CapturedTensor

SQNR_CAP_DB = 100.0  # identical tensors have an infinite SQNR: capped so a node's loss can be ranked
COSTLIEST = 5


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NodePrecision(_Block):
    """One tensor of the plain graph, in topological order, and the variant's tensor of the same name against it."""

    index: int
    node: str = Field(description="the variant's node producing it (the plain file's name: what --keep-float takes)")
    op_type: str
    tensor: str
    sqnr_db: float = Field(description=f"10 log10(sum plain^2 / sum diff^2), capped at {SQNR_CAP_DB:g} dB")
    scaled_diff: float = Field(description="max |diff| / max |plain value|")
    within_tolerance: float = Field(description="share of elements within tolerance (Polygraphy's rule)")
    sqnr_lost_db: float = Field(description="its inputs' lowest SQNR minus its own")
    noise_added: float = Field(description="its noise-to-signal power ratio minus its inputs' highest: the noise "
                                           "this node adds itself, which ranks the costliest")
    past_tolerance: bool


class PrecisionBreaks(_Block):
    """The ``nodes`` block of a variant: its tensors against the plain file's on the worst-agreeing images."""

    image_ids: list[str]
    atol: float = Field(description="as a fraction of each tensor's largest |plain value|")
    rtol: float
    n_variant_tensors: int
    n_plain_tensors: int
    n_matched: int
    nodes: list[NodePrecision]
    first_past_tolerance: Optional[str] = Field(description="the first node, in topological order, past tolerance")
    costliest: list[str] = Field(description="the nodes that add the most noise to what they are fed, worst first")
    verdict: str


def _as_dequantised(variant: Sequence[CapturedTensor]) -> dict[str, CapturedTensor]:
    """A QDQ file's tensors as the nodes after them see them: a tensor quantised by a QuantizeLinear and restored by a
    DequantizeLinear is compared through that DequantizeLinear's output (the quantisation tool may also fold a Clip
    or Relu into the quantisation range and give the tensor before it the activation's name)."""
    produced = {t.name: t for t in variant}
    seen = {}
    for tensor in variant:
        if tensor.op_type != "DequantizeLinear" or not tensor.inputs:
            continue
        quantise = produced.get(tensor.inputs[0])
        if quantise is not None and quantise.op_type == "QuantizeLinear" and quantise.inputs:
            seen.setdefault(quantise.inputs[0], tensor)
    return seen


def _upstream(name: str, rows: dict[str, "NodePrecision"], producers: dict[str, CapturedTensor],
              seen: dict[str, float]) -> float:
    """The SQNR of what reaches ``name``: its own when it was compared, else its nearest compared ancestors' lowest
    (the graph's input, the same bytes on both sides, counts as noiseless)."""
    if name in rows:
        return rows[name].sqnr_db
    if name in seen:
        return seen[name]
    seen[name] = SQNR_CAP_DB
    producer = producers.get(name)
    if producer is not None and producer.inputs:
        seen[name] = min(_upstream(i, rows, producers, seen) for i in producer.inputs)
    return seen[name]


def _sqnr(plain: np.ndarray, variant: np.ndarray) -> float:
    signal = float(np.sum(np.square(plain)))
    noise = float(np.sum(np.square(variant - plain)))
    if not math.isfinite(noise):
        return -SQNR_CAP_DB
    if noise == 0.0:
        return SQNR_CAP_DB
    if signal == 0.0:
        return -SQNR_CAP_DB
    return float(min(SQNR_CAP_DB, 10.0 * math.log10(signal / noise)))


def compare_nodes(variant: Sequence[CapturedTensor], plain: Sequence[CapturedTensor], *, image_ids: list[str],
                  atol_fraction: float, rtol: float, costliest: int = COSTLIEST) -> PrecisionBreaks:
    """Match the variant's tensors to the plain file's by name and shape and compare each; the plain graph's order
    and data inputs say which node comes first and what each node was fed."""
    plain = sorted(plain, key=lambda t: t.order)
    direct = {t.name: t for t in variant}
    by_name = {**direct, **_as_dequantised(variant)}
    rows: dict[str, NodePrecision] = {}
    producers = {t.name: t for t in plain}
    for tensor in plain:
        other = by_name.get(tensor.name)
        if other is None or other.shape != tensor.shape:
            continue
        reference = np.load(tensor.file, mmap_mode="r").astype(np.float64).reshape(-1)
        candidate = np.load(other.file, mmap_mode="r").astype(np.float64).reshape(-1)
        finite = np.isfinite(reference)
        scale = float(np.abs(reference[finite]).max()) if finite.any() else 0.0
        with np.errstate(invalid="ignore"):
            max_abs = float(np.nan_to_num(np.abs(candidate - reference), nan=np.inf).max()) if reference.size else 0.0
        scaled = max_abs / scale if scale else (0.0 if max_abs == 0 else math.inf)
        share = float(within_tolerance(reference, candidate, atol_fraction * scale, rtol).mean()) if reference.size else 1.0
        own = _sqnr(reference, candidate)
        before = min((_upstream(name, rows, producers, {}) for name in tensor.inputs), default=SQNR_CAP_DB)
        # the variant's producer: a Conv whose Relu or Clip the quantisation tool folded gives the tensor its name
        producer = direct.get(tensor.name, tensor)
        rows[tensor.name] = NodePrecision(
            index=tensor.order, node=producer.node, op_type=producer.op_type, tensor=tensor.name, sqnr_db=round(own, 3),
            scaled_diff=scaled, within_tolerance=share, sqnr_lost_db=round(max(0.0, before - own), 3),
            noise_added=max(0.0, 10 ** (-own / 10) - 10 ** (-before / 10)),
            past_tolerance=share < 1.0)
    nodes = list(rows.values())
    first = next((row for row in nodes if row.past_tolerance), None)
    ranked = sorted((row for row in nodes if row.noise_added > 0), key=lambda row: -row.noise_added)
    worst = list(dict.fromkeys(row.node for row in ranked))[:costliest]
    if not nodes:
        verdict = "no tensor of the variant could be matched with the plain file's by name: nothing compared"
    elif first is None:
        verdict = f"every one of the {len(nodes)} matched tensors is within tolerance"
    else:
        top = rows_for(nodes, worst[:1])
        verdict = (f"first node past tolerance: {first.node} ({first.op_type}), SQNR {first.sqnr_db:.1f} dB, scaled "
                   f"difference {first.scaled_diff:.3g}"
                   + (f"; costliest: {top[0].node} ({top[0].op_type}), SQNR {top[0].sqnr_db:.1f} dB, "
                      f"{top[0].sqnr_lost_db:.1f} dB below its inputs'"
                      if top else ""))
    return PrecisionBreaks(image_ids=image_ids, atol=atol_fraction, rtol=rtol, n_variant_tensors=len(variant),
                           n_plain_tensors=len(plain), n_matched=len(nodes), nodes=nodes,
                           first_past_tolerance=first.node if first else None, costliest=worst, verdict=verdict)


def rows_for(nodes: Sequence[NodePrecision], names: Sequence[str]) -> list[NodePrecision]:
    """The rows of the named nodes (their first output each), in the order named."""
    first = {}
    for row in nodes:
        first.setdefault(row.node, row)
    return [first[name] for name in names if name in first]
