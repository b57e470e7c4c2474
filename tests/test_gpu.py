"""GPU checks: run only where torch sees a CUDA GPU (skipped elsewhere, e.g. in CI)."""

from __future__ import annotations

import subprocess
import sys
from functools import lru_cache

import numpy as np
import pytest

from helpers import native_json, needs_torch
from xfverify.evaluator.pipeline.options import NativeOptions


@lru_cache(maxsize=1)
def cuda_available() -> bool:
    """Asked in a subprocess, so this test process never imports torch."""
    try:
        out = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                             capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.stdout.strip().endswith("True")


pytestmark = [pytest.mark.gpu, needs_torch]

# Lite0's reference (lite-tf-224) decodes with TensorFlow, which a GPU machine with torch alone lacks; these checks
# are about the GPU step, so they use the weights' timm pipeline (PIL, no TensorFlow).
LITE0 = dict(model="pypi/efficientnet_lite0", preprocess="lite-timm-224")


@pytest.fixture(autouse=True)
def _skip_without_gpu():
    if not cuda_available():
        pytest.skip("no CUDA GPU")


@pytest.mark.parametrize("batch_size", [3, 4])
def test_gpu_run_is_fed_the_cpu_runs_bytes_and_agrees(tmp_path, generated_folder, batch_size):
    common = dict(model="torchvision/resnet50:IMAGENET1K_V1", data=str(generated_folder), random_weights=True,
                  batch_size=batch_size, workers=1)
    cpu = native_json(NativeOptions(out=str(tmp_path / "cpu"), device="cpu", **common))
    gpu = native_json(NativeOptions(out=str(tmp_path / "gpu"), device="cuda", **common))
    assert gpu["device"]["type"] == "cuda" and gpu["precision"]["tf32"] is False
    assert gpu["tensors_sha256"] == cpu["tensors_sha256"]
    assert (gpu["tensor_proof"], cpu["tensor_proof"]) == ("device checksums against digests stored at cache build",
                                                          "hashed on host")
    a, b = np.load(tmp_path / "cpu" / "logits.npy"), np.load(tmp_path / "gpu" / "logits.npy")
    assert np.abs(a - b).max() < 1e-3 * max(1.0, np.abs(a).max())
    assert (a.argmax(1) == b.argmax(1)).mean() >= 6 / 7


def test_bf16_changes_results_only_slightly(tmp_path):
    common = dict(**LITE0, device="cuda", batch_size=4)
    fp32 = native_json(NativeOptions(out=str(tmp_path / "fp32"), precision="fp32", **common))
    bf16 = native_json(NativeOptions(out=str(tmp_path / "bf16"), precision="bf16", **common))
    assert fp32["tensors_sha256"] == bf16["tensors_sha256"]
    assert bf16["precision"]["autocast"] == "bfloat16"
    a, b = np.load(tmp_path / "fp32" / "logits.npy"), np.load(tmp_path / "bf16" / "logits.npy")
    assert 0 < np.abs(a - b).max() < 0.1 * np.abs(a).max()  # bf16 moves logits, a little
    ranked = np.sort(a, axis=1)
    clear = ranked[:, -1] - ranked[:, -2] > 1.0  # grace_hopper's call is a near tie (0.03): bf16 may flip it
    assert clear.sum() >= 2 and (a.argmax(1)[clear] == b.argmax(1)[clear]).all()


def test_cuda_graphs_replay_gives_the_eager_logits(tmp_path, generated_folder):
    common = dict(**LITE0, data=str(generated_folder), device="cuda", batch_size=2, workers=1)
    eager = native_json(NativeOptions(out=str(tmp_path / "eager"), **common))
    graphs = native_json(NativeOptions(out=str(tmp_path / "graphs"), cuda_graphs=True, **common))
    assert eager["precision"]["cuda_graphs"] == "off"
    assert graphs["precision"]["cuda_graphs"].startswith("on for batches of 2"), graphs["precision"]
    assert graphs["tensors_sha256"] == eager["tensors_sha256"]
    # Bit identity to eager is checked inside the run; across two processes cuDNN's autotuner may pick
    # other algorithms, so here the logits only agree closely.
    a, b = np.load(tmp_path / "eager" / "logits.npy"), np.load(tmp_path / "graphs" / "logits.npy")
    assert np.abs(a - b).max() <= 1e-4 * max(1.0, np.abs(a).max())
    assert (a.argmax(1) == b.argmax(1)).all()


@lru_cache(maxsize=1)
def onnxruntime_cuda() -> bool:
    """Whether the installed onnxruntime has a CUDA provider (asked in a subprocess, like torch)."""
    code = "import onnxruntime as o; print('CUDAExecutionProvider' in o.get_available_providers())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return out.stdout.strip().endswith("True")


def test_onnxruntime_cuda_is_fed_uint8_on_the_device_and_agrees(tmp_path):
    """ONNX Runtime's CUDA provider with IO binding, on the native GPU run's tensors: same bytes (proven by the
    graph's per-image sums), CUDA actually ran, every top-1 the same."""
    if not onnxruntime_cuda():
        pytest.skip("onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    from xfverify.evaluator.pipeline.onnx import run_onnx
    from xfverify.evaluator.pipeline.options import OnnxOptions

    run = run_onnx(OnnxOptions(target=LITE0["model"], preprocess=LITE0["preprocess"], provider="cuda", device="cuda",
                               batch_size=2, workers=1, out=str(tmp_path / "o")))
    report = run.report.model_dump(mode="json")
    assert report["runtime"]["providers"][0] == "CUDAExecutionProvider"
    assert report["runtime"]["options"]["io_binding"] is True and report["runtime"]["options"]["cuda_use_tf32"] == "0"
    assert report["tensors_sha256"] == report["native"]["tensors_sha256"]
    assert report["agreement"]["top1_agreement"] == 100.0
    assert report["agreement"]["max_abs_diff_over_max_abs_logit"] < 1e-3


def test_nvjpeg_decodes_on_the_gpu_a_few_levels_from_libjpeg_turbo(tmp_path, generated_folder, monkeypatch):
    """nvJPEG is a different decoder: its images are close to PIL's (a few uint8 levels on average), not equal."""
    monkeypatch.delenv("XFVERIFY_NVJPEG_DEVICE", raising=False)
    cache = tmp_path / "cache"
    common = dict(model="pypi/efficientnet_lite0", data=str(generated_folder), device="cuda", batch_size=4,
                  workers=1, cache_dir=str(cache), preprocess="torchvision-256")
    pil = native_json(NativeOptions(out=str(tmp_path / "pil"), **common))
    gpu = native_json(NativeOptions(out=str(tmp_path / "gpu"), overrides=("decoder=nvjpeg",), **common))
    assert gpu["preprocess"]["decoder"] == "nvjpeg" and gpu["tensors_sha256"] != pil["tensors_sha256"]
    shards = {path.parent.parent.name: np.load(path) for path in cache.glob("*/shards/*.npy")}
    assert len(shards) == 2
    first, second = (images.astype(np.int16) for images in shards.values())
    assert 0 < np.abs(first - second).mean() < 10


def test_without_batch_size_a_gpu_runs_batches_of_32(tmp_path):
    report = native_json(NativeOptions(**LITE0, out=str(tmp_path / "r"), device="cuda"))
    assert (report["batch_size"], report["batch_size_source"]) == (32, "default for cuda")
