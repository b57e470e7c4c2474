"""How far an ONNX run agrees with the native run on the same tensors: top-1 flips, output differences,
the share of elements within tolerance, and whether the two error rates really differ (McNemar)."""

from __future__ import annotations

from typing import Literal, Optional, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from xfverify.evaluator.analysis.metrics import mcnemar_exact_p

ATOL_FRACTION = 1e-4  # atol, as a fraction of the largest |native output|: random networks' logits are tiny or huge
RTOL = 1e-3


class Flip(BaseModel):
    """An image whose top-1 differs between the two runs."""

    model_config = ConfigDict(extra="forbid")

    image_id: str
    labels: list[int]
    native_top1: int
    onnx_top1: int
    right: Literal["native", "onnx", "neither", "unlabelled"]


class Agreement(BaseModel):
    """The ``agreement`` block of an ONNX report."""

    model_config = ConfigDict(extra="forbid")

    compared: str  # what both outputs are: logits, or softmax for Keras applications (the export keeps it)
    n_compared: int
    top1_agreement: float  # percent of the compared images with the same top-1
    n_flips: int
    flips: list[Flip]
    max_abs_logit_diff: float
    max_abs_native_output: float
    max_abs_diff_over_max_abs_logit: Optional[float]
    atol: float
    rtol: float
    within_tolerance: float  # share of elements, Polygraphy's elementwise rule
    n_nan: int
    native_only_right: int
    onnx_only_right: int
    mcnemar_p: float


def within_tolerance(reference: np.ndarray, candidate: np.ndarray, atol: float, rtol: float) -> np.ndarray:
    """Polygraphy's elementwise rule (``CompareFunc.simple``, check_error_stat="elemwise"): an element fails only
    when its difference is over atol AND over rtol x |candidate| (Polygraphy divides by the second output);
    unlike Polygraphy's rule, where NaN > x is false, a NaN on either side always fails."""
    difference = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = difference / np.abs(candidate.astype(np.float64))
    fails = (difference > atol) & (relative > rtol)
    return ~fails & np.isfinite(reference) & np.isfinite(candidate)


def compare_outputs(native: np.ndarray, onnx: np.ndarray, image_ids: Sequence[str],
                    labels: Sequence[tuple[int, ...]], include: np.ndarray, compared: str,
                    atol_fraction: float = ATOL_FRACTION, rtol: float = RTOL) -> Agreement:
    """Compare the rows ``include`` marks (skipped images are left out of both runs)."""
    rows = np.flatnonzero(include)
    a, b = native[rows], onnx[rows]
    finite_a = np.where(np.isfinite(a), a, 0.0)
    scale = float(np.abs(finite_a).max()) if a.size else 0.0
    difference = np.abs(a.astype(np.float64) - b.astype(np.float64))
    max_diff = float(np.nanmax(difference)) if a.size and not np.isnan(difference).all() else 0.0
    atol = atol_fraction * scale
    top_a, top_b = a.argmax(axis=1), b.argmax(axis=1)
    flips, native_only, onnx_only = [], 0, 0
    for row, ta, tb in zip(rows, top_a, top_b):
        accepted = labels[row]
        native_right, onnx_right = bool(accepted) and int(ta) in accepted, bool(accepted) and int(tb) in accepted
        native_only += native_right and not onnx_right
        onnx_only += onnx_right and not native_right
        if ta != tb:
            right = ("unlabelled" if not accepted else "native" if native_right else "onnx" if onnx_right
                     else "neither")
            flips.append(Flip(image_id=image_ids[row], labels=list(accepted), native_top1=int(ta),
                              onnx_top1=int(tb), right=right))
    n = len(rows)
    return Agreement(
        compared=compared,
        n_compared=n,
        top1_agreement=round(100.0 * (n - len(flips)) / n, 4) if n else 100.0,
        n_flips=len(flips),
        flips=flips,
        max_abs_logit_diff=max_diff,
        max_abs_native_output=scale,
        max_abs_diff_over_max_abs_logit=max_diff / scale if scale else None,
        atol=atol,
        rtol=rtol,
        within_tolerance=float(within_tolerance(a, b, atol, rtol).mean()) if a.size else 1.0,
        n_nan=int(np.isnan(a).sum() + np.isnan(b).sum()),
        native_only_right=int(native_only),
        onnx_only_right=int(onnx_only),
        mcnemar_p=mcnemar_exact_p(int(native_only), int(onnx_only)),
    )
