"""What the self-contained HTML pages share: matplotlib figures as inline SVG, images as inline PNG thumbnails,
and the style sheet (nothing is fetched when a page is opened)."""

from __future__ import annotations

import base64
import io

import numpy as np

STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:1100px}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:first-child,th:first-child{text-align:left}
tr.noise{color:#888}figure{display:inline-block;width:150px;margin:4px;font-size:11px;vertical-align:top}
figure img{width:96px;image-rendering:pixelated}"""


def svg(figure) -> str:
    """A matplotlib figure as an inline <svg> element, its words as text (searchable, selectable, smaller than
    glyph outlines)."""
    from matplotlib import rc_context

    buffer = io.StringIO()
    with rc_context({"svg.fonttype": "none"}):
        figure.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def thumbnail(image: np.ndarray, side: int = 96) -> str:
    """A uint8 HWC image as a data: URL of a PNG at most ``side`` pixels wide and high."""
    from PIL import Image

    picture = Image.fromarray(image)
    picture.thumbnail((side, side))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
