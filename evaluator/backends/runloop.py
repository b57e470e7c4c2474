"""The framework-independent part of an evaluation inside a worker: feed cached batches, time, fingerprint.

A back-end supplies a step (:mod:`xfverify.evaluator.backends.steps`), whose type says how it wants its data:

* a :class:`HostFedStep` (CPU back-ends) runs the float32 batch, exactly as fed, normalised and hashed here,
  in loader threads that overlap compute (the tensors are in host memory already, and sha256 of them costs
  far less than a CPU's forward pass);
* a :class:`DeviceFedStep` (GPU back-ends) is given what its ``stage`` made of each uint8 batch, normalises on
  the device with the same table, and hands back the checksums of what it fed
  (:mod:`xfverify.evaluator.cache.digests`), never the tensors: those are compared here with the checksums
  the cache stored, and the stored per-image digests make the fingerprint. Its batches finish later
  (:class:`PendingBatch`), so a GPU back-end can launch batch i+1 before batch i's results arrive.

Time the loop spends waiting for data is measured apart from compute.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from xfverify.evaluator.backends.steps import DeviceFedStep, HostFedStep, PendingBatch, Step
from xfverify.evaluator.cache.digests import check_fed, stored_batches
from xfverify.evaluator.system.files import allocated_npy
from xfverify.evaluator.data.normalise import image_digests, normalisation_lut, normalise
from xfverify.evaluator.cache.shards import iter_shard_batches
from xfverify.evaluator.process.events import milestone
from xfverify.evaluator.process.names import DEVICE_CHECKSUMS, HASHED_ON_HOST
from xfverify.evaluator.process.tasks import LoopTiming
from xfverify.models.errors import UserError
from xfverify.models.preprocess import PreprocessSpec


@dataclass
class LoopResult:
    """Timing and fingerprint of one pass over the data."""

    n_images: int
    wall_s: float
    data_wait_s: float
    compute_s: float
    batch_ms: list[float]
    tensors_sha256: str
    tensor_proof: str
    steady_images_per_s: float | None = None

    def timing(self, warmup_s: float) -> LoopTiming:
        """The report's ``timing`` block (the first batch, which pays for warm-up, is left out of mean/std)."""
        steady = self.batch_ms[1:] if len(self.batch_ms) > 2 else self.batch_ms
        return LoopTiming(
            wall_s=round(self.wall_s, 4),
            data_wait_s=round(self.data_wait_s, 4),
            compute_s=round(self.compute_s, 4),
            images_per_s=round(self.n_images / self.wall_s, 2) if self.wall_s > 0 else None,
            steady_images_per_s=round(self.steady_images_per_s, 2) if self.steady_images_per_s else None,
            batch_ms_mean=round(statistics.fmean(steady), 3) if steady else None,
            batch_ms_std=round(statistics.pstdev(steady), 3) if len(steady) > 1 else 0.0,
            n_batches=len(self.batch_ms),
            first_batch_ms=round(self.batch_ms[0], 3) if self.batch_ms else None,
            warmup_s=round(warmup_s, 3),
        )


def _prepare(u8: np.ndarray, spec: PreprocessSpec, lut: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[bytes]]:
    tensors = normalise(u8, spec, lut)
    return u8, tensors, image_digests(tensors)


def prepared_batches(
    shard_paths: Sequence[str], batch_size: int, spec: PreprocessSpec, threads: int, wait_for_shards: bool = False
) -> Iterator[tuple[int, np.ndarray, np.ndarray, list[bytes]]]:
    """(first index, uint8 batch, float32 batch as fed, per-image digests), read ahead in threads."""
    lut = normalisation_lut(spec)
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="xfverify-load")
    queue: deque[tuple[int, Future]] = deque()
    depth = threads + 2
    try:
        for start, u8 in iter_shard_batches(shard_paths, batch_size, wait=wait_for_shards):
            queue.append((start, pool.submit(_prepare, u8, spec, lut)))
            if len(queue) >= depth:
                first, future = queue.popleft()
                yield (first, *future.result())
        while queue:
            first, future = queue.popleft()
            yield (first, *future.result())
    finally:
        for _, future in queue:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


class _Prefetcher:
    """Runs an iterator in a background thread so the consumer only waits when data is late."""

    _DONE = object()

    def __init__(self, iterator: Iterator, depth: int = 2):
        import queue

        self._queue: "queue.Queue" = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(iterator,), daemon=True, name="xfverify-prefetch")
        self._thread.start()

    def _run(self, iterator: Iterator) -> None:
        try:
            for item in iterator:
                self._queue.put(item)
        except BaseException as exc:  # surfaced in the consumer
            self._error = exc
        finally:
            self._queue.put(self._DONE)

    def __iter__(self):
        return self

    def __next__(self):
        item = self._queue.get()
        if item is self._DONE:
            if self._error is not None:
                raise self._error
            raise StopIteration
        return item


TENSOR_PROOF = {"host": HASHED_ON_HOST, "device": DEVICE_CHECKSUMS}


@dataclass
class _InFlight:
    """A batch handed to the step: its first index and size, what the step returned (a :class:`PendingBatch` when
    fed on a device), when it returned (a synchronous step), and the stored records and ids it is checked against."""

    first: int
    count: int
    handle: Any
    returned_at: float | None = None
    stored: tuple[np.ndarray, np.ndarray] | None = None


class _Collector:
    """Each batch's results as they come in: logits in manifest order, the digests of what was fed, the timings."""

    def __init__(self, logits: np.ndarray, n_images: int, num_classes: int, device_name: str, model_name: str,
                 progress: Callable[[int, int], None] | None):
        self.logits, self.n_images, self.num_classes = logits, n_images, num_classes
        self.device_name, self.model_name, self.progress = device_name, model_name, progress
        self.digests: list[Sequence[bytes]] = []  # per batch, in order: what host feeding hashed, or the stored digests
        self.batch_ms: list[float] = []
        self.finished: list[tuple[float, int]] = []  # when each batch's results were in, and its size (steady rate)
        self.done = 0

    def collect(self, batch: _InFlight) -> None:
        if isinstance(batch.handle, PendingBatch):  # device feeding: what was fed must be what the cache has digests of
            out, ms, fed_checks = batch.handle.result()
            records, image_ids = batch.stored
            check_fed(fed_checks, records, image_ids, batch.first, self.device_name)
            self.digests.append([bytes(digest) for digest in records["sha256"]])
        else:
            out, ms = batch.handle
        count, classes = batch.count, self.num_classes
        if np.shape(out) != (count, classes):
            raise UserError(f"{self.model_name}: its output for a batch of {count} images has shape "
                            f"{list(np.shape(out))}, not [{count}, {classes}]: xfverify scores one row of {classes} "
                            "class scores per image; export the model with a batch dimension that follows its input's")
        self.logits[batch.first : batch.first + count] = out
        self.batch_ms.append(ms)
        self.done += count
        self.finished.append((batch.returned_at or time.perf_counter(), count))  # a synchronous step: when it returned
        if len(self.finished) == 1:
            milestone("first_batch_done")
        if self.progress:
            self.progress(self.done, self.n_images)

    def tensors_sha256(self) -> str:
        """The sha256 of every fed image's sha256, in manifest order."""
        total = hashlib.sha256()
        for batch in self.digests:
            for digest in batch:
                total.update(digest)
        return total.hexdigest()

    def steady_images_per_s(self) -> float | None:
        """Images after the first batch (which pays for warm-up) over the time they took."""
        if len(self.finished) < 3:
            return None
        return (self.done - self.finished[0][1]) / max(self.finished[-1][0] - self.finished[0][0], 1e-9)


def _batches(shard_paths: Sequence[str], batch_size: int, spec: PreprocessSpec, step: Step, threads: int,
             wait_for_shards: bool, digests_stored: bool) -> Iterator[tuple[int, Any, np.ndarray | None, Any]]:
    """(first index, the batch for the step, the float32 tensors (host feeding), the fingerprint): for host feeding
    the digests the loader hashed, for device feeding the stored records and ids, checked on collection."""
    if isinstance(step, HostFedStep):
        return prepared_batches(shard_paths, batch_size, spec, threads, wait_for_shards)
    if isinstance(step, DeviceFedStep):
        return (
            (start, step.stage(u8), None, (records, ids))
            for (start, u8), (_, records, ids) in zip(
                iter_shard_batches(shard_paths, batch_size, wait=wait_for_shards),
                stored_batches(shard_paths, batch_size, spec, wait=wait_for_shards, compute_missing=not digests_stored),
            )
        )
    raise TypeError(f"a step is a HostFedStep or a DeviceFedStep, not a {type(step).__name__}")


def run_loop(
    shard_paths: Sequence[str],
    n_images: int,
    spec: PreprocessSpec,
    batch_size: int,
    step: Step,
    logits_path: str | os.PathLike,
    *,
    num_classes: int = 1000,
    threads: int | None = None,
    wait_for_shards: bool = False,
    progress: Callable[[int, int], None] | None = None,
    device_name: str = "the device",
    digests_stored: bool = True,
    model_name: str = "the model",
) -> LoopResult:
    """Feed every cached image through ``step``; store logits (float32, N x classes) in manifest order.

    ``wait_for_shards`` lets the loop start while the cache is still being built: each shard is
    read once its sidecar appears (and, fed on a device, once its digests are stored). A device-fed step's
    ``stage`` runs in the loader thread on each uint8 batch, e.g. to copy it into pinned memory. A device-fed
    image whose checksums differ from the stored ones stops the loop with a :class:`UserError` naming it (and
    ``device_name``); so does a batch's output that is not one row of ``num_classes`` scores per image (naming
    ``model_name``), never broadcast or cut to fit.
    """
    threads = threads or max(1, min(8, (os.cpu_count() or 2) - 1))
    logits = allocated_npy(Path(logits_path), np.float32, (n_images, num_classes), "free space there, or choose another --out")
    results = _Collector(logits, n_images, num_classes, device_name, model_name, progress)
    source = _batches(shard_paths, batch_size, spec, step, threads, wait_for_shards, digests_stored)
    if progress:
        progress(0, n_images)
    data_wait = 0.0
    inflight: deque[_InFlight] = deque()
    started = time.perf_counter()
    batches = _Prefetcher(source, depth=3 if isinstance(step, DeviceFedStep) else 2)
    while True:
        wait_start = time.perf_counter()
        try:
            first, u8, tensors, fingerprint = next(batches)
        except StopIteration:
            break
        data_wait += time.perf_counter() - wait_start
        if isinstance(step, DeviceFedStep):  # launched now, collected once the next one is launched
            inflight.append(_InFlight(first, len(u8), step.launch(u8), stored=fingerprint))
        else:
            results.digests.append(fingerprint)
            inflight.append(_InFlight(first, len(u8), step.run(tensors), returned_at=time.perf_counter()))
        if len(inflight) > 1:
            results.collect(inflight.popleft())
    while inflight:
        results.collect(inflight.popleft())
    tensors_sha256 = results.tensors_sha256()
    wall = time.perf_counter() - started
    milestone("last_batch_done")
    logits.flush()
    return LoopResult(
        steady_images_per_s=results.steady_images_per_s(),
        n_images=results.done,
        wall_s=wall,
        data_wait_s=data_wait,
        compute_s=sum(results.batch_ms) / 1000.0,
        batch_ms=results.batch_ms,
        tensors_sha256=tensors_sha256,
        tensor_proof=TENSOR_PROOF[step.feed],
    )
