"""ONNX Runtime back-end: the network is an .onnx file; runs only inside an onnxruntime worker process.

On the CPU it is fed host tensors through :class:`HostStep` (also where ``--provider auto`` asked for CUDA and
its provider did not load). With the CUDA provider it is fed as native torch is
on a GPU: the uint8 batch is uploaded and normalised on the device, by a gather from the same table, prepended
to the graph (``converter.feed_graph``), with inputs and outputs bound on the device (IO binding); only logits
and two integers per image (the checksums of what was fed, checked against those the tensor cache stored) come
back.
``XFVERIFY_ORT_FEED=device`` takes that path on the CPU too (the tests use it).

ONNX Runtime falls back to the CPU silently when its CUDA provider cannot load; this back-end never does: it
finds out whether the provider loads before the file's session opens (a session of a one-node graph), so the
device it reports is the one the session runs on, and ``--provider cuda`` forbids the fallback.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from xfverify.converter.exported import OnnxDescription
from xfverify.models.hashing import sha256_file
from xfverify.evaluator.backends.contract import Backend, worker_tasks
from xfverify.evaluator.backends.intermediates import CapturesIntermediates, Record
from xfverify.evaluator.backends.loading import Loaded
from xfverify.evaluator.backends.running import Device
from xfverify.evaluator.backends.steps import DeviceBatch, DeviceFedStep, FinishedBatch, HostStep
from xfverify.evaluator.backends.weights import exception_text
from xfverify.evaluator.process.blocks import FileWeights, PlainPrecision
from xfverify.evaluator.process.tasks import (
    EvaluateJob,
    FrameworkInfo,
    IntermediatesJob,
    MakeVariantJob,
    OnnxFileJob,
    RuntimeInfo,
    VariantMade,
)
from xfverify.evaluator.system.devices import cpu_name, nvidia_gpus, ort_fed_on_device
from xfverify.models.errors import UserError
from xfverify.models.precision import Precision
from xfverify.models.preprocess import PreprocessSpec
from xfverify.models.imagenet import NUM_CLASSES

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
CUDA_OPTIONS = {"use_tf32": "0"}  # fp32 means fp32: TF32 would change the numbers
NO_FALLBACK = "session.disable_cpu_ep_fallback"
OPTIMISATION = ort.GraphOptimizationLevel.ORT_ENABLE_ALL


@dataclass(frozen=True)
class Providers:
    """Where ONNX Runtime runs, decided before the session opens: ``--provider`` (``mode``), the providers it
    asked for (the report's), those the session is opened with, and whether it is fed uint8 batches on the
    device (IO binding)."""

    mode: str
    requested: list[str]
    opened: list[str]
    device_fed: bool


@dataclass(frozen=True)
class OnnxSession:
    """The network ONNX Runtime runs: its session, the file, the providers; fed on the device, the file's own
    input (the session's is the uint8 feed prepended to it)."""

    session: ort.InferenceSession
    path: str
    providers: Providers
    file_input: Any = None


class OnnxRuntimeBackend(Backend, CapturesIntermediates):
    """An .onnx file under ONNX Runtime, on the providers ``--provider`` asks for (checked, never silently CPU)."""

    name = "onnxruntime"

    def resolve_device(self, requested: str, precision: Precision) -> Device:
        """The providers to open the session with: ``cuda`` only where its provider loads (a probe session on a
        one-node graph finds out, as a small kernel does for the frameworks), never a silent CPU for ``--provider
        cuda``."""
        if precision != "fp32":
            raise UserError(f"--precision {precision}: the ONNX Runtime back-end runs fp32 only")
        ort.set_default_logger_severity(3)  # the provider's load failure is reported here, in one line
        has_cuda = CUDA in ort.get_available_providers()
        if requested == "cuda" and not has_cuda:
            raise UserError(f"--provider cuda: onnxruntime {ort.__version__} has no CUDA provider "
                            f"({', '.join(ort.get_available_providers())}): pip install onnxruntime-gpu")
        if requested != "cpu" and has_cuda and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # the CUDA and cuDNN libraries torch's wheels bring, when they are installed
        asked = [CPU] if requested == "cpu" or not has_cuda else ([CUDA] if requested == "cuda" else [CUDA, CPU])
        on_cuda = CUDA in asked and _cuda_loads(requested, asked)
        providers = Providers(mode=requested, requested=asked, opened=asked if on_cuda else [CPU],
                              device_fed=on_cuda or ort_fed_on_device())
        notes = []
        if requested == "auto":
            ran = CUDA if on_cuda else CPU
            why = "" if on_cuda or CUDA not in asked else (
                " because the CUDA provider did not load (it needs a GPU, CUDA 13 and cuDNN 9)")
            notes.append(f"--provider auto: ONNX Runtime ran on {ran}{why}")
        if on_cuda:
            gpus = nvidia_gpus()
            return Device("cuda", gpus[0] if gpus else "CUDA GPU 0", providers, notes)
        return Device("cpu", cpu_name(), providers, notes)

    def load(self, job: EvaluateJob, device: Device) -> Loaded:
        """A session of the job's .onnx file on the device's providers; fed on the device, of the file's model with
        the uint8 feed prepended."""
        if not job.onnx_path:
            raise UserError("the onnxruntime back-end runs an .onnx file: the job names none")
        path, providers = job.onnx_path, device.handle
        options = ort.SessionOptions()
        options.graph_optimization_level = OPTIMISATION
        if providers.mode == "cuda":
            options.add_session_config_entry(NO_FALLBACK, "1")
        file_input, source = None, path
        if providers.device_fed and job.preprocess.keeps_float:
            # The uint8 feed gathers from the table; float32 images are fed from the host, hashed there.
            providers = dataclasses.replace(providers, device_fed=False)
            device.notes.append("ONNX Runtime was fed float32 tensors from the host: the cache keeps TensorFlow's "
                                "resized floats for this preprocessing, and the device feed takes uint8 images")
        if providers.device_fed:
            file_input, source = _uint8_fed_model(path, job.preprocess, tuple(job.hw))
        session = _session(source, options, providers, path)
        ran = session.get_providers()
        if (ran[0] == CUDA) != (device.type == "cuda"):
            raise UserError(f"{path}: ONNX Runtime opened it on {ran[0]} although {device.type} was resolved "
                            f"(--provider {providers.mode}): use --provider cpu")
        weights = FileWeights(source=str(Path(path).resolve()), sha256=sha256_file(path))
        return Loaded(OnnxSession(session, path, providers, file_input), weights)

    def step(self, model: OnnxSession, spec: PreprocessSpec, device: Device,
             job: EvaluateJob) -> HostStep | IoBoundStep:
        fed = model.file_input if model.providers.device_fed else _one_input(model.session.get_inputs(), model.path)
        _check_input(fed, model.path, spec, tuple(job.hw))
        _check_batch(fed, model.path, job.batch_size, job.n_images)
        output = _scored_output(model, device.notes)
        if model.providers.device_fed:
            return IoBoundStep(model.session, "cuda" if device.type == "cuda" else "cpu", model.path, device.notes)
        session = model.session
        return HostStep(lambda tensors: _class_scores(session.run([output], {fed.name: tensors})[0], model.path,
                                                      device.notes))

    def describe(self) -> FrameworkInfo:
        return FrameworkInfo(name="onnxruntime", version=ort.__version__)

    def precision(self, requested: Precision, device: Device, step: HostStep | IoBoundStep) -> PlainPrecision:
        return PlainPrecision(requested="fp32", tf32=False)

    def runtime(self, model: OnnxSession, step: HostStep | IoBoundStep) -> RuntimeInfo:
        session, providers = model.session, model.providers
        ran = session.get_providers()
        options: dict[str, Any] = {
            "graph_optimization_level": OPTIMISATION.name,
            NO_FALLBACK: providers.mode == "cuda",
            "io_binding": providers.device_fed,
            "feed": ("uint8 normalised in the graph (gather from the table)" if providers.device_fed
                     else "float32 from the host"),
        }
        if CUDA in ran:
            options["cuda_use_tf32"] = session.get_provider_options()[CUDA].get("use_tf32")
        return RuntimeInfo(name="onnxruntime", version=ort.__version__, requested_providers=providers.requested,
                           providers=ran, options=options)

    def is_out_of_memory(self, exc: BaseException) -> bool:
        return "Failed to allocate memory" in str(exc) or "out of memory" in str(exc).lower()

    def load_for_capture(self, job: IntermediatesJob, device: Device) -> MarkedSession:
        """The job's .onnx file with the output of every node marked as a graph output (as Polygraphy's
        ``--onnx-outputs mark all``), in a CPU session optimised as the evaluation's is."""
        if not job.onnx_path:
            raise UserError("capturing an ONNX file's intermediates: the job names no .onnx file")
        return _marked_session(job.onnx_path, list(np.load(job.inputs_path, mmap_mode="r").shape[1:]))

    def capture(self, model: MarkedSession, image: np.ndarray, device: Device, record: Record) -> None:
        marked = [name for name in model.names if name not in model.aliases]
        values = dict(zip(marked, model.session.run(marked, {model.input: image})))
        values[model.input] = image
        for name in model.names:
            value = values.setdefault(name, values.get(model.aliases.get(name, ""), None))
            if value is not None:
                record(name, value, **model.details[name])


@dataclass(frozen=True)
class MarkedSession:
    """A session whose outputs are every node's outputs (``names``, in topological order), with what each
    producer is (``details``: node, op type, attributes, data inputs, the scopes its exporter left on it); an
    Identity's output is its input (``aliases``), not marked: ONNX Runtime's session grows faster than linearly
    with the outputs marked, and a graph of many Identity nodes would take minutes to open."""

    session: ort.InferenceSession
    input: str
    names: list[str]
    details: dict[str, dict[str, Any]]
    aliases: dict[str, str]


def _marked_session(path: str, fed: list[int]) -> MarkedSession:
    """The file read without its external tensor data (ONNX Runtime reads that from the file's folder), so a model
    over protobuf's 2 GB is never serialised whole; its input checked against one fed image (``fed``: its shape)."""
    import onnx

    from xfverify.converter.onnx_file import node_details

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, ...
        raise UserError(f"{path}: not a readable ONNX model ({exception_text(exc)})") from None
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    file_input = _one_input([i for i in graph.input if i.name not in constants], path)
    takes = _shape(file_input)
    if len(takes) != 1 + len(fed) or any(isinstance(d, int) and d > 0 and d != e for d, e in zip(takes, [1, *fed])):
        raise UserError(f"{path} takes input {file_input.name} of shape {takes}, but this run feeds images of "
                        f"{fed} (another layout or size): compare with a file that takes the same input")
    produced = {o.name for o in graph.output}
    names, details, aliases = [], {}, {}
    for node in graph.node:
        if node.op_type == "Constant":
            continue
        described = node_details(node, constants)
        if node.op_type == "Identity" and node.output[0] not in details:
            aliases[node.output[0]] = node.input[0]
        for output in node.output:
            if output and output not in details:
                names.append(output)
                details[output] = described
                if output not in produced and output not in aliases:
                    graph.output.append(onnx.ValueInfoProto(name=output))
    options = ort.SessionOptions()
    options.graph_optimization_level = OPTIMISATION
    options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                     os.path.dirname(os.path.abspath(path)))
    ort.set_default_logger_severity(3)
    session = _session(model.SerializeToString(), options, Providers("cpu", [CPU], [CPU], False), path)
    return MarkedSession(session, file_input.name, names, details, aliases)


def _cuda_loads(mode: str, providers: list[str]) -> bool:
    """Whether ONNX Runtime's CUDA provider loads, found with a session of a one-node graph (``--provider cuda``:
    a user error when it does not)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    options = ort.SessionOptions()
    if mode == "cuda":
        options.add_session_config_entry(NO_FALLBACK, "1")
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options,
                                       providers=[(CUDA, CUDA_OPTIONS) if p == CUDA else p for p in providers])
        loaded = session.get_providers()[0] == CUDA
    except Exception:  # onnxruntime's pybind errors share no base class; here they all mean CUDA did not load
        loaded = False
    if mode == "cuda" and not loaded:
        raise UserError(_cuda_did_not_load())
    return loaded


def _session(source: str | bytes, options, providers: Providers, path: str):
    try:
        return ort.InferenceSession(source, options,
                                    providers=[(CUDA, CUDA_OPTIONS) if p == CUDA else p for p in providers.opened])
    except Exception as exc:  # onnxruntime's pybind errors (Fail, InvalidGraph, ...) share no base class
        if providers.mode == "cuda" and "fallback to CPU EP has been explicitly disabled" in str(exc):
            raise UserError(_cuda_did_not_load()) from None
        raise UserError(f"{path}: ONNX Runtime cannot load it ({exception_text(exc)})") from None


def _uint8_fed_model(path: str, spec: PreprocessSpec, hw: tuple[int, int]) -> tuple[Any, bytes]:
    """The file's input, and its model with the uint8 feed prepended (its external data loaded), serialised for a
    session."""
    import onnx

    from xfverify.converter.feed_graph import uint8_fed_model
    from xfverify.evaluator.cache.digests import checksum_weights
    from xfverify.evaluator.data.normalise import normalisation_lut, source_channels

    try:
        model = onnx.load(path)
    except Exception as exc:  # protobuf's DecodeError, a missing .onnx.data file, ...
        raise UserError(f"{path}: not a readable ONNX model ({exception_text(exc)})") from None
    file_input = _one_input(list(model.graph.input), path)
    _check_input(file_input, path, spec, hw)
    try:
        wrapped = uint8_fed_model(model, normalisation_lut(spec), source_channels(spec), spec.layout, hw,
                                  checksum_weights(3 * hw[0] * hw[1]))
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    return file_input, wrapped.SerializeToString()


def _scored_output(model: OnnxSession, notes: list[str]) -> str:
    """The name of the output scored as the class scores: the file's first; that there are others is said."""
    outputs = model.session.get_outputs()
    if model.providers.device_fed:  # the wrapped graph adds the fed tensors' checksums as its last output
        outputs = outputs[:-1]
    if not outputs:
        raise UserError(f"{model.path}: its graph has no outputs; xfverify scores a classifier's output of "
                        f"{NUM_CLASSES} class scores per image: export one")
    if len(outputs) > 1:
        notes.append(f"{model.path} has {len(outputs)} outputs ({', '.join(o.name for o in outputs)}): the first, "
                     f"{outputs[0].name}, is scored as the class scores")
    return outputs[0].name


def _one_input(inputs: list, path: str):
    """A classifier's one input (ONNX Runtime's NodeArg or onnx's ValueInfoProto), else one line."""
    if len(inputs) != 1:
        raise UserError(f"{path} takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); xfverify feeds "
                        "a classifier one image batch: export it with the image as its only input")
    return inputs[0]


def _check_input(fed, path: str, spec, hw: tuple[int, int]) -> None:
    """An image input whose fixed dimensions match what the preprocessing feeds, else one line."""
    expected = (3, *hw) if spec.layout == "NCHW" else (*hw, 3)
    element = _element_type(fed)
    if element != "tensor(float)":
        raise UserError(f"{path} takes input {fed.name} as {element}; xfverify feeds float32 tensors (the "
                        "preprocessing's output): export it with a float32 image input (a half-precision or quantised "
                        "model can keep one, with a Cast or QuantizeLinear inside)")
    shape = _shape(fed)
    if len(shape) != 4 or any(isinstance(d, int) and d > 0 and d != e for d, e in zip(shape[1:], expected)):
        what = f"input {fed.name} of shape {shape}"
        raise UserError(f"{path} takes {what}, but preprocessing {spec.name} feeds {spec.layout} batches of "
                        f"{list(expected)}: choose a --preprocess preset that matches it, or --set layout=... / "
                        "crop_size=...")


def _check_batch(fed, path: str, batch_size: int, n_images: int) -> None:
    """A fixed batch dimension the run's batches fit (every batch that size, the last one too), else one line."""
    fixed = _shape(fed)[0]
    if not isinstance(fixed, int) or fixed <= 0:
        return
    if batch_size == fixed and n_images % fixed == 0:
        return
    fix = f"run it with --batch-size {fixed}" + (f" on a number of images divisible by {fixed} (--limit)"
                                                   if fixed > 1 else "")
    raise UserError(f"{path} takes batches of exactly {fixed} image(s) (input {fed.name} of shape {_shape(fed)}), "
                    f"and this run feeds batches of {batch_size} ({n_images} images): {fix}, or export it with a "
                    "dynamic batch dimension")


BACKGROUND_NOTE = (f"the model outputs {NUM_CLASSES + 1} classes: class 0 (TF-slim's background class) is left out "
                   f"and the other {NUM_CLASSES} are scored as ImageNet's")


def _class_scores(out, path: str, notes: list[str]) -> np.ndarray:
    """The first output as float32 (n, 1000) scores (of 1001, TF-slim's background class 0 left out and said in
    ``notes``); any other shape is the user's file's, in one line."""
    out = np.asarray(out, dtype=np.float32)
    if out.ndim == 2 and out.shape[1] == NUM_CLASSES + 1:
        if BACKGROUND_NOTE not in notes:
            notes.append(BACKGROUND_NOTE)
        return np.ascontiguousarray(out[:, 1:])
    if out.ndim != 2 or out.shape[1] != NUM_CLASSES:
        raise UserError(f"{path}: its first output has shape {list(out.shape[1:])} per image; xfverify scores the "
                        f"{NUM_CLASSES} ImageNet classes: export one row of {NUM_CLASSES} logits or probabilities "
                        "per image as the first output")
    return out


def _element_type(value) -> str:
    """An input's element type as ONNX Runtime names it ("tensor(float)"), from a NodeArg or a ValueInfoProto."""
    if not hasattr(value.type, "tensor_type"):
        return value.type
    from onnx import TensorProto

    return f"tensor({TensorProto.DataType.Name(value.type.tensor_type.elem_type).lower()})"


def _shape(value) -> list:
    """An input's shape, from ONNX Runtime's NodeArg or onnx's ValueInfoProto (symbolic dimensions as names)."""
    if not hasattr(value.type, "tensor_type"):
        return list(value.shape)
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


class IoBoundStep(DeviceFedStep):
    """uint8 batches in, bound with IO binding on the session's device; the graph normalises them and also
    returns each image's fed-tensor checksums (the proof of what it fed, checked by the loop). Each batch is
    uploaded by :meth:`stage`, in the loader thread, while the batch before it runs."""

    def __init__(self, session, device: str, path: str, notes: list[str]):
        from xfverify.converter.feed_graph import FED_CHECKS, UINT8_INPUT

        self.session, self.device, self.path, self.notes = session, device, path, notes
        self.input = UINT8_INPUT
        self.outputs = [session.get_outputs()[0].name, FED_CHECKS]
        self.binding = session.io_binding()

    def stage(self, u8: np.ndarray) -> "UploadedBatch":
        # on the CPU an OrtValue wraps the array instead of copying it: give it one of its own, not the cache's
        host = np.array(u8, order="C", copy=True) if self.device == "cpu" else np.ascontiguousarray(u8)
        return UploadedBatch(host, ort.OrtValue.ortvalue_from_numpy(host, self.device, 0))

    def warm_up(self, sizes: list[int], hw: tuple[int, int], full_batches: int) -> float:
        started = time.perf_counter()
        for n in sizes:
            for _ in range(2):
                self._run(self.stage(np.zeros((n, *hw, 3), dtype=np.uint8)))
        return time.perf_counter() - started

    def _run(self, batch: "UploadedBatch") -> tuple[np.ndarray, np.ndarray]:
        self.binding.bind_ortvalue_input(self.input, batch.value)
        logits, checks = self.outputs
        self.binding.bind_output(logits, self.device)
        self.binding.bind_output(checks, self.device)
        self.session.run_with_iobinding(self.binding)
        out = self.binding.copy_outputs_to_cpu()
        return _class_scores(out[0], self.path, self.notes), out[1]

    def launch(self, batch: "UploadedBatch") -> FinishedBatch:
        started = time.perf_counter()
        logits, checks = self._run(batch)
        return FinishedBatch(DeviceBatch(logits, (time.perf_counter() - started) * 1000.0, checks))


class UploadedBatch:
    """A uint8 batch and its copy on the step's device (``value``, an OrtValue); its length is its images'."""

    def __init__(self, host: np.ndarray, value):
        self.host, self.value = host, value

    def __len__(self) -> int:
        return len(self.host)


def _cuda_did_not_load() -> str:
    return (f"--provider cuda: ONNX Runtime's CUDA provider did not load (onnxruntime {ort.__version__} needs an "
            "NVIDIA GPU, CUDA 13 and cuDNN 9), and xfverify does not fall back to the CPU silently: use "
            "--provider cpu or auto")


def describe_onnx(request: OnnxFileJob, workdir: Path) -> OnnxDescription:
    """A user's ONNX file, checked (onnx's full checker, shape inference) and described for the report."""
    from xfverify.converter.onnx_file import check, describe

    check(Path(request.path))
    found = describe(Path(request.path), "", "", request.layout)
    return found.model_copy(update={"exporter": found.producer_name or "unknown",
                                    "exporter_version": found.producer_version})


def make_variant(request: MakeVariantJob, workdir: Path) -> VariantMade:
    """A deployment variant of an ONNX file, made (or found in the variant cache) and opened on the job's providers."""
    from xfverify.converter.variants import make_variant as make

    calibration = Path(request.calibration_path) if request.calibration_path else None
    made, path, from_cache = make(Path(request.parent_path), request.spec, Path(request.cache_root), request.providers,
                                  calibration, request.calibration_sha256)
    return VariantMade(framework=FrameworkInfo(name="onnxruntime", version=ort.__version__), variant=made,
                       path=str(path), from_cache=from_cache)


BACKEND = OnnxRuntimeBackend
# it runs .onnx files, builds and exports nothing
_CARD_TASKS = worker_tasks(BACKEND)
TASKS = {"evaluate": _CARD_TASKS["evaluate"], "intermediates": _CARD_TASKS["intermediates"],
         "describe_onnx": describe_onnx, "make_variant": make_variant}
