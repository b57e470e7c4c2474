"""``xfverify diagnose``: the model under its reference preprocessing and under named variants, on the same images,
each variant's paired difference to the reference, and the decomposition of the gap to the published error.

Decoding is shared through the tensor cache (variants that change only the normalisation read the reference's
shards; each other geometry is decoded once into its own), and the model is loaded once, in one worker that
runs every variant in turn (``evaluate_many``) while the next geometries decode. Precision variants
(``--precisions``) run last, on the reference's own tensors, in the same worker: the runtime axis, with the ONNX
Runtime row of ``--onnx``.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xfverify.version import __version__
from xfverify.evaluator.analysis.comparison import compare_runs, output_difference
from xfverify.evaluator.analysis.metrics import error_stats, predicted_top_k, wilson_interval
from xfverify.evaluator.cache.store import TensorCache
from xfverify.evaluator.data.layouts import Dataset
from xfverify.evaluator.pipeline.assemble import assemble_report, non_finite_notes
from xfverify.evaluator.pipeline.evaluation import (
    CachedRun,
    cache_root,
    finished_run,
    may_feed_on_device,
    spec_hw,
    survey_and_build,
    tensor_cache,
    worker_beside_build,
)
from xfverify.evaluator.pipeline.native_run import (
    DIAGNOSE_REFERENCE_FOLDER,
    NATIVE_OUTPUTS,
    NativeOnDisk,
    cached_pictures,
    save_native_run,
)
from xfverify.evaluator.pipeline.onnx_pass import onnx_pass
from xfverify.evaluator.pipeline.options import DiagnoseOptions, check_variant_options
from xfverify.evaluator.pipeline.outdir import (
    Finished,
    default_out_dir,
    earlier_outputs_note,
    in_owned_folder,
    move_in,
)
from xfverify.evaluator.pipeline.request import prepare, scored_and_held_out
from xfverify.evaluator.pipeline.variants import Plain, variant_passes
from xfverify.evaluator.process.blocks import PrecisionBlock
from xfverify.evaluator.process.events import EventSink, VariantStarts
from xfverify.evaluator.process.launcher import run_worker
from xfverify.evaluator.process.names import LOGITS_FILE, variant_folder
from xfverify.evaluator.process.registry import BACKENDS
from xfverify.evaluator.process.tasks import EvaluateJob, EvaluateManyJob, VariantPart
from xfverify.evaluator.reports.diagnose import (
    OUTPUTS,
    CorrectnessFlip,
    Cost,
    DiagnoseReport,
    GeometryCost,
    PassCost,
    VariantRow,
    decomposition,
    write_diagnose_outputs,
)
from xfverify.evaluator.system import console
from xfverify.models.cards import ModelCard
from xfverify.models.errors import UserError
from xfverify.models.preprocess import PreprocessSpec
from xfverify.models.user_input import parse_json, read_text, shown
from xfverify.models.variants import (
    GPU_ONLY,
    RUNTIME,
    Variant,
    card_variants,
    precision_variants,
    select_variants,
    user_variant,
)


SPEC_LIMIT = 2**20  # a --spec file's bytes: a few variants are a few hundred


@dataclass
class VariantRun:
    """One variant's pass: its definition, resolved spec, the cache it read and the worker's result."""

    variant: Variant
    spec: PreprocessSpec
    run: CachedRun


def chosen_variants(card: ModelCard, reference: PreprocessSpec, options: DiagnoseOptions) -> list[Variant]:
    """The reference first, then the selected variants, the user's and the precision variants, each resolved once
    (errors are one line)."""
    every = card_variants(card, reference)
    if not _gpu_decoding_possible():
        named = {n.strip() for n in (options.variants or "").split(",")}
        asked = sorted(named & set(GPU_ONLY))
        if asked:
            raise UserError(f"--variants {', '.join(asked)}: decodes on an NVIDIA GPU and this machine has none; "
                            "leave it out, or run diagnose where there is one")
        left_out = [v.name for v in every if v.name in GPU_ONLY]
        every = [v for v in every if v.name not in GPU_ONLY]
        if left_out and options.variants is None:
            options.extra_notes.append(f"left out without an NVIDIA GPU: {', '.join(left_out)}")
    variants = select_variants(every, options.variants)
    for path in options.spec_files:
        data = parse_json(read_text(path, "--spec", SPEC_LIMIT), f"--spec {shown(path)}")
        if data == []:
            raise UserError(f"--spec {shown(path)}: an empty list names no variant; give one or more objects "
                            '{"name": ..., "preset": optional, "set": {field: value}}')
        for item in data if isinstance(data, list) else [data]:
            variants.append(user_variant(item, path) if isinstance(item, dict) else user_variant({}, path))
    precisions = precision_variants(options.precisions, options.precision, card.framework)
    _check_precisions_here(card, [v.precision for v in precisions], options.device)
    variants += precisions
    names = [v.name for v in variants]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"variant name {', '.join(repeated)} is used twice: rename the --spec variant")
    for variant in variants:
        try:
            spec = variant.resolve(reference)
        except UserError as exc:
            raise UserError(f"variant {shown(variant.name)}: {exc}") from None
        if spec.layout != card.input_layout:
            raise UserError(f"variant {variant.name} produces {spec.layout} tensors but {card.id} takes "
                            f"{card.input_layout}: add \"layout\": \"{card.input_layout}\" to its set")
    return variants


def _check_precisions_here(card: ModelCard, precisions: list[str], device: str) -> None:
    """What the worker would refuse after loading the model, refused before anything runs where it is known here."""
    if precisions and not BACKENDS[card.framework].switches_precision:
        raise UserError(f"--precisions {precisions[0]}: the {card.framework} back-end cannot change precision between "
                        "passes of one loaded model; precision variants work for torch and Keras models")
    if "tf32" in precisions and device == "cpu":
        raise UserError("--precisions tf32 applies to CUDA GPUs only and this run is on the CPU; bf16 and fp16 "
                        "run on the CPU too")


def _gpu_decoding_possible() -> bool:
    from xfverify.evaluator.system.devices import nvidia_gpus, nvjpeg_on_cpu

    return bool(nvidia_gpus()) or nvjpeg_on_cpu()


def run_diagnose(options: DiagnoseOptions) -> Finished[DiagnoseReport]:
    """Evaluate the model under every chosen variant; write report.json, report.md and report.html into --out."""
    timeline = {"started": time.time()}
    card, reference, dataset = prepare(options)
    if not dataset.n_labelled:
        raise UserError(f"{dataset.root}: no image has a label, so nothing can be compared; give labelled images "
                        "(an ImageNet layout or a labels.csv)")
    variants = chosen_variants(card, reference, options)
    out_dir = Path(options.out) if options.out else default_out_dir(card.id, "diagnose")
    report = in_owned_folder(out_dir, lambda workdir: _run_in(out_dir, workdir, card, reference, variants, dataset,
                                                              options, timeline))
    return Finished(report, out_dir)


ONNX_FOLDER = "onnx"  # the ONNX Runtime row's work folder (--onnx); earlier versions left its run in --out there


def _run_in(out_dir, workdir, card, reference, variants, dataset, options, timeline) -> DiagnoseReport:
    """The passes, then every output staged in the work folder (the reference's native run, the ONNX run of --onnx,
    the report) and moved into --out as one step: a failed run leaves the earlier diagnosis whole."""
    earlier_outputs_note(out_dir, OUTPUTS, "diagnose", {DIAGNOSE_REFERENCE_FOLDER: NATIVE_OUTPUTS,
                                                        ONNX_FOLDER: NATIVE_OUTPUTS})
    runs, model_loads = evaluate_variants(card, reference, variants, dataset, options, workdir, timeline)
    staged = workdir / "outputs"
    ref_folder = staged / DIAGNOSE_REFERENCE_FOLDER
    ref_folder.mkdir(parents=True)
    ref_run = runs[0].run
    native_report = assemble_report(card, reference, dataset, ref_run, options.random_weights, options.extra_notes)
    native_report, _ = save_native_run(ref_folder, workdir / variant_folder(0), native_report, dataset, ref_run)
    reference_logits = np.load(ref_folder / LOGITS_FILE)
    onnx_passes: list[OutsidePass] = []
    if options.onnx or options.onnx_variants:
        native = NativeOnDisk(native_report, out_dir / DIAGNOSE_REFERENCE_FOLDER, reference_logits)
        onnx_passes = _onnx_axis(card, options, reference, dataset, native, workdir / ONNX_FOLDER)
    rows = _rows(runs, dataset, onnx_passes, reference_logits)
    notes = list(native_report.notes)  # the reference's, its non-finite outputs among them; then the others'
    for run in runs[1:]:
        notes += non_finite_notes(run.run.topk, dataset, run.run.skipped, f"variant {run.variant.name}: ", listed=False)
    for outside in onnx_passes:
        notes += non_finite_notes(predicted_top_k(outside.logits, sorted(ref_run.skipped)), dataset, ref_run.skipped,
                                  f"{outside.variant.name}: ", listed=False)
    published = card.primary_published
    result = ref_run.result
    report = DiagnoseReport(
        model=card.id, architecture=card.architecture, framework=result.framework, device=result.device,
        precision=result.precision, weights=result.weights, random_weights=options.random_weights,
        dataset=native_report.dataset, n_scored=rows[0].n_scored, published=native_report.published,
        reference=rows[0], variants=rows[1:],
        decomposition=decomposition(published.top1_error if published else None, rows[0], rows[1:]),
        cost=_cost(runs, model_loads, timeline), notes=notes, xfverify_version=__version__,
    )
    write_diagnose_outputs(staged, report, _flip_images(runs, report, dataset))
    # an onnx/ folder an earlier version's --onnx wrote here describes no part of this report
    move_in(out_dir, staged, (DIAGNOSE_REFERENCE_FOLDER, *OUTPUTS), stale=(ONNX_FOLDER,))
    return report


def evaluate_variants(card: ModelCard, reference: PreprocessSpec, variants: list[Variant], dataset: Dataset,
                      options: DiagnoseOptions, workdir: Path, timeline: dict[str, float]) -> tuple[list[VariantRun], int]:
    """One worker loads the model once and runs every variant in turn; the caches of the distinct geometries
    are surveyed and built in a thread meanwhile, in the order the worker needs them. The runs, and how many
    networks the worker loaded (its events say)."""
    root = cache_root(options)
    specs = [v.resolve(reference) for v in variants]
    order = _run_order(variants, specs)  # the reference first; variants sharing its shards next; precisions last
    variants, specs = [variants[i] for i in order], [specs[i] for i in order]
    caches: dict[str, TensorCache] = {}
    for spec in specs:
        caches.setdefault(spec.geometry_key(), tensor_cache(root, spec))
    workdir.mkdir(parents=True, exist_ok=True)
    parts = [VariantPart(name=v.name, preprocess=s, hw=spec_hw(s), data_file=str(workdir / f"data-{i}.json"),
                         precision=v.precision) for i, (v, s) in enumerate(zip(variants, specs))]
    for part in parts:
        Path(part.data_file).unlink(missing_ok=True)
    base = EvaluateJob(
        model=card.id, preprocess=parts[0].preprocess, device=options.device, precision=options.precision,
        batch_size=options.batch_size, n_images=len(dataset), hw=parts[0].hw, data_file=parts[0].data_file,
        weights_file=os.path.abspath(options.weights) if options.weights else None,
        random_weights=options.random_weights, cuda_graphs=options.cuda_graphs, seed=options.seed,
    )
    job = EvaluateManyJob(base=base, variants=parts)
    n_precisions = sum(v.precision is not None for v in variants)
    console.info(f"{card.id}: {len(dataset)} images ({dataset.layout}) from {dataset.root}; {len(variants) - n_precisions} "
            f"preprocessings ({len(caches)} geometries to decode or reuse)"
            + (f" and {n_precisions} other precisions" if n_precisions else "") + f", one {card.framework} worker")
    cancel = threading.Event()
    total = len(dataset)

    with console.progress_group() as group:
        decode_progress = group.task(f"decode + resize + crop ({len(caches)} geometries)")
        infer_progress = group.task(f"{card.framework} inference ({len(variants)} variants)")
        current = {"variant": 0}

        def build() -> dict[str, Any]:
            built = {}
            for index, (key, cache) in enumerate(caches.items()):
                data_files = [part.data_file for part, spec in zip(parts, specs) if spec.geometry_key() == key]
                offset = index * total
                built[key] = survey_and_build(
                    cache, dataset.records, data_files, options,
                    lambda done, _total: decode_progress(offset + done, total * len(caches)), cancel,
                    normalisations=[spec for spec in specs if spec.geometry_key() == key],
                    digests=may_feed_on_device(card.framework, options.device),
                )
            timeline["decode_done"] = time.time()
            return built

        def variant_starts(event: VariantStarts) -> None:
            current["variant"] = event.index
            console.info(f"variant {event.index + 1} of {event.total}: {event.name}")

        sink = EventSink(progress=lambda event: infer_progress(current["variant"] * total + event.done,
                                                                total * len(variants)),
                         variant=variant_starts)

        built, result = worker_beside_build(
            build, cancel, timeline,
            lambda on_start: run_worker(card.framework, job, workdir=workdir,
                                        on_event=sink, on_start=on_start))
    runs = []
    for variant, spec, worker_result in zip(variants, specs, result.results):
        cached, stats = built[spec.geometry_key()]
        runs.append(VariantRun(variant, spec, finished_run(cached, stats, worker_result, timeline)))
    return runs, sink.models_loaded


def _run_order(variants: list[Variant], specs: list[PreprocessSpec]) -> list[int]:
    """Indices in the order the worker runs them: geometries in order of first appearance, together; then the
    precision variants, so every preprocessing runs at the reference's precision before any switch."""
    keys = list(dict.fromkeys(s.geometry_key() for s in specs))
    return sorted(range(len(specs)),
                  key=lambda i: (variants[i].precision is not None, keys.index(specs[i].geometry_key()), i))


@dataclass(frozen=True)
class OutsidePass:
    """A runtime row's pass that diagnose did not run in its own worker (ONNX Runtime, through ``onnx --against``)."""

    variant: Variant
    logits: np.ndarray
    tensors_sha256: str
    precision: PrecisionBlock
    ran_as: str | None = None  # a deployment variant: what its file computes in


def _rows(runs: list[VariantRun], dataset: Dataset, onnx_passes: list[OutsidePass],
          reference_logits: np.ndarray) -> list[VariantRow]:
    """Each run's errors and its paired difference to the reference, over the images every run scored; the
    runtime rows' outputs against the reference's too (they are fed the same tensors)."""
    labels = [r.labels for r in dataset.records]
    scored = np.array([bool(acceptable) for acceptable in labels])
    for run in runs:
        scored[sorted(run.run.skipped)] = False
    against = _AgainstReference(dataset, labels, scored, runs[0].run.topk, reference_logits)
    rows = [against.row(run.variant, run.spec, run.spec.geometry_key(), run.run.topk,
                        run.run.result.tensors_sha256, run.run.result.precision,
                        run.run.logits if run.variant.precision else None) for run in runs]
    for outside in onnx_passes:
        topk = predicted_top_k(outside.logits, sorted(runs[0].run.skipped), 5)
        row = against.row(outside.variant, rows[0].spec, rows[0].geometry_key, topk, outside.tensors_sha256,
                          outside.precision, outside.logits)
        rows.append(row.model_copy(update={"ran_as": outside.ran_as}) if outside.ran_as else row)
    return rows


class _AgainstReference:
    """The images every run scored, and each run's row against the reference's answers on them."""

    def __init__(self, dataset: Dataset, labels: list[tuple[int, ...]], scored: np.ndarray, reference_topk: np.ndarray,
                 reference_logits: np.ndarray):
        self.dataset, self.labels, self.scored = dataset, labels, scored
        self.index = np.flatnonzero(scored)
        self.reference_topk = reference_topk
        self.reference_logits = reference_logits

    def row(self, variant: Variant, spec: PreprocessSpec, geometry_key: str, topk: np.ndarray, tensors_sha256: str,
            precision: PrecisionBlock, logits: np.ndarray | None = None) -> VariantRow:
        """``logits`` only for the rows fed the reference's own tensors (their outputs are compared too)."""
        stats = error_stats(topk, self.labels, self.scored)
        runs = compare_runs(self.reference_topk[:, 0], topk[:, 0], self.labels, self.index)
        paired = runs.paired
        difference = None
        if logits is not None and len(self.index):
            relative = output_difference(self.reference_logits[self.index], logits[self.index]).relative
            difference = None if relative is None else round(relative, 6)
        flips = [CorrectnessFlip(index=int(i), image_id=self.dataset.records[i].image_id, labels=list(self.labels[i]),
                                 reference_top1=int(self.reference_topk[i, 0]), variant_top1=int(topk[i, 0]))
                 for i in runs.correctness_changed]
        return VariantRow(
            **variant.to_dict(), spec=spec, geometry_key=geometry_key, tensors_sha256=tensors_sha256,
            precision=precision, max_output_difference=difference,
            n_scored=stats.n, top1_error=round(stats.top1_error, 4), top5_error=round(stats.top5_error, 4),
            top1_error_ci95=[round(v, 4) for v in wilson_interval(stats.top1_errors, stats.n)],
            delta=round(paired.delta, 4), delta_ci95=[round(v, 4) for v in paired.ci95],
            mcnemar_p=paired.p_value, right_to_wrong=paired.right_to_wrong,
            wrong_to_right=paired.wrong_to_right, significant=paired.significant, flips=flips,
        )


def _onnx_axis(card: ModelCard, options: DiagnoseOptions, reference: PreprocessSpec, dataset: Dataset,
               native: NativeOnDisk, workdir: Path) -> list[OutsidePass]:
    """ONNX Runtime on the reference's tensors: the ONNX pass ``xfverify onnx`` runs, with the reference run's
    weights, refused unless it was fed the reference's very tensors; then each deployment variant of that export
    (``--onnx-variant``), made and run as ``onnx --variant`` makes and runs it, on the same tensors."""
    workdir.mkdir()
    onnx_options = options.onnx_options()
    done = onnx_pass(card, onnx_options, reference, dataset, native, workdir, {"started": time.time()}, card.id)
    result = done.run.result
    variant = Variant(name="onnx-runtime", group=RUNTIME, why=f"ONNX Runtime {result.runtime.version} on the "
                      f"reference's tensors ({done.info.exporter})")
    passes = [OutsidePass(variant, np.array(done.run.logits), result.tensors_sha256, result.precision)]
    if not options.onnx_variants:
        return passes
    plain = Plain(done.onnx_path, done.run, reference, dataset, spec_hw(reference), native, native.report.output,
                  scored_and_held_out(options)[1])
    made, calibration = variant_passes(onnx_options, check_variant_options(onnx_options), plain, workdir)
    for each in made:
        how = each.made.notes[0] if each.made and each.made.notes else f"the user's file {each.path}"
        if each.spec.calibrated and calibration is not None:
            how += (f"; calibrated on {calibration.n_images} images of {calibration.path} (manifest sha256 "
                    f"{calibration.manifest_sha256[:16]}…)")
        row = Variant(name=f"onnx-{each.spec.name}", group=RUNTIME,
                      why=f"the export's deployment variant {each.spec.name} under ONNX Runtime on the reference's "
                          f"tensors: {how}")
        passes.append(OutsidePass(row, np.array(each.run.logits), each.run.result.tensors_sha256,
                                  each.run.result.precision, ran_as=each.spec.arithmetic))
    return passes


def _cost(runs: list[VariantRun], model_loads: int, timeline: dict[str, float]) -> Cost:
    """What the run cost: decoding (per geometry, reused or built) and each variant's model pass (precision
    variants are passes too, on the reference's shards)."""
    geometries: dict[str, GeometryCost] = {}
    for run in runs:
        build = run.run.build
        geometries.setdefault(run.spec.geometry_key(), GeometryCost(
            decoded=build.decoded, decode_s=round(build.seconds, 3), reused_shards=build.reused_shards))
    return Cost(
        geometries=len(geometries), decoded_images=sum(g.decoded for g in geometries.values()),
        decode_s=round(sum(g.decode_s for g in geometries.values()), 3),
        model_passes=len(runs), precision_passes=sum(r.variant.precision is not None for r in runs),
        compute_s=round(sum(r.run.result.timing.compute_s for r in runs), 3),
        worker_wall_s=round(timeline.get("worker_finished", timeline["started"]) - timeline["started"], 3),
        model_loads=model_loads,
        passes=[PassCost(name=r.variant.name, warmup_s=round(r.run.result.timing.warmup_s, 3),
                         loop_wall_s=round(r.run.result.timing.wall_s, 3)) for r in runs],
    )


def _flip_images(runs: list[VariantRun], report: DiagnoseReport, dataset: Dataset) -> dict[int, np.ndarray]:
    """The reference's uint8 images of the flipped images of significant variants (thumbnails for the page)."""
    wanted = {i for row in report.variants if row.significant for i in [f.index for f in row.flips[:12]]}
    return cached_pictures(runs[0].run.cached, wanted)
