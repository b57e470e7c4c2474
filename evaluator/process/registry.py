"""Framework back-ends and what each can do. Each back-end module imports its framework and runs only inside its
own worker process.

The parent process never imports these modules: it names a back-end here and
:mod:`xfverify.evaluator.process.worker` runs it in a subprocess (TensorFlow and torchvision crash in one
process; GluonCV refuses to import beside torch >= 2). What a back-end can do is declared here, where the
parent reads it (tests/test_backend_capabilities.py checks each declaration against the back-end's classes).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackendEntry:
    """A back-end: its module, and what it can do."""

    module: str
    feeds_on_gpu: bool = False  # fed uint8 batches on an NVIDIA GPU, normalised there: digests wanted at cache build
    device_feed_switch: bool = False  # XFVERIFY_ORT_FEED=device takes that feed on the CPU too (for tests)
    cuda_graphs: bool = False  # replays the forward pass of full batches as a CUDA graph (--cuda-graphs)
    switches_precision: bool = False  # runs a loaded network's next passes at another precision (--precisions)
    scales_random_outputs: bool = False  # divides a random network's last layer to well-scaled logits
    exports_onnx: bool = False  # exports its networks to ONNX (`xfverify onnx MODEL`)


BACKENDS: dict[str, BackendEntry] = {
    "torch": BackendEntry("xfverify.evaluator.backends.torch.backend", feeds_on_gpu=True, cuda_graphs=True,
                          switches_precision=True, scales_random_outputs=True, exports_onnx=True),
    "tensorflow": BackendEntry("xfverify.evaluator.backends.tensorflow.backend", switches_precision=True,
                               scales_random_outputs=True, exports_onnx=True),
    "mxnet": BackendEntry("xfverify.evaluator.backends.mxnet.backend", scales_random_outputs=True, exports_onnx=True),
    # runs .onnx files: loads no card's network
    "onnxruntime": BackendEntry("xfverify.evaluator.backends.onnxruntime.backend", feeds_on_gpu=True,
                                device_feed_switch=True),
}
