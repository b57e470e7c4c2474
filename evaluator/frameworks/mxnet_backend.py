"""MXNet / GluonCV back-end; runs only inside an mxnet worker process."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if not hasattr(np, "bool"):  # MXNet 1.9.1 still uses the alias numpy 1.24 removed
    np.bool = bool  # type: ignore[attr-defined]

import mxnet as mx  # noqa: E402

from xfverify.evaluator.frameworks import common  # noqa: E402
from xfverify.evaluator.frameworks.common import (  # noqa: E402
    calibration_batch,
    checked_weights,
    cpu_name,
    evaluation_result,
    exception_text,
    gpu_left_unused_note,
    load_card_and_spec,
    missing_weights_error,
    run_fed,
    sha256_file,
)
from xfverify.evaluator.worker import emit, milestone  # noqa: E402
from xfverify.models.cards import ModelCard  # noqa: E402
from xfverify.models.errors import UserError  # noqa: E402

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


def reference_preprocess(job: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """The preset's reference pipeline, once GluonCV can be imported."""
    import_gluoncv()
    return common.reference_preprocess(job, workdir)


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
    emit("status", message=note)
    return mx.cpu(), [note]


def _weights_path(card: ModelCard) -> Path:
    root = Path(os.environ.get("MXNET_HOME", Path.home() / ".mxnet"))
    return root / "models" / card.weights.file


def build_model(card: ModelCard, weights_file: str | None, random_weights: bool, seed: int, ctx: mx.Context):
    gluoncv = import_gluoncv()
    mx.random.seed(seed)
    np.random.seed(seed)
    name = card.weights.name
    if random_weights:
        net = gluoncv.model_zoo.get_model(name, pretrained=False)
        net.initialize(mx.init.Xavier(magnitude=2.0), ctx=ctx)
        _scale_random(net, seed, ctx)
        return net, {"source": "random", "sha256": "random", "seed": seed}
    if weights_file:
        if not os.path.isfile(weights_file):
            raise UserError(f"--weights {weights_file}: no such file")
        net = gluoncv.model_zoo.get_model(name, pretrained=False)
        try:
            net.load_parameters(weights_file, ctx=ctx)
        except (AssertionError, mx.base.MXNetError, ValueError) as exc:
            raise UserError(f"--weights {weights_file}: cannot be loaded into {name} ({exception_text(exc)})") from None
        return net, {"source": weights_file, "sha256": sha256_file(weights_file)}
    expected = _weights_path(card)
    if expected.exists():
        block = checked_weights(card, expected)  # a damaged or foreign file is named, not loaded
        return gluoncv.model_zoo.get_model(name, pretrained=True, ctx=ctx), block
    try:
        net = gluoncv.model_zoo.get_model(name, pretrained=True, ctx=ctx)
    except Exception as exc:  # download failures surface as several exception types
        raise missing_weights_error(card, expected, exc) from None
    return net, checked_weights(card, expected)


def _scale_random(net, seed: int, ctx) -> None:
    """Scale the last dense layer so a random model's logits have std ~1."""
    dense = [block for block in _blocks(net) if isinstance(block, mx.gluon.nn.Dense)]
    logits = net(mx.nd.array(calibration_batch(seed, 2, "NCHW"), ctx=ctx)).asnumpy()
    std = float(logits.std())
    if dense and std > 0 and np.isfinite(std):
        for param in dense[-1].collect_params().values():
            param.set_data(param.data() / std)


def _blocks(block):
    yield block
    for child in block._children.values():
        child = child() if callable(child) and not isinstance(child, mx.gluon.Block) else child
        yield from _blocks(child)


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, mx.base.MXNetError) and "out of memory" in str(exc).lower()


def evaluate(job: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run a GluonCV model over cached images; write logits.npy; report timing."""
    card, spec = load_card_and_spec(job)
    if job["precision"] != "fp32":
        raise UserError(f"--precision {job['precision']}: the MXNet back-end runs fp32 only")
    ctx, notes = _context(job["device"])
    emit("status", message=f"building {card.id} on {ctx}")
    net, weights = build_model(card, job.get("weights_file"), job.get("random_weights", False), job.get("seed", 0), ctx)
    milestone("model_ready")
    net.hybridize(static_alloc=True, static_shape=True)

    def step(u8: np.ndarray, tensors: np.ndarray):
        started = time.perf_counter()
        out = net(mx.nd.array(tensors, ctx=ctx)).asnumpy().astype(np.float32, copy=False)
        return out, (time.perf_counter() - started) * 1000.0

    result, timing = run_fed(job, spec, step, workdir, str(ctx), _is_out_of_memory)
    gluoncv = import_gluoncv()
    on_gpu = ctx.device_type == "gpu"
    return evaluation_result(
        {"name": "mxnet", "version": mx.__version__, "libraries": {"gluoncv": gluoncv.__version__}},
        {"type": "cuda" if on_gpu else "cpu", "name": str(ctx) if on_gpu else cpu_name()},
        {"requested": "fp32", "tf32": False},
        weights,
        result,
        workdir,
        timing,
        notes=notes,
    )
