"""``localize.html`` of ``xfverify onnx --localize``: the scaled difference along the graph as an inline SVG curve,
the culprit highlighted, and its table (self-contained: nothing is fetched when it is opened)."""

from __future__ import annotations

import html

from xfverify.evaluator.analysis.localize import Localization, shown_name
from xfverify.evaluator.reports.page import STYLE, svg

PAGE = "localize.html"
FLOOR = 1e-12  # differences of exactly 0 drawn at the foot of the log axis


def curve_svg(localization: Localization) -> str:
    """Scaled difference of every matched tensor against its position in the graph (log scale), the tolerance as
    a line, the culprit marked."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 3.6))
    axes = figure.subplots()
    x = [n.index for n in localization.curve]
    y = [max(n.scaled_diff or 0.0, FLOOR) if n.scaled_diff is not None and n.scaled_diff != float("inf") else 1e3
         for n in localization.curve]
    axes.plot(x, y, marker=".", linewidth=1, color="#4477aa", label="matched tensor")
    bad = [(n.index, value) for n, value in zip(localization.curve, y) if n.divergent]
    if bad:
        axes.scatter(*zip(*bad), color="#cc6677", zorder=3, s=14, label="outside tolerance")
    axes.axhline(localization.atol, color="#999999", linestyle="--", linewidth=1, label=f"atol {localization.atol:g}")
    culprit = localization.culprit
    if culprit:
        point = next(n for n in localization.curve if n.tensor == shown_name(culprit.tensor))
        axes.scatter([point.index], [max(point.scaled_diff or FLOOR, FLOOR)], s=120, facecolors="none",
                     edgecolors="#cc3311", linewidths=2, zorder=4,
                     label=f"first divergent: {shown_name(culprit.node, 60)}")
    axes.set_yscale("log")
    axes.set_xlabel("node (topological order)")
    axes.set_ylabel("max |diff| / max |reference|")
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    return svg(figure)


def localization_page(model: str, localization: Localization) -> str:
    """The page: the verdict, the curve, the culprit, its inputs and the next nodes."""
    escape = html.escape
    if localization.failed:
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>xfverify localize: {escape(model)}</title>"
                f"<style>{STYLE}</style></head><body><h1>Where the ONNX graph of {escape(model)} first departs</h1>"
                f"<p><b>{escape(localization.verdict)}</b></p></body></html>")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>xfverify localize: {escape(model)}</title>"
             f"<style>{STYLE} tr.culprit{{background:#fdd;font-weight:bold}}</style></head><body>",
             f"<h1>Where the ONNX graph of {escape(model)} first departs</h1>",
             f"<p>Against {escape(localization.reference)}, on {len(localization.image_ids)} image(s); "
             f"{localization.n_matched} of {localization.n_onnx_tensors} tensors matched by "
             f"{escape(localization.matched_by)}.</p><p><b>{escape(localization.verdict)}</b></p>",
             curve_svg(localization)]
    culprit = localization.culprit
    if culprit:
        attributes = ", ".join(f"{k}={v}" for k, v in culprit.attributes.items()) or "none"
        parts.append(f"<h2>{escape(shown_name(culprit.node))} ({escape(culprit.op_type)})</h2><p>output "
                     f"{escape(shown_name(culprit.tensor))}, matches {escape(shown_name(culprit.reference))} (by "
                     f"{culprit.matched_by}); attributes: {escape(attributes)}</p>")
        if culprit.unmatched_between:
            parts.append(f"<p>Nodes between its matched inputs and it, with no reference tensor: "
                         f"{escape(', '.join(culprit.unmatched_between))}</p>")
        if culprit.missing:
            parts.append(f"<p>Reference layers between its inputs' and it that no node computes: "
                         f"{escape(', '.join(culprit.missing))}</p>")
    if localization.n_curve_left_out:
        parts.append(f"<p>{localization.n_curve_left_out} of {localization.n_matched} matched tensors left out of "
                     "the curve and the table, evenly.</p>")
    parts.append("<table><tr><th>#</th><th>node</th><th>op</th><th>reference</th><th>scaled diff</th>"
                 "<th>within tolerance</th></tr>")
    for node in localization.curve:
        css = "culprit" if culprit and node.tensor == shown_name(culprit.tensor) else ""
        scaled = "n/a" if node.scaled_diff is None else f"{node.scaled_diff:.3g}"
        share = "n/a" if node.within_tolerance is None else f"{100 * node.within_tolerance:.2f} %"
        parts.append(f'<tr class="{css}"><td>{node.index}</td><td>{escape(node.node)}</td>'
                     f"<td>{escape(node.op_type)}</td><td>{escape(node.reference or '')}</td><td>{scaled}</td>"
                     f"<td>{share}</td></tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)
