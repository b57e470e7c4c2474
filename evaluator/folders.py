"""Folders the user names (--out, --cache-dir): created on demand, or one clear line saying why not."""

from __future__ import annotations

import os
from pathlib import Path

from xfverify.models.errors import UserError


def writable_folder(path: Path, what: str) -> Path:
    """Create ``path`` if needed; a folder that cannot be created or written is the user's to fix."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{what} {path}: cannot create this folder ({exc.strerror or exc}); choose another") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: this folder is not writable; choose another")
    return path
