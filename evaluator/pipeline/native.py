"""``xfverify native``: a model in its own framework, on its reference preprocessing, against its published number."""

from __future__ import annotations

import os
import time
from pathlib import Path

from xfverify.evaluator.pipeline.assemble import assemble_report
from xfverify.evaluator.pipeline.evaluation import evaluate_cached, spec_hw
from xfverify.evaluator.pipeline.native_run import (
    NATIVE_OUTPUTS,
    SavedRun,
    save_native_run,
)
from xfverify.evaluator.pipeline.options import NativeOptions
from xfverify.evaluator.pipeline.outdir import (
    default_out_dir,
    earlier_outputs_note,
    in_owned_folder,
)
from xfverify.evaluator.pipeline.request import prepare
from xfverify.evaluator.process.tasks import EvaluateJob
from xfverify.evaluator.reports.run import NativeReport, Prediction
from xfverify.evaluator.system import console


def run_native(options: NativeOptions) -> SavedRun:
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
    return SavedRun(report, out_dir, rows)


def _run_in(out_dir, workdir, card, spec, dataset, options, timeline) -> tuple[NativeReport, list[Prediction]]:
    notes = earlier_outputs_note(out_dir, NATIVE_OUTPUTS, "native")
    console.info(f"{card.id}: {len(dataset)} images ({dataset.layout}) from {dataset.root}; preprocessing {spec.name}")
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
    return save_native_run(out_dir, workdir, report, dataset, run)
