"""Reports: ``report.json`` (schema-checked), ``report.md``, ``predictions.csv``, and the summary table."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from xfverify.converter.exported import OnnxDescription
from xfverify.evaluator.analysis.agreement import OnnxAgreement
from xfverify.evaluator.analysis.localize import Localization, shown_name
from xfverify.evaluator.analysis.metrics import NO_CLASS, PublishedGap, RealError
from xfverify.evaluator.process.blocks import PrecisionBlock, WeightsBlock
from xfverify.evaluator.reports.variants import Gate, VariantsBlock, variant_rows, variants_markdown
from xfverify.evaluator.process.tasks import (
    DeviceInfo,
    FrameworkInfo,
    LoopTiming,
    RuntimeInfo,
)
from xfverify.models.imagenet import class_name
from xfverify.models.preprocess import PreprocessSpec
from xfverify.models.user_input import shown, shown_lines

REPORT_VERSION = 1


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class DatasetInfo(_Open):
    path: str
    layout: str
    n_images: int
    n_labelled: int
    manifest_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class PublishedInfo(_Open):
    top1_error: float
    top5_error: Optional[float]
    source: str
    benchmark: str = "imagenet"  # the labels or test set it was measured on: imagenet, real, imagenetv2


class TimingInfo(LoopTiming):
    """The worker's timing, and when each phase of the whole run ended (parent and worker together)."""

    timeline_s: dict[str, float]


class CacheInfo(_Open):
    directory: Optional[str]
    decoded: int
    digested: int = Field(default=0, description="images of shards already built whose fed-tensor digests this run computed")
    reused_shards: int
    built_shards: int
    rebuilt_corrupt_shards: int
    decode_s: float
    decode_images_per_s: float
    workers: int


class SkippedImage(_Open):
    image_id: str
    path: str
    reason: str


class NativeReport(BaseModel):
    """What ``report.json`` of ``xfverify native`` holds (extra keys are refused, so the schema stays honest)."""

    model_config = ConfigDict(extra="forbid")

    report_version: int = REPORT_VERSION
    kind: str = "native"
    model: str
    architecture: str
    builder: str
    random_weights: bool
    framework: FrameworkInfo
    device: DeviceInfo
    precision: PrecisionBlock
    weights: WeightsBlock
    preprocess: PreprocessSpec
    dataset: DatasetInfo
    tensors_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    # None in reports of earlier versions, which a run comparing with them refuses (nothing binds their files)
    logits_sha256: Optional[str] = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                                         description="sha256 of logits.npy beside this report")
    predictions_sha256: Optional[str] = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                                              description="sha256 of predictions.csv beside this report")
    # None in reports of earlier versions, which an `onnx --against` may read
    tensor_proof: Optional[str] = Field(default=None, description="how the fed tensors were proven to be tensors_sha256's")
    batch_size: Optional[int] = None
    batch_size_source: Optional[str] = Field(default=None, description='"--batch-size", or "default for <device type>"')
    output: str
    top1_error: Optional[float]
    top5_error: Optional[float]
    top1_error_ci95: Optional[list[float]]
    top5_error_ci95: Optional[list[float]]
    n_scored: int
    published: Optional[PublishedInfo]
    other_published: list[PublishedInfo]
    delta_vs_published: Optional[PublishedGap]
    real_labels: Optional[RealError]
    timing: TimingInfo
    cache: CacheInfo
    skipped_images: list[SkippedImage]
    notes: list[str]
    created: str
    xfverify_version: str


class OnnxInfo(_Open):
    """The ONNX file: the converter's description, how it was made (or that it is a user's), cache use."""

    source: str  # "export" or "file"
    path: Optional[str] = Field(default=None, description="where the file is: the export cache's copy, or the user's")
    exporter: str
    exporter_version: str
    opset: int
    output_kind: str
    from_cache: Optional[bool] = None
    export_s: Optional[float] = None
    description: OnnxDescription
    notes: list[str] = Field(default_factory=list, description="what the exporter said (an export only)")


class NativeReference(_Open):
    """The native run an ONNX run is compared with."""

    folder: str
    framework: FrameworkInfo
    device: DeviceInfo
    top1_error: Optional[float]
    top5_error: Optional[float]
    tensors_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    logits_sha256: Optional[str] = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                                         description="sha256 of the native run's logits.npy compared with")
    compute_s: float
    images_per_s: Optional[float]


class OnnxReport(NativeReport):
    """``report.json`` of ``xfverify onnx``: the native report's fields for the ONNX Runtime run, and the
    runtime, the file, the native run it is compared with, the time ratio and the agreement."""

    kind: str = "onnx"
    runtime: RuntimeInfo
    onnx: OnnxInfo
    native: Optional[NativeReference]
    onnx_over_native_time: Optional[float] = Field(description="compute seconds, ONNX Runtime / native")
    agreement: Optional[OnnxAgreement]
    localization: Optional[Localization] = Field(
        default=None, exclude_if=lambda value: value is None,
        description="where the graph first departs from its reference, node by node (absent when not run)")
    variants: Optional[VariantsBlock] = Field(
        default=None, exclude_if=lambda value: value is None,
        description="deployment variants of the file, each scored beside it (absent when none was asked for)")
    gate: Optional[Gate] = Field(
        default=None, exclude_if=lambda value: value is None,
        description="--max-top1-drop / --fail-on-mismatch: exit status 3 when it lists failures")


@dataclass(frozen=True)
class Prediction:
    """One image's row of predictions.csv (and of the terminal's predictions table)."""

    image_id: str
    labels: tuple[int, ...]
    top5: tuple[int, ...]  # empty when the image was skipped or its output was not finite
    status: str  # correct, wrong, unlabelled, skipped or non-finite (its output held NaN or +-inf: counted wrong)

    @property
    def top1_name(self) -> str:
        return class_name(self.top5[0]) if self.top5 else ""


def predictions(image_ids, labels, topk: np.ndarray, skipped: set[int]) -> list[Prediction]:
    """Each image's top-5 and whether its top-1 is one of its acceptable labels."""
    rows = []
    for row, image_id in enumerate(image_ids):
        if row in skipped:
            rows.append(Prediction(image_id, tuple(labels[row]), (), "skipped"))
            continue
        if topk[row, 0] == NO_CLASS:
            rows.append(Prediction(image_id, tuple(labels[row]), (), "non-finite"))
            continue
        top5 = tuple(int(v) for v in topk[row])
        status = "unlabelled" if not labels[row] else ("correct" if top5[0] in labels[row] else "wrong")
        rows.append(Prediction(image_id, tuple(labels[row]), top5, status))
    return rows


def write_predictions(path: Path, rows: list[Prediction]) -> None:
    """predictions.csv: image id, acceptable label(s), top-5 class indices, top-1 name, status."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "labels", "top5", "top1_name", "status"])
        for row in rows:
            writer.writerow([row.image_id, " ".join(map(str, row.labels)), " ".join(map(str, row.top5)),
                             row.top1_name, row.status])


def _fmt(value: Optional[float], digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def summary_rows(report: NativeReport) -> list[tuple[str, str]]:
    """(label, value) pairs shared by the terminal table and report.md."""
    ci = report.top1_error_ci95
    timing = report.timing
    rows = [
        ("model", report.model + ("  [RANDOM WEIGHTS]" if report.random_weights else "")),
        ("framework", f"{report.framework.name} {report.framework.version}"),
        ("device / precision", f"{report.device.name or report.device.type} / {report.precision.requested}"),
        ("preprocess", report.preprocess.name),
        ("images scored", f"{report.n_scored} of {report.dataset.n_images} ({report.dataset.layout})"),
        ("top-1 error %", f"{_fmt(report.top1_error)}" + (f"  (95% CI {ci[0]:.2f}-{ci[1]:.2f})" if ci else "")),
        ("top-5 error %", _fmt(report.top5_error)),
    ]
    if report.published:
        rows.append(("published top-1 %", f"{report.published.top1_error:.2f}  ({report.published.source})"))
    if report.delta_vs_published:
        delta = report.delta_vs_published
        verdict = "outside the 95% CI" if delta.outside_ci95 else "within the 95% CI"
        rows.append(("delta vs published", f"{delta.top1_error:+.2f} points, {verdict}"))
    if report.real_labels:
        real = report.real_labels
        rows.append(("ReaL top-1 error %", _fmt(real.top1_error) + (
            f"  (95% CI {real.top1_error_ci95[0]:.2f}-{real.top1_error_ci95[1]:.2f}, {real.n_images} images)")))
        if real.delta_vs_published:
            verdict = "outside the 95% CI" if real.delta_vs_published.outside_ci95 else "within the 95% CI"
            rows.append(("published ReaL top-1 %", f"{real.published_top1_error:.2f}  ({real.published_source})"))
            rows.append(("delta vs published ReaL", f"{real.delta_vs_published.top1_error:+.2f} points, {verdict}"))
    rows += [
        ("throughput", f"{_fmt(timing.images_per_s, 1)} img/s; wall {timing.wall_s:.2f} s"),
        ("data wait / compute", f"{timing.data_wait_s:.2f} s / {timing.compute_s:.2f} s"),
        ("batch latency", f"{_fmt(timing.batch_ms_mean)} ± {_fmt(timing.batch_ms_std)} ms"
                          + (f" at batch {report.batch_size} ({report.batch_size_source})" if report.batch_size else "")),
    ]
    if timing.timeline_s:
        last = max(timing.timeline_s.values())
        ready = timing.timeline_s.get("warmed_up", timing.timeline_s.get("model_ready"))
        rows.append(("whole run", f"{last:.2f} s" + (f" (model ready after {ready:.2f} s)" if ready is not None else "")))
    rows += [
        ("decode (cache)", f"{report.cache.decoded} decoded, {report.cache.reused_shards} shard(s) reused"
                           + (f", {report.cache.digested} digested" if report.cache.digested else "")),
        ("tensors sha256", report.tensors_sha256[:16] + "…" + (f" ({report.tensor_proof})" if report.tensor_proof else "")),
    ]
    if report.skipped_images:
        rows.append(("skipped images", str(len(report.skipped_images))))
    if isinstance(report, OnnxReport):
        rows += onnx_rows(report)
    return rows


def onnx_rows(report: OnnxReport) -> list[tuple[str, str]]:
    """The rows only an ONNX report has: runtime, file, the native run and the agreement with it."""
    runtime, onnx = report.runtime, report.onnx
    rows = [
        ("runtime", f"{runtime.name} {runtime.version} on {', '.join(runtime.providers)} "
                    f"(asked: {', '.join(runtime.requested_providers)})"),
        ("onnx file", f"{onnx.exporter} ({onnx.exporter_version}), opset {onnx.opset}, {onnx.output_kind}"
                      + (", from the export cache" if onnx.from_cache else "")),
    ]
    if onnx.path:
        rows.append(("onnx path", onnx.path))
    if report.native:
        native = report.native
        rows.append(("native run", f"{native.framework.name} {native.framework.version} on {native.device.type}: "
                                   f"top-1 error {_fmt(native.top1_error)} %, {native.folder}"))
    if report.onnx_over_native_time is not None:
        rows.append(("ONNX / native time", f"{report.onnx_over_native_time:.2f}x (compute)"))
    if report.agreement:
        agreement = report.agreement
        scaled = agreement.max_abs_diff_over_max_abs_logit
        rows += [
            ("top-1 agreement", f"{agreement.top1_agreement:.2f} % ({agreement.n_flips} flips of "
                                f"{agreement.n_compared}; McNemar p = {agreement.mcnemar_p:.3g})"),
            (f"max |diff| ({agreement.compared})", f"{agreement.max_abs_logit_diff:.3g}"
             + (f" ({scaled:.2g} x the largest |native output|)" if scaled is not None else "")
             + (f"; {agreement.n_non_finite} image(s) with NaN or +-inf outputs left out" if agreement.n_non_finite
                else "")),
            ("within tolerance", f"{100 * agreement.within_tolerance:.3f} % of elements "
                                 f"(atol {agreement.atol:.3g}, rtol {agreement.rtol:g})"
                                 + ("; the native outputs are the same for every image" if
                                    agreement.native_varies is False else "")),
        ]
    if report.localization:
        rows.append(("localization", report.localization.verdict))
    if report.variants:
        rows += variant_rows(report.variants)
    if report.gate:
        rows.append(("gate", "; ".join(report.gate.failures) or "passed"))
    return rows


def write_markdown(path: Path, report: NativeReport, rows: list[Prediction]) -> None:
    """report.md: the summary, the resolved spec, where the time went, notes, skipped images, first predictions."""
    lines = [f"# xfverify {report.kind}: {report.model}", ""]
    if report.random_weights:
        lines += ["> **RANDOM WEIGHTS: these numbers say nothing about the pretrained model.**", ""]
    lines += ["| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary_rows(report)]
    lines += ["", "## Preprocessing (resolved)", "", "```json", json.dumps(report.preprocess.to_dict(), indent=2), "```"]
    if report.timing.timeline_s:
        lines += ["", "## Where the time went", "", "Seconds since the run began when each phase ended "
                  "(decoding and the framework worker run side by side):", ""]
        lines += [f"- {at:8.3f} s  {name.replace('_', ' ')}" for name, at in report.timing.timeline_s.items()]
    if isinstance(report, OnnxReport) and report.agreement and report.agreement.flips:
        lines += ["", "## Top-1 flips (native -> ONNX)", ""]
        lines += [f"- `{shown(f.image_id)}`: {f.native_top1} -> {f.onnx_top1}, labels {f.labels}, right: {f.right}"
                  for f in report.agreement.flips]
    if isinstance(report, OnnxReport) and report.localization:
        lines += ["", *localization_markdown(report.localization)]
    if isinstance(report, OnnxReport) and report.variants:
        lines += ["", *variants_markdown(report.variants)]
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {shown(n)}" for n in report.notes]
    if report.skipped_images:
        lines += ["", "## Skipped images", ""] + [f"- `{shown(s.path)}`: {shown(s.reason)}" for s in report.skipped_images]
    preview = [
        f"- `{shown(row.image_id)}`: {row.top1_name} ({row.top5[0]})" + (f", labels {list(row.labels)}" if row.labels else "")
        for row in rows[:10]
        if row.top5
    ]
    if preview:
        lines += ["", "## First predictions", ""] + preview
    path.write_text(shown_lines("\n".join(lines)) + "\n")  # names from the data (ONNX nodes, images) cannot drive a terminal


def _diff(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def localization_markdown(localization: Localization) -> list[str]:
    """report.md's section: the verdict, the culprit with its inputs and attributes, the next nodes, the curve (names
    cut to a readable length; the culprit's whole name is in report.json)."""
    lines = ["## Localization: where the graph first departs", ""]
    if localization.failed:
        return lines + [f"**{shown(localization.verdict)}**", "",
                        "The ONNX run's own results above stand; only the node-by-node comparison is missing."]
    lines += [f"Against {shown(localization.reference)}, on {len(localization.image_ids)} image(s) "
              f"({', '.join(f'`{shown(i)}`' for i in localization.image_ids)}); tolerance atol {localization.atol:g} "
              f"x each tensor's largest |reference value|, rtol {localization.rtol:g}; {localization.n_matched} of "
              f"{localization.n_onnx_tensors} graph tensors matched by {localization.matched_by}.", "",
              f"**{localization.verdict}**"]
    culprit = localization.culprit
    if culprit:
        lines += ["", f"- node `{shown_name(culprit.node)}` ({culprit.op_type}), output "
                      f"`{shown_name(culprit.tensor)}`, matches `{shown_name(culprit.reference)}` (by {culprit.matched_by}): max |diff| "
                      f"{culprit.max_abs_diff:.3g}, scaled {culprit.scaled_diff:.3g}, "
                      f"{100 * culprit.within_tolerance:.2f} % of elements within tolerance",
                  f"- attributes: {shown(', '.join(f'{k}={v}' for k, v in culprit.attributes.items()) or 'none')}"]
        lines += [f"- input `{i.tensor}` ({i.reference or 'no reference: it feeds tensors that agree'}): scaled "
                  f"difference {_diff(i.scaled_diff)}" + (" **already divergent**" if i.divergent else "")
                  for i in culprit.inputs]
        if culprit.unmatched_between:
            lines.append(f"- nodes between those inputs and it with no reference tensor: "
                         f"{', '.join(culprit.unmatched_between)}")
        if culprit.missing:
            lines.append(f"- reference layers between its inputs' and it that no node computes: "
                         f"{', '.join(culprit.missing)}")
        lines += ["", "Next nodes:", ""]
        lines += [f"- `{n.node}` ({n.op_type})" + (f", matches `{n.reference}`: scaled difference {_diff(n.scaled_diff)}"
                                                   if n.reference else ", no reference tensor")
                  for n in culprit.context]
    if localization.cost:
        cost = localization.cost
        lines += ["", f"Cost: {cost.n_images} image(s), ONNX Runtime {cost.onnx_s:.2f} s, reference "
                      f"{cost.reference_s:.2f} s, comparison {cost.compare_s:.2f} s; "
                      f"{cost.bytes_per_image / 2**20:.1f} MiB of intermediates per image, written one tensor at a time"]
    thinned = (f" ({localization.n_curve_left_out} of {localization.n_matched} left out, evenly)"
               if localization.n_curve_left_out else "")
    lines += ["", f"Scaled difference along the graph (matched tensors, topological order{thinned}; * a doubtful "
                  "match):", "", "```"]
    lines += [f"{n.index:5d} {_diff(n.scaled_diff):>10} {'DIVERGENT ' if n.divergent else '          '}"
              f"{'*' if not n.confident else ' '} {n.op_type:<20} {n.reference}" for n in localization.curve]
    return lines + ["```"]


def write_report(out_dir: Path, report: NativeReport) -> None:
    """report.json (the schema was checked when the report was built)."""
    (out_dir / "report.json").write_text(report.model_dump_json(indent=2) + "\n")
