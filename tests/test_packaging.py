"""pyproject.toml as setuptools reads it: `make demo`'s install must not bury its output under build warnings."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_folder_of_the_package_is_found_with_its_data():
    """setuptools finds the packages through xfverify/'s links to the root folders, data-only folders included
    (it warns, 40 lines each, about a folder it installs as package data but finds no package for)."""
    from setuptools import find_namespace_packages

    config = _setuptools()
    found = set(find_namespace_packages(where=str(ROOT), **config["packages"]["find"]))
    assert {"xfverify.models.cards", "xfverify.evaluator.data.sample", "xfverify.evaluator.pipeline",
            "xfverify.evaluator.backends", "xfverify.converter"} <= found
    assert not [name for name in found if "__pycache__" in name]
    for package, patterns in config["package-data"].items():
        assert package in found
        for pattern in patterns:
            assert any((ROOT / Path(*package.split("."))).glob(pattern)), (package, pattern)


def test_the_licence_is_an_spdx_expression():
    """A TOML table here is deprecated by setuptools >= 77, which pip's isolated build fetches: one warning per step."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "Apache-2.0"
    assert any(r.startswith("setuptools>=77") for r in pyproject["build-system"]["requires"])
