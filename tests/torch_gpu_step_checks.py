"""Runs the torch back-end's GPU step on the CPU with a stand-in for torch.cuda (streams, events, pinned
memory and graph capture become synchronous no-ops), so its data flow is checked where there is no GPU.

Run in its own process by tests/test_torch_gpu_step.py (the test process never imports torch).
Usage: python torch_gpu_step_checks.py WORKDIR; exits non-zero with a message when a check fails.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from xfverify.evaluator.backends import runloop
from xfverify.evaluator.cache.digests import ensure_digests, fed_checksums
from xfverify.evaluator.cache.shards import ShardSidecar
from xfverify.evaluator.backends.feeding import out_of_memory_is_a_user_error
from xfverify.evaluator.backends.torch.backend import _is_out_of_memory
from xfverify.evaluator.backends.torch.steps import CpuStep, CudaStep, FedChecksums, TorchSettings, device_normaliser
from xfverify.evaluator.data.normalise import normalise
from xfverify.models.errors import UserError
from xfverify.models.preprocess import PRESETS


class FakeStream:
    def __init__(self):
        self.waited = 0

    def wait_event(self, event) -> None:
        self.waited += 1

    def wait_stream(self, stream) -> None:
        self.waited += 1


class FakeEvent:
    def __init__(self):
        self.at = None

    def record(self, stream=None) -> None:
        self.at = time.perf_counter()

    def synchronize(self) -> None:
        if self.at is None:
            raise RuntimeError("synchronised on an event never recorded")

    def elapsed_time(self, other: "FakeEvent") -> float:
        return (other.at - self.at) * 1000.0


class FakeCuda:
    """Synchronous stand-in for the torch.cuda calls the step makes; ``replay_noise`` breaks graph replay."""

    def __init__(self, replay_noise: float = 0.0, capture_error: str | None = None):
        self.device = torch.device("cpu")
        self.replay_noise = replay_noise
        self.capture_error = capture_error
        self.captures = 0
        self.replays = 0
        self.recorded_streams = 0
        self.pinned_shapes: list[tuple[tuple[int, ...], torch.dtype]] = []

    def new_stream(self):
        return FakeStream()

    def current_stream(self):
        return FakeStream()

    def use(self, stream):
        return contextlib.nullcontext()

    def event(self, timing: bool = False):
        return FakeEvent()

    def pinned(self, shape, dtype):
        self.pinned_shapes.append((tuple(shape), dtype))
        return torch.empty(shape, dtype=dtype)

    def record_stream(self, tensor, stream) -> None:
        self.recorded_streams += 1

    def capture(self, body):
        if self.capture_error:
            raise RuntimeError(self.capture_error)
        self.captures += 1
        outputs = body()

        def replay():
            self.replays += 1
            with torch.inference_mode():  # a real replay rewrites the static output in place, too
                outputs.copy_(body() + self.replay_noise)

        return replay, outputs

    def synchronize(self) -> None:
        pass


class ChannelsFirst(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


def tiny_model() -> torch.nn.Module:
    """A small NHWC model (the spec used here is Keras's: BGR, NHWC)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        ChannelsFirst(), torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(8, 1000),
    ).eval()


def check(condition: bool, message: str) -> None:
    if not condition:
        sys.exit(f"FAILED: {message}")


def cached_images(rng, shape: tuple[int, ...], spec) -> np.ndarray:
    """Images as the cache stores them for ``spec``: uint8, or TensorFlow's resized floats (overshoot included)."""
    u8 = rng.integers(0, 256, shape, dtype=np.uint8)
    return (u8 + rng.uniform(-3, 3, shape)).astype(np.float32) if spec.keeps_float else u8


def normalisation_is_exact() -> None:
    """The device normalisation (a gather for uint8, arithmetic for float32) gives the CPU's bytes, and the step's
    checksums of them are the CPU's (chunked or not)."""
    rng = np.random.default_rng(1)
    for name, spec in PRESETS.items():
        images = cached_images(rng, (37, 17, 13, 3), spec)
        expected = normalise(images, spec)
        got = device_normaliser(spec, torch.device("cpu"))(torch.from_numpy(images))
        check(tuple(got.shape) == expected.shape, f"{name}: shape {tuple(got.shape)} != {expected.shape}")
        check(got.numpy().tobytes() == expected.tobytes(), f"{name}: gather-normalisation is not bit-identical")
        checks = FedChecksums(torch.device("cpu"))(got).numpy()  # 37 images: a chunk of 32 and one of 5
        check(np.array_equal(checks, fed_checksums(expected)), f"{name}: device checksums differ from the CPU's")


def write_shards(workdir: Path) -> list[str]:
    rng = np.random.default_rng(2)
    paths = []
    for i, n in enumerate((23, 18)):  # batches of 8 straddle the shard boundary; the last batch is partial
        path = workdir / f"shard{i}.npy"
        np.save(path, rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
        path.with_suffix(".json").write_text(ShardSidecar.of(np.load(path), [f"s{i}-{j}" for j in range(n)]).to_json())
        paths.append(str(path))
    ensure_digests(paths, PRESETS["keras-caffe"])  # what the tensor cache stores beside its shards
    return paths


def run(step, shards: list[str], workdir: Path, name: str,
        spec=PRESETS["keras-caffe"]) -> tuple[runloop.LoopResult, np.ndarray]:
    # keras-caffe is BGR: the channel reordering is exercised too
    result = runloop.run_loop(shards, 41, spec, 8, step, workdir / f"{name}.npy", threads=2)
    return result, np.load(workdir / f"{name}.npy")


def float_images_are_fed_as_on_the_cpu(model, settings, workdir: Path) -> None:
    """A cache of TensorFlow's resized floats (float32 shards): the GPU step uploads them as they are, normalises them
    with the CPU's arithmetic and proves it with the same checksums; the same tensors and logits as host feeding."""
    spec = PRESETS["keras-caffe"].replace(resize_library="tf2", interpolation="bilinear")
    rng = np.random.default_rng(3)
    shards = []
    for i, n in enumerate((23, 18)):
        path = workdir / f"float{i}.npy"
        np.save(path, cached_images(rng, (n, 32, 32, 3), spec))
        path.with_suffix(".json").write_text(ShardSidecar.of(np.load(path), [f"f{i}-{j}" for j in range(n)]).to_json())
        shards.append(str(path))
    ensure_digests(shards, spec)
    reference, reference_logits = run(CpuStep(model, settings), shards, workdir, "float-cpu", spec)
    fake = FakeCuda()
    step = CudaStep(model, spec, fake.device, settings, api=fake)
    step.warm_up([41 % 8, 8], (32, 32), full_batches=41 // 8)
    result, logits = run(step, shards, workdir, "float-gpu", spec)
    check(result.tensors_sha256 == reference.tensors_sha256, "float32 shards: fed tensors differ from host feeding")
    check(result.tensor_proof.startswith("device checksums"), f"float32 shards: {result.tensor_proof}")
    check(np.array_equal(logits, reference_logits), "float32 shards: logits differ from the CPU step's")


def a_device_that_feeds_other_bytes_is_named(model, spec, settings, shards, workdir) -> None:
    """After the first batch (checked against the CPU bit for bit), one value of one image is off by one ulp."""
    fake = FakeCuda()
    step = CudaStep(model, spec, fake.device, settings, api=fake)
    normalise_on_device = step.normalise
    calls = []

    def off_by_an_ulp(u8, out=None):
        x = normalise_on_device(u8, out=out)
        calls.append(len(u8))
        if len(calls) == 4:  # images 24 to 31: the second shard's images 1 to 8
            x[2].view(-1)[77] = torch.nextafter(x[2].view(-1)[77], torch.tensor(1e9))
        return x

    step.normalise = off_by_an_ulp
    step.warm_up([41 % 8, 8], (32, 32), full_batches=41 // 8)
    calls.clear()
    try:
        run(step, shards, workdir, "tampered")
        check(False, "a device that fed other bytes than the cache's went unnoticed")
    except UserError as exc:
        check(str(exc).startswith("image s1-3 (#26): the tensor fed on"), str(exc))


def main() -> None:
    workdir = Path(sys.argv[1])
    normalisation_is_exact()
    shards = write_shards(workdir)
    spec = PRESETS["keras-caffe"]
    settings = TorchSettings(autocast=None, channels_last=False)
    model = tiny_model()
    reference, reference_logits = run(CpuStep(model, settings), shards, workdir, "cpu")
    outcomes = {}
    for label, fake, graphs in (
        ("eager", FakeCuda(), False),
        ("graphs", FakeCuda(), True),
        ("graphs_differ", FakeCuda(replay_noise=1e-3), True),
        ("graphs_fail", FakeCuda(capture_error="operation not permitted when stream is capturing"), True),
    ):
        step = CudaStep(model, spec, fake.device, settings, cuda_graphs=graphs, api=fake)
        step.warm_up([41 % 8, 8], (32, 32), full_batches=41 // 8)
        result, logits = run(step, shards, workdir, label)
        check(result.tensors_sha256 == reference.tensors_sha256, f"{label}: fed tensors differ from host feeding")
        check(result.tensor_proof.startswith("device checksums"), f"{label}: {result.tensor_proof}")
        check(np.array_equal(logits, reference_logits), f"{label}: logits differ from the CPU step's")
        # nothing of the fed tensors' size comes back: per batch, two int64 per image and the logits
        brought_back = {(shape[1:], dtype) for shape, dtype in fake.pinned_shapes if dtype != torch.uint8}
        check(brought_back == {((2,), torch.int64), ((1000,), torch.float32)}, f"{label}: pinned {brought_back}")
        check(len(result.batch_ms) == 6, f"{label}: {len(result.batch_ms)} batches, expected 6")
        outcomes[label] = {"status": step.graph_status, "captures": fake.captures, "replays": fake.replays,
                           "recorded_streams": fake.recorded_streams}
    check(outcomes["eager"]["status"] == "off" and outcomes["eager"]["captures"] == 0, f"eager: {outcomes['eager']}")
    check(outcomes["graphs"]["status"].startswith("on for batches of 8"), f"graphs: {outcomes['graphs']}")
    # one replay checks the capture, then one per full batch (5 of 8 images; the last 1 runs eagerly)
    check(outcomes["graphs"]["replays"] == 1 + 5, f"graphs: {outcomes['graphs']}")
    check(outcomes["graphs_differ"]["status"].startswith("eager: the graph's logits differed"), str(outcomes))
    check(outcomes["graphs_fail"]["status"].startswith("eager: capture failed (operation not permitted"), str(outcomes))
    a_device_that_feeds_other_bytes_is_named(model, spec, settings, shards, workdir)
    float_images_are_fed_as_on_the_cpu(model, settings, workdir)
    few = FakeCuda()
    step = CudaStep(model, spec, few.device, settings, cuda_graphs=True, api=few)
    step.warm_up([8], (32, 32), full_batches=1)
    check(step.graph_status == "not used: fewer than two full batches" and few.captures == 0, step.graph_status)
    try:
        with out_of_memory_is_a_user_error("NVIDIA H100", 4096, _is_out_of_memory):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB")
        check(False, "a CUDA out-of-memory error went through")
    except UserError as exc:
        check("--batch-size 4096" in str(exc) and "smaller --batch-size" in str(exc), str(exc))
    try:
        with out_of_memory_is_a_user_error("AMD EPYC (2 cores)", 4096, _is_out_of_memory):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9663676416 bytes. "
                               "Error code 12 (Cannot allocate memory)")
        check(False, "the CPU allocator's out-of-memory error went through")
    except UserError as exc:
        check("AMD EPYC (2 cores) ran out of memory at --batch-size 4096" in str(exc), str(exc))
    try:
        with out_of_memory_is_a_user_error("NVIDIA H100", 4096, _is_out_of_memory):
            raise RuntimeError("an unrelated bug")
    except RuntimeError as exc:  # anything else keeps its traceback
        check(str(exc) == "an unrelated bug", str(exc))
    print(json.dumps(outcomes))


if __name__ == "__main__":
    main()
