"""TensorFlow / Keras applications back-end; runs only inside a tensorflow worker process."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402

from xfverify.evaluator.frameworks.common import (  # noqa: E402
    checked_weights,
    cpu_name,
    evaluation_result,
    exception_text,
    gpu_left_unused_note,
    load_card_and_spec,
    missing_weights_error,
    reference_preprocess,  # noqa: F401  (a worker task)
    run_fed,
    sha256_file,
)
from xfverify.evaluator.worker import emit, milestone  # noqa: E402
from xfverify.models.cards import ModelCard  # noqa: E402
from xfverify.models.errors import UserError  # noqa: E402

# --- evaluation ----------------------------------------------------------------------------


def _configure(device: str, precision: str) -> tuple[str, str, list[str]]:
    """Device type and name to run on, and notes for the report; sets TF32 and the mixed-precision policy."""
    gpus = tf.config.list_physical_devices("GPU")
    notes: list[str] = []
    if not gpus and device != "cpu":
        why = f"TensorFlow {tf.__version__} sees no GPU"
        fix = (f"pip install 'tensorflow[and-cuda]=={tf.__version__}' brings the CUDA libraries it loads"
               if tf.test.is_built_with_cuda() else "this TensorFlow build has no CUDA support")
        if device == "cuda":
            raise UserError(f"--device cuda: {why}: {fix}; or use --device cpu or auto")
        notes = gpu_left_unused_note("TensorFlow", why, fix)
    if device == "cpu" and gpus:
        tf.config.set_visible_devices([], "GPU")
        gpus = []
    for gpu in gpus:  # take GPU memory as needed, not all of it at start-up
        tf.config.experimental.set_memory_growth(gpu, True)
    if precision == "tf32" and not gpus:
        raise UserError("--precision tf32 applies to CUDA GPUs only; use fp32 on the CPU")
    tf.config.experimental.enable_tensor_float_32_execution(precision == "tf32")
    if precision in ("bf16", "fp16"):
        keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bf16" else "mixed_float16")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return "cuda", details.get("device_name", "GPU"), notes
    return "cpu", cpu_name(), notes


def _weights_path(card: ModelCard) -> Path:
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    return keras_home / "models" / card.weights.file


def build_model(card: ModelCard, weights_file: str | None, random_weights: bool, seed: int):
    builder = getattr(keras.applications, card.network_name, None)
    if builder is None:
        raise UserError(f"keras.applications has no {card.network_name} in keras {keras.__version__}")
    keras.utils.set_random_seed(seed)
    if random_weights:
        return builder(weights=None), {"source": "random", "sha256": "random", "seed": seed}
    if weights_file:
        if not os.path.isfile(weights_file):
            raise UserError(f"--weights {weights_file}: no such file")
        model = builder(weights=None)
        try:
            model.load_weights(weights_file)
        except (ValueError, OSError) as exc:
            raise UserError(f"--weights {weights_file}: cannot be loaded into {card.name} ({exception_text(exc)})") from None
        return model, {"source": weights_file, "sha256": sha256_file(weights_file)}
    expected = _weights_path(card)
    if expected.exists():
        block = checked_weights(card, expected)  # a damaged or foreign file is named, not loaded
        return builder(weights="imagenet"), block
    try:
        model = builder(weights="imagenet")
    except Exception as exc:  # keras wraps download failures in plain Exception
        raise missing_weights_error(card, expected, exc) from None
    return model, checked_weights(card, expected)


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, tf.errors.ResourceExhaustedError)


def evaluate(job: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run a Keras application over cached images; write logits.npy (softmax outputs); report timing."""
    card, spec = load_card_and_spec(job)
    device_type, device_name, notes = _configure(job["device"], job["precision"])
    emit("status", message=f"building {card.id} on {device_type}")
    model, weights = build_model(card, job.get("weights_file"), job.get("random_weights", False), job.get("seed", 0))
    milestone("model_ready")
    infer = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def step(u8: np.ndarray, tensors: np.ndarray):
        started = time.perf_counter()
        out = infer(tf.constant(tensors)).numpy().astype(np.float32, copy=False)
        return out, (time.perf_counter() - started) * 1000.0

    result, timing = run_fed(job, spec, step, workdir, device_name, _is_out_of_memory)
    return evaluation_result(
        {"name": "tensorflow", "version": tf.__version__, "libraries": {"keras": keras.__version__}},
        {"type": device_type, "name": device_name},
        {
            "requested": job["precision"],
            "tf32": bool(tf.config.experimental.tensor_float_32_execution_enabled()),
            "policy": keras.mixed_precision.global_policy().name,
        },
        weights,
        result,
        workdir,
        timing,
        notes=notes,
    )
