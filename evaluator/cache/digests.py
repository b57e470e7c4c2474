"""What each image's fed float32 tensor is, stored beside the cache's shards, so a GPU need not copy it back.

The tensor an image is fed is a pure function of its cached image and the normalisation (the 3 x 256
table, or for float32 images its arithmetic; channel order, layout). For each shard and each normalisation used on it,
``<shard key>.fed-<normalisation key>.digests`` (JSON) holds, per image:

* ``sha256``: the digest ``tensors_sha256`` is built from (what :func:`normalise.image_digests` gives);
* ``checks``: two exact checksums of the tensor's bytes: the sum of its float32 values' bit patterns read
  as int32, and the same sum with a fixed pseudo-random weight (1 to 256) per position;

and ``records_sha256`` over all of them, so a file changed on disk is remade rather than believed.

The cache computes them on the CPU when it builds a shard, or later for a normalisation first used on a
shard already built. A GPU step computes the two checksums of what it fed on the device and copies back
only those; the loop compares them with the stored ones and reports the stored digests.

Integer sums are exact in any order, so CPU and GPU agree exactly or the bytes differ: no tolerance (float64
sums of the values would differ in their last bits with the order of summation, and would not see -0.0 vs
0.0, which sha256 does). A single changed value always changes the plain sum; values moved to other
positions (a transposition, swapped channels) leave it unchanged, and the weighted sum sees them.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from xfverify.evaluator.system.files import atomic_write_text
from xfverify.evaluator.data.normalise import image_digests, normalisation_lut, normalise
from xfverify.evaluator.cache.shards import checksum, consecutive_batches, read_sidecar, sidecar_path, wait_for_file
from xfverify.models.errors import UserError
from xfverify.models.preprocess import PreprocessSpec
from xfverify.models.user_input import cached_json

FORMAT_VERSION = 2  # 2: records_sha256, so a changed digit is damage, not a wrong tensors_sha256
RECORD = np.dtype([("sha256", np.uint8, (32,)), ("checks", np.int64, (2,))])
# |bit pattern| <= 2**31 and weights <= 2**8: the weighted sum of up to this many values stays below 2**63.
MAX_VALUES = 2**24 - 1


@dataclass(frozen=True)
class FedNormalisation:
    """A normalisation as the digests see it: its table, channel order and layout, and the key naming its files."""

    spec: PreprocessSpec
    lut: np.ndarray
    key: str

    @classmethod
    def of(cls, spec: PreprocessSpec) -> "FedNormalisation":
        lut = normalisation_lut(spec)
        identity = hashlib.sha256(lut.tobytes() + f"|{spec.channel_order}|{spec.layout}".encode())
        if spec.keeps_float:  # float32 images: the arithmetic itself, not only its values on 0..255
            identity.update(np.array([spec.scale, *spec.mean, *spec.std], dtype=np.float32).tobytes())
        return cls(spec, lut, identity.hexdigest()[:16])


@functools.lru_cache(maxsize=8)
def checksum_weights(n_values: int) -> np.ndarray:
    """The weight (1 to 256, int64) of each position of an image's flattened tensor: a multiplicative hash of it."""
    if n_values > MAX_VALUES:
        raise ValueError(f"an image of {n_values} values is too large for exact int64 checksums ({MAX_VALUES} at most)")
    positions = np.arange(n_values, dtype=np.uint64)
    weights = ((positions * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)) >> np.uint64(24)
    weights = weights.astype(np.int64) + 1
    weights.flags.writeable = False
    return weights


def fed_checksums(tensors: np.ndarray) -> np.ndarray:
    """(n, 2) int64: per image, the sum of its float32 values' bit patterns and their position-weighted sum."""
    bits = np.ascontiguousarray(tensors, dtype=np.float32).reshape(len(tensors), -1).view(np.int32).astype(np.int64)
    return np.stack([bits.sum(axis=1), bits @ checksum_weights(bits.shape[1])], axis=1)


def fed_records(u8: np.ndarray, normalisation: FedNormalisation) -> np.ndarray:
    """The stored records (sha256, checks) of a cached NHWC batch's tensors under ``normalisation``."""
    tensors = normalise(u8, normalisation.spec, normalisation.lut)
    records = np.empty(len(u8), dtype=RECORD)
    records["sha256"] = np.frombuffer(b"".join(image_digests(tensors)), dtype=np.uint8).reshape(-1, 32)
    records["checks"] = fed_checksums(tensors)
    return records


def digests_path(shard_path: str | Path, key: str) -> Path:
    """Where a shard's digests under the normalisation ``key`` live."""
    shard_path = Path(shard_path)
    return shard_path.with_name(f"{shard_path.stem}.fed-{key}.digests")


def remove_digests(shard_path: str | Path) -> None:
    """Remove a shard's digests under every normalisation (they go with the shard)."""
    shard_path = Path(shard_path)
    for path in shard_path.parent.glob(f"{shard_path.stem}.fed-*.digests"):
        path.unlink(missing_ok=True)


class DigestsFile(BaseModel):
    """A ``.digests`` file: one shard's records under one normalisation, bound to the shard's data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int
    normalisation: str
    table_sha256: str
    channel_order: str
    layout: str
    shard_xxh3_128: str
    n: int
    sha256: list[str]
    checks: list[list[int]]
    records_sha256: str


def write_digests(shard_path: str | Path, normalisation: FedNormalisation, records: np.ndarray, shard_xxh3: str) -> None:
    """Store a shard's records atomically, bound to the shard's checksum (digests of other data are never used)."""
    spec = normalisation.spec
    payload = DigestsFile(
        format=FORMAT_VERSION,
        normalisation=normalisation.key,
        table_sha256=hashlib.sha256(normalisation.lut.tobytes()).hexdigest(),
        channel_order=spec.channel_order,
        layout=spec.layout,
        shard_xxh3_128=shard_xxh3,
        n=len(records),
        sha256=[bytes(r).hex() for r in records["sha256"]],
        checks=records["checks"].tolist(),
        records_sha256=hashlib.sha256(records.tobytes()).hexdigest(),
    )
    atomic_write_text(digests_path(shard_path, normalisation.key), json.dumps(payload.model_dump()))


def read_digests(shard_path: str | Path, key: str, n: int, shard_xxh3: str | None) -> np.ndarray | None:
    """A shard's records under the normalisation ``key``, or None when missing, unreadable or not this shard's."""
    try:
        payload = DigestsFile.model_validate(cached_json(digests_path(shard_path, key)))
        if (payload.format != FORMAT_VERSION or payload.normalisation != key or payload.n != n
                or (shard_xxh3 is not None and payload.shard_xxh3_128 != shard_xxh3)):
            return None
        records = np.empty(n, dtype=RECORD)
        records["sha256"] = np.frombuffer(bytes.fromhex("".join(payload.sha256)), dtype=np.uint8).reshape(n, 32)
        records["checks"] = np.asarray(payload.checks, dtype=np.int64).reshape(n, 2)
        if payload.records_sha256 != hashlib.sha256(records.tobytes()).hexdigest():
            return None
    except (OSError, ValueError, TypeError, OverflowError):  # a damaged file (ValidationError too): made again
        return None
    return records


def ensure_digests(shard_paths: Sequence[str], spec: PreprocessSpec) -> None:
    """Compute and store the digests of shards that lack valid ones under ``spec`` (here, on the CPU).

    The tensor cache computes them itself, in its decode pool; this is for shards made otherwise.
    """
    normalisation = FedNormalisation.of(spec)
    for path in shard_paths:
        data = np.load(path, mmap_mode="r")
        sidecar = read_sidecar(path)
        xxh3 = sidecar.xxh3_128 if sidecar else None
        if read_digests(path, normalisation.key, len(data), xxh3) is None:
            xxh3 = xxh3 or checksum(data)
            records = np.concatenate([fed_records(np.asarray(data[i : i + 64]), normalisation)
                                      for i in range(0, len(data), 64)]) if len(data) else np.empty(0, RECORD)
            write_digests(path, normalisation, records, xxh3)


def stored_batches(
    shard_paths: Sequence[str], batch_size: int, spec: PreprocessSpec, wait: bool = False, compute_missing: bool = False
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(index of the first image, records, image ids) in the batches :func:`shards.iter_shard_batches` reads.

    With ``wait``, each shard's digests are read once they are stored (the cache may compute them after the
    shard itself); with ``compute_missing`` (the parent stores none), those missing are computed here; else
    missing digests are a bug of the cache, raised at once. Ids are None where a shard's sidecar lists none.
    """
    key = FedNormalisation.of(spec).key

    def shards() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for path in shard_paths:
            if wait:
                wait_for_file(sidecar_path(path))
            if compute_missing:
                ensure_digests([path], spec)
            elif wait:
                wait_for_file(digests_path(path, key))
            sidecar = read_sidecar(path)
            n = len(np.load(path, mmap_mode="r"))
            records = read_digests(path, key, n, sidecar.xxh3_128 if sidecar else None)
            if records is None:
                raise RuntimeError(f"{digests_path(path, key)}: missing, or not the digests of {path} (a bug of the "
                                   "cache: it stores them before a worker reads the shard)")
            ids = (sidecar.image_ids if sidecar else None) or [None] * n
            yield records, np.array(ids, dtype=object)

    for start, (records, ids) in consecutive_batches(shards(), batch_size):
        yield start, records, ids


def check_fed(checks: np.ndarray, records: np.ndarray, image_ids: np.ndarray, first: int, device: str) -> None:
    """Raise, naming the first image, when the checksums of what a device fed differ from the stored ones."""
    differs = np.flatnonzero((np.asarray(checks) != records["checks"]).any(axis=1))
    if len(differs):
        row = int(differs[0])
        name = f"image {image_ids[row]} (#{first + row})" if image_ids[row] is not None else f"image #{first + row}"
        raise UserError(
            f"{name}: the tensor fed on {device} differs from the one the tensor cache stored digests of "
            f"({len(differs)} of {len(records)} images in its batch differ): a damaged digests file (delete the "
            f"cache's *.digests files and rerun) or a bug (please report it)"
        )
