"""What ``xfverify study`` writes: study.json (typed), study.md, study.csv and a self-contained study.html: one row
per model, its native, ONNX Runtime and diagnose cells side by side, models of one architecture together. The page
carries its rows as inline JSON and a small script (study_page.js) that draws the table, sorts and filters it and
draws the plots, so a study of a thousand models stays a page of a few hundred kB that opens from a file."""

from __future__ import annotations

import csv
import html
import io
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from xfverify.evaluator.reports.page import STYLE
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


class VariantCell(_Strict):
    """A deployment variant of the cell's export (``xfverify onnx --variant``), scored on the same tensors."""

    name: str
    top1_error: Optional[float]
    top1_error_ci95: Optional[tuple[float, float]]
    delta_vs_plain: float = Field(description="top-1 error minus the plain export's, points")
    delta_ci95: tuple[float, float] = Field(description="Newcombe's paired 95 % interval of delta_vs_plain")
    top1_agreement_plain: Optional[float] = Field(description="percent of the images with the plain export's top-1")
    n_flips_plain: Optional[int]
    within_tolerance_plain: Optional[float]
    delta_vs_native: Optional[float] = Field(description="top-1 error minus the native run's, points")
    time_over_plain: Optional[float] = Field(description="compute seconds over the plain export's, same run")
    remedy_of: Optional[str] = Field(default=None, description="the int8 variant it remedies (nodes kept in float)")


class OnnxCell(_Strict):
    top1_error: Optional[float]
    tensors_sha256: str
    exporter: str
    opset: int
    top1_agreement: Optional[float] = Field(description="percent of the images with the native run's top-1")
    n_flips: Optional[int]
    mcnemar_p: Optional[float]
    max_abs_diff_over_max_abs_logit: Optional[float]
    within_tolerance: Optional[float] = Field(default=None, description="share of output elements within tolerance "
                                              "(absent from cells recorded before it was)")
    native_varies: Optional[bool] = Field(default=None, description="whether the native outputs differ between "
                                          "images (false: agreeing with them proves little; absent before)")
    providers: list[str]
    images_per_s: Optional[float]
    data_wait_s: float
    onnx_over_native_time: Optional[float]
    variants: list[VariantCell] = Field(default=[], description="the deployment variants the cell asked for")
    calibration: Optional[str] = Field(default=None, description="int8's calibration images: how many, manifest")


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


def _variants(cell: OnnxCell | None) -> str:
    """Each deployment variant: its top-1 error, its agreement with the plain export, in %."""
    if cell is None or not cell.variants:
        return ""
    return "; ".join(f"{v.name} {_pct(v.top1_error)} ({'' if v.top1_agreement_plain is None else f'{v.top1_agreement_plain:.1f}'})"
                     for v in cell.variants)


COLUMNS = ("model", "framework", "published top-1 %", "native top-1 % (95 % CI)", "ONNX Runtime top-1 %",
           "top-1 agreement %", "flips", "McNemar p", "top causes (diagnose, points)", "native img/s",
           "native data wait s", "ONNX img/s", "deployment variants: top-1 % (agreement with the export %)")


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
        _variants(onnx),
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


PAGE_SCRIPT = "study_page.js"
CELL_PAGES = ("report.html", "report.md")  # what a row links to in each cell's folder, the first found
PER_MODEL_LIMIT = 40  # the per-model plot is drawn for at most this many shown models
TABLE_PAGE = 200  # rows in the table at once (the others a click away): a redraw stays quick at a thousand models
MAX_POINT_LABELS = 30  # outliers named on the error plot (every point names itself on hover)
MARKS = {
    "outside": {"symbol": "▲", "title": "the published error lies outside the reproduced error's 95 % interval"},
    "onnx": {"symbol": "◆", "title": "ONNX Runtime disagrees with the native run: top-1 flips, or outputs outside "
                                    "tolerance"},
    "failed": {"symbol": "✗", "title": "a cell of this model failed or was skipped"},
    "constant": {"symbol": "○", "title": "the native outputs are the same for every image (random weights that "
                                        "collapse): the ONNX agreement proves little"},
}
PAGE_COLUMNS = (  # key in the page's rows, header, kind, digits, what it says
    ("marks", "", "text", 0, "marked rows: " + "; ".join(f"{m['symbol']} {m['title']}" for m in MARKS.values())),
    ("short", "model", "text", 0, "the model (full id on hover); N, O, D: its native, ONNX and diagnose cells' pages"),
    ("architecture", "architecture", "text", 0, "the architecture (models of one architecture compare frameworks)"),
    ("framework", "framework", "text", 0, "the framework the model runs in natively"),
    ("published", "published %", "number", 1, "published top-1 error %, from the model's card (cited on its page)"),
    ("reproduced", "reproduced %", "number", 1, "top-1 error % of the native run"),
    ("difference", "difference (95 % CI)", "number", 1,
     "reproduced minus published error, in points, with the reproduced error's Wilson 95 % interval"),
    ("onnx_error", "ONNX %", "number", 1, "top-1 error % of the ONNX export under ONNX Runtime"),
    ("agreement", "agreement %", "number", 2, "images with the same top-1 natively and under ONNX Runtime"),
    ("flips", "flips", "number", 0, "images whose top-1 differs between the native run and ONNX Runtime"),
    ("cause", "top cause", "text", 0, "diagnose's largest measurable change, in points"),
    ("native_speed", "native img/s", "number", 0, "images/s of the native evaluation loop (data wait included)"),
    ("onnx_speed", "ONNX img/s", "number", 0, "images/s under ONNX Runtime"),
    ("variants", "deployment variants", "text", 0,
     "each deployment variant of the export: top-1 error % (agreement with the export's top-1 %)"),
)


def cell_pages(report: StudyReport, folder: Path) -> dict[str, str]:
    """Each finished cell's page as a link relative to the study's folder (its report.html, else its report.md),
    by cell key; a cell whose folder holds neither is left out, so no link on the page leads nowhere."""
    pages = {}
    for cell in report.cells:
        if cell.status != "done":
            continue
        for name in CELL_PAGES:
            path = Path(cell.folder) / name
            if os.path.isfile(folder / path) and not os.path.islink(folder / path):
                pages[cell.key] = path.as_posix()
                break
    return pages


def short_names(models: list[str]) -> dict[str, str]:
    """A label for each model id that leaves the plot its room: the name without its source, its weights' tag only
    where two models share a name; at most 28 characters (the full id is shown on hover)."""
    def parts(model: str) -> tuple[str, str]:
        name = model.split("/", 1)[-1]
        return (name.rsplit(":", 1)[0], name.rsplit(":", 1)[1]) if ":" in name else (name, "")

    counts: dict[str, int] = {}
    for model in models:
        counts[parts(model)[0]] = counts.get(parts(model)[0], 0) + 1
    short = {}
    for model in models:
        name, tag = parts(model)
        label = f"{name}:{tag.removeprefix('IMAGENET1K_')}" if counts[name] > 1 and tag else name
        short[model] = label if len(label) <= 28 else label[:27] + "…"
    return short


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def page_rows(report: StudyReport, pages: dict[str, str]) -> list[dict[str, Any]]:
    """The page's rows (what its script draws): one per model, its numbers, its marks and its cells' pages."""
    links: dict[str, dict[str, str]] = {}
    for cell in report.cells:
        if cell.key in pages:
            links.setdefault(cell.model, {})[cell.run] = pages[cell.key]
    short = short_names([row.model for row in report.rows])
    rows = []
    for row in report.rows:
        native, onnx, diagnose = row.native, row.onnx, row.diagnose
        reproduced = native.top1_error if native else None
        interval = native.top1_error_ci95 if native and reproduced is not None and native.top1_error_ci95 else None
        published = row.published_top1_error
        difference = None if reproduced is None or published is None else reproduced - published
        marks = []
        if difference is not None and interval and not interval[0] <= published <= interval[1]:
            marks.append("outside")
        if onnx is not None and ((onnx.n_flips or 0) > 0 or (onnx.within_tolerance is not None
                                                              and onnx.within_tolerance < 1.0)):
            marks.append("onnx")
        if row.failed:
            marks.append("failed")
        if onnx is not None and onnx.native_varies is False:
            marks.append("constant")
        cause = None
        if diagnose is not None:
            cause = (f"{diagnose.causes[0].name} {diagnose.causes[0].delta:+.1f}" if diagnose.causes
                     else "none outside the noise")
        rows.append({
            "model": row.model, "short": short[row.model], "architecture": row.architecture,
            "framework": row.framework, "published": published, "reproduced": _round(reproduced),
            "reproduced_lo": _round(interval[0]) if interval else None,
            "reproduced_hi": _round(interval[1]) if interval else None,
            "difference": _round(difference),
            "difference_lo": _round(interval[0] - published) if interval and difference is not None else None,
            "difference_hi": _round(interval[1] - published) if interval and difference is not None else None,
            "onnx_error": _round(onnx.top1_error) if onnx else None,
            "agreement": _round(onnx.top1_agreement) if onnx else None,
            "flips": onnx.n_flips if onnx else None,
            "cause": cause, "cause_title": _causes(diagnose, limit=len(diagnose.causes)) if diagnose else None,
            "native_speed": native.images_per_s if native else None,
            "onnx_speed": onnx.images_per_s if onnx else None,
            "variants": _variants(onnx) or None,
            "variants_title": "; ".join(
                f"{v.name}: top-1 error {_pct(v.top1_error)} %, {v.delta_vs_plain:+.2f} points vs the export "
                f"({v.delta_ci95[0]:+.2f} to {v.delta_ci95[1]:+.2f}), agreement {v.top1_agreement_plain} %, "
                f"time {v.time_over_plain}x" for v in onnx.variants) if onnx and onnx.variants else None,
            "marks": marks, "failed": row.failed, "pages": links.get(row.model, {}),
            "search": " ".join((row.model, row.architecture, row.framework)).lower(),
        })
    return rows


def _inline_json(value: Any) -> str:
    """JSON safe inside a <script> element: no character of it can close the element or open a comment."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


PAGE_STYLE = """body{max-width:1500px}#table-box{max-height:75vh;overflow:auto;border:1px solid #ddd;display:inline-block;max-width:100%}
#study-table{font-size:12px}#study-table td{white-space:nowrap}#study-table td.text{text-align:left}#controls{margin:0.6em 0}#controls input[type=search]{width:22em;padding:3px}#shown{margin-left:1em;color:#555}
#study-table th{cursor:pointer;background:#f4f4f4;position:sticky;top:0;z-index:1}#study-table th[data-sorted=ascending]::after{content:" ▲"}
#study-table th[data-sorted=descending]::after{content:" ▼"}
#study-table td:first-child{color:#c33;text-align:center}a.run{font-size:10px;color:#777;text-decoration:none}
tr.outside{background:#fff5d6}tr.onnx{background:#fde4e4}tr.failed td{color:#888}
.legend span{margin-right:1.5em}svg.plot{width:100%;max-width:760px;height:auto;display:block}
.plots{display:flex;flex-wrap:wrap;gap:2em}.plots>div{flex:1 1 560px;max-width:720px}
svg .frame{fill:none;stroke:#999}svg .grid{stroke:#eee}svg .tick{font-size:12px;fill:#444}
svg .label{font-size:13px;fill:#222}svg .diagonal{stroke:#999;stroke-dasharray:4 3}
svg .bar{stroke:#1f77b4;stroke-opacity:0.45}svg .bar.outside{stroke:#d62728}
svg .native{fill:#1f77b4}svg .native.outside{fill:#d62728}svg .onnx{fill:#2ca02c}svg .onnx.differs{fill:#ff7f0e}
svg .published{stroke:#d62728;stroke-width:2}svg .pair{stroke:#bbb}svg .point-label{font-size:12px;fill:#a00}
svg .linked{cursor:pointer}svg circle:hover,svg rect:not(.frame):hover{stroke:#000;stroke-width:1.5}#paging{margin-left:1em}
"""


def html_page(report: StudyReport, pages: dict[str, str] | None = None) -> str:
    """One self-contained page (inline data, script and styles; nothing fetched): the summary, the table sortable
    and filterable, each row linked to its cells' pages (``pages``: by cell key, from ``cell_pages``), outliers
    marked, the plots of reproduced against published error and of error against speed, and for a few models
    each model's errors on one line."""
    data = report.dataset
    rows = page_rows(report, pages or {})
    counts = {mark: sum(mark in row["marks"] for row in rows) for mark in MARKS}
    payload = {"rows": rows, "marks": MARKS, "per_model_limit": PER_MODEL_LIMIT, "max_labels": MAX_POINT_LABELS,
               "page_size": TABLE_PAGE,
               "columns": [{"key": key, "label": label, "kind": kind, "digits": digits, "title": title}
                           for key, label, kind, digits, title in PAGE_COLUMNS]}
    script = resources.files(__package__).joinpath(PAGE_SCRIPT).read_text(encoding="utf-8")
    failed = "".join(f"<li>{html.escape(f'{c.run} {c.model}: {c.status}: {c.error}')}</li>"
                     for c in report.cells if c.status != "done")
    legend = "".join(f"<span>{m['symbol']} {html.escape(m['title'])}: {counts[key]}</span>" for key, m in MARKS.items())
    title = f"xfverify study: {html.escape(report.name)}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{STYLE}{PAGE_STYLE}</style></head>
<body><h1>{title}</h1><p>{html.escape(report.about)}</p>
<p>{data.n_images} images ({data.n_labelled} labelled) from {html.escape(data.path)}; {len(report.cells)} cells,
{len(report.rows)} models.</p>
<noscript><p>This page draws its table and plots with JavaScript; study.md and study.csv beside it hold the same
table.</p></noscript>
<h2>Models</h2><p class="legend">{legend}</p>
<div id="controls"><input id="filter" type="search" placeholder="filter: source, architecture, name (words: all must match)"
 aria-label="filter the models"> <label><input id="marked" type="checkbox"> marked rows only</label><span id="shown"></span>
<span id="paging" hidden><button id="previous">‹ previous</button> <button id="next">next ›</button> <button id="all">all rows</button></span></div>
<div id="table-box"><table id="study-table"><thead><tr></tr></thead><tbody></tbody></table></div>
{f"<h2>Cells that did not finish</h2><ul>{failed}</ul>" if failed else ""}
<div class="plots"><div><h2>Reproduced against published top-1 error</h2><p id="errors-count"></p>
<p>One point per model (its native run), its 95 % interval as a bar; on the dashed diagonal the two agree. Red: the
published number lies outside the interval (named; every point names its model on hover and opens its page).</p>
<svg id="errors-plot" class="plot" role="img" aria-label="reproduced against published error"></svg></div>
<div><h2>Error against speed</h2><p>Circles: native runs; squares: the same models under ONNX Runtime (orange where
they disagree), joined by a line.</p>
<svg id="speed-plot" class="plot" role="img" aria-label="error against images per second"></svg></div></div>
<div id="per-model"><h2>Each model's errors</h2><p>Blue: native with its 95 % interval; red tick: published; green
square (below): ONNX Runtime.</p><svg id="per-model-plot" class="plot" role="img" aria-label="errors per model"></svg></div>
<script type="application/json" id="study-data">{_inline_json(payload)}</script>
<script>{script}</script>
</body></html>
"""
