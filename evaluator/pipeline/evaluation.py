"""The cached evaluation: the tensor cache surveyed and built in a thread while a framework's worker runs on it."""

from __future__ import annotations

import contextvars
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

from xfverify.evaluator.analysis.metrics import predicted_top_k
from xfverify.evaluator.cache.store import (
    BuildCancelled,
    TensorCache,
    default_cache_root,
)
from xfverify.evaluator.data.layouts import Dataset
from xfverify.evaluator.pipeline.options import RunOptions
from xfverify.evaluator.process.events import EventSink
from xfverify.evaluator.process.launcher import run_worker
from xfverify.evaluator.process.worker_decode_pool import WorkerDecodePool
from xfverify.evaluator.process.tasks import DataPart, EvaluateJob, WorkerResult
from xfverify.evaluator.reports.run import TimingInfo
from xfverify.evaluator.system import console
from xfverify.evaluator.system.files import atomic_write_text, writable_folder
from xfverify.models.preprocess import PreprocessSpec

Result = TypeVar("Result")
Built = TypeVar("Built")


@dataclass
class CachedRun:
    """One worker's pass over the cached images: the cache, its build statistics, the worker's result,
    the logits (skipped images' rows NaN), their top-5 (none for an output holding NaN or +-inf), the timing with the run's timeline."""

    cached: Any
    build: Any
    result: WorkerResult
    logits: np.ndarray
    topk: np.ndarray
    timing: TimingInfo

    @property
    def skipped(self) -> set[int]:
        return {bad.index for bad in self.cached.bad}


def cache_root(options: RunOptions) -> Path:
    """The tensor cache's folder (--cache-dir, else the default), checked writable."""
    root = Path(options.cache_dir).expanduser() if options.cache_dir else default_cache_root()
    writable_folder(root, "--cache-dir" if options.cache_dir else "the tensor cache ($XFVERIFY_CACHE or ~/.cache/xfverify)")
    return root


def tensor_cache(root: Path, spec: PreprocessSpec) -> TensorCache:
    """The tensor cache of ``spec``'s geometry under ``root``; the nvjpeg decoder's chunks go to a torch worker."""
    return TensorCache(root, spec, decoder_pool=WorkerDecodePool)


def spec_hw(spec: PreprocessSpec) -> tuple[int, int]:
    """The (height, width) of the images the spec's cache holds."""
    return TensorCache(default_cache_root(), spec).hw


def evaluate_cached(framework: str, job: EvaluateJob, spec: PreprocessSpec, dataset: Dataset, options: RunOptions,
                    workdir: Path,
                    timeline: dict[str, float]) -> CachedRun:
    """Survey and build the tensor cache while ``framework``'s worker runs ``job`` on it (``options`` gives
    cache_dir, workers, on_bad_image)."""
    cache = tensor_cache(cache_root(options), spec)
    with console.progress_group() as group:
        decode_progress = group.task("decode + resize + crop")
        infer_progress = group.task(f"{framework} inference")
        cached, build, result = decode_and_infer(
            cache, dataset, framework, job, workdir, options, decode_progress, infer_progress, timeline
        )
    return finished_run(cached, build, result, timeline, mark="logits_saved")


def finished_run(cached: Any, build: Any, result: WorkerResult, timeline: dict[str, float],
                 mark: str | None = None) -> CachedRun:
    """A worker's pass made a run: its logits file (which becomes the report's) with the skipped images' rows NaN,
    their top-5, and its timing with the run's timeline (``mark``: a phase to note when the logits are saved)."""
    logits = np.load(result.logits_path, mmap_mode="r+")
    skipped = {bad.index for bad in cached.bad}
    if skipped:
        logits[sorted(skipped)] = np.nan
        logits.flush()
    if mark:
        timeline[mark] = time.time()
    timing = TimingInfo(**result.timing.model_dump(), timeline_s=relative_timeline(timeline, result.milestones))
    topk = predicted_top_k(logits, sorted(skipped), 5)
    return CachedRun(cached, build, result, logits, topk, timing)


def relative_timeline(parent: dict[str, float], worker: dict[str, float]) -> dict[str, float]:
    """When each phase of a run ended, in seconds since it began, in order (parent and worker together)."""
    started = parent["started"]
    merged = {**{k: v for k, v in parent.items() if k != "started"}, **worker}
    return {name: round(at - started, 3) for name, at in sorted(merged.items(), key=lambda item: item[1])}


def may_feed_on_device(framework: str, device: str) -> bool:
    """Whether a worker may be fed on a GPU (a back-end that feeds on one: torch's uint8 step, ONNX Runtime's CUDA
    provider), so the cache should store the fed tensors' digests as it builds. A wrong guess costs time, not
    correctness: a device-fed worker that finds digests missing computes them itself."""
    from xfverify.evaluator.process.registry import BACKENDS
    from xfverify.evaluator.system.devices import nvidia_gpus, ort_fed_on_device

    backend = BACKENDS[framework]
    if backend.device_feed_switch and ort_fed_on_device():
        return True
    return backend.feeds_on_gpu and device != "cpu" and bool(nvidia_gpus())


def survey_and_build(cache, records, data_files, options, progress, cancel, surveyed=lambda: None,
                     normalisations=None, digests: bool = True):
    """Survey the cache, tell the worker its shard paths (each data file), then decode what is missing and,
    with ``digests``, compute the fed-tensor digests missing under ``normalisations`` (default: the cache's spec).

    Returns what :meth:`TensorCache.complete` returns.
    """
    survey = cache.survey(records, log=console.info, normalisations=normalisations if digests else [])
    surveyed()
    data = DataPart(shard_paths=cache.shard_paths(survey), wait_for_shards=survey.pending, digests_stored=digests)
    for data_file in data_files:
        atomic_write_text(Path(data_file), data.model_dump_json())
    return cache.complete(survey, workers=options.workers, stop_on_bad=options.on_bad_image == "error",
                          progress=progress, cancel=cancel)


def decode_and_infer(cache, dataset, framework, job, workdir, options, decode_progress, infer_progress, timeline):
    """Survey and build the cache while the framework worker starts and then consumes finished shards.

    The worker is started first: its imports, model building and warm-up overlap the survey. It
    receives the shard paths in a data file once the survey is done, and reads shards in manifest
    order as their sidecars appear, so decoding and inference overlap on a cold run. If the survey
    or build fails (a bad image), the worker is stopped and that error is raised; if the worker fails,
    the build is cancelled after the shards under way.
    """
    cancel = threading.Event()
    workdir.mkdir(parents=True, exist_ok=True)
    Path(job.data_file).unlink(missing_ok=True)  # a stale one, from a run that was stopped, must not be read

    def surveyed() -> None:
        timeline["cache_surveyed"] = time.time()

    def build():
        built = survey_and_build(cache, dataset.records, [job.data_file], options, decode_progress, cancel, surveyed,
                                 digests=may_feed_on_device(framework, job.device))
        timeline["decode_done"] = time.time()
        return built

    on_event = EventSink(progress=lambda event: infer_progress(event.done, event.total))
    (cached, stats), result = worker_beside_build(
        build, cancel, timeline,
        lambda on_start: run_worker(framework, job, workdir=workdir, on_event=on_event, on_start=on_start))
    return cached, stats, result


def worker_beside_build(build: Callable[[], Built], cancel: threading.Event, timeline: dict[str, float],
                        work: Callable[[Callable[[subprocess.Popen], None]], Result]) -> tuple[Built, Result]:
    """``work(on_start)`` (a worker, whose process ``on_start`` receives) while ``build()`` fills the cache in a
    thread; returns both results. A failed build stops the worker and is the error shown; a failed worker
    cancels the build."""
    state: dict[str, Any] = {}
    processes: list[subprocess.Popen] = []

    def guarded_build() -> None:
        try:
            state["built"] = build()
        except BaseException as exc:  # re-raised in the main thread
            state["error"] = exc
            for process in processes:
                process.kill()

    def on_start(process: subprocess.Popen) -> None:
        processes.append(process)
        if "error" in state:  # the build failed before the worker started
            process.kill()

    # in this caller's context: a decode worker it starts is forked from its warm workers, if it has any
    builder = threading.Thread(target=contextvars.copy_context().run, args=(guarded_build,),
                               name="xfverify-cache-build", daemon=True)
    builder.start()
    try:
        result = work(on_start)
        timeline["worker_finished"] = time.time()
    except BaseException as exc:
        cancel.set()
        builder.join()
        build_error = state.get("error")
        # Ctrl-C breaks the decode pool too: report the interrupt, not its consequence. Otherwise a
        # failed build (a bad image) is why the worker was stopped, so it is the error to show.
        if isinstance(exc, KeyboardInterrupt) or build_error is None or isinstance(build_error, BuildCancelled):
            raise
        raise build_error from None
    builder.join()
    if "error" in state:
        raise state["error"]
    return state["built"], result
