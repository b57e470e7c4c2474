"""PyTorch back-end (torchvision and timm models); runs only inside a torch worker process."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import numpy as np
import torch

from xfverify.converter.exported import ExportResult
from xfverify.evaluator.backends.contract import Backend, worker_tasks
from xfverify.evaluator.backends.exporting import Exporter, ExporterIdentity
from xfverify.evaluator.backends.intermediates import CapturesIntermediates, Record
from xfverify.evaluator.process.names import INPUT_SUFFIX
from xfverify.evaluator.backends.loading import CardModelLoader, ScalesRandomOutputs
from xfverify.evaluator.backends.machine import gpu_left_unused_note
from xfverify.evaluator.backends.torch.nvjpeg import decode_nvjpeg
from xfverify.evaluator.backends.running import Device, SwitchesPrecision
from xfverify.evaluator.backends.torch.steps import CpuStep, CudaStep, TorchSettings
from xfverify.evaluator.backends.weights import checked_weights, exception_text, missing_weights_error
from xfverify.evaluator.process.blocks import CheckedWeights, TorchPrecision
from xfverify.evaluator.process.events import Status, emit
from xfverify.evaluator.process.tasks import EvaluateJob, FrameworkInfo
from xfverify.evaluator.system.devices import cpu_name
from xfverify.models.cards import ModelCard
from xfverify.models.errors import UserError
from xfverify.models.precision import Precision
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
    if card.weights.kind in ("pypi-package", "timm"):
        import timm

        # a timm card names its tag: the tag's cfg decides the head and input size (an architecture's default tag
        # may have another head)
        return timm.create_model(card.weights.name if card.weights.kind == "timm" else card.network_name,
                                 pretrained=False)
    import torchvision.models as tvm

    return tvm.get_model(card.network_name, weights=None, **_arguments_of_the_weights(card))


INPUT_TRANSFORMED = ("googlenet", "inception_v3")  # their weights turn the input to Inception's normalisation in-graph


def _arguments_of_the_weights(card: ModelCard) -> dict:
    """The builder arguments torchvision 0.29 sets from a weights enum before it loads them, so that the random network
    is the one the weights were trained as: ViT's image size (SWAG's 384 to 518), MaxViT's input size, and GoogLeNet's
    and Inception v3's in-graph input transform and auxiliary heads (vision_transformer.py, maxvit.py, googlenet.py,
    inception.py)."""
    import torchvision.models as tvm

    meta = tvm.get_model_weights(card.network_name)[card.weights.name].meta
    arguments: dict = {"num_classes": len(meta["categories"])}
    if card.network_name.startswith("vit_"):
        arguments["image_size"] = meta["min_size"][0]
    elif card.network_name == "maxvit_t":
        arguments["input_size"] = meta["min_size"]
    elif card.network_name in INPUT_TRANSFORMED:
        arguments.update(transform_input=True, aux_logits=True)
    return arguments


def _pretrained_torchvision(card: ModelCard) -> tuple[torch.nn.Module, CheckedWeights]:
    import torchvision.models as tvm

    weights = tvm.get_model_weights(card.network_name)[card.weights.name]
    target = _checkpoint_dir() / card.weights.file
    if target.exists():
        block = checked_weights(card, target)  # a damaged or foreign file is named, not loaded
        return tvm.get_model(card.network_name, weights=weights), block
    try:
        weights.get_state_dict(progress=False)  # fetched before the network is built: offline, that fails at once
        model = tvm.get_model(card.network_name, weights=weights)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; hub raises RuntimeError on hash
        raise missing_weights_error(card, target, exc) from None
    return model, checked_weights(card, target)


def _timm_cached_file(card: ModelCard) -> tuple[Path, Path | None]:
    """Where timm keeps a tag's weights (the Hugging Face hub's cache folder of its repository, or torch hub's
    checkpoints for a cfg with a URL only), and the file there once it has been downloaded."""
    from huggingface_hub import constants, try_to_load_from_cache

    if card.weights.url.startswith("https://huggingface.co/"):
        repo = card.weights.url.removeprefix("https://huggingface.co/")
        folder = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
        for name in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(repo, name)
            if isinstance(found, str):
                return folder, Path(found)
        return folder, None
    target = _checkpoint_dir() / card.weights.file
    return target.parent, target if target.is_file() else None


def _pretrained_timm(card: ModelCard) -> tuple[torch.nn.Module, CheckedWeights]:
    import timm

    folder, found = _timm_cached_file(card)
    try:
        model = timm.create_model(card.weights.name, pretrained=True)
    except (OSError, RuntimeError, ValueError) as exc:  # hub's LocalEntryNotFoundError and requests' errors are OSError
        fill = (f"`huggingface-cli download {card.weights.url.removeprefix('https://huggingface.co/')}` on a machine "
                "with network fills it" if "huggingface.co" in card.weights.url
                else f"download {card.weights.url} into it")
        raise UserError(
            f"pretrained weights for {card.id} are not available offline: timm looks for them in {folder} and the "
            f"download from {card.weights.url} failed ({exception_text(exc, 160)}); {fill}, or pass --weights FILE "
            "or --random-weights") from None
    folder, found = _timm_cached_file(card)
    if found is None:
        raise RuntimeError(f"timm loaded {card.weights.name} but no weights file is in {folder}")
    return model, checked_weights(card, found)


def _pretrained_from_package(card: ModelCard) -> tuple[torch.nn.Module, CheckedWeights]:
    """Weights shipped in a PyPI package, loaded into timm's network in parameter order (the port's names differ)."""
    found = importlib.util.find_spec(card.weights.package)
    if found is None or found.origin is None:
        raise UserError(
            f"the weights of {card.id} ship in the PyPI package {card.weights.name}: pip install {card.weights.name}"
        )
    path = Path(found.origin).parent / card.weights.file
    if not path.is_file():
        raise UserError(
            f"{card.weights.name} has no {card.weights.file}: pip install --force-reinstall {card.weights.name}"
        )
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
    emit(Status(message=note))
    return torch.device("cpu"), [note]


def configure_precision(precision: Precision, device: torch.device) -> TorchSettings:
    """Set TF32 flags (off unless asked) and return how autocast should run."""
    if precision == "tf32" and device.type != "cuda":
        raise UserError("--precision tf32 applies to CUDA GPUs only; use fp32 on the CPU")
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return TorchSettings(autocast=autocast, channels_last=autocast is not None and device.type == "cuda")


# --- evaluation ----------------------------------------------------------------------------


def _is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's out-of-memory error, or the CPU allocator's (a RuntimeError torch gives no class of its own)."""
    return (isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError))
            or (isinstance(exc, RuntimeError) and "DefaultCPUAllocator" in str(exc)))


class TorchBackend(CardModelLoader, Backend, ScalesRandomOutputs, SwitchesPrecision, Exporter, CapturesIntermediates):
    """torchvision and timm networks; fed uint8 batches on a GPU, float32 tensors on the CPU."""

    name = "torch"
    calibration_batch = 4

    def resolve_device(self, requested: str, precision: Precision) -> Device:
        device, notes = resolve_device(requested)
        self.settings = configure_precision(precision, device)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
        return Device(device.type, name, device, notes)

    def seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def random_network(self, card: ModelCard, device: Device) -> torch.nn.Module:
        # built without the transform before: another network, another export-cache key (their heads are not zero)
        self.random_scheme = "-input-transformed" if card.network_name in INPUT_TRANSFORMED else ""
        return _new_network(card).eval()

    def network_from_file(self, card: ModelCard, path: str, device: Device) -> torch.nn.Module:
        model = _new_network(card)
        _apply_state_dict(model, _load_state_dict_file(path), f"--weights {path}")
        return model.eval()

    def pretrained_network(self, card: ModelCard, device: Device) -> tuple[torch.nn.Module, CheckedWeights]:
        pretrained = {"pypi-package": _pretrained_from_package, "timm": _pretrained_timm}.get(card.weights.kind,
                                                                                               _pretrained_torchvision)
        model, block = pretrained(card)
        return model.eval(), block

    def calibrate(self, model, batch: np.ndarray, device: Device) -> None:
        """A head the network zero-initialises (torchvision's ViT; timm's Hiera, ResMLP, Sequencer) gives every image
        the same zero logits, which any export matches: it gets seeded normal weights (std 0.02, timm's
        trunc_normal_), and the export cache's key says so."""
        linear = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
        if not linear or linear[-1].weight.any():
            return
        with torch.no_grad():
            if model(torch.from_numpy(batch)).any():
                return  # the outputs do not come from that layer alone
            torch.nn.init.trunc_normal_(linear[-1].weight, std=0.02)
        self.random_scheme = "-head-initialised"

    def logits_std(self, model, batch: np.ndarray, device: Device) -> float:
        with torch.no_grad():
            return float(model(torch.from_numpy(batch)).std())  # torch's std: the unbiased estimate

    def scale_last_layer(self, model, std: float) -> None:
        linear = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
        if linear:
            with torch.no_grad():
                linear[-1].weight.mul_(1.0 / std)
                if linear[-1].bias is not None:
                    linear[-1].bias.mul_(1.0 / std)

    def place(self, model, device: Device):
        model = model.to(device.handle)
        return model.to(memory_format=torch.channels_last) if self.settings.channels_last else model

    def check_precision(self, precision: Precision, device: Device) -> None:
        if precision == "tf32" and device.type != "cuda":
            raise UserError("--precisions tf32 applies to CUDA GPUs only and this run is on the CPU; bf16 and fp16 "
                            "run on the CPU too (torch autocast)")

    def with_precision(self, model, card, precision: Precision, device: Device):
        """The same module: autocast and the TF32 flags are set per pass, the memory format follows them."""
        self.settings = configure_precision(precision, device.handle)
        layout = torch.channels_last if self.settings.channels_last else torch.contiguous_format
        return model.to(memory_format=layout)

    def step(self, model, spec: PreprocessSpec, device: Device, job: EvaluateJob) -> CpuStep | CudaStep:
        if job.cuda_graphs and device.type != "cuda":
            raise UserError("--cuda-graphs needs a CUDA GPU (--device cuda or auto on a machine with one)")
        if device.type == "cuda":
            return CudaStep(model, spec, device.handle, self.settings, cuda_graphs=job.cuda_graphs)
        return CpuStep(model, self.settings)

    def describe(self) -> FrameworkInfo:
        return FrameworkInfo(name="torch", version=torch.__version__, libraries=_library_versions())

    def precision(self, requested: Precision, device: Device, step: CpuStep | CudaStep) -> TorchPrecision:
        autocast = self.settings.autocast
        return TorchPrecision(
            requested=requested,
            tf32=bool(torch.backends.cuda.matmul.allow_tf32),
            autocast=str(autocast).replace("torch.", "") if autocast else None,
            channels_last=self.settings.channels_last,
            cudnn_benchmark=bool(torch.backends.cudnn.benchmark) if device.type == "cuda" else None,
            cuda_graphs=step.graph_status if isinstance(step, CudaStep) else "off",
        )

    def is_out_of_memory(self, exc: BaseException) -> bool:
        return _is_out_of_memory(exc)

    def exporter(self, opset: int | None) -> ExporterIdentity:
        from xfverify.converter import torch_export

        opset = opset or torch_export.DEFAULT_OPSET
        return ExporterIdentity(*torch_export.exporter_identity(torch_export.choose_exporter(opset)), opset)

    def export_onnx(self, model, path: Path, opset: int, hw: tuple[int, int], device: Device) -> ExportResult:
        from xfverify.converter.torch_export import export_torch

        return export_torch(model, path, opset, input_shape=(3, *hw))

    def capture(self, model, image: np.ndarray, device: Device, record: Record) -> None:
        """A forward hook on every module (its path is the name torch's exporters keep on the nodes it became)
        records the module's output as it is computed, and a leaf module's input too."""
        def recorder(name: str, module, composite: bool):
            def recorded(_module, inputs, output=None) -> None:
                value = inputs[0] if output is None else output  # a pre-hook: the input before an in-place act
                if isinstance(value, torch.Tensor):
                    record(name, value.detach().cpu().numpy(), op_type=type(module).__name__, composite=composite)
            return recorded

        handles = []
        for name, module in model.named_modules():
            if not name:
                continue
            leaf = not any(True for _ in module.children())
            if leaf:  # a leaf's input: what a fused node computes, e.g. the BN before an activation
                handles.append(module.register_forward_pre_hook(recorder(f"{name}{INPUT_SUFFIX}", module, False)))
            handles.append(module.register_forward_hook(recorder(name, module, not leaf)))
        try:
            with torch.no_grad():
                model(torch.from_numpy(image).to(device.handle))
        finally:
            for handle in handles:
                handle.remove()


BACKEND = TorchBackend
TASKS = worker_tasks(BACKEND, decode_nvjpeg=decode_nvjpeg)


def _library_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for package in ("torchvision", "timm"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions
