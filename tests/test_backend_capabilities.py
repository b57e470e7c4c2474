"""What the registry declares each back-end can do is what its classes implement, and the parent reads it from
there: a back-end declaring no export has no exporter, one declaring GPU feeding returns a device-fed step."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import needs_mxnet, needs_tensorflow, needs_torch

from xfverify.evaluator.process.registry import BACKENDS

needs_onnxruntime = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                                       reason="onnxruntime not installed")
FRAMEWORKS = [pytest.param("torch", marks=[needs_torch, pytest.mark.torch]),
              pytest.param("tensorflow", marks=[needs_tensorflow, pytest.mark.tensorflow]),
              pytest.param("mxnet", marks=[needs_mxnet, pytest.mark.mxnet]),
              pytest.param("onnxruntime", marks=needs_onnxruntime)]


def test_every_back_end_is_checked():
    assert sorted(BACKENDS) == sorted(p.values[0] for p in FRAMEWORKS)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_declared_capabilities_are_what_the_back_end_implements(framework):
    script = Path(__file__).with_name("backend_capabilities.py")
    done = subprocess.run([sys.executable, str(script), framework], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found.pop("is_a_backend") is True
    assert found.pop("policy_for_every_precision", True) is True  # Keras: a policy for each precision name
    declared = BACKENDS[framework]
    assert found == {name: getattr(declared, name) for name in found}


def test_the_parent_asks_the_registry_which_runs_may_feed_a_gpu(monkeypatch):
    from xfverify.evaluator.pipeline import evaluation
    from xfverify.evaluator.system import devices

    monkeypatch.setattr(devices, "nvidia_gpus", lambda: ["NVIDIA H200"])
    monkeypatch.delenv("XFVERIFY_ORT_FEED", raising=False)
    assert [f for f in BACKENDS if evaluation.may_feed_on_device(f, "auto")] == ["torch", "onnxruntime"]
    assert not any(evaluation.may_feed_on_device(f, "cpu") for f in BACKENDS)
    monkeypatch.setattr(devices, "nvidia_gpus", lambda: [])
    monkeypatch.setenv("XFVERIFY_ORT_FEED", "device")
    assert [f for f in BACKENDS if evaluation.may_feed_on_device(f, "cpu")] == ["onnxruntime"]
