"""The one comparator: a candidate run against a reference run on the same images.

Both ``xfverify onnx`` (ONNX Runtime against the native run) and ``xfverify diagnose`` (each variant against the
reference preprocessing) read their numbers from here: which images change their top-1, which change from right to
wrong and back (the paired error difference, Newcombe's interval, McNemar), and how far the outputs differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from xfverify.evaluator.analysis.metrics import (
    PairedDifference,
    finite_rows,
    paired_difference,
)


@dataclass(frozen=True)
class OutputDifference:
    """How far a candidate's outputs are from the reference's, over the compared rows."""

    max_abs: float  # the largest |candidate - reference| over the rows finite on both sides (0 when there are none)
    scale: float  # the largest finite |reference output|
    n_nan: int  # NaN elements on both sides together
    non_finite_rows: int = 0  # rows holding NaN or +-inf on either side: left out of max_abs, never silently

    @property
    def relative(self) -> float | None:
        """``max_abs`` as a fraction of ``scale`` (None when the reference's outputs are all 0)."""
        return self.max_abs / self.scale if self.scale else None


def output_difference(reference: np.ndarray, candidate: np.ndarray) -> OutputDifference:
    """Compare two arrays of one shape (the rows already chosen; one row per image)."""
    finite = np.where(np.isfinite(reference), reference, 0.0)
    scale = float(np.abs(finite).max()) if reference.size else 0.0
    both_finite = finite_rows(reference) & finite_rows(candidate)
    difference = np.abs(reference[both_finite].astype(np.float64) - candidate[both_finite].astype(np.float64))
    return OutputDifference(
        max_abs=float(difference.max()) if difference.size else 0.0,
        scale=scale,
        n_nan=int(np.isnan(reference).sum() + np.isnan(candidate).sum()),
        non_finite_rows=int(len(both_finite) - both_finite.sum()),
    )


def within_tolerance(reference: np.ndarray, candidate: np.ndarray, atol: float, rtol: float) -> np.ndarray:
    """Polygraphy's elementwise rule (``CompareFunc.simple``, check_error_stat="elemwise"): an element fails only
    when its difference is over atol AND over rtol x |candidate| (Polygraphy divides by the second output);
    unlike Polygraphy's rule, where NaN > x is false, a NaN on either side always fails."""
    difference = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = difference / np.abs(candidate.astype(np.float64))
    fails = (difference > atol) & (relative > rtol)
    return ~fails & np.isfinite(reference) & np.isfinite(candidate)


@dataclass(frozen=True)
class RunComparison:
    """Two runs' top-1 answers on the compared rows (row indices into the dataset)."""

    rows: np.ndarray  # the compared rows
    reference_top1: np.ndarray  # per compared row
    candidate_top1: np.ndarray
    labelled: np.ndarray  # the compared rows that have labels: the paired difference is over these
    reference_wrong: np.ndarray  # per labelled row
    candidate_wrong: np.ndarray
    paired: PairedDifference  # the candidate's error minus the reference's

    @property
    def top1_changed(self) -> np.ndarray:
        """The compared rows whose top-1 differs (labelled or not)."""
        return self.rows[self.reference_top1 != self.candidate_top1]

    @property
    def correctness_changed(self) -> np.ndarray:
        """The labelled rows right under one run and wrong under the other."""
        return self.labelled[self.reference_wrong != self.candidate_wrong]


def compare_runs(reference_top1: np.ndarray, candidate_top1: np.ndarray, labels: Sequence[tuple[int, ...]],
                 rows: np.ndarray) -> RunComparison:
    """Compare two runs' top-1 (arrays over every image) on ``rows``; ``labels`` are each image's acceptable
    classes (empty when unlabelled)."""
    rows = np.asarray(rows, dtype=np.int64)
    labelled = np.array([row for row in rows if labels[row]], dtype=np.int64)

    def wrong(top1: np.ndarray) -> np.ndarray:
        return np.array([int(top1[row]) not in labels[row] for row in labelled], dtype=bool)

    reference_wrong, candidate_wrong = wrong(reference_top1), wrong(candidate_top1)
    return RunComparison(
        rows=rows,
        reference_top1=np.asarray(reference_top1)[rows],
        candidate_top1=np.asarray(candidate_top1)[rows],
        labelled=labelled,
        reference_wrong=reference_wrong,
        candidate_wrong=candidate_wrong,
        paired=paired_difference(candidate_wrong, reference_wrong),
    )


@dataclass(frozen=True)
class TensorMatch:
    """How a batch of tensors compares with another's of the same shape (a framework's own pipeline), image by
    image, against a bound on each value's difference."""

    identical: bool
    max_abs_diff: float
    outlier_fractions: tuple[float, ...]  # per image: share of its values beyond the bound
    outside: tuple[int, ...]  # images with a larger share of such values than allowed

    @property
    def within_bound(self) -> bool:
        return not self.outside


def compare_tensors(ours: np.ndarray, theirs: np.ndarray, bound: float, outlier_fraction: float) -> TensorMatch:
    """Compare two batches of the same shape; an image is outside when more than ``outlier_fraction`` of its values
    differ by more than ``bound``."""
    if ours.shape != theirs.shape:
        raise ValueError(f"shapes differ: {ours.shape} vs {theirs.shape}")
    diff = np.abs(ours.astype(np.float64) - theirs.astype(np.float64)).reshape(len(ours), -1)
    fractions = tuple(float(f) for f in (diff > bound).mean(axis=1)) if diff.size else ()
    return TensorMatch(
        identical=ours.tobytes() == theirs.tobytes(),
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        outlier_fractions=fractions,
        outside=tuple(i for i, f in enumerate(fractions) if f > outlier_fraction),
    )
