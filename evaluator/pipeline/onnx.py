"""``xfverify onnx``: a model's ONNX export (or a user's ONNX file) under ONNX Runtime, on exactly the tensors
of a native run, compared with it: errors, time, and agreement image by image."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from xfverify.evaluator.analysis.agreement import OnnxAgreement, compare_outputs
from xfverify.evaluator.analysis.localize import Localization
from xfverify.evaluator.data.layouts import SAMPLE_DIR, Dataset, load_dataset
from xfverify.evaluator.pipeline.assemble import RunIdentity, assemble_report, onnx_report
from xfverify.evaluator.pipeline.evaluation import CachedRun, spec_hw
from xfverify.evaluator.pipeline.localize import localize_run
from xfverify.evaluator.pipeline.native_pass import ensure_native_run
from xfverify.evaluator.pipeline.native_run import (
    NATIVE_OUTPUTS,
    ONNX_NATIVE_FOLDER,
    NativeOnDisk,
    cached_pictures,
    check_against,
    check_scores,
    save_native_run,
)
from xfverify.evaluator.pipeline.onnx_pass import OnnxPass, onnx_pass
from xfverify.evaluator.pipeline.options import OnnxOptions
from xfverify.evaluator.pipeline.request import scored_and_held_out
from xfverify.evaluator.pipeline.outdir import (
    Finished,
    default_out_dir,
    earlier_outputs_note,
    in_owned_folder,
    move_in,
)
from xfverify.evaluator.pipeline.variants import Plain, check_variant_options, gate, run_variants
from xfverify.evaluator.reports.run import NativeReference, NativeReport, OnnxReport
from xfverify.evaluator.reports.localize import PAGE, localization_page
from xfverify.evaluator.reports.run_page import MAX_FLIPS_SHOWN
from xfverify.evaluator.reports.run_page import PAGE as RUN_PAGE
from xfverify.evaluator.system import console
from xfverify.evaluator.system.files import atomic_write_text
from xfverify.models.cards import get_card
from xfverify.models.errors import UserError
from xfverify.models.overrides import parse_overrides
from xfverify.models.preprocess import PreprocessSpec, resolve_preprocess
from xfverify.models.user_input import shown


def run_onnx(options: OnnxOptions) -> Finished[NativeReport | OnnxReport]:
    """Evaluate the ONNX export of a model (or a user's ONNX file) under ONNX Runtime on a native run's tensors;
    write report.json, report.md, logits.npy, predictions.csv into --out; return the report."""
    timeline = {"started": time.time()}
    if options.is_file:
        name = Path(options.target).stem
    else:
        name = get_card(options.target).id
    out_dir = Path(options.out) if options.out else default_out_dir(name, "onnx")
    if options.against and os.path.realpath(options.against) == os.path.realpath(out_dir):
        raise UserError(f"--out {shown(out_dir)} is the --against folder: the ONNX run would replace the native run it "
                        "compares with; choose another --out")
    return in_owned_folder(out_dir, lambda workdir: _run_in(options, out_dir, workdir, timeline))


def _run_in(options: OnnxOptions, out_dir: Path, workdir: Path, timeline: dict[str, float]) -> Finished:
    card = None if options.is_file else get_card(options.target)
    # before the native run and the export, not after them
    notes = earlier_outputs_note(out_dir, (*NATIVE_OUTPUTS, PAGE), "onnx", {ONNX_NATIVE_FOLDER: NATIVE_OUTPUTS})
    native, new_native = ensure_native_run(options, out_dir, workdir) if card or options.against else (None, False)
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
              native: NativeOnDisk | None, new_native: bool) -> Finished:
    """The export (or the user's file) under ONNX Runtime on ``native``'s tensors, compared with it and saved."""
    spec, dataset, held_out = _request_against(options, card, native)
    timeline["dataset_listed"] = time.time()
    onnx = onnx_pass(card, options, spec, dataset, native, workdir, timeline, name_of(options))
    run = onnx.run
    agreement = _agreement(options, card, native, run, dataset, notes) if native else None
    localization, localize_failed = _localization(options, spec, dataset, native, onnx, agreement, workdir, notes)
    if localization is not None or localize_failed is not None:
        timeline["localized"] = time.time()
    variants = None
    if options.variants:  # after the plain file's run and localization, scored beside it on its tensors
        compared = native.report.output if native and card else "outputs"
        variants = run_variants(options, check_variant_options(options),
                                Plain(onnx.onnx_path, run, spec, dataset, spec_hw(spec), native, compared, held_out),
                                workdir)
        timeline["variants_scored"] = time.time()
    identity = None if card else RunIdentity(model=options.target, architecture="unknown (a user's ONNX file)",
                                             builder="onnxruntime.InferenceSession", output=onnx.info.output_kind)
    random_weights = bool(native and native.report.random_weights and card)
    report = onnx_report(
        assemble_report(card, spec, dataset, run, random_weights, [*options.extra_notes, *notes], identity),
        runtime=run.result.runtime, onnx=onnx.info, native=_native_reference(native), agreement=agreement,
        localization=localization, variants=variants,
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
                                   stale=() if page else (PAGE,),  # an earlier run's page: not this report's
                                   pictures=_flip_pictures(run, dataset, agreement),
                                   native_page=_native_page(native, new_native))
    if localize_failed is not None and (options.localize or options.localize_against):
        if not isinstance(localize_failed, UserError):
            raise localize_failed
        raise UserError(f"{localize_failed} (the ONNX run's report, with the reason localization failed, is in "
                        f"{out_dir})")
    return Finished(report, out_dir, rows)


def _request_against(options: OnnxOptions, card,
                     native: NativeOnDisk | None) -> tuple[PreprocessSpec, Dataset, Dataset | None]:
    """The preprocessing and images of the ONNX run (and those --calibration-split holds out of them): the native
    run's unless others are asked for, refused where they would not be the native run's."""
    default = native.report.preprocess if native else None
    data, limit = options.data, options.limit
    if native and not data:  # the native run's images, unless others are asked for
        data = native.report.dataset.path
        limit = limit or native.report.dataset.n_images + (options.calibration_split or 0)
    spec = resolve_preprocess(options.preprocess or default, overrides=parse_overrides(options.overrides))
    if native:
        check_against(native, card, spec)
    dataset, held_out = scored_and_held_out(dataclasses.replace(options, data=data or SAMPLE_DIR, limit=limit))
    if native and dataset.manifest_sha256() != native.report.dataset.manifest_sha256:
        raise UserError(f"the images differ from the native run's in {native.folder} (manifest sha256): "
                        "give the same --data, --limit and --per-class, or leave them out")
    if native:
        check_scores(native, dataset)
    return spec, dataset, held_out


def _scored(run: CachedRun, dataset: Dataset) -> np.ndarray:
    include = np.ones(len(dataset), dtype=bool)
    include[sorted(run.skipped)] = False
    return include


def _agreement(options: OnnxOptions, card, native: NativeOnDisk, run: CachedRun, dataset: Dataset,
               notes: list[str]) -> OnnxAgreement:
    """ONNX Runtime's outputs against the native run's, image by image; what the user must know of it in ``notes``."""
    compared = native.report.output if card else "outputs"
    agreement = compare_outputs(native.outputs, np.asarray(run.logits), [r.image_id for r in dataset.records],
                                [r.labels for r in dataset.records], _scored(run, dataset), compared, options.atol,
                                options.rtol)
    if agreement.n_non_finite:
        notes.append(f"{agreement.n_non_finite} of the {agreement.n_compared} compared images have outputs "
                     "holding NaN or +-inf in the native run, ONNX Runtime's or both: they have no top-1 there "
                     "(a flip unless neither has one) and are left out of max |diff|")
    if agreement.native_varies is False:
        notes.append(f"the native outputs are the same for every one of the {agreement.n_compared} compared images "
                     "(the largest difference between images is within 1e-6 of the largest output): agreeing "
                     "with a constant proves little of the export; random weights do this when a network "
                     "zero-initialises its head or its activations collapse")
    if compared == "softmax":
        notes.append("the model ends in softmax and so does its export: the agreement compares probabilities "
                     "with probabilities")
    return agreement


def _localization(options: OnnxOptions, spec: PreprocessSpec, dataset: Dataset, native: NativeOnDisk | None,
                  onnx: OnnxPass, agreement: OnnxAgreement | None, workdir: Path,
                  notes: list[str]) -> tuple[Localization | None, Exception | None]:
    """The first divergent node, when asked for or when the outputs disagree; or, when localizing failed, the block
    saying why and the error (the ONNX run is finished then: its report is written before the error is said; a bug's
    traceback is printed at once)."""
    asked = bool(options.localize or options.localize_against)
    disagrees = (options.localize is None and agreement is not None
                 and (agreement.n_flips > 0 or agreement.within_tolerance < 1.0))
    if disagrees and not asked and not np.isfinite(native.outputs[_scored(onnx.run, dataset)]).all():
        disagrees = False  # the reference itself holds NaN or +-inf: nothing to localize against (said in a note)
    if not (asked or disagrees):
        return None, None
    try:
        localization = localize_run(
            onnx_path=onnx.onnx_path, spec=spec, run=onnx.run, image_ids=[r.image_id for r in dataset.records],
            native=native, reference_onnx=options.localize_against, workdir=workdir,
            n_images=options.localize_images, atol=options.atol, rtol=options.rtol)
    except Exception as exc:  # a user's error or a bug: the ONNX run's results stand all the same
        reason = str(exc) if isinstance(exc, UserError) else (f"{type(exc).__name__} in xfverify: "
                                                              f"{' '.join(str(exc).split())[:300]} (a bug; its "
                                                              "traceback is printed)")
        if not isinstance(exc, UserError):
            sys.stderr.write("".join(traceback.format_exception(exc)))
        notes.append(f"localizing the first divergent node failed: {reason}")
        return Localization.could_not(
            reason, against="onnx" if options.localize_against else "native", atol=options.atol, rtol=options.rtol,
            reference=(os.path.abspath(options.localize_against) if options.localize_against
                       else f"the native run in {native.folder}" if native else "none")), exc
    if not asked:
        notes.append(f"the outputs disagree: the {localization.cost.n_images} worst-agreeing image(s) were "
                     "run node by node (localization; --localize asks for it on any run, --no-localize never)")
    return localization, None


def _native_page(native: NativeOnDisk | None, new_native: bool) -> Path | None:
    """Where the compared native run's page is (its report.md when it was written before runs had pages)."""
    if native is None:
        return None
    page = native.folder / RUN_PAGE
    return page if new_native or page.is_file() else native.folder / "report.md"


def _flip_pictures(run, dataset, agreement) -> dict[str, np.ndarray]:
    """The fed crops of the images whose top-1 flipped (those report.html shows), by image id."""
    if agreement is None or not agreement.flips:
        return {}
    shown_ids = {flip.image_id for flip in agreement.flips[:MAX_FLIPS_SHOWN]}
    index = {i: record.image_id for i, record in enumerate(dataset.records) if record.image_id in shown_ids}
    return {index[i]: picture for i, picture in cached_pictures(run.cached, set(index)).items()}


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
