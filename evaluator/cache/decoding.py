"""The decode pool's processes: each decodes chunks of images into the shard being written, and computes the
fed tensors' digests of what it decoded (or of a finished shard's rows)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from xfverify.evaluator.cache.digests import FedNormalisation, fed_records
from xfverify.models.preprocess import PreprocessSpec

_worker_spec: PreprocessSpec | None = None
_worker_normalisations: dict[str, FedNormalisation] = {}
_worker_maps: dict[str, np.memmap] = {}


def init_decode_process(spec: PreprocessSpec, run_pid: int, normalisation_specs: Sequence[PreprocessSpec] = ()) -> None:
    global _worker_spec
    import signal

    from xfverify.evaluator.system.orphans import exit_when_orphaned

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the pool
    exit_when_orphaned(run_pid)  # a killed run must not leave its decode pool (and the terminal) behind

    _worker_spec = spec
    for normalisation_spec in normalisation_specs:
        normalisation = FedNormalisation.of(normalisation_spec)
        _worker_normalisations[normalisation.key] = normalisation


def _chunk_records(rows: np.ndarray, keys: Sequence[str]) -> dict[str, np.ndarray]:
    return {key: fed_records(rows, _worker_normalisations[key]) for key in keys}


def digest_chunk(data_path: str, row: int, count: int, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The fed-tensor records of rows ``row..row+count`` of a finished shard under the normalisations ``keys``."""
    return _chunk_records(np.asarray(np.load(data_path, mmap_mode="r")[row : row + count]), keys)


def decode_chunk(
    tmp_path: str, row: int, paths: Sequence[str]
) -> tuple[list[tuple[int, str]], list[tuple[int, str]], dict[str, np.ndarray]]:
    """Decode ``paths`` into rows ``row..`` of the shard being written; returns (row, reason) for bad files,
    (row, caveat) for images whose faithful decode deserves a note, and the rows' fed-tensor records under
    every normalisation of the run (bad images' rows are zeros, and fed as such)."""
    from xfverify.evaluator.data.imaging import BadImageError, load_geometry_noting

    if tmp_path not in _worker_maps:
        if len(_worker_maps) > 4:
            _worker_maps.clear()
        _worker_maps[tmp_path] = np.load(tmp_path, mmap_mode="r+")
    target = _worker_maps[tmp_path]
    bad, caveats = [], []
    for i, path in enumerate(paths):
        try:
            image, caveat = load_geometry_noting(path, _worker_spec)
        except BadImageError as exc:
            target[row + i] = 0
            bad.append((row + i, exc.reason))
            continue
        if image.shape != target.shape[1:]:
            raise RuntimeError(f"{path}: geometry produced {image.shape}, expected {target.shape[1:]}")
        target[row + i] = image
        if caveat:
            caveats.append((row + i, caveat))
    return bad, caveats, _chunk_records(np.asarray(target[row : row + len(paths)]), list(_worker_normalisations))


