"""``xfverify onnx``: a model's ONNX export (or a user's ONNX file) under ONNX Runtime, on exactly the tensors
of a native run, compared with it: errors, time, and agreement image by image."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from pathlib import Path

import numpy as np

from xfverify.converter.exported import OnnxDescription
from xfverify.evaluator.analysis.agreement import compare_outputs
from xfverify.evaluator.data.layouts import SAMPLE_DIR, load_dataset
from xfverify.evaluator.pipeline.assemble import assemble_report
from xfverify.evaluator.pipeline.evaluation import cache_root, evaluate_cached, spec_hw
from xfverify.evaluator.pipeline.localize import localize_run
from xfverify.evaluator.pipeline.native import run_native
from xfverify.evaluator.pipeline.native_run import (
    NATIVE_OUTPUTS,
    ONNX_NATIVE_FOLDER,
    NativeOnDisk,
    SavedRun,
    UnusableNativeRun,
    check_against,
    check_scores,
    load_native,
    save_native_run,
)
from xfverify.evaluator.pipeline.options import (
    NativeOptions,
    OnnxOptions,
    RunOptions,
    check_run_options,
    refuse_unless_regular,
)
from xfverify.evaluator.pipeline.outdir import (
    default_out_dir,
    earlier_outputs_note,
    in_owned_folder,
    move_in,
)
from xfverify.evaluator.pipeline.request import prepare
from xfverify.evaluator.pipeline.variants import Plain, check_variant_options, gate, run_variants
from xfverify.evaluator.process.blocks import RandomWeights
from xfverify.evaluator.process.events import Event
from xfverify.evaluator.process.launcher import run_worker
from xfverify.evaluator.process.tasks import (
    EvaluateJob,
    ExportJob,
    ExportOutcome,
    OnnxFileJob,
)
from xfverify.evaluator.reports.run import (
    NativeReference,
    NativeReport,
    OnnxInfo,
    OnnxReport,
)
from xfverify.evaluator.reports.localize import PAGE, localization_page
from xfverify.evaluator.system import console
from xfverify.evaluator.system.files import atomic_write_text, owned_subfolder
from xfverify.models.cards import get_card
from xfverify.models.errors import UserError
from xfverify.models.overrides import parse_overrides
from xfverify.models.preprocess import resolve_preprocess, spec_from_dict
from xfverify.models.user_input import shown


def _native_options(options: OnnxOptions, out: Path) -> NativeOptions:
    shared = {f.name: getattr(options, f.name) for f in dataclasses.fields(RunOptions)}
    return NativeOptions(**{**shared, "out": str(out), "extra_notes": []}, model=options.target)


def _matches(native: NativeReport, wanted: NativeOptions) -> bool:
    """Whether an earlier native run answers the same request (model, weights, preprocessing, images)."""
    card, spec, dataset = prepare(wanted)
    if wanted.random_weights:
        same_weights = isinstance(native.weights, RandomWeights) and native.weights.seed == wanted.seed
    else:
        weights_source = os.path.abspath(wanted.weights) if wanted.weights else card.weights_source
        same_weights = not native.random_weights and native.weights.source == weights_source
    return (native.model == card.id and native.preprocess == spec.to_dict()
            and native.dataset.manifest_sha256 == dataset.manifest_sha256() and same_weights)


def native_run_for(options: OnnxOptions, out_dir: Path, workdir: Path) -> tuple[NativeOnDisk, bool]:
    """``--against``'s native run, or the one in ``--out/native`` when it answers the same request, or a new one, made
    in the work folder's ``native/`` (moved into --out with the ONNX run's outputs); and whether it is new."""
    if options.against:
        return load_native(Path(options.against)), False
    folder = out_dir / ONNX_NATIVE_FOLDER
    wanted = _native_options(options, workdir / ONNX_NATIVE_FOLDER)
    if os.path.lexists(folder / "report.json"):
        try:
            earlier = load_native(folder, "--out")
        except UnusableNativeRun as exc:  # xfverify's own folder, damaged (a killed copy, an edit): made again
            console.info(f"the native run in {folder} cannot be reused ({exc.reason}): running it again, which replaces it")
        else:
            if _matches(earlier.report, wanted):
                console.info(f"comparing with the native run in {folder}")
                return earlier, False
    console.info(f"running {options.target} natively first, into {folder}")
    run: SavedRun = run_native(wanted)
    return NativeOnDisk(run.report, folder, np.load(run.out_dir / "logits.npy")), True


def _export(options: OnnxOptions, native: NativeOnDisk, hw: tuple[int, int]) -> ExportOutcome:
    """The card's model exported in its framework's worker (through the export cache), with the native run's weights."""
    card = get_card(options.target)
    report = native.report
    seed = report.weights.seed if isinstance(report.weights, RandomWeights) else options.seed
    console.info(f"exporting {card.id} to ONNX in the {card.framework} worker")
    outcome: ExportOutcome = run_worker(card.framework, _export_job(options, card.id, hw, report.random_weights, seed),
                                        on_event=_status)
    if outcome.weights.sha256 != report.weights.sha256:
        raise UserError(f"the export's weights ({outcome.weights.sha256[:16]}) are not the native run's "
                        f"({report.weights.sha256[:16]}, {native.folder}): give the same --weights, or run without --against")
    return outcome


def _export_job(options: OnnxOptions, model: str, hw: tuple[int, int], random_weights: bool, seed: int) -> ExportJob:
    exports = owned_subfolder(cache_root(options), "onnx", "--cache-dir")  # a file or a link there: one line
    return ExportJob(model=model, hw=hw, cache_root=str(exports), opset=options.opset,
                     weights_file=os.path.abspath(options.weights) if options.weights else None,
                     random_weights=random_weights, seed=seed)


def export_ahead(options: OnnxOptions) -> ExportOutcome:
    """Put a model's export in the export cache before its ONNX run asks for it, by the job that run will send (its
    native run's preprocessing and weights as ``options`` give them), so the run finds it there. A study does this
    for its GPU cells in its CPU lane, beside the GPU's passes."""
    card = get_card(options.target)
    spec = resolve_preprocess(options.preprocess, default=card.reference_spec, overrides=parse_overrides(options.overrides))
    console.info(f"exporting {card.id} to ONNX ahead of its run, in the {card.framework} worker")
    return run_worker(card.framework, _export_job(options, card.id, spec_hw(spec), options.random_weights, options.seed),
                      on_event=_status)


def _describe_file(path: str, layout: str) -> OnnxDescription:
    """A user's ONNX file checked and described in the ONNX Runtime worker (a bad file: one line)."""
    return run_worker("onnxruntime", OnnxFileJob(path=path, layout=layout))


def _status(event: Event) -> None:
    if event.event == "status":
        console.info(event.message)


def run_onnx(options: OnnxOptions, against_moves_to: Path | None = None) -> SavedRun:
    """Evaluate the ONNX export of a model (or a user's ONNX file) under ONNX Runtime on a native run's tensors;
    write report.json, report.md, logits.npy, predictions.csv into --out; return the report. ``against_moves_to``:
    where ``--against``'s run will be once its caller moves it in (the report names that folder)."""
    timeline = {"started": time.time()}
    check_run_options(options)
    for name, value in (("--atol", options.atol), ("--rtol", options.rtol)):
        if not math.isfinite(value) or value < 0:
            raise UserError(f"{name} must be a finite number, not negative, got {value}")
    if options.opset is not None and options.opset <= 0:
        raise UserError(f"--opset must be positive, got {options.opset} (leave it out for the exporter's default)")
    if options.localize_images <= 0:
        raise UserError(f"--localize-images must be positive, got {options.localize_images}")
    if options.localize is False and options.localize_against:
        raise UserError("--no-localize and --localize-against exclude each other")
    if options.localize_against and not os.path.isfile(options.localize_against):
        raise UserError(f"--localize-against {options.localize_against}: no such ONNX file")
    check_variant_options(options)
    if options.is_file:
        if os.path.isdir(options.target):
            raise UserError(f"{options.target} is a folder, not an ONNX file: give the .onnx file in it")
        if not os.path.lexists(options.target):
            raise UserError(f"{options.target}: no such ONNX file")
        refuse_unless_regular(options.target, "ONNX file", "an ONNX file")
        if options.opset is not None:
            raise UserError(f"--opset applies to a model's export; {options.target} has its own opset: leave it out")
        if options.weights or options.random_weights:
            raise UserError(f"--weights and --random-weights apply to a model's export; {options.target} has its own "
                            "weights: leave them out")
        if not options.preprocess:
            raise UserError(f"{options.target}: a user's ONNX file needs --preprocess PRESET (how its model was "
                            "trained to be fed; `xfverify presets` lists them)")
        if options.localize and not options.against and not options.localize_against:
            raise UserError(f"--localize compares {options.target} with a native run (--against RUN_DIR) or with "
                            "another ONNX file (--localize-against FILE.onnx): give one")
        name = Path(options.target).stem
    else:
        name = get_card(options.target).id
    out_dir = Path(options.out) if options.out else default_out_dir(name, "onnx")
    if options.against and os.path.realpath(options.against) == os.path.realpath(out_dir):
        raise UserError(f"--out {shown(out_dir)} is the --against folder: the ONNX run would replace the native run it "
                        "compares with; choose another --out")
    return in_owned_folder(out_dir, lambda workdir: _run_in(options, out_dir, workdir, timeline, against_moves_to))


def _run_in(options: OnnxOptions, out_dir: Path, workdir: Path, timeline: dict[str, float],
            against_moves_to: Path | None) -> SavedRun:
    card = None if options.is_file else get_card(options.target)
    # before the native run and the export, not after them
    notes = earlier_outputs_note(out_dir, (*NATIVE_OUTPUTS, PAGE), "onnx", {ONNX_NATIVE_FOLDER: NATIVE_OUTPUTS})
    native, new_native = native_run_for(options, out_dir, workdir) if card or options.against else (None, False)
    if native and against_moves_to is not None:
        native = dataclasses.replace(native, folder=against_moves_to)
    try:
        return _compared(options, out_dir, workdir, timeline, card, notes, native, new_native)
    except BaseException:
        staged = workdir / ONNX_NATIVE_FOLDER
        # finished work kept where no report describes other data: the next run reuses it
        if new_native and staged.is_dir() and not os.path.lexists(out_dir / "report.json"):
            with contextlib.suppress(OSError):  # the error on its way out is the one to show
                move_in(out_dir, workdir, (ONNX_NATIVE_FOLDER,))
        raise


def _compared(options: OnnxOptions, out_dir: Path, workdir: Path, timeline: dict[str, float], card, notes: list[str],
              native: NativeOnDisk | None, new_native: bool) -> SavedRun:
    """The export (or the user's file) under ONNX Runtime on ``native``'s tensors, compared with it and saved."""
    default = spec_from_dict(native.report.preprocess) if native else None
    data, limit = options.data, options.limit
    if native and not data:  # the native run's images, unless others are asked for
        data, limit = native.report.dataset.path, limit or native.report.dataset.n_images
    spec = resolve_preprocess(options.preprocess or default, overrides=parse_overrides(options.overrides))
    if native:
        check_against(native, card, spec)
    dataset = load_dataset(data or SAMPLE_DIR, devkit=options.devkit).select(limit=limit, per_class=options.per_class)
    timeline["dataset_listed"] = time.time()
    if native and dataset.manifest_sha256() != native.report.dataset.manifest_sha256:
        raise UserError(f"the images differ from the native run's in {native.folder} (manifest sha256): "
                        "give the same --data, --limit and --per-class, or leave them out")
    if native:
        check_scores(native, dataset)
    hw = spec_hw(spec)
    if card:
        outcome = _export(options, native, hw)
        export = outcome.export
        onnx_path = outcome.onnx_path
        onnx_info = OnnxInfo(source="export", path=onnx_path, exporter=export.exporter, exporter_version=export.exporter_version,
                             opset=export.opset, output_kind=export.output_kind, from_cache=outcome.from_cache,
                             export_s=export.seconds, description=export.description, notes=list(export.notes))
    else:
        onnx_path = os.path.abspath(options.target)
        description = _describe_file(onnx_path, spec.layout)
        onnx_info = OnnxInfo(source="file", path=onnx_path, exporter=description.exporter,
                             exporter_version=description.exporter_version, opset=description.opset,
                             output_kind="as the file computes it", description=description)
    timeline["onnx_ready"] = time.time()
    console.info(f"{name_of(options)}: ONNX Runtime on {len(dataset)} images from {dataset.root}; preprocessing {spec.name}")
    job = EvaluateJob(
        model=None, onnx_path=onnx_path, preprocess=spec.to_dict(), device=options.provider, precision="fp32",
        batch_size=options.batch_size, n_images=len(dataset), hw=hw, data_file=str(workdir / "data.json"),
    )
    run = evaluate_cached("onnxruntime", job, spec, dataset, options, workdir, timeline)
    if native and run.result.tensors_sha256 != native.report.tensors_sha256:
        raise UserError(f"the tensors differ from the native run's in {native.folder} (tensors_sha256 "
                        f"{run.result.tensors_sha256[:12]} vs {native.report.tensors_sha256[:12]}): xfverify compares "
                        "only runs fed the same tensors; use the native run's preprocessing and images")
    agreement = None
    if native:
        include = np.ones(len(dataset), dtype=bool)
        include[sorted(run.skipped)] = False
        compared = native.report.output if card else "outputs"
        agreement = compare_outputs(native.outputs, np.asarray(run.logits), [r.image_id for r in dataset.records],
                                    [r.labels for r in dataset.records], include, compared, options.atol, options.rtol)
        if agreement.n_non_finite:
            notes.append(f"{agreement.n_non_finite} of the {agreement.n_compared} compared images have outputs "
                         "holding NaN or +-inf in the native run, ONNX Runtime's or both: they have no top-1 there "
                         "(a flip unless neither has one) and are left out of max |diff|")
        if compared == "softmax":
            notes.append("the model ends in softmax and so does its export: the agreement compares probabilities "
                         "with probabilities")
    localization, localize_failed = None, None
    asked = bool(options.localize or options.localize_against)
    disagrees = (options.localize is None and agreement is not None
                 and (agreement.n_flips > 0 or agreement.within_tolerance < 1.0))
    if disagrees and not asked and not np.isfinite(native.outputs[include]).all():
        disagrees = False  # the reference itself holds NaN or +-inf: nothing to localize against (said in a note)
    if asked or disagrees:
        try:
            localization = localize_run(
                onnx_path=onnx_path, spec=spec, run=run, image_ids=[r.image_id for r in dataset.records],
                native=native, reference_onnx=options.localize_against, workdir=workdir,
                n_images=options.localize_images, atol=options.atol, rtol=options.rtol)
        except UserError as exc:  # the ONNX run is finished: its report is written, then the error is said
            localize_failed = exc
            notes.append(f"localizing the first divergent node failed: {exc}")
        else:
            if not asked:
                notes.append(f"the outputs disagree: the {localization.cost.n_images} worst-agreeing image(s) were "
                             "run node by node (localization; --localize asks for it on any run, --no-localize "
                             "never)")
        timeline["localized"] = time.time()
    variants = None
    if options.variants:  # after the plain file's run and localization, scored beside it on its tensors
        compared = native.report.output if native and card else "outputs"
        variants = run_variants(options, check_variant_options(options),
                                Plain(onnx_path, run, spec, dataset, hw, native, compared), workdir)
        timeline["variants_scored"] = time.time()
    identity = None if card else {"model": options.target, "architecture": "unknown (a user's ONNX file)",
                                  "builder": "onnxruntime.InferenceSession", "output": onnx_info.output_kind}
    random_weights = bool(native and native.report.random_weights and card)
    report = assemble_report(
        card, spec, dataset, run.cached, run.build, run.result, run.timing, run.topk,
        dataclasses.replace(options, random_weights=random_weights), notes,
        report_type=OnnxReport, identity=identity, runtime=run.result.runtime,
        onnx=onnx_info, native=_native_reference(native), agreement=agreement, localization=localization,
        variants=variants,
        onnx_over_native_time=round(run.result.timing.compute_s / native.report.timing.compute_s, 3)
        if native and native.report.timing.compute_s else None,
    )
    report = report.model_copy(update={"gate": gate(options, report)})
    page = ()
    if localization is not None:  # moved in with the report
        atomic_write_text(workdir / PAGE, localization_page(report.model, localization))
        page = (PAGE,)
    report, rows = save_native_run(out_dir, workdir, report, dataset, run,
                                   also=(*page, *((ONNX_NATIVE_FOLDER,) if new_native else ())),
                                   stale=() if page else (PAGE,))  # an earlier run's page: not this report's
    if localize_failed is not None and asked:
        raise UserError(f"{localize_failed} (the ONNX run's report, without localization, is in {out_dir})")
    return SavedRun(report, out_dir, rows)


def name_of(options: OnnxOptions) -> str:
    return Path(options.target).name if options.is_file else options.target


def _native_reference(native: NativeOnDisk | None) -> NativeReference | None:
    if native is None:
        return None
    report = native.report
    return NativeReference(folder=str(native.folder.resolve()), framework=report.framework, device=report.device,
                           top1_error=report.top1_error, top5_error=report.top5_error,
                           tensors_sha256=report.tensors_sha256, logits_sha256=report.logits_sha256,
                           compute_s=report.timing.compute_s,
                           images_per_s=report.timing.images_per_s)
