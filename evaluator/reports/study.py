"""What ``xfverify study`` writes: study.json (typed), study.md, study.csv and a self-contained study.html: one row
per model, its native, ONNX Runtime and diagnose cells side by side, models of one architecture together."""

from __future__ import annotations

import csv
import html
import io
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from xfverify.evaluator.reports.page import STYLE, svg
from xfverify.models.user_input import shown_lines

STUDY_OUTPUTS = ("study.json", "study.md", "study.csv", "study.html")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NativeCell(_Strict):
    top1_error: Optional[float]
    top1_error_ci95: Optional[list[float]]
    top5_error: Optional[float]
    n_scored: int
    tensors_sha256: str
    device: str
    images_per_s: Optional[float]
    data_wait_s: float
    compute_s: float


class OnnxCell(_Strict):
    top1_error: Optional[float]
    tensors_sha256: str
    exporter: str
    opset: int
    top1_agreement: Optional[float] = Field(description="percent of the images with the native run's top-1")
    n_flips: Optional[int]
    mcnemar_p: Optional[float]
    max_abs_diff_over_max_abs_logit: Optional[float]
    providers: list[str]
    images_per_s: Optional[float]
    data_wait_s: float
    onnx_over_native_time: Optional[float]


class Cause(_Strict):
    name: str
    axis: str
    delta: float = Field(description="top-1 error minus the reference's, percentage points")
    delta_ci95: list[float]


class DiagnoseCell(_Strict):
    reproduced: float
    n_variants: int
    causes: list[Cause] = Field(description="the significant variants, largest first within each axis")
    within_noise: list[str]
    sentence: str


class CellResult(_Strict):
    """One cell's outcome: where its outputs are, what determined it (``key``), and its numbers (or its error)."""

    key: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of everything that determines the cell")
    run: Literal["native", "onnx", "diagnose"]
    model: str
    folder: str = Field(description="the command's --out, relative to the study's folder")
    status: Literal["done", "failed", "skipped"]
    error: Optional[str] = None
    seconds: float
    report_sha256: Optional[str] = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                                         description="sha256 of the cell's report.json when it finished (a cell whose "
                                                     "report changed since runs again)")
    native: Optional[NativeCell] = None
    onnx: Optional[OnnxCell] = None
    diagnose: Optional[DiagnoseCell] = None


class ModelRow(_Strict):
    """A model's row: its published error and what each of its cells found."""

    model: str
    architecture: str
    framework: str
    published_top1_error: Optional[float]
    native: Optional[NativeCell]
    onnx: Optional[OnnxCell]
    diagnose: Optional[DiagnoseCell]
    failed: list[str] = Field(description="this model's cells that failed or were skipped, and why")


class StudyDataset(_Strict):
    path: str
    n_images: int
    n_labelled: int
    manifest_sha256: str


class StudyReport(_Strict):
    """What ``study.json`` holds."""

    report_version: int = 1
    kind: str = "study"
    name: str
    about: str
    dataset: StudyDataset
    executor: str
    cells: list[CellResult]
    rows: list[ModelRow]
    ran: int = Field(description="cells run by this invocation (the others were already done)")
    reused: int
    wall_s: float
    xfverify_version: str


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _interval(values: list[float] | None) -> str:
    return "" if not values else f"{values[0]:.1f}-{values[1]:.1f}"


def _rate(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def _causes(cell: DiagnoseCell | None, limit: int = 2) -> str:
    if cell is None:
        return ""
    if not cell.causes:
        return "none outside the noise"
    return "; ".join(f"{c.name} {c.delta:+.1f} ({c.delta_ci95[0]:+.1f} to {c.delta_ci95[1]:+.1f})"
                     for c in cell.causes[:limit])


COLUMNS = ("model", "framework", "published top-1 %", "native top-1 % (95 % CI)", "ONNX Runtime top-1 %",
           "top-1 agreement %", "flips", "McNemar p", "top causes (diagnose, points)", "native img/s",
           "native data wait s", "ONNX img/s")


def row_cells(row: ModelRow) -> list[str]:
    native, onnx = row.native, row.onnx
    return [
        row.model, row.framework, _pct(row.published_top1_error),
        "" if native is None else f"{_pct(native.top1_error)} ({_interval(native.top1_error_ci95)})",
        "" if onnx is None else _pct(onnx.top1_error),
        "" if onnx is None or onnx.top1_agreement is None else f"{onnx.top1_agreement:.2f}",
        "" if onnx is None or onnx.n_flips is None else str(onnx.n_flips),
        "" if onnx is None or onnx.mcnemar_p is None else f"{onnx.mcnemar_p:.2g}",
        _causes(row.diagnose),
        "" if native is None else _rate(native.images_per_s),
        "" if native is None else f"{native.data_wait_s:.1f}",
        "" if onnx is None else _rate(onnx.images_per_s),
    ]


def markdown(report: StudyReport) -> str:
    data = report.dataset
    lines = [f"# xfverify study: {report.name}", "", *([report.about, ""] if report.about else []),
             f"{data.n_images} images ({data.n_labelled} labelled) from {data.path}; {len(report.cells)} cells, "
             f"{report.ran} run now, {report.reused} already done; executor {report.executor}.", ""]
    columns = ("architecture", *COLUMNS)  # the rows of one architecture together: the cross-framework comparison
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in (row.architecture, *row_cells(row))) + " |"
              for row in report.rows]
    lines.append("")
    failed = [f"- {c.run} {c.model}: {c.status}: {c.error}" for c in report.cells if c.status != "done"]
    if failed:
        lines += ["## Cells that did not finish", "", *failed, ""]
    lines += ["Each cell's own report is in its folder (`cells/`); rerun the study to run only what is missing or "
              "changed.", ""]
    return shown_lines("\n".join(lines))  # the study's about, a path: no control character reaches a terminal


def csv_text(report: StudyReport) -> str:
    handle = io.StringIO()
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(["architecture", *COLUMNS])
    for row in report.rows:
        writer.writerow([row.architecture, *row_cells(row)])
    return handle.getvalue()


def errors_svg(report: StudyReport) -> str:
    """Per model: the native top-1 error with its 95 % interval, the published error, ONNX Runtime's error."""
    from matplotlib.figure import Figure

    rows = report.rows
    figure = Figure(figsize=(7.5, 0.32 * len(rows) + 1.2))
    axes = figure.subplots()
    for y, row in enumerate(rows):
        native = row.native
        if native is not None and native.top1_error is not None and native.top1_error_ci95:
            lo, hi = native.top1_error_ci95
            axes.errorbar([native.top1_error], [y], xerr=[[native.top1_error - lo], [hi - native.top1_error]],
                          fmt="o", color="#1f77b4", capsize=2, label="native (95 % CI)" if y == 0 else None)
        if row.published_top1_error is not None:
            axes.plot([row.published_top1_error], [y], "|", color="#d62728", markersize=14,
                      label="published" if y == 0 else None)
        if row.onnx is not None and row.onnx.top1_error is not None:
            axes.plot([row.onnx.top1_error], [y], "x", color="#2ca02c", label="ONNX Runtime" if y == 0 else None)
    axes.set_yticks(range(len(rows)), [row.model for row in rows], fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("top-1 error %")
    axes.legend(fontsize=8, loc="best")
    return svg(figure)


def speed_svg(report: StudyReport) -> str:
    """Per model: images/s natively and under ONNX Runtime (the loop's rate, data wait included)."""
    from matplotlib.figure import Figure

    rows = [row for row in report.rows if row.native is not None or row.onnx is not None]
    figure = Figure(figsize=(7.5, 0.32 * max(len(rows), 1) + 1.2))
    axes = figure.subplots()
    for y, row in enumerate(rows):
        for offset, cell, colour, label in ((-0.18, row.native, "#1f77b4", "native"),
                                            (0.18, row.onnx, "#2ca02c", "ONNX Runtime")):
            if cell is not None and cell.images_per_s:
                axes.barh([y + offset], [cell.images_per_s], height=0.34, color=colour, label=label if y == 0 else None)
    axes.set_yticks(range(len(rows)), [row.model for row in rows], fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("images/s (the evaluation loop, data wait included)")
    if rows:
        axes.legend(fontsize=8, loc="best")
    return svg(figure)


def html_page(report: StudyReport) -> str:
    """One self-contained page: the table, the errors against the published ones, the speeds."""
    data = report.dataset
    head = "".join(f"<th>{html.escape(column)}</th>" for column in ("architecture", *COLUMNS))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in (row.architecture, *row_cells(row)))
                   + "</tr>" for row in report.rows)
    failed = "".join(f"<li>{html.escape(f'{c.run} {c.model}: {c.status}: {c.error}')}</li>"
                     for c in report.cells if c.status != "done")
    title = f"xfverify study: {html.escape(report.name)}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{STYLE}</style></head>
<body><h1>{title}</h1><p>{html.escape(report.about)}</p>
<p>{data.n_images} images ({data.n_labelled} labelled) from {html.escape(data.path)}; {len(report.cells)} cells.</p>
<table><tr>{head}</tr>{body}</table>
{f"<h2>Cells that did not finish</h2><ul>{failed}</ul>" if failed else ""}
<h2>Top-1 error against the published one</h2>{errors_svg(report)}
<h2>Speed</h2>{speed_svg(report)}
</body></html>
"""
