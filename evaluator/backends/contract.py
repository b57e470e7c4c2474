"""The back-end contract: what each framework implements once, and the policy written once above it.

In the spirit of Polygraphy's runners, a :class:`Backend` knows how its framework resolves a device,
builds a network (random, from a file, or with the card's pretrained weights), puts it on the device
and feeds it a batch. :func:`evaluate` is the same for all of them: seeding, random-weight scaling, the
weights block, warm-up, the fed loop, a batch that does not fit as a user error, and the result.
ONNX Runtime is one more implementation of the same contract.
"""

from __future__ import annotations

import importlib
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, NamedTuple

import numpy as np

from xfverify.evaluator.backends.feeding import choose_batch_size, run_fed
from xfverify.converter.description import sha256_file
from xfverify.evaluator.backends.weights import calibration_batch
from xfverify.evaluator.process.tasks import (
    DeviceInfo,
    EvaluateJob,
    EvaluateManyJob,
    EvaluateManyResult,
    ExportJob,
    ExportOutcome,
    FrameworkInfo,
    ReferenceJob,
    ReferenceResult,
    RuntimeInfo,
    WorkerResult,
)
from xfverify.evaluator.process.events import emit, milestone, milestones
from xfverify.models.cards import ModelCard
from xfverify.models.errors import UserError
from xfverify.models.preprocess import PreprocessSpec


@dataclass
class Device:
    """Where a back-end computes: ``type`` cpu or cuda, a name for reports, the framework's own handle."""

    type: str
    name: str
    handle: Any = None
    notes: list[str] = field(default_factory=list)


class HostStep:
    """A step fed CPU-normalised float32 batches: ``infer(tensors) -> logits`` timed on the host."""

    feed = "host"

    def __init__(self, infer: Callable[[np.ndarray], np.ndarray]):
        self.infer = infer

    def __call__(self, u8: np.ndarray | None, tensors: np.ndarray):
        started = time.perf_counter()
        out = self.infer(tensors)
        return out, (time.perf_counter() - started) * 1000.0


class Backend(ABC):
    """One ML framework behind xfverify."""

    name: ClassVar[str]
    calibration_batch: ClassVar[int] = 0  # images of the batch that scales random outputs; 0: not scaled

    @abstractmethod
    def resolve_device(self, requested: str, precision: str) -> Device:
        """Probe the device (a small kernel where a build may lack the card's code) and set up precision."""

    @abstractmethod
    def seed(self, seed: int) -> None:
        """Seed the framework's random generators (random weights are reproducible)."""

    @abstractmethod
    def random_network(self, card: ModelCard, device: Device) -> Any:
        """The card's network with seeded random weights, ready for inference."""

    @abstractmethod
    def network_from_file(self, card: ModelCard, path: str, device: Device) -> Any:
        """The card's network with the weights in a user's file (a user error when they do not fit)."""

    @abstractmethod
    def pretrained_network(self, card: ModelCard, device: Device) -> tuple[Any, dict[str, Any]]:
        """The card's network with its own weights, and the report's weights block (checksum checked)."""

    def logits_std(self, model: Any, batch: np.ndarray, device: Device) -> float:
        """The standard deviation of the logits of a float32 batch (used to scale random outputs)."""
        raise NotImplementedError

    def scale_last_layer(self, model: Any, std: float) -> None:
        """Divide the classifier's weights and bias by ``std``."""
        raise NotImplementedError

    @abstractmethod
    def place(self, model: Any, device: Device) -> Any:
        """The model on its device, in the form it runs fastest (channels-last, hybridized, ...)."""

    @abstractmethod
    def step(self, model: Any, spec: PreprocessSpec, device: Device, job: EvaluateJob):
        """The callable the loop feeds: a :class:`HostStep`, or a device-fed step with warm_up and stage."""

    @abstractmethod
    def describe(self) -> FrameworkInfo:
        """Framework name, version and the libraries that matter."""

    @abstractmethod
    def precision(self, precision: str, device: Device, step) -> dict[str, Any]:
        """The report's precision block: what was asked, and what the framework actually did."""

    @abstractmethod
    def is_out_of_memory(self, exc: BaseException) -> bool:
        """Whether an exception means the batch did not fit the device."""

    def check_precision(self, precision: str, device: Device) -> None:
        """Refuse, as a user error naming what works, a precision that a pass after the first cannot switch to
        (``diagnose --precisions``; called before the model is loaded)."""
        raise UserError(f"--precisions {precision}: the {self.name} back-end cannot change precision between passes "
                        "of one loaded model; precision variants work for torch and Keras models")

    def with_precision(self, model: Any, card: ModelCard | None, precision: str, device: Device) -> Any:
        """The loaded network set up to run its next passes at ``precision`` (the same weights)."""
        raise NotImplementedError

    def configure(self, job: EvaluateJob) -> None:
        """Take what a back-end needs from the job beyond the card (ONNX Runtime: the .onnx file)."""

    def runtime(self, step) -> RuntimeInfo | None:
        """The report's runtime block (providers and the options that change numbers), where there is one."""
        return None

    def exporter(self, opset: int | None) -> tuple[str, str, int]:
        """The ONNX exporter's name and the versions that decide its output, and the opset (None: its default)."""
        raise UserError(f"the {self.name} back-end exports no ONNX")

    def export_onnx(self, model: Any, path: Path, opset: int, hw: tuple[int, int], device: Device):
        """Export a network built by this back-end to ``path`` with the converter (an ExportResult)."""
        raise UserError(f"the {self.name} back-end exports no ONNX")


def load_model(backend: Backend, card: ModelCard | None, job: EvaluateJob | ExportJob,
               device: Device) -> tuple[Any, dict[str, Any]]:
    """The network the job asks for (random, a user's file, or the card's weights) and the report's weights block."""
    backend.seed(job.seed)
    if job.random_weights:
        model = backend.random_network(card, device)
        if backend.calibration_batch:
            scale_random_outputs(backend, model, job.seed, device)
        return model, {"source": "random", "sha256": "random", "seed": job.seed}
    if job.weights_file:
        if not os.path.isfile(job.weights_file):
            raise UserError(f"--weights {job.weights_file}: no such file")
        model = backend.network_from_file(card, job.weights_file, device)
        return model, {"source": str(job.weights_file), "sha256": sha256_file(job.weights_file)}
    return backend.pretrained_network(card, device)


def scale_random_outputs(backend: Backend, model: Any, seed: int, device: Device) -> None:
    """Make a random network's logits well-scaled (std ~1), so their ranks are not near-ties of huge values."""
    std = backend.logits_std(model, calibration_batch(seed, backend.calibration_batch, "NCHW"), device)
    if std > 0 and np.isfinite(std):
        backend.scale_last_layer(model, std)


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
        emit("variant", index=index, total=len(job.variants), name=part.name)
        folder = workdir / f"variant-{index}"
        folder.mkdir(parents=True, exist_ok=True)
        variant_job = job.for_variant(index)
        if variant_job.precision != precision:
            precision = variant_job.precision
            running = backend.with_precision(model, job.base.card(), precision, device)
        results.append(_fed_pass(backend, running, weights, device, variant_job, folder))
    return EvaluateManyResult(results=results)


def _loaded(backend: Backend, job: EvaluateJob,
            also_precisions: Iterable[str] = ()) -> tuple[Any, dict[str, Any], Device]:
    """The job's network on its device, and the report's weights block; ``also_precisions`` are checked first."""
    card = job.card()
    backend.configure(job)
    device = backend.resolve_device(job.device, job.precision)
    for precision in also_precisions:
        backend.check_precision(precision, device)
    emit("status", message=f"building {card.id if card else job.onnx_path} on {device.type}")
    model, weights = load_model(backend, card, job, device)
    model = backend.place(model, device)
    milestone("model_ready")
    return model, weights, device


def _fed_pass(backend: Backend, model: Any, weights: dict[str, Any], device: Device, job: EvaluateJob,
              workdir: Path) -> WorkerResult:
    """One pass of a loaded network over the job's cached images, into ``workdir``/logits.npy."""
    spec = job.spec()
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
        logits_path=str(workdir / "logits.npy"),
        n_images=loop.n_images,
        milestones=milestones(),
        notes=device.notes,
        runtime=backend.runtime(step),
    )


def export(backend: Backend, job: ExportJob) -> ExportOutcome:
    """Build the card's network exactly as ``evaluate`` does (seeded random weights scaled the same way),
    export it through the export cache, keyed by (card, weights, exporter and version, opset)."""
    from xfverify.converter.cache import cached_export

    card = job.card()
    device = backend.resolve_device("cpu", "fp32")
    emit("status", message=f"building {card.id} for export")
    model, weights = load_model(backend, card, job, device)
    exporter, version, opset = backend.exporter(job.opset)
    weights_key = f"random-seed-{job.seed}" if job.random_weights else weights["sha256"]
    emit("status", message=f"exporting {card.id} with {exporter} (opset {opset})")
    result, from_cache = cached_export(
        Path(job.cache_root), card.id, weights_key, exporter, version, opset,
        lambda path: backend.export_onnx(model, path, opset, tuple(job.hw), device),
    )
    return ExportOutcome(framework=backend.describe(), weights=weights, export=result,
                         from_cache=from_cache)


def run_reference(job: ReferenceJob, workdir: Path) -> ReferenceResult:
    """A preset's reference pipeline (:mod:`xfverify.evaluator.references`) on the job's files, in its own layout."""
    from xfverify.evaluator.references import REFERENCES

    reference = REFERENCES.get(job.preset)
    if reference is None:
        raise UserError(f"no reference pipeline is known for preset {job.preset!r}")
    module = importlib.import_module(f"xfverify.evaluator.references.{reference.module}")
    batch = module.PIPELINES[job.preset](job.paths)
    out = workdir / "reference.npy"
    np.save(out, np.asarray(batch, dtype=np.float32))
    return ReferenceResult(path=str(out), layout=module.LAYOUT, framework=module.describe())


class WorkerTasks(NamedTuple):
    evaluate: Callable[[dict[str, Any], Path], WorkerResult]
    reference_preprocess: Callable[[dict[str, Any], Path], ReferenceResult]
    export: Callable[[dict[str, Any], Path], ExportOutcome]
    evaluate_many: Callable[[dict[str, Any], Path], EvaluateManyResult]


def worker_tasks(backend: type[Backend], before: Callable[[], Any] = lambda: None) -> WorkerTasks:
    """The tasks a back-end module offers its worker: ``evaluate``, ``reference_preprocess``, ``export`` and
    ``evaluate_many``.

    ``before`` runs first in each (GluonCV must be made importable before anything imports it).
    """

    def evaluate_task(job: dict[str, Any], workdir: Path) -> WorkerResult:
        before()
        return evaluate(backend(), EvaluateJob.model_validate(job), workdir)

    def reference_task(job: dict[str, Any], workdir: Path) -> ReferenceResult:
        before()
        return run_reference(ReferenceJob.model_validate(job), workdir)

    def export_task(job: dict[str, Any], workdir: Path) -> ExportOutcome:
        before()
        return export(backend(), ExportJob.model_validate(job))

    def evaluate_many_task(job: dict[str, Any], workdir: Path) -> EvaluateManyResult:
        before()
        return evaluate_many(backend(), EvaluateManyJob.model_validate(job), workdir)

    return WorkerTasks(evaluate_task, reference_task, export_task, evaluate_many_task)
