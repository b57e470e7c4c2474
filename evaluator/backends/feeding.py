"""The fed loop every back-end runs: warm-up on each batch shape, the data part of the job, the timed loop."""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from xfverify.evaluator.process.names import LOGITS_FILE
from xfverify.evaluator.backends import runloop
from xfverify.evaluator.backends.steps import DeviceFedStep, Step
from xfverify.evaluator.process.tasks import DataPart, EvaluateJob, LoopTiming
from xfverify.evaluator.process.events import Progress, emit, milestone
from xfverify.models.errors import UserError
from xfverify.models.preprocess import PreprocessSpec


# The batch size when --batch-size is not given, by the type of device the worker resolved. On a CPU, with the
# workers' allocator setting, it matters little: bench/results/cpu_batch.json (bare torch, 2 cores, one run) has
# Lite0 94 img/s at 4, 101 at 10, 97 at 32, ResNet50 and MobileNetV2 as flat (under glibc's defaults larger
# batches fell to a third); `xfverify native` end to end on the 500 photographs ran 80-94 img/s at 4 to 32, within
# its run-to-run spread. 4 keeps the committed runs' logits and the least memory. A GPU keeps 32.
DEFAULT_BATCH_SIZE = {"cpu": 4, "cuda": 32}


def choose_batch_size(requested: int | None, device_type: str) -> tuple[int, str]:
    """The batch size to run at and why: the one asked for, else the default for the device's type."""
    if requested is not None:
        return requested, "--batch-size"
    return DEFAULT_BATCH_SIZE[device_type], f"default for {device_type}"


def progress_emitter(min_interval_s: float = 0.25) -> Callable[[int, int], None]:
    """A progress callback that sends at most a few events a second to the parent."""
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] >= min_interval_s:
            last[0] = now
            emit(Progress(done=done, total=total))

    return report


@contextlib.contextmanager
def out_of_memory_is_a_user_error(device_name: str, batch_size: int, is_out_of_memory: Callable[[BaseException], bool]):
    """A batch that does not fit the device is the user's to change: one line, not a traceback."""
    try:
        yield
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        raise UserError(out_of_memory_message(device_name, batch_size, str(exc))) from None


def out_of_memory_message(device_name: str, batch_size: int, text: str) -> str:
    """What to do about a batch that did not fit: a smaller batch, unless even one image's share of the buffer the
    runtime asked for (where its message says the size) exceeds the machine's memory: then the graph is at fault."""
    asked = re.search(r"(?:of size|allocate|tried to allocate)\D{0,20}(\d{6,})", text)
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else None
    if asked and memory and int(asked[1]) / max(batch_size, 1) > memory:
        return (f"{device_name} ran out of memory: the model asked for one buffer of {int(asked[1]) / 1e9:,.0f} GB at "
                f"--batch-size {batch_size}, more than this machine's {memory / 1e9:,.0f} GB even for one image; the "
                "graph itself asks for it (a huge shape inside it), not the batch size: check the model")
    if batch_size == 1:
        return (f"{device_name} ran out of memory at --batch-size 1: the model does not fit this device; use a "
                "device with more memory")
    return f"{device_name} ran out of memory at --batch-size {batch_size}: use a smaller --batch-size"


def warm_up_sizes(n_images: int, batch_size: int) -> list[int]:
    """The batch shapes a run will see: full batches and the last, partial one."""
    full = min(batch_size, n_images)
    partial = n_images % batch_size if n_images > batch_size else 0
    return sorted({size for size in (full, partial) if size > 0})


def warm_up(run: Callable[[np.ndarray], Any], sizes: list[int], hw: tuple[int, int], layout: str) -> float:
    """Run each batch shape once on zeros before the timed loop (graph tracing, autotuning); returns seconds."""
    started = time.perf_counter()
    for n in sizes:
        run(np.zeros((n, 3, *hw) if layout == "NCHW" else (n, *hw, 3), dtype=np.float32))
    return time.perf_counter() - started


def run_fed(job: EvaluateJob, spec: PreprocessSpec, step: Step, workdir: Path, device_name: str,
            is_out_of_memory: Callable[[BaseException], bool]) -> tuple[runloop.LoopResult, LoopTiming]:
    """Warm up, take the data part of the job, run the loop; returns the loop's result and its timing.

    ``job.batch_size`` is set (:func:`choose_batch_size`). A host-fed step is warmed up here on zeros of each
    batch shape; a device-fed one warms itself up.
    """
    n, batch, hw = job.n_images, job.batch_size, tuple(job.hw)
    sizes = warm_up_sizes(n, batch)
    with out_of_memory_is_a_user_error(device_name, batch, is_out_of_memory):
        if isinstance(step, DeviceFedStep):
            warmup_s = step.warm_up(sizes, hw, n // batch)
        else:
            warmup_s = warm_up(step.run, sizes, hw, spec.layout)
        milestone("warmed_up")
        job = receive_data(job)
        result = runloop.run_loop(
            job.shard_paths, n, spec, batch, step, workdir / LOGITS_FILE, wait_for_shards=job.wait_for_shards,
            progress=progress_emitter(), device_name=device_name, digests_stored=job.digests_stored,
            model_name=job.onnx_path or job.model or "the model",
        )
    return result, result.timing(warmup_s)


def receive_data(job: EvaluateJob, poll_s: float = 0.005) -> EvaluateJob:
    """The job with its data part (shard paths; whether to wait for shards) once the parent has surveyed
    the cache: the worker starts before that, so imports, model building and warm-up overlap the survey."""
    if job.data_file is None:
        return job
    path = Path(job.data_file)
    while not path.exists():  # if the parent dies first, the worker's orphan watcher ends this process
        time.sleep(poll_s)
    milestone("data_received")
    data = DataPart.model_validate_json(path.read_text())
    return job.model_copy(update=data.model_dump())
