"""Prints, as JSON, what one back-end's classes implement, in the registry's terms (run by
tests/test_backend_capabilities.py in a process of its own: each back-end imports its framework).

Usage: python backend_capabilities.py FRAMEWORK
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import sys
import typing

from xfverify.evaluator.backends.contract import Backend
from xfverify.evaluator.backends.exporting import Exporter
from xfverify.evaluator.backends.loading import ScalesRandomOutputs
from xfverify.evaluator.backends.running import SwitchesPrecision
from xfverify.evaluator.backends.steps import DeviceFedStep, HostFedStep
from xfverify.evaluator.process.registry import BACKENDS, BackendEntry
from xfverify.evaluator.system.devices import ort_fed_on_device


def implemented(framework: str) -> dict[str, bool]:
    module = importlib.import_module(BACKENDS[framework].module)
    backend = module.BACKEND
    returned = typing.get_type_hints(backend.step)["return"]
    steps = typing.get_args(returned) or (returned,)
    if not steps or not all(issubclass(step, (HostFedStep, DeviceFedStep)) for step in steps):
        raise SystemExit(f"{backend.__name__}.step is not annotated with the steps it returns: {returned}")
    device_fed = [step for step in steps if issubclass(step, DeviceFedStep)]
    found = {
        "feeds_on_gpu": bool(device_fed),
        "device_feed_switch": module.__dict__.get("ort_fed_on_device") is ort_fed_on_device,
        "cuda_graphs": any("cuda_graphs" in inspect.signature(step).parameters for step in device_fed),
        "switches_precision": issubclass(backend, SwitchesPrecision),
        "scales_random_outputs": issubclass(backend, ScalesRandomOutputs),
        "exports_onnx": issubclass(backend, Exporter) and "export" in module.TASKS,
    }
    assert set(found) == {f.name for f in dataclasses.fields(BackendEntry)} - {"module"}, "a capability is unchecked"
    found["is_a_backend"] = issubclass(backend, Backend) and not inspect.isabstract(backend)
    if framework == "tensorflow":
        from xfverify.models.precision import PRECISIONS

        found["policy_for_every_precision"] = tuple(module.POLICIES) == PRECISIONS
    return found


if __name__ == "__main__":
    print(json.dumps(implemented(sys.argv[1])))
