"""Top-k error with acceptable-label sets, Wilson intervals, ImageNet ReaL error, comparison to published numbers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from pydantic import BaseModel

from xfverify.models.imagenet import real_labels, validation_number


def top_k(logits: np.ndarray, k: int = 5) -> np.ndarray:
    """Indices of the k largest outputs per row, best first (ties broken by lower index)."""
    k = min(k, logits.shape[1])
    part = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    order = np.lexsort((part, -np.take_along_axis(logits, part, axis=1)), axis=1)
    return np.take_along_axis(part, order, axis=1)


NO_CLASS = -1  # the prediction of an image whose output holds NaN or +-inf: none, so it matches no label (wrong)


def finite_rows(outputs: np.ndarray) -> np.ndarray:
    """Per row: whether every output value is finite (no NaN, no +-inf)."""
    return np.isfinite(outputs).all(axis=1)


def predicted_top_k(outputs: np.ndarray, skipped: Sequence[int] = (), k: int = 5) -> np.ndarray:
    """Each image's top-k; an image whose output holds NaN or +-inf predicts nothing (every entry NO_CLASS) and so
    counts as wrong. ``skipped`` images' rows (NaN: nothing was fed) rank nothing and are not scored anyway."""
    topk = top_k(np.nan_to_num(outputs, nan=-np.inf), k)
    non_finite = ~finite_rows(outputs)
    non_finite[list(skipped)] = False
    topk[non_finite] = NO_CLASS
    return topk


def predicted_top1(outputs: np.ndarray) -> np.ndarray:
    """Each row's best class, NO_CLASS where the row holds NaN or +-inf (argmax would name an arbitrary class)."""
    return np.where(finite_rows(outputs), outputs.argmax(axis=1), NO_CLASS)


def wilson_interval(errors: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95 % Wilson score interval of an error proportion, in percent."""
    if n == 0:
        return (math.nan, math.nan)
    p = errors / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (100 * max(0.0, centre - half), 100 * min(1.0, centre + half))


@dataclass(frozen=True)
class ErrorStats:
    n: int
    top1_errors: int
    top5_errors: int

    @property
    def top1_error(self) -> float | None:
        return 100.0 * self.top1_errors / self.n if self.n else None

    @property
    def top5_error(self) -> float | None:
        return 100.0 * self.top5_errors / self.n if self.n else None


def error_stats(topk: np.ndarray, labels: Sequence[tuple[int, ...]], include: np.ndarray) -> ErrorStats:
    """Count top-1/top-5 misses over rows where ``include`` is true and labels are given.

    A prediction is right when it is any of the image's acceptable labels.
    """
    n = top1 = top5 = 0
    for row, acceptable in enumerate(labels):
        if not include[row] or not acceptable:
            continue
        n += 1
        accepted = set(acceptable)
        if int(topk[row, 0]) not in accepted:
            top1 += 1
        if not accepted.intersection(int(c) for c in topk[row, :5]):
            top5 += 1
    return ErrorStats(n=n, top1_errors=top1, top5_errors=top5)


class PublishedGap(BaseModel):
    """Measured minus published top-1 error, in points, and whether the published number is outside the 95 % CI."""

    top1_error: float
    outside_ci95: bool


class RealError(BaseModel):
    """Top-1 error against the ImageNet ReaL labels."""

    top1_error: float
    top1_error_ci95: list[float]
    n_images: int
    source: str
    published_top1_error: Optional[float] = None
    published_source: Optional[str] = None
    delta_vs_published: Optional[PublishedGap] = None


def real_error(topk: np.ndarray, image_ids: Sequence[str], include: np.ndarray) -> RealError | None:
    """ImageNet ReaL top-1 error when every image is an ImageNet validation image, else None.

    Images the ReaL raters left without any label are excluded, as in Beyer et al. 2020.
    """
    numbers = [validation_number(i) for i in image_ids]
    if not numbers or any(n is None or not 1 <= n <= 50000 for n in numbers):
        return None
    relabels = real_labels()
    n = errors = 0
    for row, number in enumerate(numbers):
        acceptable = relabels[number - 1]
        if not include[row] or not acceptable:
            continue
        n += 1
        if int(topk[row, 0]) not in acceptable:
            errors += 1
    if n == 0:
        return None
    return RealError(
        top1_error=round(100.0 * errors / n, 4),
        top1_error_ci95=[round(v, 4) for v in wilson_interval(errors, n)],
        n_images=n,
        source="ImageNet ReaL labels (Beyer et al. 2020, google-research/reassessed-imagenet)",
    )


def compare_to_published(measured: float | None, ci: tuple[float, float], published: float | None,
                         ) -> PublishedGap | None:
    """Measured minus published top-1 error, and whether the published number lies outside the 95 % interval."""
    if measured is None or published is None:
        return None
    return PublishedGap(top1_error=round(measured - published, 4), outside_ci95=not (ci[0] <= published <= ci[1]))


def mcnemar_exact_p(only_first_right: int, only_second_right: int) -> float:
    """Exact McNemar test of two classifiers on the same images: the two-sided binomial p of the discordant
    pairs (are the two error rates really different?); 1.0 when no image is right for only one of them."""
    from scipy.stats import binomtest

    discordant = only_first_right + only_second_right
    return float(binomtest(only_first_right, discordant).pvalue) if discordant else 1.0


@dataclass(frozen=True)
class PairedDifference:
    """A variant's top-1 error minus the reference's on the same images, in percentage points."""

    n: int
    right_to_wrong: int  # right under the reference, wrong under the variant
    wrong_to_right: int
    delta: float
    ci95: tuple[float, float]
    p_value: float

    @property
    def significant(self) -> bool:
        """Outside the noise: McNemar p < 0.05 and an interval that excludes 0."""
        return self.p_value < 0.05 and not self.ci95[0] <= 0.0 <= self.ci95[1]


def newcombe_paired_interval(both_wrong: int, only_first_wrong: int, only_second_wrong: int, both_right: int,
                             ) -> tuple[float, float]:
    """95 % interval of (error of first - error of second) on paired images, in percentage points.

    Newcombe's hybrid score interval for a difference of paired proportions (R. G. Newcombe, "Improved
    confidence intervals for the difference between binomial proportions based on paired data", Statistics
    in Medicine 17, 2635-2650, 1998, method 10): Wilson intervals of the two marginal error rates combined
    with the phi correlation of the paired table (phi corrected towards 0 as the paper specifies).
    """
    n = both_wrong + only_first_wrong + only_second_wrong + both_right
    if n == 0:
        return (math.nan, math.nan)
    first, second = both_wrong + only_first_wrong, both_wrong + only_second_wrong
    p1, p2 = first / n, second / n
    l1, u1 = (v / 100 for v in wilson_interval(first, n))
    l2, u2 = (v / 100 for v in wilson_interval(second, n))
    margins = first * (n - first) * second * (n - second)
    cross = both_wrong * both_right - only_first_wrong * only_second_wrong
    corrected = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)
    phi = corrected / math.sqrt(margins) if margins else 0.0
    delta = p1 - p2
    lower = delta - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    upper = delta + math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    return (100 * max(-1.0, lower), 100 * min(1.0, upper))


def paired_difference(variant_wrong: np.ndarray, reference_wrong: np.ndarray) -> PairedDifference:
    """The variant's top-1 error against the reference's, image by image (boolean arrays over the scored images)."""
    variant_wrong, reference_wrong = np.asarray(variant_wrong, bool), np.asarray(reference_wrong, bool)
    both = int(np.sum(variant_wrong & reference_wrong))
    to_wrong = int(np.sum(variant_wrong & ~reference_wrong))
    to_right = int(np.sum(~variant_wrong & reference_wrong))
    n = len(variant_wrong)
    return PairedDifference(
        n=n, right_to_wrong=to_wrong, wrong_to_right=to_right,
        delta=100.0 * (to_wrong - to_right) / n if n else math.nan,
        ci95=newcombe_paired_interval(both, to_wrong, to_right, n - both - to_wrong - to_right),
        p_value=mcnemar_exact_p(to_wrong, to_right),
    )
