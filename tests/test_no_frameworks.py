"""The parent process never needs an ML framework: --help and the framework-free commands work without any."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

BLOCKED = ["torch", "torchvision", "timm", "tensorflow", "keras", "mxnet", "gluoncv", "onnx", "onnxruntime", "tf2onnx",
           "onnxscript", "ray"]

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
    """Every module of the package but the worker side (back-ends, exporters, references), found by walking it."""
    result = run_blocked(
        """
        import importlib, pkgutil, sys
        import xfverify
        WORKER_SIDE = ("xfverify.evaluator.backends.", "xfverify.evaluator.references.", "xfverify.converter.")
        PARENT_CONVERTER = {"xfverify.converter.exported"}  # typed records the parent reads
        names = [m.name for m in pkgutil.walk_packages(xfverify.__path__, "xfverify.")]
        parent_side = [n for n in names if not n.startswith(WORKER_SIDE) or n in PARENT_CONVERTER]
        for name in parent_side:
            importlib.import_module(name)
        loaded = sorted(m for m in sys.modules if m.split('.')[0] in %r)
        print("IMPORTED", len(parent_side), " ".join(parent_side))
        print("LOADED", loaded)
        """
        % (BLOCKED,)
    )
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout
    imported = result.stdout.split("IMPORTED ", 1)[1].split("\n", 1)[0].split()
    for module in ("xfverify.evaluator.pipeline.diagnose", "xfverify.evaluator.pipeline.study",
                   "xfverify.evaluator.pipeline.study_ray", "xfverify.evaluator.reports.diagnose",
                   "xfverify.evaluator.reports.study", "xfverify.models.study", "xfverify.evaluator.commands.cli"):
        assert module in imported[1:], module  # the walk reaches the modules a hand-written list once missed
    assert int(imported[0]) > 60


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "xfverify", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "xfverify" in result.stdout
