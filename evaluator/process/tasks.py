"""What crosses the process boundary, typed: the jobs the parent writes and the result a worker returns.

Framework-free (both sides import it); JSON files carry them (``model_dump`` / ``model_validate``),
and an unknown key on either side is an error, not a silently ignored option.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, NamedTuple, Optional, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from xfverify.evaluator.process.names import TensorProof
from xfverify.converter.exported import ExportResult, OnnxDescription
from xfverify.converter.variant_spec import VariantFile, VariantSpec
from xfverify.evaluator.process.blocks import PrecisionBlock, WeightsBlock
from xfverify.models.cards import ModelCard, get_card
from xfverify.models.precision import Precision
from xfverify.models.preprocess import PreprocessSpec



class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


ResultType = TypeVar("ResultType", bound=BaseModel)


class VariantMade(_Strict):
    """What a make_variant task returns: the cached file's record, its path, whether it came from the cache."""

    framework: FrameworkInfo
    variant: VariantFile
    path: str
    from_cache: bool


class CapturedTensor(_Strict):
    """One intermediate tensor, written for every image of an :class:`IntermediatesJob` (``file``: (n, *shape)).

    For a network: ``name`` is its framework's name for the layer (torch's module path, the Keras layer's name,
    the MXNet symbol's output), ``op_type`` its class or operator. For an ONNX graph: ``name`` is the tensor's,
    ``node``/``op_type``/``attributes`` its producer's, ``inputs`` the producer's data inputs, and ``scopes`` the
    framework names the exporter left on the node (innermost last)."""

    name: str
    file: str
    shape: list[int]
    order: int = Field(description="where it is computed: hook order, layer order or topological order")
    node: str = ""
    op_type: str = ""
    attributes: dict[str, str] = {}
    inputs: list[str] = []
    scopes: list[str] = []
    composite: bool = Field(default=False, description="a network's module that has children: its output is one "
                            "of theirs")


class DataPart(_Strict):
    """The part of an :class:`EvaluateJob` that comes once the parent has surveyed the cache."""

    shard_paths: list[str]
    wait_for_shards: bool = Field(description="shards, or their fed-tensor digests, are still being made")
    digests_stored: bool = Field(default=True, description="the parent stores the fed-tensor digests; else a "
                                 "device-fed worker computes those it lacks")


class ReferenceResult(_Strict):
    path: str
    layout: Literal["NCHW", "NHWC"]
    framework: str


class FrameworkInfo(_Strict):
    name: str
    version: str
    libraries: dict[str, str] = {}


class DeviceInfo(_Strict):
    type: Literal["cpu", "cuda"]
    name: str


class LoopTiming(_Strict):
    """Where a worker's time went: the loop over the data, and the warm-up before it."""

    wall_s: float
    data_wait_s: float
    compute_s: float
    images_per_s: Optional[float]
    steady_images_per_s: Optional[float]
    batch_ms_mean: Optional[float]
    batch_ms_std: Optional[float]
    n_batches: int
    first_batch_ms: Optional[float]
    warmup_s: float


class RuntimeInfo(_Strict):
    """An ONNX runtime: the providers asked for and those that ran, and the options that change numbers."""

    name: str
    version: str
    requested_providers: list[str]
    providers: list[str]
    options: dict[str, Any]


class ExportOutcome(_Strict):
    """What an export task returns: the converter's ExportResult, the weights block, cache use."""

    framework: FrameworkInfo
    weights: WeightsBlock
    export: ExportResult
    from_cache: bool

    @property
    def onnx_path(self) -> str:
        return str(self.export.path)

    @property
    def output_kind(self) -> str:
        return self.export.output_kind


class IntermediatesResult(_Strict):
    """What an intermediates task returns: each tensor it wrote, in the order it was computed, and the cost."""

    framework: FrameworkInfo
    weights: Optional[WeightsBlock] = Field(default=None, description="a card's network's weights (None: an ONNX file)")
    tensors: list[CapturedTensor]
    n_images: int
    seconds: float
    bytes_per_image: int = Field(description="bytes of intermediates one image produces (written one tensor at a time)")


class WorkerResult(_Strict):
    """What an evaluate task returns to the parent."""

    framework: FrameworkInfo
    device: DeviceInfo
    precision: PrecisionBlock
    weights: WeightsBlock
    timing: LoopTiming
    tensors_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    tensor_proof: TensorProof
    batch_size: int
    batch_size_source: str = Field(description='"--batch-size", or "default for <device type>"')
    logits_path: str
    n_images: int
    milestones: dict[str, float]
    notes: list[str]
    runtime: Optional[RuntimeInfo] = None


class EvaluateManyResult(_Strict):
    """What an evaluate_many task returns: one result per variant, in the job's order."""

    results: list[WorkerResult]


class DecodeDone(_Strict):
    """What a worker's decode task returns (each chunk was reported by a ``decoded`` event as it finished)."""

    chunks: int
    device: str


class DecodeChunk(_Strict):
    """Files to decode into rows ``row..`` of the shard being written at ``tmp_path``."""

    tmp_path: str
    row: int
    paths: list[str]


class VariantPart(_Strict):
    """One pass of an :class:`EvaluateManyJob`: its spec, image size and data file, and the precision it runs at."""

    name: str
    preprocess: PreprocessSpec
    hw: tuple[int, int]
    data_file: str
    precision: Optional[Precision] = Field(default=None, description="None: the base job's")


class Job(_Strict, Generic[ResultType]):
    """A worker task's job; ``ResultType`` is the result its task returns (``run_worker(job)`` is typed by it)."""


class EvaluateJob(Job[WorkerResult]):
    """Run one model over the cached images and write its logits (``model`` is None for a user's ONNX file)."""

    model: Optional[str]
    preprocess: PreprocessSpec
    device: Literal["auto", "cpu", "cuda"]
    precision: Precision
    batch_size: Optional[int] = Field(default=None, gt=0, description="None: the worker's default for its device")
    n_images: int = Field(ge=0)
    hw: tuple[int, int]
    data_file: Optional[str] = Field(default=None, description="where the shard paths appear once surveyed")
    shard_paths: Optional[list[str]] = None
    wait_for_shards: bool = False
    digests_stored: bool = True
    weights_file: Optional[str] = None
    random_weights: bool = False
    cuda_graphs: bool = False
    seed: int = 0
    onnx_path: Optional[str] = Field(default=None, description="the ONNX Runtime back-end's network")

    def card(self) -> ModelCard | None:
        return get_card(self.model) if self.model else None


class EvaluateManyJob(Job[EvaluateManyResult]):
    """Load ``base``'s model once and run it over several preprocessings' cached images (and precisions), in order."""

    base: EvaluateJob
    variants: list[VariantPart] = Field(min_length=1)

    def for_variant(self, index: int) -> EvaluateJob:
        part = self.variants[index]
        return self.base.model_copy(update={"preprocess": part.preprocess, "hw": part.hw, "data_file": part.data_file,
                                            "precision": part.precision or self.base.precision})

    def precisions(self) -> list[str]:
        """Every precision a pass runs at, the base's first."""
        return list(dict.fromkeys([self.base.precision, *(p.precision for p in self.variants if p.precision)]))


class ExportJob(Job[ExportOutcome]):
    """Build a card's model as ``evaluate`` does and export it to ONNX through the export cache."""

    model: str
    hw: tuple[int, int]
    cache_root: str = Field(description="the export cache's folder")
    opset: Optional[int] = Field(default=None, description="None: the exporter's default")
    weights_file: Optional[str] = None
    random_weights: bool = False
    seed: int = 0

    def card(self) -> ModelCard:
        return get_card(self.model)


class OnnxFileJob(Job[OnnxDescription]):
    """Check and describe a user's ONNX file (in the ONNX Runtime worker: the parent imports no onnx)."""

    path: str
    layout: Literal["NCHW", "NHWC"]


class IntermediatesJob(Job[IntermediatesResult]):
    """Run a network on a few fed tensors and write every intermediate tensor it computes, one .npy per tensor
    (``model``: a card's network, built as ``evaluate`` builds it; else ``onnx_path`` under ONNX Runtime with every
    node output marked as a graph output)."""

    model: Optional[str] = None
    onnx_path: Optional[str] = None
    inputs_path: str = Field(description="a float32 .npy of the fed tensors, one row per image, in the spec's layout")
    out_dir: str = Field(description="the folder the tensors are written into")
    weights_file: Optional[str] = None
    random_weights: bool = False
    seed: int = 0

    def card(self) -> ModelCard | None:
        return get_card(self.model) if self.model else None


class ReferenceJob(Job[ReferenceResult]):
    """Run a reference pipeline (:mod:`xfverify.evaluator.references`) on some image files: a preset's, or (with
    ``catalogue``, a catalogue id ``source/name``) the source's own evaluation transform for that entry."""

    preset: str = ""
    paths: list[str]
    catalogue: str = ""


class DecodeJob(Job[DecodeDone]):
    """The decode pool's work for a decoder that runs in a framework's worker (nvjpeg): a spec and its chunks."""

    spec: PreprocessSpec
    chunks: list[DecodeChunk]


class MakeVariantJob(Job[VariantMade]):
    """Make (or find in the variant cache) a deployment variant of an ONNX file, in the ONNX Runtime worker, and
    check that ONNX Runtime opens it on ``providers``."""

    parent_path: str
    spec: VariantSpec
    cache_root: str
    providers: list[str]
    calibration_path: Optional[str] = Field(default=None, description="int8: a float32 .npy of calibration tensors")
    calibration_sha256: Optional[str] = None


class WindowDecodeJob(DecodeJob):
    """The decode pool's work for a spec whose crop window TensorFlow's ``decode_and_crop_jpeg`` decodes."""


class MxnetDecodeJob(DecodeJob):
    """The decode pool's work for a spec whose files MXNet's own decoder (``mx.image.imdecode``) decodes."""


# The job a framework's worker takes the decode pool's chunks in, by spec.decode_worker.
DECODE_JOBS: dict[str, type[DecodeJob]] = {"torch": DecodeJob, "tensorflow": WindowDecodeJob, "mxnet": MxnetDecodeJob}


class Task(NamedTuple):
    """A worker task: the name the back-end module offers it under, its job type and its result type."""

    name: str
    job: type[BaseModel]
    result: type[BaseModel]


TASKS: dict[type[BaseModel], Task] = {task.job: task for task in (
    Task("evaluate", EvaluateJob, WorkerResult),
    Task("evaluate_many", EvaluateManyJob, EvaluateManyResult),
    Task("export", ExportJob, ExportOutcome),
    Task("reference_preprocess", ReferenceJob, ReferenceResult),
    Task("describe_onnx", OnnxFileJob, OnnxDescription),
    Task("decode_nvjpeg", DecodeJob, DecodeDone),
    Task("intermediates", IntermediatesJob, IntermediatesResult),
    Task("decode_tensorflow_window", WindowDecodeJob, DecodeDone),
    Task("decode_mxnet", MxnetDecodeJob, DecodeDone),
    Task("make_variant", MakeVariantJob, VariantMade),
)}
TASKS_BY_NAME: dict[str, Task] = {task.name: task for task in TASKS.values()}
