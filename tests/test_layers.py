"""The layers and the process boundary, checked by import-linter's contracts in pyproject.toml.

The package is assembled from its root folders (pyproject maps them into `xfverify`), which import-linter
cannot follow, so each test copies the sources into one plain package tree and lints that.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns("__pycache__", "sample", "cards", "data", "*.toml", "*.md")


def _assembled(tmp_path: Path) -> Path:
    package = tmp_path / "xfverify"
    shutil.copytree(ROOT / "xfverify", package, ignore=SKIP)
    for folder in ("models", "converter", "evaluator"):
        shutil.copytree(ROOT / folder, package / folder, ignore=SKIP)
    return package


def _lint(tmp_path: Path) -> subprocess.CompletedProcess:
    lint = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    env = dict(os.environ, PYTHONPATH=str(tmp_path), COLUMNS="200")
    return subprocess.run([sys.executable, "-c", lint, str(ROOT / "pyproject.toml")], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)


def test_import_contracts_are_kept(tmp_path):
    _assembled(tmp_path)
    result = _lint(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


def test_a_broken_contract_is_caught(tmp_path):
    package = _assembled(tmp_path)
    (package / "models" / "leak.py").write_text("import torch\nfrom xfverify.evaluator import cache\n")
    (package / "evaluator" / "references" / "cheat.py").write_text("from xfverify.models import preprocess\n")
    with open(package / "evaluator" / "shards.py", "a") as shards:  # runloop imports shards: now a cycle
        shards.write("\nfrom xfverify.evaluator import runloop  # noqa\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "0 kept, 4 broken" in result.stdout, result.stdout


# Modules the parent or the decode pool imports that live beside worker-only code (frameworks/) or are easy to miss.
FRAMEWORK_FREE = ["evaluator/digests.py", "evaluator/overrides.py", "evaluator/frameworks/devices.py",
                  "evaluator/frameworks/feeding.py", "evaluator/frameworks/weights.py",
                  "evaluator/frameworks/contract.py"]


@pytest.mark.parametrize("module", FRAMEWORK_FREE)
def test_a_framework_imported_by_a_module_the_parent_or_the_decode_pool_imports_is_caught(tmp_path, module):
    package = _assembled(tmp_path)
    with open(package / module, "a") as source:
        source.write("\nimport torch  # noqa\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "no ML framework outside its worker's modules BROKEN" in result.stdout, result.stdout
