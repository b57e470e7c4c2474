"""Reports: ``report.json`` (schema-checked), ``report.md``, ``predictions.csv``, and the summary table."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from xfverify.models.imagenet import class_name

REPORT_VERSION = 1


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class FrameworkInfo(_Open):
    name: str
    version: str


class WeightsInfo(_Open):
    source: str
    sha256: str


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


class DeltaInfo(_Open):
    top1_error: float
    outside_ci95: bool


class TimingInfo(_Open):
    data_wait_s: float
    compute_s: float
    wall_s: float
    images_per_s: Optional[float]
    batch_ms_mean: Optional[float]
    batch_ms_std: Optional[float]
    timeline_s: Optional[dict[str, float]] = None


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
    device: dict[str, Any]
    precision: dict[str, Any]
    weights: WeightsInfo
    preprocess: dict[str, Any]
    dataset: DatasetInfo
    tensors_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    output: str
    top1_error: Optional[float]
    top5_error: Optional[float]
    top1_error_ci95: Optional[list[float]]
    top5_error_ci95: Optional[list[float]]
    n_scored: int
    published: Optional[PublishedInfo]
    other_published: list[PublishedInfo]
    delta_vs_published: Optional[DeltaInfo]
    real_labels: Optional[dict[str, Any]]
    timing: TimingInfo
    cache: dict[str, Any]
    skipped_images: list[SkippedImage]
    notes: list[str]
    created: str
    xfverify_version: str


def write_predictions(path: Path, image_ids, labels, topk: np.ndarray, skipped: set[int]) -> None:
    """predictions.csv: image id, acceptable label(s), top-5 class indices, top-1 name."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "labels", "top5", "top1_name", "status"])
        for row, image_id in enumerate(image_ids):
            label_text = " ".join(str(v) for v in labels[row])
            if row in skipped:
                writer.writerow([image_id, label_text, "", "", "skipped"])
                continue
            top5 = " ".join(str(int(v)) for v in topk[row])
            status = "unlabelled" if not labels[row] else ("correct" if int(topk[row, 0]) in labels[row] else "wrong")
            writer.writerow([image_id, label_text, top5, class_name(int(topk[row, 0])), status])


def _fmt(value: Optional[float], digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs shared by the terminal table and report.md."""
    published = report.get("published") or {}
    delta = report.get("delta_vs_published") or {}
    ci = report.get("top1_error_ci95")
    timing = report["timing"]
    rows = [
        ("model", report["model"] + ("  [RANDOM WEIGHTS]" if report["random_weights"] else "")),
        ("framework", f"{report['framework']['name']} {report['framework']['version']}"),
        ("device / precision", f"{report['device'].get('name') or report['device']['type']} / {report['precision']['requested']}"),
        ("preprocess", report["preprocess"]["name"]),
        ("images scored", f"{report['n_scored']} of {report['dataset']['n_images']} ({report['dataset']['layout']})"),
        ("top-1 error %", f"{_fmt(report['top1_error'])}" + (f"  (95% CI {ci[0]:.2f}-{ci[1]:.2f})" if ci else "")),
        ("top-5 error %", _fmt(report["top5_error"])),
    ]
    if published:
        rows.append(("published top-1 %", f"{published['top1_error']:.2f}  ({published['source']})"))
    if delta:
        verdict = "outside the 95% CI" if delta["outside_ci95"] else "within the 95% CI"
        rows.append(("delta vs published", f"{delta['top1_error']:+.2f} points, {verdict}"))
    if report.get("real_labels"):
        rows.append(("ReaL top-1 error %", _fmt(report["real_labels"]["top1_error"])))
    rows += [
        ("throughput", f"{_fmt(timing['images_per_s'], 1)} img/s; wall {timing['wall_s']:.2f} s"),
        ("data wait / compute", f"{timing['data_wait_s']:.2f} s / {timing['compute_s']:.2f} s"),
        ("batch latency", f"{_fmt(timing['batch_ms_mean'])} ± {_fmt(timing['batch_ms_std'])} ms"),
    ]
    timeline = timing.get("timeline_s") or {}
    if timeline:
        last = max(timeline.values())
        ready = timeline.get("warmed_up", timeline.get("model_ready"))
        rows.append(("whole run", f"{last:.2f} s" + (f" (model ready after {ready:.2f} s)" if ready is not None else "")))
    rows += [
        ("decode (cache)", f"{report['cache']['decoded']} decoded, {report['cache']['reused_shards']} shard(s) reused"),
        ("tensors sha256", report["tensors_sha256"][:16] + "…"),
    ]
    if report["skipped_images"]:
        rows.append(("skipped images", str(len(report["skipped_images"]))))
    return rows


def write_markdown(path: Path, report: dict[str, Any], predictions_preview: list[str]) -> None:
    lines = [f"# xfverify native: {report['model']}", ""]
    if report["random_weights"]:
        lines += ["> **RANDOM WEIGHTS: these numbers say nothing about the pretrained model.**", ""]
    lines += ["| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary_rows(report)]
    lines += ["", "## Preprocessing (resolved)", "", "```json", json.dumps(report["preprocess"], indent=2), "```"]
    timeline = report["timing"].get("timeline_s") or {}
    if timeline:
        lines += ["", "## Where the time went", "", "Seconds since the run began when each phase ended "
                  "(decoding and the framework worker run side by side):", ""]
        lines += [f"- {at:8.3f} s  {name.replace('_', ' ')}" for name, at in timeline.items()]
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    if report["skipped_images"]:
        lines += ["", "## Skipped images", ""] + [
            f"- `{s['path']}`: {s['reason']}" for s in report["skipped_images"]
        ]
    if predictions_preview:
        lines += ["", "## First predictions", ""] + predictions_preview
    path.write_text("\n".join(lines) + "\n")


def write_report(out_dir: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Validate against :class:`NativeReport` and write report.json; returns the validated dict."""
    validated = NativeReport.model_validate(report).model_dump(mode="json")
    (out_dir / "report.json").write_text(json.dumps(validated, indent=2) + "\n")
    return validated
