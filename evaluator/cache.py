"""Decode once: an on-disk, memory-mappable cache of uint8 images after resize and crop.

Layout under the cache root::

    <geometry hash>-<library versions hash>/
        spec.json                 the geometry and library versions, for people
        shards/<key>.npy          (n, H, W, 3) uint8 RGB, one block of consecutive images
        shards/<key>.json         n, image ids, bad images, decode caveats, xxh3-128 of the .npy data

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
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from xfverify.evaluator.data import ImageRecord
from xfverify.evaluator.folders import allocated_npy, atomic_write_text, ensure_room
from xfverify.evaluator.locks import ShardLock
from xfverify.evaluator.shards import checksum, iter_shard_batches
from xfverify.models.errors import UserError
from xfverify.models.preprocess import PreprocessSpec

SHARD_SIZE = 512
_NO_ROOM_FIX = ("free space there, or put the cache on a larger disk (--cache-dir or $XFVERIFY_CACHE); "
                "finished shards are kept")
CHUNK_SIZE = 16
FORMAT_VERSION = 2  # 2: sidecars list decode caveats


def nvjpeg_identity() -> dict[str, str]:
    """What the nvjpeg decoder's output depends on beyond the geometry: torchvision's version and the decoder."""
    from importlib import metadata

    from xfverify.evaluator.frameworks.devices import nvidia_gpus

    try:
        torchvision = metadata.version("torchvision")
    except metadata.PackageNotFoundError:
        torchvision = "absent"
    decoder = "cpu" if os.environ.get("XFVERIFY_NVJPEG_DEVICE") == "cpu" else ",".join(nvidia_gpus()) or "no GPU"
    return {"torchvision": torchvision, "nvjpeg_device": decoder}


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
    """What ``ensure`` did: images decoded, shards reused or rebuilt, and how long it took."""

    decoded: int = 0
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
    """What :meth:`TensorCache.survey` found: every shard planned, the intact ones, the ones to build."""

    plans: list[ShardPlan]
    todo: list[ShardPlan] = field(default_factory=list)
    sidecars: dict[str, dict] = field(default_factory=dict)
    stats: BuildStats = field(default_factory=BuildStats)


@dataclass(frozen=True)
class ImageIssue:
    """An image that could not be decoded (skipped), or whose faithful decode has a caveat for the report."""

    index: int
    image_id: str
    path: str
    reason: str


class CachedImages:
    """The cached uint8 images of a manifest, in manifest order, read through memory maps."""

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
        """(index of the first image, uint8 NHWC batch) in manifest order; bad images are zeros."""
        yield from iter_shard_batches(self.shard_paths, batch_size)


# --- worker-process side -----------------------------------------------------------------

_worker_spec: PreprocessSpec | None = None
_worker_maps: dict[str, np.memmap] = {}


def _init_worker(spec_dict: dict, run_pid: int) -> None:
    global _worker_spec
    import signal

    from xfverify.evaluator.worker import exit_when_orphaned
    from xfverify.models.preprocess import spec_from_dict

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the pool
    exit_when_orphaned(run_pid)  # a killed run must not leave its decode pool (and the terminal) behind

    _worker_spec = spec_from_dict(spec_dict)


def _decode_chunk(tmp_path: str, row: int, paths: Sequence[str]) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """Decode ``paths`` into rows ``row..`` of the shard being written; returns (row, reason) for bad files
    and (row, caveat) for images whose faithful decode deserves a note."""
    from xfverify.evaluator.imaging import BadImageError, load_geometry_noting

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
    return bad, caveats


class WorkerDecodePool:
    """The decode pool's interface (submit, shutdown) over one torch worker, for the ``nvjpeg`` decoder: the GPU
    decodes, so one process takes every chunk (evaluator/frameworks/nvjpeg.py) and reports each as it is done."""

    def __init__(self, spec: PreprocessSpec):
        self.spec = spec
        self.chunks: list[dict] = []
        self.futures: list[Future] = []
        self.process = None
        self.thread: threading.Thread | None = None

    def submit(self, _function: Callable, tmp_path: str, row: int, paths: Sequence[str]) -> Future:
        future: Future = Future()
        self.chunks.append({"tmp_path": tmp_path, "row": row, "paths": list(paths)})
        self.futures.append(future)
        return future

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="xfverify-nvjpeg", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from xfverify.evaluator.launcher import run_worker

        def on_event(event: dict) -> None:
            if event.get("event") == "decoded":
                bad = [tuple(item) for item in event["bad"]]
                caveats = [tuple(item) for item in event["caveats"]]
                self.futures[event["index"]].set_result((bad, caveats))

        def on_start(process) -> None:
            self.process = process

        try:
            run_worker("torch", "decode_nvjpeg", {"spec": self.spec.to_dict(), "chunks": self.chunks},
                       on_event=on_event, on_start=on_start)
            failure: BaseException = RuntimeError("the nvjpeg worker ended without decoding every chunk")
        except BaseException as exc:  # a UserError (no GPU) or a crash: every waiting chunk gets it
            failure = exc
        for future in self.futures:
            if not future.done():
                future.set_exception(failure)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.thread is not None and wait:
            self.thread.join()


# --- the cache ---------------------------------------------------------------------------


class TensorCache:
    """Cache of uint8 images for one preprocessing geometry."""

    def __init__(self, root: str | os.PathLike, spec: PreprocessSpec, shard_size: int = SHARD_SIZE):
        from xfverify.evaluator.imaging import library_versions

        if spec.output_hw is None:
            raise UserError(
                f"preprocessing {spec.name!r} gives images of varying size (no crop, no squash): "
                "set crop_size or resize_mode=squash to evaluate in batches"
            )
        self.spec = spec
        self.shard_size = shard_size
        self.hw = spec.output_hw
        versions = library_versions()
        if spec.decoder == "nvjpeg":
            versions = {**versions, **nvjpeg_identity()}
        ident = {"geometry": spec.geometry(), "libraries": versions, "format": FORMAT_VERSION}
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
    def load_valid(self, plan: ShardPlan) -> tuple[dict | None, str]:
        """(sidecar, "") when the shard is complete and intact, else (None, why not)."""
        data_path, meta_path = self._paths(plan.key)
        if not meta_path.exists():
            return None, "missing"
        try:
            meta = json.loads(meta_path.read_text())
            data = np.load(data_path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            return None, f"unreadable ({exc})"
        expected_ids = [r.image_id for r in plan.records]
        if meta.get("format") != FORMAT_VERSION or meta.get("image_ids") != expected_ids:
            return None, "its sidecar does not match the images"
        if data.shape != (len(plan.records), *self.hw, 3) or data.dtype != np.uint8:
            return None, f"shape {data.shape} instead of {(len(plan.records), *self.hw, 3)}"
        if checksum(data) != meta.get("xxh3_128"):
            return None, "checksum mismatch"
        return meta, ""

    # -- building
    def survey(self, records: Sequence[ImageRecord], log: Callable[[str], None] | None = None) -> "CachePlan":
        """Plan the shards of ``records`` and verify the ones on disk; damaged ones are unpublished.

        After this, a shard's sidecar exists only if its data is intact, so a reader that waits
        for sidecars (a worker started while the cache builds) never reads damaged data.
        """
        log = log or (lambda message: None)
        (self.directory / "shards").mkdir(parents=True, exist_ok=True)
        spec_file = self.directory / "spec.json"
        if not spec_file.exists():
            atomic_write_text(spec_file, json.dumps(self._ident, indent=2, sort_keys=True))
        self._remove_stale_temporaries()
        survey = CachePlan(plans=self.plan(records))
        threads = max(1, min(8, os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="xfverify-verify") as pool:
            verdicts = list(pool.map(self.load_valid, survey.plans))  # xxh3 releases the GIL: shards in parallel
        for plan, (meta, why) in zip(survey.plans, verdicts):
            if meta is not None:
                survey.sidecars[plan.key] = meta
                survey.stats.reused_shards += 1
                continue
            if why != "missing":
                log(f"cache shard {plan.key} is damaged ({why}): rebuilding it")
                self._paths(plan.key)[1].unlink(missing_ok=True)
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
        """Decode the shards the survey found missing, in parallel; return the whole cached manifest.

        With ``stop_on_bad`` the build stops after the shard holding the first bad image is
        written (so nothing decoded is lost) and :class:`BadImageError` names that file.
        ``progress(done, total)`` is called as images are decoded. Setting ``cancel`` stops the
        build after the shards under way (finished shards are kept) and raises :class:`BuildCancelled`.
        """
        from xfverify.evaluator.imaging import BadImageError

        started = time.perf_counter()
        stats = survey.stats
        sidecars = dict(survey.sidecars)
        if survey.todo:
            total = sum(len(p.records) for p in survey.todo)
            sidecars.update(self._build(survey.todo, workers, stop_on_bad, progress, total, stats, cancel))
        stats.seconds = time.perf_counter() - started
        bad, caveats = _issues(survey.plans, sidecars, "bad"), _issues(survey.plans, sidecars, "caveats")
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
    ) -> tuple[CachedImages, BuildStats]:
        """Make sure every image of ``records`` is cached (:meth:`survey`, then :meth:`complete`)."""
        started = time.perf_counter()
        cached, stats = self.complete(self.survey(records, log), workers=workers, stop_on_bad=stop_on_bad, progress=progress)
        stats.seconds = time.perf_counter() - started
        return cached, stats

    def _build(
        self,
        todo: list[ShardPlan],
        workers: int | None,
        stop_on_bad: bool,
        progress: Callable[[int, int], None] | None,
        total: int,
        stats: BuildStats,
        cancel: threading.Event | None = None,
    ) -> dict[str, dict]:
        stats.workers = max(1, workers or os.cpu_count() or 1)
        counter = _Progress(total, progress)
        counter.advance(0)
        results: dict[str, dict] = {}
        with contextlib.ExitStack() as stack:
            mine, theirs = [], []
            for plan in todo:
                lock = stack.enter_context(ShardLock(self.directory / "shards" / f"{plan.key}.lock"))
                (mine if lock.acquired else theirs).append((plan, lock))
            to_decode = []
            for plan, _ in mine:  # another run may have finished it between our survey and our lock
                meta, _why = self.load_valid(plan)
                if meta is None:
                    to_decode.append(plan)
                else:
                    results[plan.key] = meta
                    stats.reused_shards += 1
                    counter.advance(len(plan.records))
            self._decode_shards(to_decode, stats, stop_on_bad, counter, results, cancel)
            # Release ours before waiting for theirs: two runs that each hold a shard the other waits
            # for would otherwise wait forever. Theirs are then taken one at a time, in plan order.
            for _, lock in mine:
                lock.release()
            for plan, lock in theirs:  # another run is building these: wait, then check its work
                lock.wait()
                meta, _ = self.load_valid(plan)
                if meta is None:  # that run died or stopped: build it here (we hold its lock now)
                    self._decode_shards([plan], stats, stop_on_bad, counter, results, cancel)
                else:
                    results[plan.key] = meta
                    stats.reused_shards += 1
                lock.release()
        return results

    def _decode_shards(
        self,
        plans: list[ShardPlan],
        stats: BuildStats,
        stop_on_bad: bool,
        counter: "_Progress",
        results: dict[str, dict],
        cancel: threading.Event | None = None,
    ) -> None:
        from xfverify.evaluator.imaging import BadImageError

        if not plans:
            return
        if cancel is not None and cancel.is_set():  # e.g. the worker failed during the survey
            raise BuildCancelled("the cache build was cancelled; finished shards are kept")
        image_bytes = self.hw[0] * self.hw[1] * 3
        ensure_room(self.directory / "shards", sum(len(p.records) for p in plans) * image_bytes, _NO_ROOM_FIX)
        pending: dict[str, dict] = {}
        futures: dict[Future, tuple[str, int]] = {}
        if self.spec.decoder == "nvjpeg":
            pool: Any = WorkerDecodePool(self.spec)
        else:
            pool = ProcessPoolExecutor(
                max_workers=min(stats.workers, sum(len(p.records) for p in plans)),
                mp_context=_pool_context(),
                initializer=_init_worker,
                initargs=(self.spec.to_dict(), os.getpid()),
            )
        try:
            for plan in plans:
                data_path, _ = self._paths(plan.key)
                tmp = data_path.with_name(f"{plan.key}.npy.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
                allocated_npy(tmp, np.uint8, (len(plan.records), *self.hw, 3), _NO_ROOM_FIX)
                pending[plan.key] = {"plan": plan, "tmp": tmp, "left": 0, "bad": {}, "caveats": {}}
                for row in range(0, len(plan.records), CHUNK_SIZE):
                    paths = [r.path for r in plan.records[row : row + CHUNK_SIZE]]
                    futures[pool.submit(_decode_chunk, str(tmp), row, paths)] = (plan.key, len(paths))
                    pending[plan.key]["left"] += 1
            if isinstance(pool, WorkerDecodePool):
                pool.start()
            while futures:
                finished, _ = wait(futures, return_when=FIRST_COMPLETED)
                for future in finished:
                    key, count = futures.pop(future)
                    shard = pending[key]
                    bad, caveats = future.result()
                    shard["bad"].update((str(row), reason) for row, reason in bad)
                    shard["caveats"].update((str(row), caveat) for row, caveat in caveats)
                    shard["left"] -= 1
                    counter.advance(count)
                    if shard["left"] == 0:
                        del pending[key]
                        results[key] = self._commit(shard["plan"], shard["tmp"], shard["bad"], shard["caveats"])
                        stats.built_shards += 1
                        stats.decoded += len(shard["plan"].records)
                        if stop_on_bad and shard["bad"]:
                            row, reason = min(shard["bad"].items(), key=lambda kv: int(kv[0]))
                            raise BadImageError(shard["plan"].records[int(row)].path, reason)
                if cancel is not None and cancel.is_set():
                    raise BuildCancelled("the cache build was cancelled; finished shards are kept")
        finally:
            # Finished shards are committed; unfinished ones are dropped (a rerun resumes).
            pool.shutdown(wait=True, cancel_futures=True)
            for shard in pending.values():
                shard["tmp"].unlink(missing_ok=True)

    def _commit(self, plan: ShardPlan, tmp: Path, bad: dict[str, str], caveats: dict[str, str]) -> dict:
        data = np.load(tmp, mmap_mode="r")
        meta = {
            "format": FORMAT_VERSION,
            "n": len(plan.records),
            "image_ids": [r.image_id for r in plan.records],
            "bad": bad,
            "caveats": caveats,
            "xxh3_128": checksum(data),
        }
        del data
        data_path, meta_path = self._paths(plan.key)
        os.replace(tmp, data_path)
        atomic_write_text(meta_path, json.dumps(meta))
        return meta

    def _remove_stale_temporaries(self) -> None:
        for tmp in (self.directory / "shards").glob("*.tmp-*"):
            try:
                pid = int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0])
            except (IndexError, ValueError):
                continue
            if not _pid_alive(pid):
                tmp.unlink(missing_ok=True)


def _issues(plans: Sequence[ShardPlan], sidecars: dict[str, dict], kind: str) -> list[ImageIssue]:
    """The ``kind`` ("bad" or "caveats") entries of the shards' sidecars, in manifest order."""
    issues = []
    for plan in plans:
        for row, reason in sorted(sidecars[plan.key][kind].items(), key=lambda kv: int(kv[0])):
            record = plan.records[int(row)]
            issues.append(ImageIssue(plan.start + int(row), record.image_id, record.path, reason))
    return issues


def _pool_context():
    """fork when this process runs no other thread (cheapest start), else forkserver (fork is unsafe then)."""
    return get_context("fork" if threading.active_count() == 1 else "forkserver")


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
