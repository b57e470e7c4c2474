"""The decode pool's chunks as a framework's worker takes them: each file decoded by the framework's own decoder
and given the spec's geometry, written into its shard's rows, each chunk reported as an event."""

from __future__ import annotations

from typing import Callable

import numpy as np

from xfverify.evaluator.data.imaging import BadImageError
from xfverify.evaluator.process.events import Decoded, emit
from xfverify.evaluator.process.tasks import DecodeJob
from xfverify.models.preprocess import PreprocessSpec

DecodeOne = Callable[[str, PreprocessSpec], tuple[np.ndarray, "str | None"]]  # a file -> its geometry and caveat


def decode_chunks(request: DecodeJob, decode_one: DecodeOne) -> int:
    """Decode every chunk of the job into its shard's rows with ``decode_one``; one ``Decoded`` event per chunk.
    Returns the number of chunks."""
    shards: dict[str, np.ndarray] = {}
    for index, chunk in enumerate(request.chunks):
        target = shards.setdefault(chunk.tmp_path, np.load(chunk.tmp_path, mmap_mode="r+"))
        bad, caveats = [], []
        for offset, path in enumerate(chunk.paths):
            row = chunk.row + offset
            try:
                image, caveat = decode_one(path, request.spec)
            except BadImageError as exc:
                target[row] = 0
                bad.append((row, exc.reason))
                continue
            if image.shape != target.shape[1:]:
                raise RuntimeError(f"{path}: geometry produced {image.shape}, expected {target.shape[1:]}")
            target[row] = image
            if caveat:
                caveats.append((row, caveat))
        emit(Decoded(index=index, bad=bad, caveats=caveats))
    for target in shards.values():
        target.flush()
    return len(request.chunks)
