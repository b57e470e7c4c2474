"""What the self-contained HTML pages share: matplotlib figures as inline SVG, and the style sheet (nothing is
fetched when a page is opened)."""

from __future__ import annotations

import io

STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:1100px}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:first-child,th:first-child{text-align:left}
tr.noise{color:#888}figure{display:inline-block;width:150px;margin:4px;font-size:11px;vertical-align:top}
figure img{width:96px;image-rendering:pixelated}"""


def svg(figure) -> str:
    """A matplotlib figure as an inline <svg> element."""
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg"):]
