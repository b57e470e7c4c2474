"""``xfverify onnx --variant``: deployment variants of the plain ONNX file (float16, int8 static and dynamic, ONNX
Runtime's offline optimisation, or the user's own converted file), each made in the ONNX Runtime worker through the
variant cache, run on the plain run's tensors and scored as the plain file is: error with its interval, the paired
difference and agreement against the plain file and the native run, speed against the plain file's; where its
precision breaks, node by node; int8 with its costliest nodes kept in float, rescored."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from xfverify.converter.variant_spec import QUANTISED, VariantFile, VariantSpec
from xfverify.evaluator.analysis.agreement import compare_outputs
from xfverify.evaluator.analysis.comparison import compare_runs
from xfverify.evaluator.analysis.localize import worst_rows
from xfverify.evaluator.analysis.metrics import error_stats, predicted_top1, wilson_interval
from xfverify.evaluator.analysis.variant_nodes import PrecisionBreaks, compare_nodes
from xfverify.evaluator.data.layouts import SPLIT_RULE, Dataset, load_dataset
from xfverify.evaluator.data.normalise import normalise
from xfverify.evaluator.pipeline.evaluation import CachedRun, cache_root, evaluate_cached
from xfverify.evaluator.pipeline.localize import fed_tensors
from xfverify.evaluator.pipeline.native_run import NativeOnDisk
from xfverify.evaluator.pipeline.options import OnnxOptions, check_variant_options  # noqa: F401 (onnx.py reads it here)
from xfverify.evaluator.process.events import EventSink
from xfverify.evaluator.process.launcher import run_worker
from xfverify.evaluator.process.tasks import EvaluateJob, IntermediatesJob, IntermediatesResult, MakeVariantJob, VariantMade
from xfverify.evaluator.reports.run import OnnxReport
from xfverify.evaluator.reports.variants import CalibrationInfo, Gate, Paired, VariantResult, VariantsBlock
from xfverify.evaluator.system import console
from xfverify.evaluator.system.files import owned_subfolder
from xfverify.models.errors import UserError
from xfverify.models.preprocess import PreprocessSpec
from xfverify.models.user_input import shown

FOLDER = "variants"  # under the run's work folder (removed with it)
GATE_EXIT = 3  # the exit status of a run whose --max-top1-drop or --fail-on-mismatch failed


@dataclass
class Plain:
    """The plain file's run that every variant is scored beside."""

    path: str
    run: CachedRun
    spec: PreprocessSpec
    dataset: Dataset
    hw: tuple[int, int]
    native: Optional[NativeOnDisk]
    compared: str  # logits, or softmax
    held_out: Optional[Dataset] = None  # the images --calibration-split holds out of --data to calibrate on

    @property
    def include(self) -> np.ndarray:
        include = np.ones(len(self.dataset), dtype=bool)
        include[sorted(self.run.skipped)] = False
        return include


def run_variants(options: OnnxOptions, specs: list[VariantSpec], plain: Plain, workdir: Path) -> VariantsBlock:
    """Make, run and score every variant asked for, then the int8 remedies (--keep-float-auto)."""
    folder = workdir / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    calibration = _calibration(options, plain, folder) if any(s.calibrated for s in specs) else None
    results = []
    for index, spec in enumerate(specs):
        result = _scored(options, spec, plain, folder / str(index), calibration)
        results.append(result)
        if options.keep_float_auto and spec.kind in QUANTISED and result.nodes and result.nodes.costliest:
            kept = tuple(dict.fromkeys((*spec.keep_float, *result.nodes.costliest[: options.keep_float_auto])))
            remedy = spec.model_copy(update={"keep_float": kept})
            console.info(f"{remedy.name}: {spec.name} with {', '.join(kept)} kept in float")
            fixed = _scored(options, remedy, plain, folder / f"{index}-remedy", calibration, analyse=False)
            results.append(fixed.model_copy(update={
                "remedy_of": result.name,
                "recovered_points": (round(result.top1_error - fixed.top1_error, 4)
                                     if result.top1_error is not None and fixed.top1_error is not None else None),
                "time_over_remedied": round(fixed.compute_s / result.compute_s, 3) if result.compute_s else None}))
    errors = error_stats(plain.run.topk, [r.labels for r in plain.dataset.records], plain.include)
    return VariantsBlock(plain_top1_error=errors.top1_error, plain_images_per_s=plain.run.timing.images_per_s,
                         providers=list(plain.run.result.runtime.providers), results=results,
                         calibration=calibration[1] if calibration else None)


def _file_sha256s(dataset: Dataset) -> dict[str, str]:
    found = {}
    for record in dataset.records:
        with open(record.path, "rb") as handle:
            found[hashlib.file_digest(handle, "sha256").hexdigest()] = record.image_id
    return found


def _calibration(options: OnnxOptions, plain: Plain, folder: Path) -> tuple[Path, CalibrationInfo]:
    """The calibration images' tensors, from the run's preprocessing through the tensor cache (a plain-file pass over
    them builds it), in a float32 .npy; refused when any calibration image is among the scored ones."""
    if options.calibration_split:
        if plain.held_out is None:  # the pipeline splits --data whenever the option is given
            raise RuntimeError("--calibration-split given but no images were held out")
        images = plain.held_out.select(limit=options.calibration_limit)
        asked = f"--calibration-split {options.calibration_split}"
    else:
        images = load_dataset(options.calibration).select(limit=options.calibration_limit)
        asked = f"--calibration {shown(options.calibration)}"
    if not len(images):
        raise UserError(f"{asked}: no images there")
    scored = _file_sha256s(plain.dataset)
    for digest, image_id in _file_sha256s(images).items():
        if digest in scored:
            raise UserError(f"{asked}: image {shown(image_id)} is also scored (the same file as "
                            f"{shown(scored[digest])} of --data): calibrate on images kept apart")
    console.info(f"calibration: {len(images)} images from {images.root}, preprocessing {plain.spec.name}")
    sub = folder / "calibration"
    sub.mkdir(parents=True, exist_ok=True)
    job = EvaluateJob(model=None, onnx_path=plain.path, preprocess=plain.spec.to_dict(), device="cpu",
                      precision="fp32", batch_size=options.batch_size, n_images=len(images), hw=plain.hw,
                      data_file=str(sub / "data.json"))
    run = evaluate_cached("onnxruntime", job, plain.spec, images, options, sub, {"started": time.time()})
    rows = [row for row in range(len(images)) if row not in run.skipped]
    if not rows:
        raise UserError(f"{asked}: none of its images could be read")
    path = sub / "tensors.npy"
    first = normalise(np.ascontiguousarray(next(iter(run.cached.batches(1)))[1]), plain.spec)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(rows), *first.shape[1:]))
    wanted = {row: index for index, row in enumerate(rows)}
    digest = hashlib.sha256()
    for start, batch in run.cached.batches(64):
        tensors = normalise(np.ascontiguousarray(batch), plain.spec)
        for offset, tensor in enumerate(tensors):
            if start + offset in wanted:
                out[wanted[start + offset]] = tensor
                digest.update(np.ascontiguousarray(tensor).tobytes())
    out.flush()
    del out
    apart = (f"held out of --data, never scored (the {len(plain.dataset)} scored images are the others); "
             if options.calibration_split else "")
    info = CalibrationInfo(path=str(Path(images.root).resolve()), layout=images.layout, n_images=len(rows),
                           manifest_sha256=images.manifest_sha256(), tensors_sha256=digest.hexdigest(),
                           preprocess=plain.spec.name,
                           rule=f"--calibration-split {options.calibration_split}: {SPLIT_RULE}"
                           if options.calibration_split else None,
                           disjoint=f"{apart}no calibration file is byte-identical to any of the {len(plain.dataset)} "
                                    "scored images (sha256 of every file)")
    return path, info


@dataclass
class VariantPass:
    """A variant made (or the user's file) and run on the plain run's tensors."""

    spec: VariantSpec
    made: Optional[VariantFile]  # None: the user's own file
    path: str
    from_cache: bool
    run: CachedRun


def variant_passes(options: OnnxOptions, specs: list[VariantSpec], plain: Plain,
                   workdir: Path) -> tuple[list[VariantPass], Optional[CalibrationInfo]]:
    """Each variant made and run on the plain run's tensors, unscored (diagnose scores them as runtime rows), and
    the calibration images int8 was calibrated on."""
    folder = workdir / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    calibration = _calibration(options, plain, folder) if any(s.calibrated for s in specs) else None
    return ([_pass(options, spec, plain, folder / str(index), calibration) for index, spec in enumerate(specs)],
            calibration[1] if calibration else None)


def _pass(options: OnnxOptions, spec: VariantSpec, plain: Plain, folder: Path,
          calibration: Optional[tuple[Path, CalibrationInfo]]) -> VariantPass:
    folder.mkdir(parents=True, exist_ok=True)
    providers = list(plain.run.result.runtime.providers)
    made = None
    if spec.kind == "file":
        path, from_cache = spec.path, False
        console.info(f"variant {spec.name}: the user's file against its plain parent")
    else:
        console.info(f"variant {spec.name}: making it from the plain file in the ONNX Runtime worker")
        variants_cache = owned_subfolder(cache_root(options), "onnx-variants", "--cache-dir")
        job = MakeVariantJob(parent_path=plain.path, spec=spec, cache_root=str(variants_cache),
                             providers=providers,
                             calibration_path=str(calibration[0]) if calibration and spec.calibrated else None,
                             calibration_sha256=calibration[1].tensors_sha256 if calibration and spec.calibrated
                             else None)
        outcome: VariantMade = run_worker("onnxruntime", job, workdir=folder, on_event=EventSink())
        made, path, from_cache = outcome.variant, outcome.path, outcome.from_cache
    job = EvaluateJob(model=None, onnx_path=path, preprocess=plain.spec.to_dict(), device=options.provider,
                      precision="fp32", batch_size=options.batch_size, n_images=len(plain.dataset), hw=plain.hw,
                      data_file=str(folder / "data.json"))
    run = evaluate_cached("onnxruntime", job, plain.spec, plain.dataset, options, folder, {"started": time.time()})
    if run.result.tensors_sha256 != plain.run.result.tensors_sha256:  # the same cache and images: a bug if not
        raise RuntimeError(f"variant {spec.name} was fed other tensors than the plain file")
    return VariantPass(spec, made, str(path), from_cache, run)


def _scored(options: OnnxOptions, spec: VariantSpec, plain: Plain, folder: Path,
            calibration: Optional[tuple[Path, CalibrationInfo]], analyse: bool = True) -> VariantResult:
    done = _pass(options, spec, plain, folder, calibration)
    made, path, from_cache, run = done.made, done.path, done.from_cache, done.run
    providers = list(plain.run.result.runtime.providers)
    records = plain.dataset.records
    ids, labels, include = [r.image_id for r in records], [r.labels for r in records], plain.include
    rows = np.flatnonzero(include)
    logits = np.asarray(run.logits)
    errors = error_stats(run.topk, labels, include)
    versus_plain = compare_runs(predicted_top1(np.asarray(plain.run.logits)), predicted_top1(logits), labels, rows)
    agreement_plain = compare_outputs(np.asarray(plain.run.logits), logits, ids, labels, include, plain.compared,
                                      options.atol, options.rtol)
    versus_native = agreement_native = None
    if plain.native is not None:
        versus_native = Paired.of(compare_runs(predicted_top1(plain.native.outputs), predicted_top1(logits), labels,
                                               rows).paired)
        agreement_native = compare_outputs(plain.native.outputs, logits, ids, labels, include, plain.compared,
                                           options.atol, options.rtol)
    breaks = None
    wanted = analyse and options.localize is not False and (
        agreement_plain.n_flips > 0 or options.localize or (options.keep_float_auto and spec.kind in QUANTISED))
    if wanted:
        breaks = _nodes(options, plain, path, logits, folder)
    plain_s = plain.run.timing.compute_s
    same_provider = list(run.result.runtime.providers) == providers
    return VariantResult(
        name=spec.name, spec=spec, made=made, path=str(path),
        sha256=made.sha256 if made else run.result.weights.sha256, from_cache=from_cache, runtime=run.result.runtime,
        tensors_sha256=run.result.tensors_sha256, n_scored=errors.n, top1_error=errors.top1_error,
        top1_error_ci95=wilson_interval(errors.top1_errors, errors.n) if errors.n else None,
        top5_error=errors.top5_error, vs_plain=Paired.of(versus_plain.paired), agreement_plain=agreement_plain,
        vs_native=versus_native, agreement_native=agreement_native, images_per_s=run.timing.images_per_s,
        compute_s=run.timing.compute_s,
        time_over_plain=round(run.timing.compute_s / plain_s, 3) if plain_s and same_provider else None,
        nodes=breaks)


def _nodes(options: OnnxOptions, plain: Plain, path: str, logits: np.ndarray, folder: Path) -> PrecisionBreaks:
    """The worst-agreeing images run node by node in the variant and the plain file, compared by tensor name."""
    rows = worst_rows(np.asarray(plain.run.logits), logits, plain.include, options.localize_images)
    inputs = folder / "inputs.npy"
    np.save(inputs, fed_tensors(plain.run, plain.spec, rows))
    console.info(f"where precision breaks: every intermediate tensor of {len(rows)} image(s), variant and plain file")
    captured: list[IntermediatesResult] = [
        run_worker("onnxruntime", IntermediatesJob(onnx_path=onnx_path, inputs_path=str(inputs),
                                                   out_dir=str(folder / side)),
                   workdir=folder / f"{side}-worker", on_event=EventSink())
        for side, onnx_path in (("variant", path), ("plain", plain.path))]
    ids = [plain.dataset.records[row].image_id for row in rows]
    return compare_nodes(captured[0].tensors, captured[1].tensors, image_ids=ids, atol_fraction=options.atol,
                         rtol=options.rtol)


def gate(options: OnnxOptions, report: OnnxReport) -> Gate | None:
    """``--max-top1-drop`` (a variant's top-1 error over the plain file's by more points) and ``--fail-on-mismatch``
    (the plain file against the native run: a top-1 flip or an element past tolerance); None when neither is asked."""
    if options.max_top1_drop is None and not options.fail_on_mismatch:
        return None
    failures = []
    if options.fail_on_mismatch:
        agreement = report.agreement
        if agreement is None:
            raise UserError("--fail-on-mismatch compares the ONNX file with a native run: give a model, or --against")
        if agreement.n_flips or agreement.within_tolerance < 1.0:
            failures.append(f"the ONNX file disagrees with the native run: {agreement.n_flips} top-1 flip(s), "
                            f"{100 * agreement.within_tolerance:.3f} % of elements within tolerance")
    if options.max_top1_drop is not None and report.variants:
        for result in report.variants.results:
            if result.vs_plain.delta > options.max_top1_drop:
                failures.append(f"variant {result.name} costs {result.vs_plain.delta:.2f} points of top-1 against the "
                                f"plain file, over --max-top1-drop {options.max_top1_drop:g}")
    return Gate(max_top1_drop=options.max_top1_drop, fail_on_mismatch=options.fail_on_mismatch, failures=failures)
