"""``--set field=value``: one-field changes to a preprocessing spec, as the command line gives them."""

from __future__ import annotations

from typing import Any

from xfverify.models.errors import UserError
from xfverify.models.preprocess import OVERRIDABLE_FIELDS


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Parse ``field=value`` strings (from ``--set``) into a dict; unknown fields are an error."""
    known = OVERRIDABLE_FIELDS
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise UserError(f"--set expects field=value, got {item!r}")
        if key == "crop_pct":
            out[key] = value
            continue
        if key not in known:
            raise UserError(f"unknown preprocessing field {key!r}; fields are: {', '.join(sorted(known))}, crop_pct")
        out[key] = value
    return out
