"""Names both sides of the process boundary use: the files a worker writes for the parent, and the strings its
results carry. Written once here, read by the parent (pipeline, analysis) and the workers (backends)."""

from __future__ import annotations

from typing import Literal

LOGITS_FILE = "logits.npy"  # a pass's outputs, float32 N x classes, in the job's work folder
DATA_FILE = "data.json"  # the shard paths, written by the parent once the cache is surveyed

# How the tensors fed were proven identical (a report's ``tensor_proof``): hashed where they were, or the device's
# exact checksums compared with the digests stored when the cache was built.
HASHED_ON_HOST = "hashed on host"
DEVICE_CHECKSUMS = "device checksums against digests stored at cache build"
TensorProof = Literal["hashed on host", "device checksums against digests stored at cache build"]

INPUT_SUFFIX = "<input>"  # a recorded module input's name (torch's pre-hooks): the module's name, suffixed


def variant_folder(index: int) -> str:
    """The work sub-folder of the ``index``-th variant of a many-variant job (diagnose): its logits, its result."""
    return f"variant-{index}"
