"""The ``agreement`` block of an ONNX report: how far ONNX Runtime agrees with the native run on the same tensors
(top-1 flips, output differences, the share of elements within tolerance, McNemar), read from the comparator."""

from __future__ import annotations

from typing import Literal, Optional, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from xfverify.evaluator.analysis.comparison import (
    compare_runs,
    output_difference,
    within_tolerance,
)
from xfverify.evaluator.analysis.metrics import predicted_top1

ATOL_FRACTION = 1e-4  # atol, as a fraction of the largest |native output|: random networks' logits are tiny or huge
RTOL = 1e-3


class Top1Flip(BaseModel):
    """An image whose top-1 differs between the two runs."""

    model_config = ConfigDict(extra="forbid")

    image_id: str
    labels: list[int]
    native_top1: int
    onnx_top1: int
    right: Literal["native", "onnx", "neither", "unlabelled"]
    max_abs_diff: Optional[float] = None  # this image's largest |native - ONNX| output; None: NaN or +-inf in either


class OnnxAgreement(BaseModel):
    """The ``agreement`` block of an ONNX report."""

    model_config = ConfigDict(extra="forbid")

    compared: str  # what both outputs are: logits, or softmax for Keras applications (the export keeps it)
    n_compared: int
    top1_agreement: float  # percent of the compared images with the same top-1
    n_flips: int
    flips: list[Top1Flip]
    max_abs_logit_diff: float
    max_abs_native_output: float
    max_abs_diff_over_max_abs_logit: Optional[float]
    atol: float
    rtol: float
    within_tolerance: float  # share of elements, Polygraphy's elementwise rule
    n_nan: int
    n_non_finite: int = 0  # compared images whose output holds NaN or +-inf on either side (no top-1; no max |diff|)
    native_only_right: int
    onnx_only_right: int
    mcnemar_p: float
    # whether the native outputs change from image to image: a constant (a zero-initialised head, collapsed
    # activations) is matched by almost any graph, so agreeing with it proves little; None for one image
    native_varies: Optional[bool] = None


def outputs_vary(outputs: np.ndarray) -> Optional[bool]:
    """Whether some output element differs between images by more than 1e-6 of the largest |output| (finite rows
    only); None with fewer than two such rows."""
    finite = outputs[np.isfinite(outputs).reshape(len(outputs), -1).all(axis=1)].astype(np.float64)
    if len(finite) < 2:
        return None
    scale = float(np.abs(finite).max())
    spread = float((finite.max(axis=0) - finite.min(axis=0)).max())
    return scale > 0 and spread > 1e-6 * scale


def compare_outputs(native: np.ndarray, onnx: np.ndarray, image_ids: Sequence[str],
                    labels: Sequence[tuple[int, ...]], include: np.ndarray, compared: str,
                    atol_fraction: float = ATOL_FRACTION, rtol: float = RTOL) -> OnnxAgreement:
    """Compare the rows ``include`` marks (skipped images are left out of both runs). An image whose output holds
    NaN or +-inf on either side has no top-1 there (-1: a flip unless both are) and is left out of
    the output difference, counted in ``n_non_finite``."""
    rows = np.flatnonzero(include)
    a, b = native[rows], onnx[rows]
    difference = output_difference(a, b)
    atol = atol_fraction * difference.scale
    native_top1s, onnx_top1s = predicted_top1(native), predicted_top1(onnx)
    runs = compare_runs(native_top1s, onnx_top1s, labels, rows)
    flips = []
    for row in runs.top1_changed:
        accepted = labels[row]
        native_top1, onnx_top1 = int(native_top1s[row]), int(onnx_top1s[row])
        right = ("unlabelled" if not accepted else "native" if native_top1 in accepted
                 else "onnx" if onnx_top1 in accepted else "neither")
        pair = native[row].astype(np.float64), onnx[row].astype(np.float64)
        finite = bool(np.isfinite(pair[0]).all() and np.isfinite(pair[1]).all())
        flips.append(Top1Flip(image_id=image_ids[row], labels=list(accepted), native_top1=native_top1,
                              onnx_top1=onnx_top1, right=right,
                              max_abs_diff=float(np.abs(pair[0] - pair[1]).max()) if finite else None))
    n = len(rows)
    return OnnxAgreement(
        compared=compared,
        n_compared=n,
        top1_agreement=round(100.0 * (n - len(flips)) / n, 4) if n else 100.0,
        n_flips=len(flips),
        flips=flips,
        max_abs_logit_diff=difference.max_abs,
        max_abs_native_output=difference.scale,
        max_abs_diff_over_max_abs_logit=difference.relative,
        atol=atol,
        rtol=rtol,
        within_tolerance=float(within_tolerance(a, b, atol, rtol).mean()) if a.size else 1.0,
        n_nan=difference.n_nan,
        n_non_finite=difference.non_finite_rows,
        native_only_right=runs.paired.right_to_wrong,  # the candidate (ONNX) wrong where the native run was right
        onnx_only_right=runs.paired.wrong_to_right,
        mcnemar_p=runs.paired.p_value,
        native_varies=outputs_vary(a),
    )
