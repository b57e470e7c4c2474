"""The back-end contract: a framework's loader, runner and, where it has one, exporter, and the policy written
once above them.

As Polygraphy separates loaders from runners, a :class:`Backend` is a
:class:`~xfverify.evaluator.backends.loading.ModelLoader` (the network a job asks for, with its weights block,
placed on the device) and a :class:`~xfverify.evaluator.backends.running.Runner` (the device, the step the
loop feeds, the precision and runtime blocks); it may also be a
:class:`~xfverify.evaluator.backends.loading.ScalesRandomOutputs`, a
:class:`~xfverify.evaluator.backends.running.SwitchesPrecision` and an
:class:`~xfverify.evaluator.backends.exporting.Exporter`, which is what the registry
(:data:`xfverify.evaluator.process.registry.BACKENDS`) declares it can do. :func:`evaluate`,
:func:`evaluate_many` and :func:`export` are the same for all of them: warm-up, the fed loop, a batch that
does not fit as a user error, and the result.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

import numpy as np
from pydantic import BaseModel

from xfverify.evaluator.backends.exporting import Exporter
from xfverify.evaluator.backends.feeding import choose_batch_size, run_fed
from xfverify.evaluator.backends.intermediates import CapturesIntermediates, TensorWriter
from xfverify.evaluator.backends.loading import ModelLoader
from xfverify.evaluator.backends.running import Device, Runner, SwitchesPrecision
from xfverify.evaluator.process.blocks import RandomWeights, WeightsBlock
from xfverify.evaluator.process.tasks import (
    DeviceInfo,
    EvaluateJob,
    EvaluateManyJob,
    EvaluateManyResult,
    ExportJob,
    ExportOutcome,
    IntermediatesJob,
    IntermediatesResult,
    Job,
    ReferenceJob,
    ReferenceResult,
    WorkerResult,
)
from xfverify.evaluator.process.events import ModelLoaded, Status, VariantStarts, emit, milestone, milestones
from xfverify.evaluator.process.names import LOGITS_FILE, variant_folder
from xfverify.models.errors import UserError
from xfverify.models.precision import Precision


class Backend(ModelLoader, Runner):
    """One ML framework behind xfverify: it loads networks and runs them."""


def evaluate(backend: Backend, job: EvaluateJob, workdir: Path) -> WorkerResult:
    """Run a card's model over the cached images; write logits.npy; return what the report needs."""
    model, weights, device = _loaded(backend, job)
    return _fed_pass(backend, model, weights, device, job, workdir)


def evaluate_many(backend: Backend, job: EvaluateManyJob, workdir: Path) -> EvaluateManyResult:
    """Load the model once and run it over each variant's cached images in turn (variant-<i>/logits.npy), each
    at its precision: the back-end switches precision on the loaded network where a pass asks for another."""
    first = job.for_variant(0)
    model, weights, device = _loaded(backend, first, also_precisions=job.precisions()[1:])
    running, precision = model, first.precision
    results = []
    for index, part in enumerate(job.variants):
        emit(VariantStarts(index=index, total=len(job.variants), name=part.name))
        folder = workdir / variant_folder(index)
        folder.mkdir(parents=True, exist_ok=True)
        variant_job = job.for_variant(index)
        if variant_job.precision != precision:
            precision = variant_job.precision
            running = backend.with_precision(model, job.base.card(), precision, device)  # checked in _loaded
        results.append(_fed_pass(backend, running, weights, device, variant_job, folder))
    return EvaluateManyResult(results=results)


def _loaded(backend: Backend, job: EvaluateJob,
            also_precisions: Iterable[Precision] = ()) -> tuple[Any, WeightsBlock, Device]:
    """The job's network on its device, and the report's weights block; ``also_precisions`` are checked first
    (only a back-end that switches precision is given any)."""
    card = job.card()
    device = backend.resolve_device(job.device, job.precision)
    for precision in also_precisions:
        if not isinstance(backend, SwitchesPrecision):
            raise UserError(f"--precisions {precision}: the {backend.name} back-end cannot change precision between "
                            "passes of one loaded model; precision variants work for torch and Keras models")
        backend.check_precision(precision, device)
    emit(Status(message=f"building {card.id if card else job.onnx_path} on {device.type}"))
    model, weights = backend.load(job, device)
    model = backend.place(model, device)
    emit(ModelLoaded(model=card.id if card else job.onnx_path))
    milestone("model_ready")
    return model, weights, device


def _fed_pass(backend: Backend, model: Any, weights: WeightsBlock, device: Device, job: EvaluateJob,
              workdir: Path) -> WorkerResult:
    """One pass of a loaded network over the job's cached images, into ``workdir``/logits.npy."""
    spec = job.preprocess
    batch_size, batch_size_source = choose_batch_size(job.batch_size, device.type)
    job = job.model_copy(update={"batch_size": batch_size})
    step = backend.step(model, spec, device, job)
    loop, timing = run_fed(job, spec, step, workdir, device.name, backend.is_out_of_memory)
    return WorkerResult(
        framework=backend.describe(),
        device=DeviceInfo(type=device.type, name=device.name),
        precision=backend.precision(job.precision, device, step),
        weights=weights,
        timing=timing,
        tensors_sha256=loop.tensors_sha256,
        tensor_proof=loop.tensor_proof,
        batch_size=batch_size,
        batch_size_source=batch_size_source,
        logits_path=str(workdir / LOGITS_FILE),
        n_images=loop.n_images,
        milestones=milestones(),
        notes=device.notes,
        runtime=backend.runtime(model, step),
    )


def export(backend: Backend, job: ExportJob) -> ExportOutcome:
    """Build the card's network exactly as ``evaluate`` does (seeded random weights scaled the same way),
    export it through the export cache, keyed by (card, weights, exporter and version, opset)."""
    from xfverify.converter.cache import cached_export

    if not isinstance(backend, Exporter):
        raise UserError(f"the {backend.name} back-end exports no ONNX")
    card = job.card()
    device = backend.resolve_device("cpu", "fp32")
    emit(Status(message=f"building {card.id} for export"))
    model, weights = backend.load(job, device)
    exporter, version, opset = backend.exporter(job.opset)
    weights_key = (f"random-seed-{weights.seed}{getattr(backend, 'random_scheme', '')}"
                   if isinstance(weights, RandomWeights) else weights.sha256)
    emit(Status(message=f"exporting {card.id} with {exporter} (opset {opset})"))
    result, from_cache = cached_export(
        Path(job.cache_root), card.id, weights_key, exporter, version, opset,
        lambda path: backend.export_onnx(model, path, opset, tuple(job.hw), device),
    )
    return ExportOutcome(framework=backend.describe(), weights=weights, export=result,
                         from_cache=from_cache)


def capture_intermediates(backend: Backend, job: IntermediatesJob) -> IntermediatesResult:
    """Run the job's network (a card's, or an .onnx file's) on the CPU over the job's fed tensors one image at a
    time, writing every intermediate tensor to its own file as it is computed."""
    if not isinstance(backend, CapturesIntermediates):
        raise UserError(f"the {backend.name} back-end cannot capture intermediate tensors (--localize)")
    device = backend.resolve_device("cpu", "fp32")
    weights = None
    if job.model:
        emit(Status(message=f"building {job.model} to capture its intermediate tensors"))
        model, weights = backend.load(job, device)
        model = backend.place(model, device)
    else:
        model = backend.load_for_capture(job, device)
    inputs = np.load(job.inputs_path, mmap_mode="r")
    writer = TensorWriter(Path(job.out_dir), len(inputs))
    for index in range(len(inputs)):
        backend.capture(model, np.ascontiguousarray(inputs[index : index + 1]), device, writer.recorder(index))
    tensors = writer.close()
    return IntermediatesResult(framework=backend.describe(), weights=weights, tensors=tensors, n_images=len(inputs),
                               seconds=round(writer.seconds, 3), bytes_per_image=writer.bytes_per_image)


def run_reference(job: ReferenceJob, workdir: Path) -> ReferenceResult:
    """A preset's reference pipeline (:mod:`xfverify.evaluator.references`) on the job's files, in its own layout."""
    from xfverify.evaluator.references import CATALOGUE_REFERENCES, REFERENCES

    if job.catalogue:
        source, _, name = job.catalogue.partition("/")
        reference = CATALOGUE_REFERENCES.get(source)
        if reference is None:
            raise UserError(f"no reference pipeline is known for the catalogue's source {source!r}")
        module = importlib.import_module(f"xfverify.evaluator.references.{reference.module}")
        batch = module.catalogue_pipeline(name)(job.paths)
    else:
        reference = REFERENCES.get(job.preset)
        if reference is None:
            raise UserError(f"no reference pipeline is known for preset {job.preset!r}")
        module = importlib.import_module(f"xfverify.evaluator.references.{reference.module}")
        batch = module.PIPELINES[job.preset](job.paths)
    out = workdir / "reference.npy"
    np.save(out, np.asarray(batch, dtype=np.float32))
    return ReferenceResult(path=str(out), layout=module.LAYOUT, framework=module.describe())


Handler = Callable[[Job, Path], BaseModel]  # a task's job (validated by the worker) and work folder -> its result


def worker_tasks(backend: type[Backend], before: Callable[[], Any] = lambda: None,
                 **others: Handler) -> dict[str, Handler]:
    """The tasks a back-end module offers its worker, by their names in the task registry (process/tasks.py):
    ``evaluate``, ``evaluate_many``, ``export``, ``reference_preprocess`` and ``intermediates`` of ``backend``,
    and ``others`` (a worker's own tasks: a decoder, a file's description). ``before`` runs first in each of
    ``backend``'s (GluonCV must be made importable before anything imports it)."""

    def prepared(run: Callable[[Any, Path], BaseModel]) -> Handler:
        def handler(job: Job, workdir: Path) -> BaseModel:
            before()
            return run(job, workdir)

        return handler

    handlers: dict[str, Handler] = {
        "evaluate": prepared(lambda job, workdir: evaluate(backend(), job, workdir)),
        "evaluate_many": prepared(lambda job, workdir: evaluate_many(backend(), job, workdir)),
        "export": prepared(lambda job, workdir: export(backend(), job)),
        "reference_preprocess": prepared(lambda job, workdir: run_reference(job, workdir)),
        "intermediates": prepared(lambda job, workdir: capture_intermediates(backend(), job)),
    }
    return {**handlers, **others}
