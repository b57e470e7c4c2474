"""How torch is fed a batch: on the CPU from host tensors, or on a GPU from uint8 batches (torch worker only).

The GPU step uploads the pinned uint8 batch on one stream, normalises it on the device with the same
table the CPU uses and runs the model on the compute stream (optionally as a replayed CUDA graph), and
on a third stream, while the forward pass runs, computes the checksums of the fed tensors and brings
them and the logits back (the tensors themselves stay on the device).
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import numpy as np
import torch

from xfverify.evaluator.backends.steps import DeviceBatch, DeviceFedStep, HostBatch, HostFedStep, PendingBatch
from xfverify.evaluator.cache.digests import checksum_weights
from xfverify.evaluator.data.normalise import normalisation_lut, source_channels
from xfverify.models.preprocess import PreprocessSpec


class TorchSettings(NamedTuple):
    """How torch runs at a precision: autocast's dtype (None: no autocast), and the channels-last memory format."""

    autocast: torch.dtype | None
    channels_last: bool


class GatherNormaliser:
    """uint8 NHWC RGB batch -> the float32 tensors the model is fed, on the batch's device, in four kernels.

    A pure gather from the table that :func:`xfverify.evaluator.data.normalise.normalise` uses on the CPU,
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


class ArithmeticNormaliser:
    """float32 NHWC RGB batch (TensorFlow's resized floats, kept by the cache) -> the float32 tensors the model is
    fed, on the batch's device: ``((x / scale) - mean[c]) / std[c]``, the three operations
    :func:`xfverify.evaluator.data.normalise.normalise` does on the CPU. Each is correctly rounded in IEEE float32
    on the CPU and on CUDA; the divisors are device tensors, so torch divides (a CPU scalar divisor would make it
    multiply by the reciprocal, which rounds differently)."""

    def __init__(self, spec: PreprocessSpec, device: torch.device):
        self.layout = spec.layout
        self.sources = torch.tensor(source_channels(spec), dtype=torch.int64).to(device)
        shape = (1, 3, 1, 1) if spec.layout == "NCHW" else (3,)

        def constant(values) -> torch.Tensor:
            return torch.tensor(np.asarray(values, dtype=np.float32)).view(shape).to(device)

        self.scale, self.mean, self.std = constant([spec.scale] * 3), constant(spec.mean), constant(spec.std)

    def __call__(self, images: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``out`` (contiguous, the result's shape) receives the tensors when given."""
        if self.layout == "NCHW":
            picked = images.permute(0, 3, 1, 2).index_select(1, self.sources)
        else:
            picked = images.index_select(3, self.sources)
        if out is None:
            out = torch.empty(picked.shape, dtype=torch.float32, device=images.device)
        torch.div(picked, self.scale, out=out)
        out.sub_(self.mean)
        out.div_(self.std)
        return out


def device_normaliser(spec: PreprocessSpec, device: torch.device) -> GatherNormaliser | ArithmeticNormaliser:
    """The normaliser of the cache's images for ``spec``: a gather from the table for uint8, arithmetic for float32."""
    return ArithmeticNormaliser(spec, device) if spec.keeps_float else GatherNormaliser(spec, device)


class FedChecksums:
    """The checksums :func:`xfverify.evaluator.cache.digests.fed_checksums` computes on the CPU, on the tensors' device:
    per image, the int64 sum of the float32 values' bit patterns and its position-weighted sum (exact in
    any order of summation, so equal to the CPU's or the bytes differ)."""

    CHUNK = 32  # images at a time: the int64 temporaries of a chunk of 224 x 224 images take 77 MB

    def __init__(self, device: torch.device):
        self.device = device
        self.weights: dict[int, torch.Tensor] = {}

    def weights_for(self, n_values: int) -> torch.Tensor:
        """The position weights of images of ``n_values`` values, on the device (uploaded once)."""
        if n_values not in self.weights:
            self.weights[n_values] = torch.from_numpy(checksum_weights(n_values).copy()).to(self.device)
        return self.weights[n_values]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 2) int64 on the device, for a contiguous float32 batch."""
        weights = self.weights_for(x[0].numel())
        sums = []
        for chunk in x.view(len(x), -1).view(torch.int32).split(self.CHUNK):
            bits = chunk.to(torch.int64)
            sums.append(torch.stack((bits.sum(dim=1), (bits * weights).sum(dim=1)), dim=1))
        return torch.cat(sums)


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


class CudaStep(DeviceFedStep):
    """Feed a GPU: upload, normalise, run, download, with copies overlapping compute.

    Per batch, on three streams:

    * upload stream: the pinned uint8 batch goes to the GPU (4x fewer bytes than float32; float32 where the cache
      keeps TensorFlow's resized floats);
    * compute stream: normalise as the CPU does (a gather from its table; arithmetic for float32 images), then
      the forward pass, timed by events;
    * download stream: while the forward pass runs, the fed tensors' checksums (two int64 per image,
      :class:`FedChecksums`) are computed and come back, then the logits; the loop compares the
      checksums with those the cache stored beside its shards and reports the stored digests.

    The first batch's GPU tensors are also compared bit for bit with the CPU normalisation. With
    ``cuda_graphs`` the forward pass of full batches is captured once during warm-up and replayed (one
    launch instead of hundreds: what removes Python overhead at small batches); its replay on a probe
    batch must give the eager forward pass's logits bit for bit, else the run stays eager and says why.
    """

    def __init__(self, model, spec: PreprocessSpec, device, settings: TorchSettings, *, cuda_graphs: bool = False, api=None):
        self.model = model
        self.spec = spec
        self.device = device
        self.settings = settings
        self.api = api or _CudaApi(device)
        self.normalise = device_normaliser(spec, device)
        self.cached = torch.float32 if spec.keeps_float else torch.uint8
        self.checksums = FedChecksums(device)
        self.compute = self.api.current_stream()
        self.upload = self.api.new_stream()
        self.download = self.api.new_stream()
        self.previous_download = None
        self.checked = False
        self.cuda_graphs = cuda_graphs
        self.graph: dict[str, Any] | None = None
        self.graph_status = "off" if not cuda_graphs else "pending"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = self.settings.autocast
        # No autocast weight cache: it is freed when the context exits, which a captured graph would outlive.
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=autocast or torch.bfloat16,
                                                    enabled=autocast is not None, cache_enabled=False):
            return self.model(x).float()

    def stage(self, u8: np.ndarray) -> torch.Tensor:
        """Loader thread: copy a cached batch (uint8, or float32) into pinned memory (torch caches pinned blocks)."""
        pinned = self.api.pinned(u8.shape, self.cached)
        pinned.numpy()[...] = u8
        return pinned

    def warm_up(self, sizes: list[int], hw: tuple[int, int], full_batches: int) -> float:
        """Run each batch shape twice (cuDNN autotuning, lazy init) and capture the graph if asked and
        worth it (two full batches or more), before the timed loop and its threads start; returns seconds."""
        started = time.perf_counter()
        self.checksums.weights_for(3 * hw[0] * hw[1])  # uploaded now, not while the first batch is in flight
        for n in sizes:
            dummy = torch.zeros((n, *hw, 3), dtype=self.cached, device=self.device)
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
        probe = torch.randint(0, 256, (n, *hw, 3), dtype=torch.uint8, generator=generator)
        probe = probe.to(self.cached).to(self.device)
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

    def _download(self, tensor: torch.Tensor, static: bool, of=None) -> torch.Tensor:
        """On the download stream, once the work queued on the compute stream so far is done: copy a device
        tensor, or what ``of`` computes from it there, into pinned host memory. A tensor that is not a
        graph's static one is handed to the download stream's care."""
        self.download.wait_stream(self.compute)
        with self.api.use(self.download):
            result = of(tensor) if of else tensor
            host = self.api.pinned(result.shape, result.dtype)
            host.copy_(result, non_blocking=True)
        if not static:
            self.api.record_stream(tensor, self.download)
        return host

    def launch(self, pinned_u8: torch.Tensor) -> "_CudaHandle":
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
            from xfverify.evaluator.data.normalise import normalise

            if not torch.equal(x.cpu(), torch.from_numpy(normalise(pinned_u8.numpy(), self.spec))):
                raise RuntimeError("GPU normalisation differs from the CPU reference tensors: a bug")
            self.checked = True
        fed_checks = self._download(x, static=use_graph, of=self.checksums)
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
        return _CudaHandle(out_host, fed_checks, start, end, downloaded, pinned_u8)


class _CudaHandle(PendingBatch):
    def __init__(self, out_host, fed_checks, start, end, downloaded, keep_alive):
        self.out_host, self.fed_checks, self.start, self.end = out_host, fed_checks, start, end
        self.downloaded, self.keep_alive = downloaded, keep_alive

    def result(self) -> DeviceBatch:
        self.downloaded.synchronize()
        self.keep_alive = None
        return DeviceBatch(self.out_host.numpy(), self.start.elapsed_time(self.end), self.fed_checks.numpy())


class CpuStep(HostFedStep):
    """torch on the CPU, fed CPU-normalised float32 batches (autocast for bf16/fp16)."""

    def __init__(self, model, settings: TorchSettings):
        self.model = model
        self.settings = settings

    def run(self, tensors: np.ndarray) -> HostBatch:
        started = time.perf_counter()
        x = torch.from_numpy(tensors)
        with torch.inference_mode(), torch.autocast("cpu", dtype=self.settings.autocast or torch.bfloat16,
                                                    enabled=self.settings.autocast is not None):
            out = self.model(x).float().numpy()
        return HostBatch(out, (time.perf_counter() - started) * 1000.0)
