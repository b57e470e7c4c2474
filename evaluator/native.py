"""``xfverify native``: a model in its own framework, on its reference preprocessing, against its published number."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
from xfverify.evaluator import ui
from xfverify.evaluator.cache import BuildCancelled, TensorCache, default_cache_root
from xfverify.evaluator.data import Dataset, load_dataset
from xfverify.evaluator.folders import atomic_write_text, owned_folder, writable_folder
from xfverify.evaluator.jobs import DataPart, EvaluateJob, WorkerResult
from xfverify.evaluator.launcher import run_worker
from xfverify.evaluator.metrics import compare_to_published, error_stats, real_error, top_k, wilson_interval
from xfverify.evaluator.overrides import parse_overrides
from xfverify.evaluator.report import (
    NativeReport,
    NativeRun,
    Prediction,
    predictions,
    write_markdown,
    write_predictions,
    write_report,
)
from xfverify.models.cards import ModelCard, get_card
from xfverify.models.errors import UserError
from xfverify.models.preprocess import PreprocessSpec, resolve_preprocess

from xfverify import __version__

DEFAULT_MODEL = "pypi/efficientnet_lite0"
# Moved from the run's work folder into --out together once all are written, report.json last.
OUTPUTS = ("logits.npy", "predictions.csv", "report.md", "report.json")
MAX_SEED = 2**32 - 1  # the largest seed every framework takes (numpy, Keras)
SAMPLE_DIR = Path(__file__).resolve().parent / "sample"


@dataclass
class RunOptions:
    """What every evaluating command can be asked: images, preprocessing, batching, cache, weights."""

    data: str | None = None
    devkit: str | None = None
    out: str | None = None
    preprocess: str | None = None
    overrides: tuple[str, ...] = ()
    limit: int | None = None
    per_class: int | None = None
    device: str = "auto"
    batch_size: int | None = None  # None: the worker's default for the device it resolves
    workers: int | None = None
    cache_dir: str | None = None
    weights: str | None = None
    random_weights: bool = False
    seed: int = 0
    on_bad_image: str = "error"
    extra_notes: list[str] = field(default_factory=list)


@dataclass
class NativeOptions(RunOptions):
    """Everything ``xfverify native`` can be asked (the CLI fills it; tests and benchmarks can too)."""

    model: str = DEFAULT_MODEL
    precision: str = "fp32"
    cuda_graphs: bool = False


def default_out_dir(model_id: str, verb: str = "native") -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id)
    return Path.cwd() / "xfverify-out" / f"{verb}-{safe}-{stamp}"


def check_run_options(options: RunOptions) -> None:
    """Refuse, in one line each, the options every evaluating command shares that no run can take."""
    if options.random_weights and options.weights:
        raise UserError("--weights and --random-weights exclude each other")
    if options.on_bad_image not in ("error", "skip"):
        raise UserError(f"--on-bad-image must be error or skip, got {options.on_bad_image!r}")
    if options.batch_size is not None and options.batch_size <= 0:
        raise UserError(f"--batch-size must be positive, got {options.batch_size}")
    if options.weights and not os.path.isfile(options.weights):
        what = "a folder, not a weights file" if os.path.isdir(options.weights) else "no such file"
        raise UserError(f"--weights {options.weights}: {what}")
    if options.weights and os.path.getsize(options.weights) == 0:
        raise UserError(f"--weights {options.weights}: the file is empty")
    if not 0 <= options.seed <= MAX_SEED:
        raise UserError(f"--seed must be between 0 and {MAX_SEED}, got {options.seed}")
    if options.workers is not None and options.workers <= 0:
        raise UserError(f"--workers must be positive, got {options.workers} (leave it out to use every core)")


def prepare(options: NativeOptions) -> tuple[ModelCard, PreprocessSpec, Dataset]:
    """Resolve the card, the preprocessing and the dataset; validate their combination."""
    check_run_options(options)
    card = get_card(options.model)
    if options.cuda_graphs and card.framework != "torch":
        raise UserError(f"--cuda-graphs applies to torch models; {card.id} runs in {card.framework}")
    spec = resolve_preprocess(options.preprocess, default=card.preprocess, overrides=parse_overrides(options.overrides))
    if spec.layout != card.input_layout:
        raise UserError(
            f"preprocessing {spec.name} produces {spec.layout} tensors but {card.id} takes {card.input_layout}: "
            f"add --set layout={card.input_layout}"
        )
    dataset = load_dataset(options.data or SAMPLE_DIR, devkit=options.devkit)
    dataset = dataset.select(limit=options.limit, per_class=options.per_class)
    return card, spec, dataset


def run_native(options: NativeOptions) -> NativeRun:
    """Evaluate one model natively; write report.json, report.md, logits.npy, predictions.csv; return the report.

    The run owns its --out folder while it works (a second run there is refused) and leaves nothing of
    its own behind when it fails: no work folder, no half set of outputs, no folder it created.
    """
    timeline = {"started": time.time()}
    card, spec, dataset = prepare(options)
    timeline["dataset_listed"] = time.time()
    out_dir = Path(options.out) if options.out else default_out_dir(card.id)
    report, rows = in_owned_folder(
        out_dir, lambda workdir: _run_in(out_dir, workdir, card, spec, dataset, options, timeline))
    return NativeRun(report, out_dir, rows)


Result = TypeVar("Result")
Built = TypeVar("Built")


def in_owned_folder(out_dir: Path, work: Callable[[Path], Result]) -> Result:
    """``work(WORKDIR)`` while this run owns ``out_dir`` (a second run there is refused); its work folder is
    removed afterwards, and a folder this run created is removed again when it fails before writing to it."""
    created = not out_dir.exists()
    writable_folder(out_dir, "--out")
    try:
        with owned_folder(out_dir, "--out"):
            try:
                return work(out_dir / ".work")
            finally:
                shutil.rmtree(out_dir / ".work", ignore_errors=True)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # only if empty
        raise


def earlier_outputs_note(out_dir: Path, names: tuple[str, ...] = OUTPUTS) -> list[str]:
    """Refuse outputs that cannot be replaced (checked before any work); say so when an earlier report will be."""
    for name in names:
        if (out_dir / name).is_dir():
            raise UserError(f"--out {out_dir}: {name} there is a folder; move it away or choose another --out")
    if not (out_dir / "report.json").exists():
        return []
    ui.info(f"--out {out_dir} holds an earlier report: this run replaces it when it finishes")
    return [f"this report replaced an earlier one in {out_dir}"]


def _run_in(out_dir, workdir, card, spec, dataset, options, timeline) -> tuple[NativeReport, list[Prediction]]:
    notes = earlier_outputs_note(out_dir)
    ui.info(f"{card.id}: {len(dataset)} images ({dataset.layout}) from {dataset.root}; preprocessing {spec.name}")
    job = EvaluateJob(
        model=card.id,
        preprocess=spec.to_dict(),
        device=options.device,
        precision=options.precision,
        batch_size=options.batch_size,
        n_images=len(dataset),
        hw=spec_hw(spec),
        data_file=str(workdir / "data.json"),  # shard paths: written once the cache is surveyed
        weights_file=os.path.abspath(options.weights) if options.weights else None,
        random_weights=options.random_weights,
        cuda_graphs=options.cuda_graphs,
        seed=options.seed,
    )
    run = evaluate_cached(card.framework, job, spec, dataset, options, workdir, timeline)
    report = assemble_report(card, spec, dataset, run.cached, run.build, run.result, run.timing, run.topk, options,
                             notes)
    return report, write_outputs(out_dir, workdir, report, dataset, run)


@dataclass
class CachedRun:
    """One worker's pass over the cached images: the cache, its build statistics, the worker's result,
    the logits (skipped images' rows NaN), their top-5, the timing with the run's timeline."""

    cached: Any
    build: Any
    result: WorkerResult
    logits: np.ndarray
    topk: np.ndarray
    timing: dict[str, Any]

    @property
    def skipped(self) -> set[int]:
        return {bad.index for bad in self.cached.bad}


def spec_hw(spec: PreprocessSpec) -> tuple[int, int]:
    """The (height, width) of the images the spec's cache holds."""
    return TensorCache(default_cache_root(), spec).hw


def evaluate_cached(framework: str, job: EvaluateJob, spec: PreprocessSpec, dataset: Dataset, options, workdir: Path,
                    timeline: dict[str, float]) -> CachedRun:
    """Survey and build the tensor cache while ``framework``'s worker runs ``job`` on it (``options`` gives
    cache_dir, workers, on_bad_image)."""
    cache_root = Path(options.cache_dir).expanduser() if options.cache_dir else default_cache_root()
    writable_folder(cache_root, "--cache-dir" if options.cache_dir else "the tensor cache ($XFVERIFY_CACHE or ~/.cache/xfverify)")
    cache = TensorCache(cache_root, spec)
    with ui.progress_group() as group:
        decode_progress = group.task("decode + resize + crop")
        infer_progress = group.task(f"{framework} inference")
        cached, build, result = decode_and_infer(
            cache, dataset, framework, job, workdir, options, decode_progress, infer_progress, timeline
        )
    logits = np.load(result.logits_path, mmap_mode="r+")  # the worker's file becomes the report's
    skipped = {bad.index for bad in cached.bad}
    if skipped:
        logits[sorted(skipped)] = np.nan
        logits.flush()
    timeline["logits_saved"] = time.time()
    timing = {**result.timing.model_dump(), "timeline_s": relative_timeline(timeline, result.milestones)}
    topk = top_k(np.nan_to_num(logits, nan=-np.inf), 5)  # skipped images' NaN rows rank nothing
    return CachedRun(cached, build, result, logits, topk, timing)


def write_outputs(out_dir: Path, workdir: Path, report: NativeReport, dataset: Dataset, run: CachedRun) -> list[Prediction]:
    """Refuse a run that scored nothing; write predictions.csv, report.json and report.md beside the logits
    in the work folder, then move all four into ``out_dir`` together."""
    skipped = run.skipped
    if skipped and report.n_scored == 0 and (len(skipped) == len(dataset) or dataset.n_labelled):
        first = run.cached.bad[0]
        raise UserError(
            f"nothing was scored: {len(skipped)} of {len(dataset)} images were skipped as undecodable "
            f"(the first, {first.path}: {first.reason}); no report was written"
        )
    rows = predictions([r.image_id for r in dataset.records], [r.labels for r in dataset.records], run.topk, skipped)
    write_predictions(workdir / "predictions.csv", rows)
    write_report(workdir, report)
    write_markdown(workdir / "report.md", report, rows)
    run.logits = None  # closes the memory map before the file moves
    for name in OUTPUTS:
        os.replace(workdir / name, out_dir / name)
    return rows


def relative_timeline(parent: dict[str, float], worker: dict[str, float]) -> dict[str, float]:
    """When each phase of a run ended, in seconds since it began, in order (parent and worker together)."""
    started = parent["started"]
    merged = {**{k: v for k, v in parent.items() if k != "started"}, **worker}
    return {name: round(at - started, 3) for name, at in sorted(merged.items(), key=lambda item: item[1])}


def may_feed_on_device(framework: str, device: str) -> bool:
    """Whether a worker may be fed on a GPU (torch's uint8 step, ONNX Runtime's CUDA provider), so the cache
    should store the fed tensors' digests as it builds. A wrong guess costs time, not correctness: a device-fed
    worker that finds digests missing computes them itself."""
    from xfverify.evaluator.frameworks.devices import nvidia_gpus, ort_fed_on_device

    if framework == "onnxruntime" and ort_fed_on_device():
        return True
    return framework in ("torch", "onnxruntime") and device != "cpu" and bool(nvidia_gpus())


def survey_and_build(cache, records, data_files, options, progress, cancel, surveyed=lambda: None,
                     normalisations=None, digests: bool = True):
    """Survey the cache, tell the worker its shard paths (each data file), then decode what is missing and,
    with ``digests``, compute the fed-tensor digests missing under ``normalisations`` (default: the cache's spec).

    Returns what :meth:`TensorCache.complete` returns.
    """
    survey = cache.survey(records, log=ui.info, normalisations=normalisations if digests else [])
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

    def on_event(event: dict) -> None:
        if event.get("event") == "progress":
            infer_progress(event["done"], event["total"])
        elif event.get("event") == "status":
            ui.info(event["message"])

    (cached, stats), result = worker_beside_build(
        build, cancel, timeline,
        lambda on_start: run_worker(framework, "evaluate", job.model_dump(), workdir=workdir, on_event=on_event,
                                    on_start=on_start))
    return cached, stats, WorkerResult.model_validate(result)


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

    builder = threading.Thread(target=guarded_build, name="xfverify-cache-build", daemon=True)
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


def assemble_report(card, spec, dataset, cached, build, result, timing, topk, options, run_notes=(),
                    report_type: type[NativeReport] = NativeReport, **extra) -> NativeReport:
    """The report, typed (its schema is checked as it is built); ``card`` is None for a user's ONNX file,
    ``extra`` holds the fields ``report_type`` adds."""
    skipped = {bad.index for bad in cached.bad}
    include = np.ones(len(dataset), dtype=bool)
    include[sorted(skipped)] = False
    labels = [r.labels for r in dataset.records]
    stats = error_stats(topk, labels, include)
    top1_ci = wilson_interval(stats.top1_errors, stats.n) if stats.n else None
    top5_ci = wilson_interval(stats.top5_errors, stats.n) if stats.n else None
    primary = card.primary_published if card else None
    published = (
        {"top1_error": primary.top1_error, "top5_error": primary.top5_error, "source": primary.source}
        if primary
        else None
    )
    others = [
        {"top1_error": p.top1_error, "top5_error": p.top5_error, "source": p.source}
        for p in (card.published if card else [])
        if p is not primary
    ]
    notes = list(dataset.notes) + list(result.notes) + list(options.extra_notes) + list(run_notes)
    notes += _caveat_notes(cached.caveats)
    if not dataset.n_labelled:
        notes.append("no image has a label, so nothing was scored: these are predictions only "
                     "(labels come from an ImageNet layout or a labels.csv)")
    if options.random_weights:
        notes.insert(0, "RANDOM WEIGHTS: a seeded random model; the error rates say nothing about the pretrained model")
    if card and card.notes:
        notes.append(card.notes)
    if stats.n and stats.n < 1000:
        notes.append(f"only {stats.n} labelled images scored: the 95% interval is wide")
    identity = extra.pop("identity", None) or _identity(card)
    return report_type.model_validate({
        **identity,
        "random_weights": options.random_weights,
        "framework": result.framework.model_dump(),
        "device": result.device.model_dump(),
        "precision": result.precision,
        "weights": result.weights,
        "preprocess": spec.to_dict(),
        "dataset": {
            "path": dataset.root,
            "layout": dataset.layout,
            "n_images": len(dataset),
            "n_labelled": dataset.n_labelled,
            "manifest_sha256": dataset.manifest_sha256(),
        },
        "tensors_sha256": result.tensors_sha256,
        "tensor_proof": result.tensor_proof,
        "batch_size": result.batch_size,
        "batch_size_source": result.batch_size_source,
        "top1_error": _round(stats.top1_error),
        "top5_error": _round(stats.top5_error),
        "top1_error_ci95": [round(v, 4) for v in top1_ci] if top1_ci else None,
        "top5_error_ci95": [round(v, 4) for v in top5_ci] if top5_ci else None,
        "n_scored": stats.n,
        "published": published,
        "other_published": others,
        "delta_vs_published": compare_to_published(stats.top1_error, top1_ci, primary.top1_error if primary else None)
        if top1_ci
        else None,
        "real_labels": real_error(topk, [r.image_id for r in dataset.records], include),
        "timing": timing,
        "cache": {
            "directory": str(Path(cached.shard_paths[0]).parent.parent) if cached.shard_paths else None,
            "decoded": build.decoded,
            "digested": build.digested,
            "reused_shards": build.reused_shards,
            "built_shards": build.built_shards,
            "rebuilt_corrupt_shards": build.rebuilt_corrupt,
            "decode_s": round(build.seconds, 3),
            "decode_images_per_s": round(build.images_per_s, 1),
            "workers": build.workers,
        },
        "skipped_images": [{"image_id": b.image_id, "path": b.path, "reason": b.reason} for b in cached.bad],
        "notes": notes,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "xfverify_version": __version__,
        **extra,
    })


def _identity(card: ModelCard) -> dict[str, str]:
    return {"model": card.id, "architecture": card.architecture, "builder": card.builder, "output": card.output}


def _caveat_notes(caveats) -> list[str]:
    """One note per kind of decode caveat, naming how many images it concerns and the first of them."""
    by_text: dict[str, list[str]] = {}
    for caveat in caveats:
        by_text.setdefault(caveat.reason, []).append(caveat.path)
    return [f"{len(paths)} image(s), the first {paths[0]}: {text}" for text, paths in by_text.items()]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
