"""A run's report assembled from its parts: card, spec, dataset, cache, the worker's result and the errors it scored."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from xfverify.version import __version__
from xfverify.evaluator.analysis.metrics import (
    NO_CLASS,
    RealError,
    compare_to_published,
    error_stats,
    real_error,
    wilson_interval,
)
from xfverify.evaluator.analysis.agreement import OnnxAgreement
from xfverify.evaluator.analysis.localize import Localization
from xfverify.evaluator.data.layouts import Dataset
from xfverify.evaluator.pipeline.evaluation import CachedRun
from xfverify.evaluator.process.tasks import RuntimeInfo
from xfverify.evaluator.reports.run import (
    CacheInfo,
    DatasetInfo,
    NativeReference,
    NativeReport,
    OnnxInfo,
    OnnxReport,
    PublishedInfo,
    SkippedImage,
)
from xfverify.evaluator.reports.variants import VariantsBlock
from xfverify.models.cards import ModelCard, PublishedNumber
from xfverify.models.preprocess import PreprocessSpec


def assemble_report(card: ModelCard | None, spec: PreprocessSpec, dataset: Dataset, run: CachedRun,
                    random_weights: bool, run_notes: Sequence[str] = (),
                    identity: dict[str, str] | None = None) -> NativeReport:
    """A run's report (its schema is checked as it is built); ``card`` is None for a user's ONNX file, whose
    ``identity`` (model, architecture, builder, output) is given instead."""
    cached, build, result, timing, topk = run.cached, run.build, run.result, run.timing, run.topk
    skipped = {bad.index for bad in cached.bad}
    include = np.ones(len(dataset), dtype=bool)
    include[sorted(skipped)] = False
    labels = [r.labels for r in dataset.records]
    stats = error_stats(topk, labels, include)
    top1_ci = wilson_interval(stats.top1_errors, stats.n) if stats.n else None
    top5_ci = wilson_interval(stats.top5_errors, stats.n) if stats.n else None
    primary = card.primary_published if card else None
    published = _published(primary) if primary else None
    others = [_published(p) for p in (card.published if card else []) if p is not primary]
    notes = list(dataset.notes) + list(result.notes) + list(run_notes)
    notes += _caveat_notes(cached.caveats)
    notes += non_finite_notes(topk, dataset, skipped)
    if not dataset.n_labelled:
        notes.append("no image has a label, so nothing was scored: these are predictions only "
                     "(labels come from an ImageNet layout or a labels.csv)")
    if random_weights:
        notes.insert(0, "RANDOM WEIGHTS: a seeded random model; the error rates say nothing about the pretrained model")
    if card and card.notes:
        notes.append(card.notes)
    if stats.n and stats.n < 1000:
        notes.append(f"only {stats.n} labelled images scored: the 95% interval is wide")
    identity = identity or _identity(card)
    delta = compare_to_published(stats.top1_error, top1_ci, primary.top1_error if primary else None) if top1_ci else None
    return NativeReport(
        **identity,
        random_weights=random_weights,
        framework=result.framework,
        device=result.device,
        precision=result.precision,
        weights=result.weights,
        preprocess=spec.to_dict(),
        dataset=DatasetInfo(path=dataset.root, layout=dataset.layout, n_images=len(dataset),
                            n_labelled=dataset.n_labelled, manifest_sha256=dataset.manifest_sha256()),
        tensors_sha256=result.tensors_sha256,
        tensor_proof=result.tensor_proof,
        batch_size=result.batch_size,
        batch_size_source=result.batch_size_source,
        top1_error=_round(stats.top1_error),
        top5_error=_round(stats.top5_error),
        top1_error_ci95=[round(v, 4) for v in top1_ci] if top1_ci else None,
        top5_error_ci95=[round(v, 4) for v in top5_ci] if top5_ci else None,
        n_scored=stats.n,
        published=published,
        other_published=others,
        delta_vs_published=delta,
        real_labels=_with_published_real(real_error(topk, [r.image_id for r in dataset.records], include), card),
        timing=timing,
        cache=CacheInfo(
            directory=str(Path(cached.shard_paths[0]).parent.parent) if cached.shard_paths else None,
            decoded=build.decoded,
            digested=build.digested,
            reused_shards=build.reused_shards,
            built_shards=build.built_shards,
            rebuilt_corrupt_shards=build.rebuilt_corrupt,
            decode_s=round(build.seconds, 3),
            decode_images_per_s=round(build.images_per_s, 1),
            workers=build.workers,
        ),
        skipped_images=[SkippedImage(image_id=b.image_id, path=b.path, reason=b.reason) for b in cached.bad],
        notes=notes,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        xfverify_version=__version__,
    )


def onnx_report(base: NativeReport, runtime: RuntimeInfo, onnx: OnnxInfo, native: NativeReference | None,
                agreement: OnnxAgreement | None, localization: Localization | None,
                onnx_over_native_time: float | None, variants: VariantsBlock | None = None) -> OnnxReport:
    """An ONNX Runtime run's report: its run's report, with the runtime, the file, the native run it is compared
    with, the agreement, the localization and the deployment variants."""
    fields = {name: value for name, value in base if name != "kind"}
    return OnnxReport(**fields, runtime=runtime, onnx=onnx, native=native, agreement=agreement,
                      localization=localization, variants=variants, onnx_over_native_time=onnx_over_native_time)


def non_finite_notes(topk: np.ndarray, dataset, skipped: set[int], whose: str = "",
                     listed: bool = True) -> list[str]:
    """The images whose output held NaN or +-inf (``topk`` predicts nothing for them), said: how many, the first
    (``listed``: the run writes predictions.csv)."""
    rows = [row for row in np.flatnonzero(topk[:, 0] == NO_CLASS) if row not in skipped]
    if not rows:
        return []
    where = " (status non-finite in predictions.csv)" if listed else ""
    return [(f"{whose}{len(rows)} of {len(dataset)} image(s) gave outputs holding NaN or +-inf, the first "
             f"{dataset.records[rows[0]].path}: they have no predictions{where} and count as wrong")]


def _with_published_real(real: RealError | None, card: ModelCard | None) -> RealError | None:
    """The ReaL error beside the number published on the ReaL labels, where the card has one (timm publishes it)."""
    number = card.published_on("real") if card else None
    if real is None or number is None:
        return real
    return real.model_copy(update=dict(
        published_top1_error=number.top1_error, published_source=number.source,
        delta_vs_published=compare_to_published(real.top1_error, tuple(real.top1_error_ci95), number.top1_error)))


def _published(published: PublishedNumber) -> PublishedInfo:
    return PublishedInfo(top1_error=published.top1_error, top5_error=published.top5_error, source=published.source,
                         benchmark=published.benchmark)


def _identity(card: ModelCard) -> dict[str, str]:
    return {"model": card.id, "architecture": card.architecture, "builder": card.builder, "output": card.output}


def _caveat_notes(caveats) -> list[str]:
    """One note per kind of decode caveat, naming how many images it concerns and the first of them."""
    by_text: dict[str, list[str]] = {}
    for caveat in caveats:
        by_text.setdefault(caveat.reason, []).append(caveat.path)
    return [f"{len(paths)} image(s), the first {paths[0]}: {text}" for text, paths in by_text.items()]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
