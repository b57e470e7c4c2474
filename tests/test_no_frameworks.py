"""The parent process never needs an ML framework: --help and the framework-free commands work without any."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

BLOCKED = ["torch", "torchvision", "timm", "tensorflow", "keras", "mxnet", "gluoncv", "onnx", "onnxruntime", "tf2onnx"]

# Runs in a fresh interpreter where importing any framework raises ImportError, as if none were installed.
BLOCKER = textwrap.dedent(
    f"""
    import importlib.abc, sys
    BLOCKED = {BLOCKED!r}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in BLOCKED:
                raise ImportError(f'{{name}} is blocked: no frameworks in this test')
            return None
    sys.meta_path.insert(0, Block())
    """
)


def run_blocked(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True, timeout=120, env=env
    )


def test_help_and_framework_free_commands_work_without_frameworks():
    result = run_blocked(
        """
        import sys
        from xfverify.evaluator.commands.cli import cli
        for args in (["--help"], ["native", "--help"], ["diagnose", "--help"], ["onnx", "--help"], ["preprocess", "--help"], ["models"], ["presets"], ["models", "keras", "--json"]):
            try:
                cli.main(args=args, prog_name="xfverify", standalone_mode=False)
            except SystemExit as exc:
                assert exc.code in (0, None), (args, exc.code)
        print("ALL-OK")
        """
    )
    assert result.returncode == 0, result.stderr
    assert "ALL-OK" in result.stdout
    assert "native" in result.stdout and "torchvision/resnet50:IMAGENET1K_V2" in result.stdout
    for verb, target in (("native", "[MODEL]"), ("diagnose", "[MODEL]"), ("onnx", "[MODEL|FILE.onnx]")):
        assert f"Usage: xfverify {verb} [OPTIONS] {target}\n" in result.stdout  # optional: the default model


def test_importing_every_parent_module_loads_no_framework():
    result = run_blocked(
        """
        import importlib, pkgutil, sys
        import xfverify, xfverify.models, xfverify.converter, xfverify.evaluator
        parent_side = ["xfverify.models.cards", "xfverify.models.preprocess", "xfverify.models.imagenet",
                       "xfverify.evaluator.commands.cli", "xfverify.evaluator.pipeline.native", "xfverify.evaluator.cache.store",
                       "xfverify.evaluator.data.layouts", "xfverify.evaluator.data.imaging", "xfverify.evaluator.analysis.metrics",
                       "xfverify.evaluator.reports.run", "xfverify.evaluator.process.worker", "xfverify.evaluator.process.launcher",
                       "xfverify.evaluator.backends.runloop", "xfverify.evaluator.cache.shards", "xfverify.evaluator.system.locks",
                       "xfverify.evaluator.pipeline.preprocess", "xfverify.evaluator.process.registry",
                       "xfverify.evaluator.backends.feeding", "xfverify.evaluator.backends.weights",
                       "xfverify.evaluator.system.devices", "xfverify.evaluator.backends.contract",
                       "xfverify.evaluator.backends.steps", "xfverify.evaluator.backends.loading",
                       "xfverify.evaluator.backends.running", "xfverify.evaluator.backends.exporting",
                       "xfverify.evaluator.process.blocks",
                       "xfverify.evaluator.process.tasks", "xfverify.evaluator.pipeline.onnx", "xfverify.evaluator.analysis.agreement"]
        for name in parent_side:
            importlib.import_module(name)
        loaded = sorted(m for m in sys.modules if m.split('.')[0] in %r)
        print("LOADED", loaded)
        """
        % BLOCKED
    )
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "xfverify", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "xfverify" in result.stdout
