"""Shared fixtures (helpers live in helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import VAL_SIZES, imagenet_val_files, write_jpeg

os.environ.setdefault("COLUMNS", "200")  # before the console is imported: tables as wide as a run_cli subprocess's


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own tensor cache and no network for weight downloads."""
    monkeypatch.setenv("XFVERIFY_CACHE", str(tmp_path_factory.mktemp("cache")))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # a closed port: downloads fail at once
    monkeypatch.setenv("NO_PROXY", "")



@pytest.fixture
def val_images(tmp_path) -> dict[str, Path]:
    """Generated 'validation' JPEGs, keyed by file name (the same bytes for every layout)."""
    folder = tmp_path / "_originals"
    out = {}
    for i, (name, _) in enumerate(imagenet_val_files(10)):
        w, h = VAL_SIZES[i % len(VAL_SIZES)]
        out[name] = write_jpeg(folder / name, seed=i, width=w, height=h)
    return out



@pytest.fixture
def generated_folder(tmp_path) -> Path:
    """A tiny own-images dataset (layout 'folder') with a labels.csv."""
    root = tmp_path / "own"
    lines = ["image,labels"]
    for i in range(7):
        w, h = VAL_SIZES[i % len(VAL_SIZES)]
        write_jpeg(root / f"img_{i:02d}.jpg", seed=100 + i, width=w, height=h)
        lines.append(f"img_{i:02d}.jpg,{(i * 97) % 1000}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root

