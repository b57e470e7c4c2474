"""The tensor cache's shards as the workers read them: consecutive batches, read as each shard is finished."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import xxhash
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from xfverify.models.user_input import cached_json

FORMAT_VERSION = 2  # of the tensor cache (part of its folder's name) and its sidecars; 2: sidecars list decode caveats


def checksum(array: np.ndarray) -> str:
    """xxh3-128 of an array's bytes (fast enough to verify every shard on every run)."""
    return xxhash.xxh3_128_hexdigest(np.ascontiguousarray(array).data)


def wait_for_file(path: Path, poll_s: float = 0.01) -> None:
    """Block until ``path`` exists (the cache writes each file whole, by renaming it into place).

    The waiter is a worker and the writer its parent: if the parent dies, the worker's orphan
    watcher (:mod:`xfverify.evaluator.system.orphans`) ends the process, so this loop needs no check of its own.
    """
    while not path.exists():
        time.sleep(poll_s)


def sidecar_path(shard_path: str | Path) -> Path:
    """A shard's sidecar (written last, after the data is in place)."""
    return Path(shard_path).with_suffix(".json")


class ShardSidecar(BaseModel):
    """A shard's sidecar, ``<key>.json``: what the shard holds, written last (it publishes the shard)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int
    n: int
    image_ids: list[str]
    bad: dict[int, str] = Field(description="row -> why its image could not be decoded (the row is zeros)")
    caveats: dict[int, str] = Field(description="row -> a note on its image's faithful decode")
    xxh3_128: str = Field(description="of the shard's data (:func:`checksum`)")

    @classmethod
    def of(cls, data: np.ndarray, image_ids: Sequence[str], bad: dict[int, str] | None = None,
           caveats: dict[int, str] | None = None) -> "ShardSidecar":
        """The sidecar of a shard's data (its images, in order) with these ids."""
        return cls(format=FORMAT_VERSION, n=len(data), image_ids=list(image_ids), bad=bad or {}, caveats=caveats or {},
                   xxh3_128=checksum(data))

    def to_json(self) -> str:
        """The file's text (the keys in this order, rows as strings: as the cache has always written it)."""
        return json.dumps(self.model_dump(mode="json"))

    @classmethod
    def parse(cls, payload: object) -> "ShardSidecar | None":
        """A sidecar from its file's JSON, or None when that is not one."""
        try:
            return cls.model_validate(payload)
        except ValidationError:
            return None


def read_sidecar(shard_path: str | Path) -> ShardSidecar | None:
    """A shard's sidecar, or None when it is missing, not a regular file, or not a sidecar."""
    return ShardSidecar.parse(cached_json(sidecar_path(shard_path)))


def consecutive_batches(
    shards: Iterable[tuple[np.ndarray, ...]], batch_size: int
) -> Iterator[tuple[int, tuple[np.ndarray, ...]]]:
    """(index of the first image, arrays) for consecutive batches across shards, each shard given as a tuple of
    arrays with one row per image; a batch inside one shard is a view of its arrays, one across two is a copy."""
    pending: list[tuple[np.ndarray, ...]] = []
    pending_n = 0
    start = 0
    for arrays in shards:
        offset = 0
        while offset < len(arrays[0]):
            take = min(batch_size - pending_n, len(arrays[0]) - offset)
            pending.append(tuple(a[offset : offset + take] for a in arrays))
            pending_n += take
            offset += take
            if pending_n == batch_size:
                yield start, _joined(pending)
                start += pending_n
                pending, pending_n = [], 0
    if pending_n:
        yield start, _joined(pending)


def _joined(parts: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    return parts[0] if len(parts) == 1 else tuple(np.concatenate(column) for column in zip(*parts))


def iter_shard_batches(
    shard_paths: Sequence[str], batch_size: int, wait: bool = False
) -> Iterator[tuple[int, np.ndarray]]:
    """Read consecutive batches across shard files (each a .npy of NHWC images).

    A batch inside one shard is a read-only view of its memory map (no copy); a batch across
    two shards is a copy. With ``wait``, each shard is read once it is complete.
    """

    def shards() -> Iterator[tuple[np.ndarray]]:
        for path in shard_paths:
            if wait:
                wait_for_file(sidecar_path(path))
            yield (np.load(path, mmap_mode="r"),)

    for start, (u8,) in consecutive_batches(shards(), batch_size):
        yield start, u8
