"""What ``xfverify diagnose`` writes: report.json (schema-checked), report.md and one self-contained report.html
(matplotlib figures as inline SVG, thumbnails as PNG data URIs: nothing is fetched when it is opened)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from xfverify.evaluator.analysis.metrics import NO_CLASS
from xfverify.evaluator.process.blocks import DiagnoseWeightsBlock, PrecisionBlock
from xfverify.evaluator.process.tasks import DeviceInfo, FrameworkInfo
from xfverify.evaluator.reports.page import STYLE, svg, thumbnail
from xfverify.evaluator.reports.run import DatasetInfo, PublishedInfo
from xfverify.models.imagenet import class_name
from xfverify.models.preprocess import PreprocessSpec
from xfverify.models.user_input import shown, shown_lines
from xfverify.models.variants import RUNTIME

OUTPUTS = ("report.md", "report.html", "report.json")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CorrectnessFlip(_Strict):
    """An image the variant gets right where the reference gets it wrong, or the other way round."""

    index: int
    image_id: str
    labels: list[int]
    reference_top1: int
    variant_top1: int


class VariantRow(_Strict):
    """One preprocessing, or one runtime (ONNX Runtime, another precision), on the same images as the reference,
    and its paired difference."""

    name: str
    group: str
    why: str
    base: Optional[str]
    overrides: dict[str, Any]
    spec: PreprocessSpec
    geometry_key: str
    tensors_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    precision: PrecisionBlock = Field(description="what the pass actually ran at: its back-end's precision block")
    ran_as: Optional[str] = Field(default=None, description="a deployment variant's row: what its file computes in "
                                                            "(the block above is ONNX Runtime's, which ran it as asked)")
    max_output_difference: Optional[float] = Field(
        description="runtime rows: the largest |output - the reference's| over the scored images, as a fraction of "
                    "the reference's largest |output| (the same tensors were fed); None for preprocessing variants")
    n_scored: int
    top1_error: float
    top5_error: float
    top1_error_ci95: list[float]
    delta: float = Field(description="top-1 error minus the reference's, percentage points")
    delta_ci95: list[float] = Field(description="Newcombe's paired 95 % interval of delta")
    mcnemar_p: float
    right_to_wrong: int
    wrong_to_right: int
    significant: bool = Field(description="McNemar p < 0.05 and an interval without 0")
    flips: list[CorrectnessFlip]


class Step(_Strict):
    name: str
    axis: str = Field(description="published (the step to the reference), preprocessing or runtime")
    delta: float
    delta_ci95: Optional[list[float]]
    start: float = Field(description="top-1 error % the step starts from: the published one for the first step, "
                                     "the reference's for each variant (variants are alternatives, not added up)")
    end: float


class Decomposition(_Strict):
    published: Optional[float]
    reproduced: float
    steps: list[Step]
    ranked: list[str] = Field(description="the significant variants: preprocessing, then runtime, largest |delta| "
                                          "first within each")
    within_noise: list[str]
    sentence: str


class GeometryCost(_Strict):
    """One distinct geometry's decoding (the variants sharing it read the same shards)."""

    decoded: int
    decode_s: float
    reused_shards: int


class PassCost(_Strict):
    name: str
    warmup_s: float
    loop_wall_s: float


class Cost(_Strict):
    """What the diagnosis cost: decoding per geometry, and one model pass per variant (one model load)."""

    geometries: int
    decoded_images: int
    decode_s: float
    model_passes: int
    precision_passes: int
    compute_s: float
    worker_wall_s: float
    model_loads: int
    passes: list[PassCost]


class DiagnoseReport(_Strict):
    """What ``report.json`` of ``xfverify diagnose`` holds."""

    report_version: int = 3  # 2: rows carry their precision block, steps their axis; 3: variant steps start at the reference
    kind: str = "diagnose"
    model: str
    architecture: str
    framework: FrameworkInfo
    device: DeviceInfo
    precision: PrecisionBlock
    weights: DiagnoseWeightsBlock
    random_weights: bool
    dataset: DatasetInfo
    n_scored: int
    published: Optional[PublishedInfo]
    reference: VariantRow
    variants: list[VariantRow]
    decomposition: Decomposition
    cost: Cost
    notes: list[str]
    xfverify_version: str


def _signed(value: float) -> str:
    return f"{value:+.1f}"


def _is_runtime(row: VariantRow) -> bool:
    return row.group == RUNTIME


def _causes(rows: list[VariantRow]) -> str:
    return ", ".join(f"{r.name} ({_signed(r.delta)}, 95 % CI {_signed(r.delta_ci95[0])} to "
                     f"{_signed(r.delta_ci95[1])}; {r.right_to_wrong} right->wrong / {r.wrong_to_right} "
                     "wrong->right)" for r in rows)


def _opening(published: float | None, reproduced: float, ci95: list[float] | None) -> str:
    """The sentence's start: the reference's error against the published one, and what a gap can be."""
    if published is None:
        return f"The reference preprocessing gives {reproduced:.1f} %"
    opening = f"With the reference preprocessing (the weights' own pipeline) the error is {reproduced:.1f} %"
    if ci95 and ci95[0] <= published <= ci95[1]:
        return f"{opening}: the published {published:.1f} % lies inside its 95 % CI ({ci95[0]:.1f} to {ci95[1]:.1f})"
    gap = reproduced - published
    if gap > 0:
        return (f"{opening}, {gap:.1f} points above the published {published:.1f} %, a gap preprocessing does not "
                "explain (the model, its runtime, or the images)")
    return (f"{opening}, {-gap:.1f} points below the published {published:.1f} % (these images are easier than the "
            "set it was published on)")


def decomposition(published: float | None, reference: VariantRow, variants: list[VariantRow]) -> Decomposition:
    """Published error -> the reference's -> each significant variant's delta (preprocessing, then the runtime axis:
    ONNX Runtime, other precisions; each ranked), each variant's step from the reference's error (each was measured
    alone), and the sentence that says it; variants inside the noise are listed, never ranked."""
    reproduced = reference.top1_error
    steps: list[Step] = []
    if published is not None:
        steps.append(Step(name="reference vs published", axis="published", delta=round(reproduced - published, 4),
                          delta_ci95=None, start=published, end=reproduced))
    preprocessing = [r for r in variants if not _is_runtime(r)]
    runtime = [r for r in variants if _is_runtime(r)]
    ranked_preprocessing = sorted((r for r in preprocessing if r.significant), key=lambda r: -abs(r.delta))
    ranked_runtime = sorted((r for r in runtime if r.significant), key=lambda r: -abs(r.delta))
    for row in ranked_preprocessing + ranked_runtime:
        steps.append(Step(name=row.name, axis=RUNTIME if _is_runtime(row) else "preprocessing", delta=row.delta,
                          delta_ci95=row.delta_ci95, start=reproduced, end=round(reproduced + row.delta, 4)))
    start = _opening(published, reproduced, reference.top1_error_ci95)
    explained = ("; preprocessing choices that change the error measurably, largest first: "
                 + _causes(ranked_preprocessing) if ranked_preprocessing
                 else "; no preprocessing variant changes the error measurably" if preprocessing else "")
    if ranked_runtime:
        explained += "; on the runtime axis (conversion, precision) the error changes measurably with: " + _causes(
            ranked_runtime)
    elif runtime:
        explained += f"; the runtime axis ({', '.join(r.name for r in runtime)}) changes nothing measurable"
    quiet = sum(not r.significant for r in preprocessing)
    quiet_clause = f"; {quiet} variant{'s change' if quiet != 1 else ' changes'} nothing measurable"
    return Decomposition(
        published=published, reproduced=reproduced, steps=steps,
        ranked=[r.name for r in ranked_preprocessing + ranked_runtime],
        within_noise=[r.name for r in variants if not r.significant],
        sentence=f"{start}{explained}{quiet_clause if quiet else ''}.",
    )


def write_diagnose_outputs(folder: Path, report: DiagnoseReport, images: dict[int, np.ndarray]) -> None:
    """report.json, report.md and report.html written into ``folder`` (the run's staging folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(report.model_dump_json(indent=1) + "\n")
    (folder / "report.md").write_text(shown_lines(markdown(report)))
    (folder / "report.html").write_text(html_page(report, images))


def _rows(report: DiagnoseReport) -> list[VariantRow]:
    return [report.reference, *report.variants]


def ran_at(precision: PrecisionBlock) -> str:
    """A precision block in a few words: what the arithmetic actually was (torch autocast, a Keras policy, TF32)."""
    return precision.ran_at()


def _ran_cell(row: VariantRow) -> str:
    difference = row.max_output_difference
    return (row.ran_as or ran_at(row.precision)) + ("" if difference is None else
                                                     f"; outputs within {100 * difference:.2g} %")


def _paired_cells(row: VariantRow, report: DiagnoseReport) -> tuple[str, str, str, str]:
    """Delta, its interval, flips and McNemar p as shown; the reference is not paired with itself."""
    if row is report.reference:
        return ("—",) * 4
    return (_signed(row.delta), f"{_signed(row.delta_ci95[0])} to {_signed(row.delta_ci95[1])}",
            f"{row.right_to_wrong} / {row.wrong_to_right}", f"{row.mcnemar_p:.2g}")


def markdown(report: DiagnoseReport) -> str:
    lines = [f"# xfverify diagnose: {report.model}", "", report.decomposition.sentence, "",
             f"{report.n_scored} images scored, {report.dataset.path}; published: "
             f"{report.published.top1_error if report.published else 'none'}", "",
             "| variant | group | ran at | top-1 error % (95 % CI) | delta (95 % CI) | right->wrong / wrong->right "
             "| McNemar p | |", "|---|---|---|---|---|---|---|---|"]
    for row in _rows(report):
        lo, hi = row.top1_error_ci95
        verdict = "reference" if row is report.reference else ("significant" if row.significant else "within the noise")
        delta, interval, flips, p = _paired_cells(row, report)
        paired = delta if row is report.reference else f"{delta} ({interval})"
        lines.append(f"| {row.name} | {row.group} | {_ran_cell(row)} | {row.top1_error:.1f} ({lo:.1f}-{hi:.1f}) | "
                     f"{paired} | {flips} | {p} | {verdict} |")
    lines += ["", "## Cost", "", *(f"- {k}: {v}" for k, v in report.cost.model_dump(exclude={"passes"}).items())]
    lines += [f"- pass {p.name}: warm-up {p.warmup_s} s, loop {p.loop_wall_s} s" for p in report.cost.passes]
    if report.notes:
        lines += ["", "## Notes", "", *(f"- {shown(n)}" for n in report.notes)]
    return "\n".join(lines) + "\n"


def waterfall_svg(report: DiagnoseReport) -> str:
    """Published error, the step to the reference, then each significant variant's delta alone, as floating bars
    (the runtime axis hatched)."""
    from matplotlib.figure import Figure

    d = report.decomposition
    labels, bottoms, heights, colours, hatches = [], [], [], [], []
    if d.published is not None:
        labels.append("published")
        bottoms.append(0.0)
        heights.append(d.published)
        colours.append("#777777")
        hatches.append("")
    labels.append("reference")
    bottoms.append(0.0)
    heights.append(d.reproduced)
    colours.append("#1f77b4")
    hatches.append("")
    for step in d.steps:
        if step.name == "reference vs published":
            continue
        labels.append(step.name)
        bottoms.append(min(step.start, step.end))
        heights.append(abs(step.delta))
        colours.append("#d62728" if step.delta > 0 else "#2ca02c")
        hatches.append("//" if step.axis == RUNTIME else "")
    figure = Figure(figsize=(max(5.0, 1.1 * len(labels)), 3.6))
    axes = figure.subplots()
    axes.bar(range(len(labels)), heights, bottom=bottoms, color=colours, hatch=hatches)
    for i, step in enumerate(s for s in d.steps if s.name != "reference vs published"):
        x = i + (2 if d.published is not None else 1)
        axes.errorbar([x], [step.end], yerr=[[step.end - (step.start + step.delta_ci95[0])],
                                             [(step.start + step.delta_ci95[1]) - step.end]], color="black", capsize=3)
    axes.set_xticks(range(len(labels)), labels, rotation=30, ha="right", parse_math=False)  # user names: text
    axes.set_ylabel("top-1 error %")
    axes.set_title("published -> reference; each significant variant on its own (deltas with 95 % CI; hatched: runtime)",
                   fontsize=9)
    return svg(figure)


def errors_svg(report: DiagnoseReport) -> str:
    """Every variant's top-1 error with its 95 % interval; significant differences in colour, the noise in grey."""
    from matplotlib.figure import Figure

    rows = _rows(report)
    figure = Figure(figsize=(7.0, 0.28 * len(rows) + 1.0))
    axes = figure.subplots()
    for y, row in enumerate(rows):
        lo, hi = row.top1_error_ci95
        colour = "#1f77b4" if y == 0 else ("#d62728" if row.significant and row.delta > 0 else
                                           "#2ca02c" if row.significant else "#aaaaaa")
        axes.errorbar([row.top1_error], [y], xerr=[[row.top1_error - lo], [hi - row.top1_error]], fmt="o",
                      color=colour, capsize=2)
    axes.axvline(report.reference.top1_error, color="#1f77b4", linewidth=0.8, linestyle="--")
    axes.set_yticks(range(len(rows)), [r.name for r in rows], fontsize=8, parse_math=False)
    axes.invert_yaxis()
    axes.set_xlabel("top-1 error % (Wilson 95 % CI); grey: within the noise of the reference")
    return svg(figure)


def _predicted(index: int) -> str:
    """A top-1's class name; an output holding NaN or +-inf predicts none."""
    return "none (NaN or +-inf output)" if index == NO_CLASS else class_name(index)


def _flip_figures(row: VariantRow, images: dict[int, np.ndarray]) -> str:
    cells = []
    for flip in row.flips[:12]:
        if flip.index not in images:
            continue
        ref_ok = flip.reference_top1 in flip.labels
        caption = (f"{html.escape(flip.image_id)}<br>label: {html.escape(class_name(flip.labels[0]))}<br>"
                   f"reference: {html.escape(_predicted(flip.reference_top1))} {'✓' if ref_ok else '✗'}<br>"
                   f"{html.escape(row.name)}: {html.escape(_predicted(flip.variant_top1))} {'✗' if ref_ok else '✓'}")
        cells.append(f'<figure><img src="{thumbnail(images[flip.index])}" alt="{html.escape(flip.image_id)}">'
                     f"<figcaption>{caption}</figcaption></figure>")
    return "".join(cells)


def html_page(report: DiagnoseReport, images: dict[int, np.ndarray]) -> str:
    """One self-contained page: the sentence, the waterfall, the errors with intervals, the table, the flips."""
    rows = []
    for row in _rows(report):
        verdict = "reference" if row is report.reference else ("significant" if row.significant else "within the noise")
        rows.append(f'<tr class="{"noise" if verdict == "within the noise" else ""}"><td>{html.escape(row.name)}</td>'
                    f"<td>{html.escape(row.group)}</td><td>{html.escape(_ran_cell(row))}</td>"
                    f"<td>{row.top1_error:.1f}</td>"
                    + "".join(f"<td>{html.escape(cell)}</td>" for cell in _paired_cells(row, report))
                    + f"<td>{verdict}</td></tr>")
    flips = "".join(f"<h3>{html.escape(row.name)}: {row.right_to_wrong} right->wrong, {row.wrong_to_right} "
                    f"wrong->right</h3>{_flip_figures(row, images)}" for row in report.variants if row.significant)
    title = f"xfverify diagnose: {html.escape(report.model)}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{STYLE}</style></head>
<body><h1>{title}</h1><p>{html.escape(report.decomposition.sentence)}</p>
<p>{report.n_scored} images scored from {html.escape(report.dataset.path)}; {html.escape(report.framework.name)}
{html.escape(report.framework.version)} on {html.escape(report.device.name)}.</p>
<h2>From the published error to the reference, and what each significant variant changes on its own</h2>{waterfall_svg(report)}
<h2>Top-1 error per variant</h2>{errors_svg(report)}
<table><tr><th>variant</th><th>group</th><th>ran at</th><th>top-1 err %</th><th>delta</th><th>95 % CI (Newcombe, paired)</th>
<th>right->wrong / wrong->right</th><th>McNemar p</th><th></th></tr>{"".join(rows)}</table>
<h2>Images that flip (the reference's crop; first 12 per significant variant)</h2>{flips or "<p>none</p>"}
</body></html>
"""
