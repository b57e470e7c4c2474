"""MXNet / GluonCV back-end; runs only inside an mxnet worker process."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
import numpy as np

if not hasattr(np, "bool"):  # MXNet 1.9.1 still uses the alias numpy 1.24 removed
    np.bool = bool  # type: ignore[attr-defined]

import mxnet as mx  # noqa: E402

from xfverify.converter.exported import ExportResult  # noqa: E402
from xfverify.evaluator.backends.contract import Backend, worker_tasks  # noqa: E402
from xfverify.evaluator.backends.exporting import Exporter, ExporterIdentity  # noqa: E402
from xfverify.evaluator.backends.intermediates import CapturesIntermediates, Record  # noqa: E402
from xfverify.evaluator.backends.loading import CardModelLoader, ScalesRandomOutputs  # noqa: E402
from xfverify.evaluator.backends.machine import gpu_left_unused_note  # noqa: E402
from xfverify.evaluator.backends.mxnet.decode import decode_mxnet  # noqa: E402
from xfverify.evaluator.backends.running import Device  # noqa: E402
from xfverify.evaluator.backends.steps import HostStep  # noqa: E402
from xfverify.evaluator.backends.weights import (  # noqa: E402
    checked_weights,
    exception_text,
    missing_weights_error,
)
from xfverify.evaluator.process.blocks import CheckedWeights, PlainPrecision  # noqa: E402
from xfverify.evaluator.process.events import Status, emit  # noqa: E402
from xfverify.evaluator.process.tasks import EvaluateJob, FrameworkInfo  # noqa: E402
from xfverify.evaluator.system.devices import cpu_name  # noqa: E402
from xfverify.models.cards import ModelCard  # noqa: E402
from xfverify.models.errors import UserError  # noqa: E402
from xfverify.models.precision import Precision  # noqa: E402
from xfverify.models.preprocess import PreprocessSpec  # noqa: E402

_MISSING = object()


def import_gluoncv():
    """Import GluonCV, which refuses to load when torch >= 2 is importable: hide torch while it loads."""
    if "gluoncv" in sys.modules:
        return sys.modules["gluoncv"]
    saved = sys.modules.get("torch", _MISSING)
    sys.modules["torch"] = None  # makes `import torch` raise ImportError, which GluonCV tolerates
    try:
        import gluoncv
    finally:
        if saved is _MISSING:
            del sys.modules["torch"]
        else:
            sys.modules["torch"] = saved
    return gluoncv


_NO_HOPPER = ("the mxnet-cu101 build has no code for Ada or Hopper GPUs (sm_89/sm_90) and no PTX, so on those "
              "cards MXNet runs on the CPU")


def _gpu_problem() -> str | None:
    """Why MXNet cannot compute on GPU 0, or None when it can (a small kernel is run to find out)."""
    if mx.context.num_gpus() == 0:
        return f"this MXNet build ({mx.__version__}) sees no GPU"
    try:
        (mx.nd.ones((2, 2), ctx=mx.gpu(0)) * 2).asnumpy()  # a build without this card's code fails here
    except mx.base.MXNetError as exc:
        return f"MXNet {mx.__version__} cannot run on GPU 0 ({str(exc).strip().splitlines()[0][:160]})"
    return None


def _context(device: str) -> tuple[mx.Context, list[str]]:
    """The context to run on, and notes for the report (a GPU that is there but cannot be used)."""
    if device == "cpu":
        return mx.cpu(), []
    problem = _gpu_problem()
    if problem is None:
        return mx.gpu(0), []
    if device == "cuda":
        raise UserError(f"--device cuda: {problem}; {_NO_HOPPER}: use --device cpu or auto")
    if mx.context.num_gpus() == 0:
        fix = f"it needs a CUDA build (mxnet-cu101 where CUDA 10.1 is installed); {_NO_HOPPER}"
        return mx.cpu(), gpu_left_unused_note("MXNet", problem, fix)
    note = f"MXNet ran on the CPU: {problem}; {_NO_HOPPER}"
    emit(Status(message=note))
    return mx.cpu(), [note]


def _weights_path(card: ModelCard) -> Path:
    root = Path(os.environ.get("MXNET_HOME", Path.home() / ".mxnet"))
    return root / "models" / card.weights.file


def _blocks(block):
    yield block
    for child in block._children.values():
        child = child() if callable(child) and not isinstance(child, mx.gluon.Block) else child
        yield from _blocks(child)


class MxnetBackend(CardModelLoader, Backend, ScalesRandomOutputs, Exporter, CapturesIntermediates):
    """GluonCV networks on MXNet (fp32; on the CPU unless the build has code for the GPU)."""

    name = "mxnet"
    calibration_batch = 2

    def resolve_device(self, requested: str, precision: Precision) -> Device:
        if precision != "fp32":
            raise UserError(f"--precision {precision}: the MXNet back-end runs fp32 only")
        ctx, notes = _context(requested)
        on_gpu = ctx.device_type == "gpu"
        return Device("cuda" if on_gpu else "cpu", str(ctx) if on_gpu else cpu_name(), ctx, notes)

    def seed(self, seed: int) -> None:
        mx.random.seed(seed)
        np.random.seed(seed)

    def random_network(self, card: ModelCard, device: Device):
        net = import_gluoncv().model_zoo.get_model(card.network_name, pretrained=False)
        net.initialize(mx.init.Xavier(magnitude=2.0), ctx=device.handle)
        return net

    def network_from_file(self, card: ModelCard, path: str, device: Device):
        net = import_gluoncv().model_zoo.get_model(card.network_name, pretrained=False)
        try:
            net.load_parameters(path, ctx=device.handle)
        except (AssertionError, mx.base.MXNetError, ValueError) as exc:
            raise UserError(
                f"--weights {path}: cannot be loaded into {card.network_name} ({exception_text(exc)})"
            ) from None
        return net

    def pretrained_network(self, card: ModelCard, device: Device) -> tuple[mx.gluon.HybridBlock, CheckedWeights]:
        zoo = import_gluoncv().model_zoo
        expected = _weights_path(card)
        if expected.exists():
            block = checked_weights(card, expected)  # a damaged or foreign file is named, not loaded
            return zoo.get_model(card.network_name, pretrained=True, ctx=device.handle), block
        try:  # the file fetched before the network is built: offline, that fails at once
            zoo.model_store.get_model_file(card.weights.name, root=str(expected.parent))
            net = zoo.get_model(card.network_name, pretrained=True, ctx=device.handle)
        except Exception as exc:  # download failures surface as several exception types
            raise missing_weights_error(card, expected, exc) from None
        return net, checked_weights(card, expected)

    def logits_std(self, model, batch: np.ndarray, device: Device) -> float:
        return float(model(mx.nd.array(batch, ctx=device.handle)).asnumpy().std())

    def scale_last_layer(self, model, std: float) -> None:
        dense = [block for block in _blocks(model) if isinstance(block, mx.gluon.nn.Dense)]
        if dense:
            for param in dense[-1].collect_params().values():
                param.set_data(param.data() / std)

    def place(self, model, device: Device):
        model.hybridize(static_alloc=True, static_shape=True)
        return model

    def step(self, model, spec: PreprocessSpec, device: Device, job: EvaluateJob) -> HostStep:
        ctx = device.handle
        return HostStep(lambda tensors: model(mx.nd.array(tensors, ctx=ctx)).asnumpy().astype(np.float32, copy=False))

    def describe(self) -> FrameworkInfo:
        return FrameworkInfo(name="mxnet", version=mx.__version__, libraries={"gluoncv": import_gluoncv().__version__})

    def precision(self, requested: Precision, device: Device, step: HostStep) -> PlainPrecision:
        return PlainPrecision(requested="fp32", tf32=False)

    def is_out_of_memory(self, exc: BaseException) -> bool:
        return isinstance(exc, mx.base.MXNetError) and "out of memory" in str(exc).lower()

    def exporter(self, opset: int | None) -> ExporterIdentity:
        from xfverify.converter import mxnet_export

        return ExporterIdentity(*mxnet_export.exporter_identity(), opset or mxnet_export.DEFAULT_OPSET)

    def export_onnx(self, model, path: Path, opset: int, hw: tuple[int, int], device: Device) -> ExportResult:
        from xfverify.converter.mxnet_export import export_gluon

        return export_gluon(model, path, opset, input_shape=(3, *hw), ctx=device.handle)

    def capture(self, model, image: np.ndarray, device: Device, record: Record) -> None:
        """Every output of the network's symbol (``get_internals()``, the parameters left out) as one SymbolBlock
        sharing the network's parameters, built once; MXNet's exporter names the ONNX nodes after these symbols."""
        if getattr(self, "_captured", (None,))[0] is not model:
            data = mx.sym.var("data")
            internals = model(data).get_internals()
            parameters = set(internals.list_arguments()) | set(internals.list_auxiliary_states())
            names = [name for name in internals.list_outputs()
                     if name.endswith("_output") and name.removesuffix("_output") not in parameters]
            block = mx.gluon.SymbolBlock(mx.sym.Group([internals[name] for name in names]), data,
                                         params=model.collect_params())
            operators = {node["name"]: node["op"] for node in json.loads(internals.tojson())["nodes"]}
            self._captured = (model, names, block, operators)
        _, names, block, operators = self._captured
        outputs = block(mx.nd.array(image, ctx=device.handle))
        for name, output in zip(names, outputs):
            symbol = name.removesuffix("_output")
            record(symbol, output.asnumpy(), op_type=operators.get(symbol, ""))


BACKEND = MxnetBackend
TASKS = worker_tasks(BACKEND, before=import_gluoncv, decode_mxnet=decode_mxnet)
