"""The layers and the process boundary, checked by import-linter's contracts in pyproject.toml.

`lint-imports` runs on the tree as it is (xfverify/ links the root folders into one package); the second test
plants one breach of every contract in a copy and checks that each is reported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns("__pycache__", "sample", "cards", "*.toml", "*.md", "*.json", "*.txt", "*.gz")
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"

# Modules the parent or the decode pool imports that must stay framework-free although they sit beside worker code.
FRAMEWORK_FREE = ["evaluator/cache/digests.py", "models/overrides.py", "evaluator/system/devices.py",
                  "evaluator/backends/feeding.py", "evaluator/backends/weights.py", "evaluator/backends/contract.py",
                  "evaluator/backends/steps.py", "evaluator/backends/loading.py", "evaluator/backends/running.py",
                  "evaluator/backends/exporting.py", "evaluator/backends/runloop.py", "evaluator/backends/intermediates.py",
                  "evaluator/backends/machine.py", "evaluator/process/blocks.py", "converter/onnx_file.py",
                  "converter/cache.py", "converter/feed_graph.py", "converter/exported.py"]


def _lint(package_root: Path, config: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(package_root), COLUMNS="200")
    return subprocess.run([sys.executable, "-c", LINT, str(config)], capture_output=True, text=True,
                          cwd=package_root, env=env, timeout=300)


def test_import_contracts_are_kept():
    result = _lint(ROOT, ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout and " kept" in result.stdout


def test_a_breach_of_each_contract_is_caught(tmp_path):
    package = tmp_path / "xfverify"
    shutil.copytree(ROOT / "xfverify", package, ignore=SKIP)  # the links to models/, converter/, evaluator/ resolved
    evaluator = package / "evaluator"
    plants = {
        package / "models" / "leak.py": "from xfverify.evaluator.cache import store\n",  # models above evaluator
        evaluator / "references" / "cheat.py": "from xfverify.models import preprocess\n",
        evaluator / "cache" / "upward.py": "from xfverify.evaluator.process import launcher\n",  # cache below process
        evaluator / "analysis" / "worker_side.py": "from xfverify.evaluator.backends import runloop\n",
        evaluator / "backends" / "parent_side.py": "from xfverify.evaluator.pipeline import outdir\n",
        evaluator / "commands" / "native.py": "\nfrom xfverify.evaluator.commands import onnx  # noqa\n",
        evaluator / "pipeline" / "native.py": "\nfrom xfverify.evaluator.pipeline import diagnose  # noqa\n",
        evaluator / "pipeline" / "onnx.py": "\nfrom xfverify.evaluator.pipeline.native import run_native  # noqa\n",
        evaluator / "reports" / "starts_a_worker.py": "from xfverify.evaluator.process import launcher  # noqa\n",
        # indirect: each imports a worker-side module that imports its framework
        evaluator / "reports" / "indirect_torch.py": "from xfverify.converter import torch_export  # noqa\n",
        evaluator / "analysis" / "indirect_timm.py": "from xfverify.evaluator.references import timm_transforms\n",
        evaluator / "system" / "indirect_onnx.py": "from xfverify.converter import onnx_file  # noqa\n",
        evaluator / "data" / "direct_ray.py": "import ray  # noqa\n",
        package / "models" / "direct_onnxscript.py": "import onnxscript  # noqa\n",
    }
    for module in FRAMEWORK_FREE:
        plants[package / module] = "\nimport torch  # noqa\n"
    for path, line in plants.items():
        with open(path, "a") as source:
            source.write(line)
    result = _lint(tmp_path, ROOT / "pyproject.toml")
    assert result.returncode != 0
    assert "0 kept" in result.stdout, result.stdout
    for planted in ("models.leak", "references.cheat", "cache.upward", "analysis.worker_side", "backends.parent_side",
                    "commands.native", "pipeline.native", "pipeline.onnx", "reports.starts_a_worker", "reports.indirect_torch", "analysis.indirect_timm",
                    "system.indirect_onnx", "data.direct_ray", "models.direct_onnxscript",
                    *(m[:-3].replace("/", ".") for m in FRAMEWORK_FREE)):
        assert planted in result.stdout, (planted, result.stdout)
