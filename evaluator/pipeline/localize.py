"""``xfverify onnx --localize``: the few worst-agreeing images run again, one at a time, in the native framework's
worker (every module's, layer's or symbol's output) and in ONNX Runtime's (every node's output marked as a graph
output), each tensor written to its own file under the run's work folder, and compared node by node
(:mod:`xfverify.evaluator.analysis.localize`)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from xfverify.evaluator.analysis.localize import Localization, LocalizeCost, localize, worst_rows
from xfverify.evaluator.data.normalise import normalise
from xfverify.evaluator.pipeline.evaluation import CachedRun
from xfverify.evaluator.pipeline.native_run import NativeOnDisk
from xfverify.evaluator.process.blocks import FileWeights, RandomWeights
from xfverify.evaluator.process.events import EventSink
from xfverify.evaluator.process.launcher import run_worker
from xfverify.evaluator.process.tasks import IntermediatesJob, IntermediatesResult
from xfverify.evaluator.system import console
from xfverify.models.cards import get_card
from xfverify.models.errors import UserError
from xfverify.models.preprocess import PreprocessSpec

LOCALIZE_IMAGES = 4  # images run again node by node: the worst-agreeing ones
LOCALIZE_FOLDER = "localize"  # under the run's work folder, removed as soon as it is compared


def fed_tensors(run: CachedRun, spec: PreprocessSpec, rows: list[int]) -> np.ndarray:
    """The float32 tensors fed for ``rows``, from the run's cached uint8 images (the same bytes the runs were fed:
    normalisation is a table lookup)."""
    wanted, found = set(rows), {}
    for start, images in run.cached.batches(64):
        for row in wanted & set(range(start, start + len(images))):
            found[row] = normalise(np.ascontiguousarray(images[row - start : row - start + 1]), spec)[0]
        if len(found) == len(wanted):
            break
    return np.stack([found[row] for row in rows])


def localize_run(*, onnx_path: str, spec: PreprocessSpec, run: CachedRun, image_ids: list[str],
                 native: NativeOnDisk | None, reference_onnx: str | None, workdir: Path, n_images: int,
                 atol: float, rtol: float) -> Localization:
    """Run the worst-agreeing ``n_images`` node by node in ONNX Runtime and in the reference (``reference_onnx``'s
    graph, else ``native``'s network, rebuilt with its weights) and say where the graph first departs."""
    if reference_onnx is None and native is None:
        raise UserError("--localize compares the graph with a native run (a model's export, or --against) or with "
                        "another ONNX file (--localize-against FILE.onnx): this run has neither")
    include = np.ones(len(image_ids), dtype=bool)
    include[sorted(run.skipped)] = False
    reference_outputs = native.outputs if native is not None and reference_onnx is None else None
    rows = worst_rows(reference_outputs, np.asarray(run.logits), include, n_images)
    if not rows:
        raise UserError("--localize: no image was scored, so none can be run node by node")
    folder = workdir / LOCALIZE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return _localized(onnx_path, spec, run, image_ids, native, reference_onnx, folder, rows, atol, rtol)
    finally:  # gigabytes for a large network: gone at once, so that a failure (a full disk) does not fail the run
        shutil.rmtree(folder, ignore_errors=True)


def _localized(onnx_path: str, spec: PreprocessSpec, run: CachedRun, image_ids: list[str],
               native: NativeOnDisk | None, reference_onnx: str | None, folder: Path, rows: list[int],
               atol: float, rtol: float) -> Localization:
    """The intermediates of ``rows`` captured under ``folder`` in both workers, and compared."""
    inputs = folder / "inputs.npy"
    np.save(inputs, fed_tensors(run, spec, rows))
    console.info(f"localizing: every intermediate tensor of {len(rows)} image(s), in ONNX Runtime and the reference")
    started = time.perf_counter()
    graph: IntermediatesResult = run_worker("onnxruntime", IntermediatesJob(
        onnx_path=onnx_path, inputs_path=str(inputs), out_dir=str(folder / "onnx")), workdir=folder, on_event=EventSink())
    onnx_s = time.perf_counter() - started
    if reference_onnx is not None:
        reference: IntermediatesResult = run_worker("onnxruntime", IntermediatesJob(
            onnx_path=os.path.abspath(reference_onnx), inputs_path=str(inputs), out_dir=str(folder / "reference")),
            workdir=folder / "reference-worker", on_event=EventSink())
        reference_name = f"{os.path.abspath(reference_onnx)} under ONNX Runtime {reference.framework.version}"
    else:
        reference = _native_intermediates(native, inputs, folder)
        reference_name = (f"{native.report.model} in {reference.framework.name} {reference.framework.version} "
                          f"(the native run in {native.folder})")
    reference_s = time.perf_counter() - started - onnx_s
    compared = time.perf_counter()
    result = localize(graph.tensors, reference.tensors, against="onnx" if reference_onnx else "native",
                      reference_name=reference_name, image_ids=[image_ids[r] for r in rows], atol_fraction=atol,
                      rtol=rtol)
    cost = LocalizeCost(n_images=len(rows), reference_s=round(reference_s, 3), onnx_s=round(onnx_s, 3),
                        compare_s=round(time.perf_counter() - compared, 3),
                        bytes_per_image=graph.bytes_per_image + reference.bytes_per_image,
                        bytes_written=len(rows) * (graph.bytes_per_image + reference.bytes_per_image))
    return result.model_copy(update={"cost": cost})


def _native_intermediates(native: NativeOnDisk, inputs: Path, folder: Path) -> IntermediatesResult:
    """The native run's network rebuilt in its framework's worker with the run's weights, its intermediates
    captured; weights other than the run's are refused."""
    report = native.report
    card = get_card(report.model)
    weights = report.weights
    job = IntermediatesJob(model=card.id, inputs_path=str(inputs), out_dir=str(folder / "native"),
                           random_weights=isinstance(weights, RandomWeights),
                           seed=weights.seed if isinstance(weights, RandomWeights) else 0,
                           weights_file=weights.source if isinstance(weights, FileWeights) else None)
    result: IntermediatesResult = run_worker(card.framework, job, workdir=folder / "native-worker", on_event=EventSink())
    if result.weights is None or result.weights.sha256 != weights.sha256:
        found = result.weights.sha256[:16] if result.weights else "none"
        raise UserError(f"--localize: the network rebuilt for its intermediates has weights {found}, not the native "
                        f"run's ({weights.sha256[:16]}, {native.folder}): its weights file changed since")
    return result
