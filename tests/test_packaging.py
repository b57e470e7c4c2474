"""pyproject.toml as setuptools reads it: `make demo`'s install must not bury its output under build warnings."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _folder(package: str, package_dir: dict[str, str]) -> Path:
    """Where setuptools looks for a package: its own entry in package-dir, else its parent's folder + its name."""
    parts = package.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in package_dir:
            return ROOT / package_dir[".".join(parts[:i])] / Path(*parts[i:])
    return ROOT / Path(*parts)


def test_every_folder_of_the_package_is_listed_with_its_data():
    """setuptools warns, 40 lines each, about a folder it installs as package data but finds no package for."""
    config = _setuptools()
    found = set()
    for name, path in config["package-dir"].items():
        for folder in [ROOT / path, *(ROOT / path).rglob("*")]:
            if folder.is_dir() and not folder.name.startswith(("__", ".")):
                found.add(".".join([name, *folder.relative_to(ROOT / path).parts]))
    assert {"xfverify.models.cards", "xfverify.evaluator.sample"} <= found
    assert sorted(found - set(config["packages"])) == []
    for package, patterns in config["package-data"].items():
        assert package in config["packages"]
        for pattern in patterns:
            assert any(_folder(package, config["package-dir"]).glob(pattern)), (package, pattern)


def test_the_licence_is_an_spdx_expression():
    """A TOML table here is deprecated by setuptools >= 77, which pip's isolated build fetches: one warning per step."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "Apache-2.0"
    assert any(r.startswith("setuptools>=77") for r in pyproject["build-system"]["requires"])
