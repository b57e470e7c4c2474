"""The ONNX pass: a model's export (through the export cache, in its framework's worker) or a user's ONNX file, run
under ONNX Runtime on a request's images; ``xfverify onnx`` and diagnose's ONNX Runtime row both run it."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from xfverify.converter.exported import OnnxDescription
from xfverify.evaluator.data.layouts import Dataset
from xfverify.evaluator.pipeline.evaluation import CachedRun, cache_root, evaluate_cached, spec_hw
from xfverify.evaluator.pipeline.native_run import NativeOnDisk
from xfverify.evaluator.pipeline.options import OnnxOptions
from xfverify.evaluator.pipeline.request import resolved_spec
from xfverify.evaluator.process.blocks import RandomWeights
from xfverify.evaluator.process.events import EventSink
from xfverify.evaluator.process.launcher import run_worker
from xfverify.evaluator.process.names import DATA_FILE
from xfverify.evaluator.process.tasks import EvaluateJob, ExportJob, ExportOutcome, OnnxFileJob
from xfverify.evaluator.reports.run import OnnxInfo
from xfverify.evaluator.system import console
from xfverify.evaluator.system.files import owned_subfolder
from xfverify.models.cards import ModelCard, get_card
from xfverify.models.errors import UserError
from xfverify.models.preprocess import PreprocessSpec


@dataclass(frozen=True)
class OnnxPass:
    """The ONNX file that ran (and how it was made) and ONNX Runtime's run of it."""

    onnx_path: str
    info: OnnxInfo
    run: CachedRun


def onnx_pass(card: ModelCard | None, options: OnnxOptions, spec: PreprocessSpec, dataset: Dataset,
              native: NativeOnDisk | None, workdir: Path, timeline: dict[str, float], name: str) -> OnnxPass:
    """``card``'s export with ``native``'s weights (or, without a card, the user's file ``options.target``) under
    ONNX Runtime on ``options.provider``, fed ``spec``'s tensors of ``dataset``; with a native run, refused unless
    those tensors are the native run's."""
    hw = spec_hw(spec)
    if card:
        outcome = _export(card, options, native, hw)
        export = outcome.export
        onnx_path = outcome.onnx_path
        info = OnnxInfo(source="export", path=onnx_path, exporter=export.exporter,
                        exporter_version=export.exporter_version, opset=export.opset, output_kind=export.output_kind,
                        from_cache=outcome.from_cache, export_s=export.seconds, description=export.description,
                        notes=list(export.notes))
    else:
        onnx_path = os.path.abspath(options.target)
        description = _describe_file(onnx_path, spec.layout)
        info = OnnxInfo(source="file", path=onnx_path, exporter=description.exporter,
                        exporter_version=description.exporter_version, opset=description.opset,
                        output_kind="as the file computes it", description=description)
    timeline["onnx_ready"] = time.time()
    console.info(f"{name}: ONNX Runtime on {len(dataset)} images from {dataset.root}; preprocessing {spec.name}")
    job = EvaluateJob(
        model=None, onnx_path=onnx_path, preprocess=spec, device=options.provider, precision="fp32",
        batch_size=options.batch_size, n_images=len(dataset), hw=hw, data_file=str(workdir / DATA_FILE),
    )
    run = evaluate_cached("onnxruntime", job, spec, dataset, options, workdir, timeline)
    if native and run.result.tensors_sha256 != native.report.tensors_sha256:
        raise UserError(f"the tensors differ from the native run's in {native.folder} (tensors_sha256 "
                        f"{run.result.tensors_sha256[:12]} vs {native.report.tensors_sha256[:12]}): xfverify compares "
                        "only runs fed the same tensors; use the native run's preprocessing and images")
    return OnnxPass(onnx_path, info, run)


def _export(card: ModelCard, options: OnnxOptions, native: NativeOnDisk, hw: tuple[int, int]) -> ExportOutcome:
    """The card's model exported in its framework's worker (through the export cache), with the native run's weights."""
    report = native.report
    seed = report.weights.seed if isinstance(report.weights, RandomWeights) else options.seed
    console.info(f"exporting {card.id} to ONNX in the {card.framework} worker")
    outcome: ExportOutcome = run_worker(card.framework, _export_job(options, card.id, hw, report.random_weights, seed),
                                        on_event=EventSink())
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
    spec = resolved_spec(card, options)
    console.info(f"exporting {card.id} to ONNX ahead of its run, in the {card.framework} worker")
    return run_worker(card.framework, _export_job(options, card.id, spec_hw(spec), options.random_weights, options.seed),
                      on_event=EventSink())


def _describe_file(path: str, layout: str) -> OnnxDescription:
    """A user's ONNX file checked and described in the ONNX Runtime worker (a bad file: one line)."""
    return run_worker("onnxruntime", OnnxFileJob(path=path, layout=layout))
