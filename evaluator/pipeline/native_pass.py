"""The native pass: a model in its own framework on a request's images, saved as a native run's folder; and the step
that makes sure a native run is there for a run that compares with one (``ensure_native_run``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from xfverify.evaluator.pipeline.assemble import assemble_report
from xfverify.evaluator.pipeline.evaluation import evaluate_cached, spec_hw
from xfverify.evaluator.pipeline.native_run import (
    NATIVE_OUTPUTS,
    ONNX_NATIVE_FOLDER,
    NativeOnDisk,
    UnusableNativeRun,
    load_native,
    save_native_run,
)
from xfverify.evaluator.pipeline.options import NativeOptions, OnnxOptions
from xfverify.evaluator.pipeline.outdir import Finished, default_out_dir, earlier_outputs_note, in_owned_folder
from xfverify.evaluator.pipeline.request import Request, prepare
from xfverify.evaluator.process.blocks import RandomWeights
from xfverify.evaluator.process.names import DATA_FILE
from xfverify.evaluator.process.tasks import EvaluateJob
from xfverify.evaluator.reports.run import NativeReport
from xfverify.evaluator.system import console


def native_run(options: NativeOptions) -> Finished[NativeReport]:
    """Evaluate one model natively; write report.json, report.md, logits.npy, predictions.csv into --out.

    The run owns its --out folder while it works (a second run there is refused) and leaves nothing of
    its own behind when it fails: no work folder, no half set of outputs, no folder it created.
    """
    timeline = {"started": time.time()}
    request = prepare(options)
    timeline["dataset_listed"] = time.time()
    out_dir = Path(options.out) if options.out else default_out_dir(request.card.id)
    return in_owned_folder(out_dir, lambda workdir: _native_pass(request, options, out_dir, workdir, timeline))


def _native_pass(request: Request, options: NativeOptions, out_dir: Path, workdir: Path,
                 timeline: dict[str, float]) -> Finished[NativeReport]:
    card, spec, dataset = request
    notes = earlier_outputs_note(out_dir, NATIVE_OUTPUTS, "native")
    console.info(f"{card.id}: {len(dataset)} images ({dataset.layout}) from {dataset.root}; preprocessing {spec.name}")
    job = EvaluateJob(
        model=card.id,
        preprocess=spec,
        device=options.device,
        precision=options.precision,
        batch_size=options.batch_size,
        n_images=len(dataset),
        hw=spec_hw(spec),
        data_file=str(workdir / DATA_FILE),  # shard paths: written once the cache is surveyed
        weights_file=os.path.abspath(options.weights) if options.weights else None,
        random_weights=options.random_weights,
        cuda_graphs=options.cuda_graphs,
        seed=options.seed,
    )
    run = evaluate_cached(card.framework, job, spec, dataset, options, workdir, timeline)
    report = assemble_report(card, spec, dataset, run, options.random_weights, [*options.extra_notes, *notes])
    report, rows = save_native_run(out_dir, workdir, report, dataset, run)
    return Finished(report, out_dir, rows)


def ensure_native_run(options: OnnxOptions, out_dir: Path, workdir: Path) -> tuple[NativeOnDisk, bool]:
    """``--against``'s native run, or the one in ``--out/native`` when it answers the same request, or a new one, made
    in the work folder's ``native/`` (moved into --out with the ONNX run's outputs); and whether it is new."""
    if options.against:
        return load_native(Path(options.against)), False
    folder = out_dir / ONNX_NATIVE_FOLDER
    wanted = options.native_options(out=str(workdir / ONNX_NATIVE_FOLDER))
    if os.path.lexists(folder / "report.json"):
        try:
            earlier = load_native(folder, "--out")
        except UnusableNativeRun as exc:  # xfverify's own folder, damaged (a killed copy, an edit): made again
            console.info(f"the native run in {folder} cannot be reused ({exc.reason}): running it again, which replaces it")
        else:
            if _answers(earlier.report, wanted):
                console.info(f"comparing with the native run in {folder}")
                return earlier, False
    console.info(f"running {options.target} natively first, into {folder}")
    run = native_run(wanted)
    return NativeOnDisk(run.report, folder, np.load(run.out_dir / "logits.npy")), True


def _answers(native: NativeReport, wanted: NativeOptions) -> bool:
    """Whether an earlier native run answers the same request (model, weights, preprocessing, images)."""
    card, spec, dataset = prepare(wanted)
    if wanted.random_weights:
        same_weights = isinstance(native.weights, RandomWeights) and native.weights.seed == wanted.seed
    else:
        weights_source = os.path.abspath(wanted.weights) if wanted.weights else card.weights_source
        same_weights = not native.random_weights and native.weights.source == weights_source
    return (native.model == card.id and native.preprocess.to_dict() == spec.to_dict()
            and native.dataset.manifest_sha256 == dataset.manifest_sha256() and same_weights)
