"""ONNX Runtime back-end: the network is an .onnx file; runs only inside an onnxruntime worker process.

Fed host tensors through :class:`HostStep` (on a GPU, binding inputs and outputs on the device with IO
binding is still to come). ONNX Runtime falls back to the CPU silently when its CUDA provider cannot load;
this back-end never does: ``--provider cuda`` forbids the fallback and checks which provider runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from xfverify.evaluator.frameworks.contract import Backend, Device, HostStep, worker_tasks
from xfverify.evaluator.frameworks.devices import cpu_name, nvidia_gpus
from xfverify.evaluator.frameworks.weights import exception_text, sha256_file
from xfverify.evaluator.jobs import EvaluateJob, FrameworkInfo, OnnxFileJob, RuntimeInfo
from xfverify.models.cards import ModelCard
from xfverify.models.errors import UserError

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
CUDA_OPTIONS = {"use_tf32": "0"}  # fp32 means fp32: TF32 would change the numbers
NO_FALLBACK = "session.disable_cpu_ep_fallback"
OPTIMISATION = ort.GraphOptimizationLevel.ORT_ENABLE_ALL


class OnnxRuntimeBackend(Backend):
    """An .onnx file under ONNX Runtime, on the providers ``--provider`` asks for (checked, never silently CPU)."""

    name = "onnxruntime"

    def configure(self, job: EvaluateJob) -> None:
        if not job.onnx_path:
            raise UserError("the onnxruntime back-end runs an .onnx file: the job names none")
        self.path = job.onnx_path

    def resolve_device(self, requested: str, precision: str) -> Device:
        if precision != "fp32":
            raise UserError(f"--precision {precision}: the ONNX Runtime back-end runs fp32 only")
        ort.set_default_logger_severity(3)  # the provider's load failure is reported here, in one line
        self.requested_mode = requested
        has_cuda = CUDA in ort.get_available_providers()
        if requested == "cuda" and not has_cuda:
            raise UserError(f"--provider cuda: onnxruntime {ort.__version__} has no CUDA provider "
                            f"({', '.join(ort.get_available_providers())}): pip install onnxruntime-gpu")
        if requested != "cpu" and has_cuda and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # the CUDA and cuDNN libraries torch's wheels bring, when they are installed
        self.requested_providers = [CPU] if requested == "cpu" or not has_cuda else (
            [CUDA] if requested == "cuda" else [CUDA, CPU])
        return Device("cpu", cpu_name())  # what actually runs is known once the session exists

    def seed(self, seed: int) -> None:
        np.random.seed(seed)

    def random_network(self, card: ModelCard, device: Device):
        raise UserError("ONNX Runtime runs an .onnx file with its own weights: random weights are made at export")

    def network_from_file(self, card: ModelCard, path: str, device: Device):
        raise UserError("ONNX Runtime runs an .onnx file with its own weights: --weights applies at export")

    def pretrained_network(self, card: ModelCard | None, device: Device) -> tuple[Any, dict[str, Any]]:
        options = ort.SessionOptions()
        options.graph_optimization_level = OPTIMISATION
        if self.requested_mode == "cuda":
            options.add_session_config_entry(NO_FALLBACK, "1")
        providers = [(CUDA, CUDA_OPTIONS) if p == CUDA else p for p in self.requested_providers]
        try:
            session = ort.InferenceSession(self.path, options, providers=providers)
        except Exception as exc:  # onnxruntime's pybind errors (Fail, InvalidGraph, ...) share no base class
            if self.requested_mode == "cuda" and "fallback to CPU EP has been explicitly disabled" in str(exc):
                raise UserError(_cuda_did_not_load()) from None
            raise UserError(f"{self.path}: ONNX Runtime cannot load it ({exception_text(exc)})") from None
        ran = session.get_providers()
        if self.requested_mode == "cuda" and ran[0] != CUDA:
            raise UserError(_cuda_did_not_load())
        if ran[0] == CUDA:
            gpus = nvidia_gpus()
            device.type, device.name = "cuda", gpus[0] if gpus else "CUDA GPU 0"
        if self.requested_mode == "auto":
            why = "" if ran[0] == CUDA or CUDA not in self.requested_providers else (
                " because the CUDA provider did not load (it needs a GPU, CUDA 13 and cuDNN 9)")
            device.notes.append(f"--provider auto: ONNX Runtime ran on {ran[0]}{why}")
        self.session = session
        return session, {"source": str(Path(self.path).resolve()), "sha256": sha256_file(self.path)}

    def place(self, model, device: Device):
        return model

    def step(self, model, spec, device: Device, job) -> HostStep:
        [fed] = model.get_inputs()  # a classifier takes one tensor
        expected = (3, *job.hw) if spec.layout == "NCHW" else (*job.hw, 3)
        fixed = tuple(fed.shape[1:])
        if len(fed.shape) != 4 or any(isinstance(d, int) and d != e for d, e in zip(fixed, expected)):
            raise UserError(f"{self.path} takes input {fed.name} of shape {list(fed.shape)}, but preprocessing "
                            f"{spec.name} feeds {spec.layout} batches of {list(expected)}: choose a --preprocess "
                            "preset that matches it, or --set layout=... / crop_size=...")
        output = model.get_outputs()[0].name
        return HostStep(lambda tensors: np.asarray(model.run([output], {fed.name: tensors})[0], dtype=np.float32))

    def describe(self) -> FrameworkInfo:
        return FrameworkInfo(name="onnxruntime", version=ort.__version__)

    def precision(self, precision: str, device: Device, step) -> dict[str, Any]:
        return {"requested": "fp32", "tf32": False}

    def runtime(self, step) -> RuntimeInfo:
        ran = self.session.get_providers()
        options: dict[str, Any] = {
            "graph_optimization_level": OPTIMISATION.name,
            NO_FALLBACK: self.requested_mode == "cuda",
            "io_binding": False,
        }
        if CUDA in ran:
            options["cuda_use_tf32"] = self.session.get_provider_options()[CUDA].get("use_tf32")
        return RuntimeInfo(name="onnxruntime", version=ort.__version__, requested_providers=self.requested_providers,
                           providers=ran, options=options)

    def is_out_of_memory(self, exc: BaseException) -> bool:
        return "Failed to allocate memory" in str(exc) or "out of memory" in str(exc).lower()


def _cuda_did_not_load() -> str:
    return (f"--provider cuda: ONNX Runtime's CUDA provider did not load (onnxruntime {ort.__version__} needs an "
            "NVIDIA GPU, CUDA 13 and cuDNN 9), and xfverify does not fall back to the CPU silently: use "
            "--provider cpu or auto")


def describe_onnx(job: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """A user's ONNX file, checked (onnx's full checker, shape inference) and described for the report."""
    from xfverify.converter.onnx_file import check, describe

    request = OnnxFileJob.model_validate(job)
    check(Path(request.path))
    found = describe(Path(request.path), "", "", request.layout)
    return found.model_copy(update={"exporter": found.producer_name or "unknown",
                                    "exporter_version": found.producer_version}).model_dump(mode="json")


evaluate = worker_tasks(OnnxRuntimeBackend).evaluate
