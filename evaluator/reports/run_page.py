"""``report.html`` of ``xfverify native`` and ``xfverify onnx``: the numbers with their intervals, the published
number and its citation, where the time went, and for an ONNX run the images whose top-1 flipped (self-contained:
matplotlib figures as inline SVG, thumbnails as PNG data URIs; nothing is fetched when it is opened)."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from xfverify.evaluator.analysis.metrics import NO_CLASS
from xfverify.evaluator.reports.localize import PAGE as LOCALIZE_PAGE
from xfverify.evaluator.reports.run import NativeReport, OnnxReport, summary_rows
from xfverify.evaluator.reports.page import STYLE, svg, thumbnail
from xfverify.models.imagenet import class_name

PAGE = "report.html"
MAX_FLIPS_SHOWN = 48
# The worker's milestones and the cache's, each drawn on its own lane; every other mark is the run's own (parent).
WORKER_PHASES = ("worker_started", "framework_imported", "model_ready", "warmed_up", "data_received",
                 "first_batch_done", "last_batch_done", "worker_finished")
CACHE_PHASES = ("cache_surveyed", "decode_done")
LANES = (("run", None), ("tensor cache", CACHE_PHASES), ("framework worker", WORKER_PHASES))
COLOURS = ("#4477aa", "#66ccee", "#228833", "#ccbb44", "#ee6677", "#aa3377", "#bbbbbb", "#332288", "#88ccee",
           "#999933")


BENCHMARK_LABELS = {"imagenet": "top-1", "real": "ReaL top-1", "imagenetv2": "ImageNetV2 top-1 (another test set)"}

def _lanes(timeline: Mapping[str, float]) -> list[tuple[str, list[tuple[str, float]]]]:
    """The marks of each lane in time order (a lane with none is left out)."""
    placed = set(CACHE_PHASES) | set(WORKER_PHASES)
    lanes = []
    for title, names in LANES:
        marks = [(name, at) for name, at in timeline.items() if (name in names if names else name not in placed)]
        if marks:
            lanes.append((title, sorted(marks, key=lambda mark: mark[1])))
    return lanes


def timeline_svg(timeline: Mapping[str, float]) -> str:
    """One lane per side of the run (the run's own steps, the tensor cache, the framework worker): each phase a bar
    from the lane's previous mark to the mark that ends it (the run's first from 0; another lane's first mark a
    dot, its start not recorded), named where it is wide enough to hold its name."""
    from matplotlib.figure import Figure

    lanes = _lanes(timeline)
    end = max(timeline.values(), default=0.0) or 1.0
    figure = Figure(figsize=(10, 0.55 * len(lanes) + 1.6))
    axes = figure.subplots()
    colours: dict[str, str] = {}
    for y, (title, marks) in enumerate(lanes):
        start = 0.0 if title == "run" else None
        for name, at in marks:
            if start is None:
                axes.plot([at], [y], "o", color="#555555", markersize=4)
            else:
                width = at - start
                label = name.replace("_", " ")
                colour = colours.setdefault(name, COLOURS[len(colours) % len(COLOURS)])
                axes.barh([y], [width], left=[start], height=0.6, color=colour, edgecolor="white", linewidth=0.5,
                          label=label)
                if width > 0.07 * end:
                    axes.text(start + width / 2, y, label, ha="center", va="center", fontsize=7, clip_on=True)
            start = at
    if colours:
        axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=5, fontsize=7, frameon=False,
                    title="each bar: the phase that ended at its right edge", title_fontsize=7)
    axes.set_yticks(range(len(lanes)), [title for title, _ in lanes], fontsize=8)
    axes.invert_yaxis()
    axes.set_xlim(0, end * 1.01)
    axes.set_xlabel("seconds since the run began")
    figure.tight_layout()
    return svg(figure)


def errors_svg(report: NativeReport) -> str:
    """This run's top-1 and top-5 errors with their 95 % intervals, the published numbers, and for an ONNX run the
    native run it was compared with."""
    from matplotlib.figure import Figure

    rows: list[tuple[str, float, list[float] | None, str]] = []
    if report.top1_error is not None:
        rows.append(("top-1, this run", report.top1_error, report.top1_error_ci95, "#1f77b4"))
    if isinstance(report, OnnxReport) and report.native and report.native.top1_error is not None:
        rows.append(("top-1, native run", report.native.top1_error, None, "#2ca02c"))
    if report.real_labels:
        real = report.real_labels
        rows.append(("ReaL top-1, this run", real.top1_error, real.top1_error_ci95, "#9467bd"))
    for i, published in enumerate([p for p in (report.published, *report.other_published) if p is not None]):
        rows.append((f"{BENCHMARK_LABELS.get(published.benchmark, published.benchmark)}, published [{i + 1}]",
                     published.top1_error, None, "#d62728"))
    if report.top5_error is not None:
        rows.append(("top-5, this run", report.top5_error, report.top5_error_ci95, "#7f7f7f"))
    if report.published and report.published.top5_error is not None:
        rows.append(("top-5, published", report.published.top5_error, None, "#d62728"))
    figure = Figure(figsize=(7.5, 0.3 * max(len(rows), 1) + 0.9))
    axes = figure.subplots()
    for y, (_, value, interval, colour) in enumerate(rows):
        if interval:
            axes.errorbar([value], [y], xerr=[[value - interval[0]], [interval[1] - value]], fmt="o", color=colour,
                          capsize=3)
        else:
            axes.plot([value], [y], "D", color=colour)
    axes.set_yticks(range(len(rows)), [label for label, *_ in rows], fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("error % (this run: Wilson 95 % interval)")
    figure.tight_layout()
    return svg(figure)


def _answer(index: int, labels: list[int]) -> str:
    if index == NO_CLASS:
        return "none (NaN or +-inf output)"
    mark = "" if not labels else (" ✓" if index in labels else " ✗")
    return f"{class_name(index)}{mark}"


def _flips(report: OnnxReport, pictures: Mapping[str, np.ndarray]) -> str:
    agreement = report.agreement
    scale = agreement.max_abs_native_output
    figures = []
    for flip in agreement.flips[:MAX_FLIPS_SHOWN]:
        difference = "n/a (NaN or +-inf)" if flip.max_abs_diff is None else (
            f"{flip.max_abs_diff:.3g}" + (f" ({flip.max_abs_diff / scale:.2g} x)" if scale else ""))
        labels = ", ".join(class_name(label) for label in flip.labels) or "unlabelled"
        image = pictures.get(flip.image_id)
        picture = (f'<img src="{thumbnail(image)}" alt="{html.escape(flip.image_id)}">' if image is not None
                   else "<p>(image not shown)</p>")
        figures.append(
            f'<figure class="flip">{picture}<figcaption><b>{html.escape(flip.image_id)}</b><br>label: '
            f"{html.escape(labels)}<br>native: {html.escape(_answer(flip.native_top1, flip.labels))}<br>ONNX: "
            f"{html.escape(_answer(flip.onnx_top1, flip.labels))}<br>max |diff|: {difference}</figcaption></figure>")
    more = len(agreement.flips) - MAX_FLIPS_SHOWN
    return "".join(figures) + (f"<p>and {more} more (report.json lists them all)</p>" if more > 0 else "")


def _links(report: NativeReport, out_dir: Path | None, native_page: Path | None) -> list[tuple[str, str]]:
    """(href, text) of the run's other files, its localization page and its native run's page."""
    links = [("report.json", "report.json"), ("report.md", "report.md"), ("predictions.csv", "predictions.csv")]
    if isinstance(report, OnnxReport):
        if report.localization is not None:
            links.append((LOCALIZE_PAGE, "where the graph first departs (localize.html)"))
        if native_page is not None and out_dir is not None:
            relative = os.path.relpath(Path(native_page).resolve(), Path(out_dir).resolve())
            links.append((Path(relative).as_posix(), "the native run compared with"))
    return links


def run_page(report: NativeReport, out_dir: Path | None = None, pictures: Mapping[str, np.ndarray] | None = None,
             native_page: Path | None = None) -> str:
    """The page of a native or ONNX run whose outputs go into ``out_dir``; ``pictures``: the flipped images' uint8
    crops by image id; ``native_page``: the page (or report.md) of the native run an ONNX run compared with, linked
    relative to ``out_dir``."""
    escape = html.escape
    title = f"xfverify {report.kind}: {escape(report.model)}"
    rows = "".join(f"<tr><th>{escape(label)}</th><td>{escape(value)}</td></tr>" for label, value in summary_rows(report))
    cited = [("Published top-1 error", p) for p in (report.published,) if p is not None]
    cited += [("Also published", p) for p in report.other_published]
    citation = "".join(f"<p class='cite'>[{i + 1}] {what} {p.top1_error:.2f} %: {escape(p.source)}</p>"
                       for i, (what, p) in enumerate(cited))
    banner = ("<p class='warn'>RANDOM WEIGHTS: these numbers say nothing about the pretrained model.</p>"
              if report.random_weights else "")
    parts = [f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{STYLE}
table.summary th{{text-align:left;font-weight:normal;color:#444}}table.summary td{{text-align:left}}
p.warn{{background:#fee;border:1px solid #c33;padding:4px 8px;font-weight:bold}}p.cite{{font-size:13px;color:#333}}
figure.flip{{width:170px}}nav a{{margin-right:1em}}</style></head>
<body><h1>{title}</h1>{banner}
<nav>{"".join(f'<a href="{escape(href)}">{escape(text)}</a>' for href, text in _links(report, out_dir, native_page))}</nav>
<table class="summary">{rows}</table>
<h2>Error, with the published number</h2>{errors_svg(report)}{citation}"""]
    if report.timing.timeline_s:
        marks = "".join(f"<tr><td>{escape(name.replace('_', ' '))}</td><td>{at:.3f}</td></tr>"
                        for name, at in report.timing.timeline_s.items())
        parts.append(f"<h2>Where the time went</h2>{timeline_svg(report.timing.timeline_s)}"
                     f"<details><summary>every mark (seconds since the run began)</summary><table>{marks}</table>"
                     "</details>")
    if isinstance(report, OnnxReport) and report.agreement is not None:
        agreement = report.agreement
        parts.append(f"<h2>Images whose top-1 differs (native -> ONNX Runtime): {agreement.n_flips} of "
                     f"{agreement.n_compared}</h2>"
                     + (_flips(report, pictures or {}) if agreement.flips else "<p>none</p>"))
    if report.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{escape(note)}</li>" for note in report.notes) + "</ul>")
    if report.skipped_images:
        parts.append("<h2>Skipped images</h2><ul>" + "".join(
            f"<li>{escape(s.path)}: {escape(s.reason)}</li>" for s in report.skipped_images) + "</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
