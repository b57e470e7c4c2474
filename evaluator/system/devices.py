"""What a back-end says about the machine: the CPU's name, and a GPU the framework could not use."""

from __future__ import annotations

import os
from pathlib import Path


def nvjpeg_on_cpu() -> bool:
    """``XFVERIFY_NVJPEG_DEVICE=cpu``: the nvjpeg decoder runs torchvision's CPU decoder instead (for tests)."""
    return os.environ.get("XFVERIFY_NVJPEG_DEVICE") == "cpu"


def ort_fed_on_device() -> bool:
    """``XFVERIFY_ORT_FEED=device``: ONNX Runtime takes its GPU feed (uint8, IO binding) on the CPU too (for tests)."""
    return os.environ.get("XFVERIFY_ORT_FEED") == "device"


def cpu_model() -> str:
    """The CPU's model name (what a speed number on the CPU depends on)."""
    import platform

    name = ""
    try:
        with open("/proc/cpuinfo") as handle:
            name = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        pass
    return name or platform.processor() or platform.machine()


def cpu_name() -> str:
    """The CPU's model name with the core count."""
    return f"{cpu_model()} ({os.cpu_count()} cores)"


GPU_DEVICE_FILES = ("nvidia[0-9]*", "kfd", "dxg", "nvhost-*", "nvgpu")  # NVIDIA, ROCm, WSL2, Jetson (Tegra)


def may_have_a_gpu(dev: Path = Path("/dev")) -> bool:
    """Whether anything on this machine says it has a GPU a framework could use: a GPU the NVIDIA driver reports, or
    a GPU's device file (NVIDIA's, ROCm's, WSL2's, Jetson's). Without any of them no CUDA or ROCm program runs."""
    return bool(nvidia_gpus()) or any(any(dev.glob(pattern)) for pattern in GPU_DEVICE_FILES)


def nvidia_gpus(root: Path = Path("/proc/driver/nvidia/gpus")) -> list[str]:
    """Model names of the NVIDIA GPUs the kernel driver reports, found without any framework ([] without one)."""
    names = []
    for info in sorted(root.glob("*/information")):
        try:
            lines = info.read_text(errors="replace").splitlines()
        except OSError:
            continue
        names += [line.split(":", 1)[1].strip() for line in lines if line.startswith("Model:")]
    return names
