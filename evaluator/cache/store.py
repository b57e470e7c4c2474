"""Decode once: an on-disk, memory-mappable cache of images after resize and crop (uint8; float32 for a spec that
keeps TensorFlow's resized floats, ``PreprocessSpec.keeps_float``).

Layout under the cache root::

    <geometry hash>-<library versions hash>/
        spec.json                 the geometry and library versions, for people
        shards/<key>.npy          (n, H, W, 3) RGB (the spec's cached_dtype), one block of consecutive images
        shards/<key>.json         n, image ids, bad images, decode caveats, xxh3-128 of the .npy data
        shards/<key>.fed-<n>.digests  per image, the sha256 and checksums of its tensor under normalisation n
                                  (:mod:`xfverify.evaluator.cache.digests`), bound to the shard's xxh3-128

A shard's key hashes the geometry and, for each of its images, the id, path, size,
mtime, change time and inode, so a changed file or spec makes a new shard and never
reuses a stale one (a file replaced by one of the same size with its mtime set back
still has a new change time, which no user tool can set).
Writes go to a temporary file that is renamed into place, the sidecar last, so a
killed run leaves only complete shards (resumed next time) or temporary files (removed).
Every shard's checksum is verified before use, so a shard torn by a crash of the
machine itself (no fsync is spent on that) or damaged later is reported and rebuilt.
Builders hold an advisory lock per shard, so two runs sharing a cache do not duplicate
work, and if they race, both renames install identical bytes.

The fed tensors' digests are computed by the decode pool: while decoding, for the normalisations the
run asks for (written before the sidecar, so a reader that sees the sidecar finds them too), and for a
normalisation first used on a shard already built, from the shard, under the same lock, after the survey.
A damaged shard's digests are removed with its sidecar.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
from xfverify.evaluator.data.layouts import ImageRecord
from xfverify.evaluator.cache.digests import (
    RECORD,
    FedNormalisation,
    digests_path,
    read_digests,
    remove_digests,
    write_digests,
)
from xfverify.evaluator.cache.decoding import decode_chunk, digest_chunk, init_decode_process
from xfverify.evaluator.cache.starting import pool_context
from xfverify.evaluator.system.files import allocated_npy, atomic_write_text, ensure_room, owned_subfolder
from xfverify.evaluator.system.locks import ShardLock
from xfverify.evaluator.cache.shards import FORMAT_VERSION, ShardSidecar, checksum, iter_shard_batches
from xfverify.models.errors import UserError
from xfverify.models.preprocess import PreprocessSpec
from xfverify.models.user_input import cached_json, is_regular

SHARD_SIZE = 512
_NO_ROOM_FIX = ("free space there, or put the cache on a larger disk (--cache-dir or $XFVERIFY_CACHE); "
                "finished shards are kept")
CHUNK_SIZE = 16
CANCEL_POLL_S = 0.5
# A decode pool for a spec that decodes in a framework's worker (spec.decode_worker), made from the spec, the CPU
# pool (for everything else) and the normalisation keys: submit(function, *args) -> Future, start(),
# shutdown(wait, cancel_futures), as ProcessPoolExecutor's.
DecoderPool = Callable[[PreprocessSpec, ProcessPoolExecutor, list], Any]


def nvjpeg_identity() -> dict[str, str]:
    """What the nvjpeg decoder's output depends on beyond the geometry: torchvision's version and the decoder."""
    from importlib import metadata

    from xfverify.evaluator.system.devices import nvidia_gpus, nvjpeg_on_cpu

    try:
        torchvision = metadata.version("torchvision")
    except metadata.PackageNotFoundError:
        torchvision = "absent"
    decoder = "cpu" if nvjpeg_on_cpu() else ",".join(nvidia_gpus()) or "no GPU"
    return {"torchvision": torchvision, "nvjpeg_device": decoder}


def _mxnet_version() -> str:
    """MXNet's version, whichever of its distributions (mxnet, mxnet-cu101, ...) is installed."""
    from importlib import metadata

    return next((found.version for found in metadata.distributions()
                 if (found.metadata["Name"] or "").lower().startswith("mxnet")), "absent")


def _installed_version(distribution: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "absent"


def default_cache_root() -> Path:
    """``$XFVERIFY_CACHE``, else ``$XDG_CACHE_HOME/xfverify``, else ``~/.cache/xfverify``."""
    if os.environ.get("XFVERIFY_CACHE"):
        return Path(os.environ["XFVERIFY_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xfverify"


@dataclass(frozen=True)
class ShardPlan:
    key: str
    start: int
    records: tuple[ImageRecord, ...]


@dataclass
class BuildStats:
    """What ``ensure`` did: images decoded, shards reused or rebuilt, fed-tensor digests computed for shards
    already built (a normalisation new to them), and how long it took."""

    decoded: int = 0
    digested: int = 0
    reused_shards: int = 0
    built_shards: int = 0
    rebuilt_corrupt: int = 0
    seconds: float = 0.0
    workers: int = 0

    @property
    def images_per_s(self) -> float:
        return self.decoded / self.seconds if self.seconds > 0 else 0.0


class BuildCancelled(Exception):
    """The cache build was asked to stop (finished shards are kept)."""


@dataclass
class CachePlan:
    """What :meth:`TensorCache.survey` found: every shard planned, the intact ones, the ones to build, and the
    intact ones that lack the digests of some of the run's normalisations (by shard key)."""

    plans: list[ShardPlan]
    normalisations: list[FedNormalisation] = field(default_factory=list)
    todo: list[ShardPlan] = field(default_factory=list)
    sidecars: dict[str, ShardSidecar] = field(default_factory=dict)
    stats: BuildStats = field(default_factory=BuildStats)
    undigested: dict[str, list[str]] = field(default_factory=dict)

    @property
    def pending(self) -> bool:
        """Whether a reader must wait: shards to build, or digests to compute."""
        return bool(self.todo or self.undigested)


class _Chunk(NamedTuple):
    """Rows ``row..row + count`` of the shard ``key``, submitted to the decode pool."""

    key: str
    row: int
    count: int


@dataclass
class _ShardWork:
    """A shard the pool works on: decoded into ``tmp`` with its digests, or (``tmp`` None) an intact shard given
    the digests it lacks; filled in chunk by chunk."""

    plan: ShardPlan
    tmp: Path | None
    records: dict[str, np.ndarray]  # normalisation key -> the fed tensors' records, one per image
    chunks_left: int = 0
    bad: dict[int, str] = field(default_factory=dict)  # row -> why it could not be decoded
    caveats: dict[int, str] = field(default_factory=dict)  # row -> a note on its decode

    def add(self, chunk: _Chunk, result: Any) -> None:
        """A finished chunk: its records, and (decoded) its bad images and caveats."""
        if self.tmp is None:
            chunk_records = result
        else:
            bad, caveats, chunk_records = result
            self.bad.update(bad)
            self.caveats.update(caveats)
        for key, records in chunk_records.items():
            self.records[key][chunk.row : chunk.row + chunk.count] = records
        self.chunks_left -= 1


def _empty_records(plan: ShardPlan, keys: Iterable[str]) -> dict[str, np.ndarray]:
    return {key: np.empty(len(plan.records), RECORD) for key in keys}


@dataclass(frozen=True)
class ImageIssue:
    """An image that could not be decoded (skipped), or whose faithful decode has a caveat for the report."""

    index: int
    image_id: str
    path: str
    reason: str


class CachedImages:
    """The cached images of a manifest, in manifest order, read through memory maps."""

    def __init__(self, shards: Sequence[tuple[ShardPlan, Path]], bad: Sequence[ImageIssue], hw: tuple[int, int],
                 caveats: Sequence[ImageIssue] = ()):
        self._shards = list(shards)
        self.bad = list(bad)
        self.caveats = list(caveats)
        self.hw = hw
        self.n_images = sum(len(plan.records) for plan, _ in self._shards)

    @property
    def shard_paths(self) -> list[str]:
        return [str(path) for _, path in self._shards]

    def batches(self, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        """(index of the first image, NHWC batch) in manifest order; bad images are zeros."""
        yield from iter_shard_batches(self.shard_paths, batch_size)


# --- the cache ---------------------------------------------------------------------------


class TensorCache:
    """Cache of the images of one preprocessing geometry."""

    def __init__(self, root: str | os.PathLike, spec: PreprocessSpec, shard_size: int = SHARD_SIZE,
                 decoder_pool: DecoderPool | None = None):
        from xfverify.evaluator.data.imaging import library_versions

        if spec.output_hw is None:
            raise UserError(
                f"preprocessing {spec.name!r} gives images of varying size (no crop, no squash): "
                "set crop_size or resize_mode=squash to evaluate in batches"
            )
        self.spec = spec
        self.shard_size = shard_size
        self.decoder_pool = decoder_pool  # for a spec that decodes in a framework's worker (nvjpeg, MXNet, TF's window)
        self.hw = spec.output_hw
        versions = library_versions()
        if spec.decoder == "nvjpeg":
            versions = {**versions, **nvjpeg_identity()}
        if spec.decodes_window:
            versions = {**versions, "tensorflow": _installed_version("tensorflow")}
        if spec.decoder == "mxnet":
            versions = {**versions, "mxnet": _mxnet_version()}
        ident = {"geometry": spec.geometry(), "libraries": versions, "format": FORMAT_VERSION}
        self.dtype = np.dtype(spec.cached_dtype)
        if spec.keeps_float:  # uint8 caches keep the keys they had
            ident["pixels"] = spec.cached_dtype
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
        self.directory = Path(root).expanduser() / f"{spec.geometry_key()}-{digest[:12]}"
        self._ident = ident
        self._ident_digest = digest

    # -- planning
    def plan(self, records: Sequence[ImageRecord]) -> list[ShardPlan]:
        """Split ``records`` into shards of consecutive images, each with a content key."""
        plans = []
        for start in range(0, len(records), self.shard_size):
            block = tuple(records[start : start + self.shard_size])
            digest = hashlib.sha256(self._ident_digest.encode())
            for record in block:
                try:
                    stat = os.stat(record.path)
                    identity = f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}:{stat.st_ino}"
                except OSError:
                    identity = "missing"
                digest.update(f"{record.image_id}\0{record.path}\0{identity}\n".encode())
            plans.append(ShardPlan(key=digest.hexdigest()[:32], start=start, records=block))
        return plans

    def _paths(self, key: str) -> tuple[Path, Path]:
        shards = self.directory / "shards"
        return shards / f"{key}.npy", shards / f"{key}.json"

    # -- verification
    def load_valid(self, plan: ShardPlan) -> tuple[ShardSidecar | None, str]:
        """(sidecar, "") when the shard is complete and intact, else (None, why not)."""
        data_path, meta_path = self._paths(plan.key)
        if not meta_path.exists():
            return None, "missing"
        payload = cached_json(meta_path)
        if not isinstance(payload, dict) or not is_regular(data_path):  # a FIFO or a device there is never opened
            return None, "unreadable (not a regular file, or not JSON)"
        try:
            data = np.load(data_path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            return None, f"unreadable ({exc})"
        meta = ShardSidecar.parse(payload)
        if meta is None or meta.format != FORMAT_VERSION or meta.image_ids != [r.image_id for r in plan.records]:
            return None, "its sidecar does not match the images"
        if data.shape != (len(plan.records), *self.hw, 3) or data.dtype != self.dtype:
            return None, f"{data.dtype} {data.shape} instead of {self.dtype} {(len(plan.records), *self.hw, 3)}"
        if checksum(data) != meta.xxh3_128:
            return None, "checksum mismatch"
        return meta, ""

    def _undigested(self, plan: ShardPlan, meta: ShardSidecar, normalisations: Sequence[FedNormalisation]) -> list[str]:
        """The keys of ``normalisations`` under which this intact shard has no valid digests (stale ones are removed,
        so a reader that waits for them reads only the ones computed for this shard)."""
        data_path, _ = self._paths(plan.key)
        missing = []
        for normalisation in normalisations:
            if read_digests(data_path, normalisation.key, len(plan.records), meta.xxh3_128) is None:
                digests_path(data_path, normalisation.key).unlink(missing_ok=True)
                missing.append(normalisation.key)
        return missing

    # -- building
    def survey(self, records: Sequence[ImageRecord], log: Callable[[str], None] | None = None,
               normalisations: Sequence[PreprocessSpec] | None = None) -> "CachePlan":
        """Plan the shards of ``records`` and verify the ones on disk; damaged ones are unpublished.

        After this, a shard's sidecar exists only if its data is intact, so a reader that waits
        for sidecars (a worker started while the cache builds) never reads damaged data.
        ``normalisations`` (default: the cache's spec) are those whose fed-tensor digests the run needs; none
        when it feeds no device (a device-fed worker computes what it finds missing itself).
        """
        log = log or (lambda message: None)
        self.directory.parent.mkdir(parents=True, exist_ok=True)  # the root, checked by its caller
        owned_subfolder(self.directory.parent, Path(self.directory.name) / "shards", "--cache-dir")
        spec_file = self.directory / "spec.json"
        if not spec_file.exists():
            atomic_write_text(spec_file, json.dumps(self._ident, indent=2, sort_keys=True))
        self._remove_stale_temporaries()
        unique = {n.key: n for n in map(FedNormalisation.of, [self.spec] if normalisations is None else normalisations)}
        survey = CachePlan(plans=self.plan(records), normalisations=list(unique.values()))

        def verdict(plan: ShardPlan) -> tuple[ShardSidecar | None, str, list[str]]:
            meta, why = self.load_valid(plan)
            return meta, why, self._undigested(plan, meta, survey.normalisations) if meta is not None else []

        threads = max(1, min(8, os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="xfverify-verify") as pool:
            verdicts = list(pool.map(verdict, survey.plans))  # xxh3 releases the GIL: shards in parallel
        for plan, (meta, why, undigested) in zip(survey.plans, verdicts):
            if meta is not None:
                survey.sidecars[plan.key] = meta
                survey.stats.reused_shards += 1
                if undigested:
                    survey.undigested[plan.key] = undigested
                continue
            if why != "missing":
                log(f"cache shard {plan.key} is damaged ({why}): rebuilding it")
                self._paths(plan.key)[1].unlink(missing_ok=True)
                remove_digests(self._paths(plan.key)[0])
                survey.stats.rebuilt_corrupt += 1
            survey.todo.append(plan)
        return survey

    def shard_paths(self, survey: "CachePlan") -> list[str]:
        """Data files of every planned shard, in manifest order (some may still be being built)."""
        return [str(self._paths(plan.key)[0]) for plan in survey.plans]

    def complete(
        self,
        survey: "CachePlan",
        *,
        workers: int | None = None,
        stop_on_bad: bool = False,
        progress: Callable[[int, int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> tuple[CachedImages, BuildStats]:
        """Decode the shards the survey found missing, and compute the digests it found missing, in parallel;
        return the whole cached manifest.

        With ``stop_on_bad`` the build stops after the shard holding the first bad image is
        written (so nothing decoded is lost) and :class:`BadImageError` names that file.
        ``progress(done, total)`` is called as images are decoded (or digested). Setting ``cancel`` stops the
        build after the shards under way (finished shards are kept) and raises :class:`BuildCancelled`.
        """
        from xfverify.evaluator.data.imaging import BadImageError

        started = time.perf_counter()
        stats = survey.stats
        sidecars = dict(survey.sidecars)
        if survey.pending:
            sidecars.update(self._build(survey, workers, stop_on_bad, progress, stats, cancel))
        stats.seconds = time.perf_counter() - started
        bad = _issues(survey.plans, sidecars, lambda sidecar: sidecar.bad)
        caveats = _issues(survey.plans, sidecars, lambda sidecar: sidecar.caveats)
        if stop_on_bad and bad:
            raise BadImageError(bad[0].path, bad[0].reason)
        shards = [(plan, self._paths(plan.key)[0]) for plan in survey.plans]
        return CachedImages(shards, bad, self.hw, caveats), stats

    def ensure(
        self,
        records: Sequence[ImageRecord],
        *,
        workers: int | None = None,
        stop_on_bad: bool = False,
        progress: Callable[[int, int], None] | None = None,
        log: Callable[[str], None] | None = None,
        normalisations: Sequence[PreprocessSpec] | None = None,
    ) -> tuple[CachedImages, BuildStats]:
        """Make sure every image of ``records`` is cached (:meth:`survey`, then :meth:`complete`)."""
        started = time.perf_counter()
        survey = self.survey(records, log, normalisations)
        cached, stats = self.complete(survey, workers=workers, stop_on_bad=stop_on_bad, progress=progress)
        stats.seconds = time.perf_counter() - started
        return cached, stats

    def _build(
        self,
        survey: "CachePlan",
        workers: int | None,
        stop_on_bad: bool,
        progress: Callable[[int, int], None] | None,
        stats: BuildStats,
        cancel: threading.Event | None = None,
    ) -> dict[str, ShardSidecar]:
        stats.workers = max(1, workers or os.cpu_count() or 1)
        work = survey.todo + [plan for plan in survey.plans if plan.key in survey.undigested]
        counter = _Progress(sum(len(plan.records) for plan in work), progress)
        counter.advance(0)
        to_decode = {plan.key for plan in survey.todo}
        results: dict[str, ShardSidecar] = {}

        def left(plans: list[ShardPlan]) -> tuple[list[ShardPlan], list[tuple[ShardPlan, list[str]]]]:
            return self._still_to_do(plans, to_decode, survey.normalisations, results, stats, counter)

        with contextlib.ExitStack() as stack:
            mine, theirs = [], []
            for plan in work:
                lock = stack.enter_context(ShardLock(self.directory / "shards" / f"{plan.key}.lock"))
                (mine if lock.acquired else theirs).append((plan, lock))
            # another run may have done some of ours between our survey and our lock
            self._run_pool(*left([plan for plan, _ in mine]), survey.normalisations, stats, stop_on_bad, counter,
                           results, cancel)
            # Release ours before waiting for theirs: two runs that each hold a shard the other waits for would
            # otherwise wait forever. Theirs are then taken one at a time, in plan order.
            for _, lock in mine:
                lock.release()
            for plan, lock in theirs:  # another run is building these: wait, then check its work
                lock.wait()
                # what that run did not do (it died, stopped, or used other normalisations) is done here
                self._run_pool(*left([plan]), survey.normalisations, stats, stop_on_bad, counter, results, cancel)
                lock.release()
        return results

    def _still_to_do(
        self,
        plans: list[ShardPlan],
        to_decode: set[str],
        normalisations: Sequence[FedNormalisation],
        results: dict[str, ShardSidecar],
        stats: BuildStats,
        counter: "_Progress",
    ) -> tuple[list[ShardPlan], list[tuple[ShardPlan, list[str]]]]:
        """Of ``plans`` (locked by this run), the shards to decode and the intact shards lacking digests (with the
        keys of the normalisations they lack); intact shards go into ``results``."""
        decode, digest = [], []
        for plan in plans:
            meta, _why = self.load_valid(plan)
            if meta is None:
                decode.append(plan)
                continue
            results[plan.key] = meta
            if plan.key in to_decode:
                stats.reused_shards += 1
            missing = self._undigested(plan, meta, normalisations)
            if missing:
                digest.append((plan, missing))
            else:
                counter.advance(len(plan.records))
        return decode, digest

    def _run_pool(
        self,
        decode: list[ShardPlan],
        digest: list[tuple[ShardPlan, list[str]]],
        normalisations: Sequence[FedNormalisation],
        stats: BuildStats,
        stop_on_bad: bool,
        counter: "_Progress",
        results: dict[str, ShardSidecar],
        cancel: threading.Event | None = None,
    ) -> None:
        """Decode ``decode`` (with their digests) and compute the digests ``digest`` lacks, in a pool of processes."""
        if not decode and not digest:
            return
        if cancel is not None and cancel.is_set():  # e.g. the worker failed during the survey
            raise BuildCancelled("the cache build was cancelled; finished shards are kept")
        if decode:
            image_bytes = self.hw[0] * self.hw[1] * 3 * self.dtype.itemsize
            ensure_room(self.directory / "shards", sum(len(p.records) for p in decode) * image_bytes, _NO_ROOM_FIX)
        by_key = {normalisation.key: normalisation for normalisation in normalisations}
        pool, in_worker = self._open_pool(decode, digest, by_key, stats)
        pending: dict[str, _ShardWork] = {}
        try:
            futures = self._submit(pool, decode, digest, by_key, pending)
            if in_worker:  # every chunk is submitted: the worker can take them all
                pool.start()
            while futures:  # a cancel is seen within a second even when no chunk finishes (a decode worker gone)
                finished, _ = wait(futures, timeout=CANCEL_POLL_S, return_when=FIRST_COMPLETED)
                for future in finished:
                    chunk = futures.pop(future)
                    shard = pending[chunk.key]
                    shard.add(chunk, future.result())
                    counter.advance(chunk.count)
                    if not shard.chunks_left:
                        del pending[chunk.key]
                        self._finish(shard, by_key, results, stats, stop_on_bad)
                if cancel is not None and cancel.is_set():
                    raise BuildCancelled("the cache build was cancelled; finished shards are kept")
        finally:
            # Finished shards are committed; unfinished ones are dropped (a rerun resumes).
            pool.shutdown(wait=True, cancel_futures=True)
            for shard in pending.values():
                if shard.tmp is not None:
                    shard.tmp.unlink(missing_ok=True)

    def _open_pool(self, decode: list[ShardPlan], digest: list[tuple[ShardPlan, list[str]]],
                   by_key: dict[str, FedNormalisation], stats: BuildStats) -> tuple[Any, bool]:
        """The pool of decode processes, or, when shards are to be decoded by a framework's worker
        (``spec.decode_worker``), that worker's pool over it; and whether it is the worker's (started once every
        chunk is submitted)."""
        n_images = sum(len(p.records) for p in decode) + sum(len(p.records) for p, _ in digest)
        pool = ProcessPoolExecutor(
            max_workers=min(stats.workers, n_images),
            mp_context=pool_context(),
            initializer=init_decode_process,
            initargs=(self.spec, os.getpid(), [n.spec for n in by_key.values()]),
        )
        if self.spec.decode_worker is None or not decode:
            return pool, False
        if self.decoder_pool is None:
            raise RuntimeError(f"{self.spec.name} decodes in a {self.spec.decode_worker} worker: the cache needs "
                               "its decoder_pool")
        return self.decoder_pool(self.spec, pool, list(by_key)), True

    def _submit(self, pool: Any, decode: list[ShardPlan], digest: list[tuple[ShardPlan, list[str]]],
                by_key: dict[str, FedNormalisation], pending: dict[str, "_ShardWork"]) -> dict[Future, "_Chunk"]:
        """Every chunk of the shards to decode (each into a temporary file of its own) and of those to digest; each
        shard's work is entered in ``pending`` as it is submitted."""
        futures: dict[Future, _Chunk] = {}
        for plan in decode:
            data_path, _ = self._paths(plan.key)
            tmp = data_path.with_name(f"{plan.key}.npy.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            allocated_npy(tmp, self.dtype, (len(plan.records), *self.hw, 3), _NO_ROOM_FIX)
            shard = pending[plan.key] = _ShardWork(plan, tmp, _empty_records(plan, by_key))
            for row in range(0, len(plan.records), CHUNK_SIZE):
                paths = [r.path for r in plan.records[row : row + CHUNK_SIZE]]
                futures[pool.submit(decode_chunk, str(tmp), row, paths)] = _Chunk(plan.key, row, len(paths))
                shard.chunks_left += 1
        for plan, keys in digest:
            data_path, _ = self._paths(plan.key)
            shard = pending[plan.key] = _ShardWork(plan, None, _empty_records(plan, keys))
            for row in range(0, len(plan.records), CHUNK_SIZE):
                count = min(CHUNK_SIZE, len(plan.records) - row)
                futures[pool.submit(digest_chunk, str(data_path), row, count, keys)] = _Chunk(plan.key, row, count)
                shard.chunks_left += 1
        return futures

    def _finish(self, shard: "_ShardWork", by_key: dict[str, FedNormalisation], results: dict[str, ShardSidecar],
                stats: BuildStats, stop_on_bad: bool) -> None:
        """A shard whose chunks are all done: the digests it lacked stored, or the decoded shard committed (with
        ``stop_on_bad``, then :class:`BadImageError` names its first bad image)."""
        from xfverify.evaluator.data.imaging import BadImageError

        plan = shard.plan
        if shard.tmp is None:
            data_path, _ = self._paths(plan.key)
            for key, records in shard.records.items():
                write_digests(data_path, by_key[key], records, results[plan.key].xxh3_128)
            stats.digested += len(plan.records)
            return
        results[plan.key] = self._commit(plan, shard.tmp, shard.bad, shard.caveats,
                                         [(by_key[key], records) for key, records in shard.records.items()])
        stats.built_shards += 1
        stats.decoded += len(plan.records)
        if stop_on_bad and shard.bad:
            first = min(shard.bad)
            raise BadImageError(plan.records[first].path, shard.bad[first])

    def _commit(self, plan: ShardPlan, tmp: Path, bad: dict[int, str], caveats: dict[int, str],
                digests: Sequence[tuple[FedNormalisation, np.ndarray]]) -> ShardSidecar:
        """Install a decoded shard: its data, then its digests, then its sidecar (which publishes it)."""
        data = np.load(tmp, mmap_mode="r")
        meta = ShardSidecar.of(data, [r.image_id for r in plan.records], bad, caveats)
        del data
        data_path, meta_path = self._paths(plan.key)
        os.replace(tmp, data_path)
        for normalisation, records in digests:
            write_digests(data_path, normalisation, records, meta.xxh3_128)
        atomic_write_text(meta_path, meta.to_json())
        return meta

    def _remove_stale_temporaries(self) -> None:
        for tmp in (self.directory / "shards").glob("*.tmp-*"):
            try:
                pid = int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0])
            except (IndexError, ValueError):
                continue
            if not _pid_alive(pid):
                tmp.unlink(missing_ok=True)


def _issues(plans: Sequence[ShardPlan], sidecars: dict[str, ShardSidecar],
            which: Callable[[ShardSidecar], dict[int, str]]) -> list[ImageIssue]:
    """The entries ``which`` picks from the shards' sidecars (bad images, or caveats), in manifest order."""
    issues = []
    for plan in plans:
        for row, reason in sorted(which(sidecars[plan.key]).items()):
            record = plan.records[row]
            issues.append(ImageIssue(plan.start + row, record.image_id, record.path, reason))
    return issues


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Progress:
    def __init__(self, total: int, callback: Callable[[int, int], None] | None):
        self.total = total
        self.done = 0
        self.callback = callback

    def advance(self, count: int) -> None:
        self.done = min(self.total, self.done + count)
        if self.callback:
            self.callback(self.done, self.total)
