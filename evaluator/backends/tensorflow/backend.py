"""TensorFlow / Keras applications back-end; runs only inside a tensorflow worker process."""

from __future__ import annotations

import os
from pathlib import Path
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402

from xfverify.converter.exported import ExportResult  # noqa: E402
from xfverify.evaluator.backends.contract import Backend, worker_tasks  # noqa: E402
from xfverify.evaluator.backends.exporting import Exporter, ExporterIdentity  # noqa: E402
from xfverify.evaluator.backends.intermediates import CapturesIntermediates, Record  # noqa: E402
from xfverify.evaluator.backends.loading import CardModelLoader, ScalesRandomOutputs  # noqa: E402
from xfverify.evaluator.backends.machine import gpu_left_unused_note  # noqa: E402
from xfverify.evaluator.backends.running import Device, SwitchesPrecision  # noqa: E402
from xfverify.evaluator.backends.steps import HostStep  # noqa: E402
# decode_and_crop_jpeg of crop windows: a task of this worker
from xfverify.evaluator.backends.tensorflow.crop_window import decode_tensorflow_window  # noqa: E402
from xfverify.evaluator.backends.weights import (  # noqa: E402
    checked_weights,
    exception_text,
    missing_weights_error,
)
from xfverify.evaluator.process.blocks import CheckedWeights, KerasPrecision  # noqa: E402
from xfverify.evaluator.process.tasks import EvaluateJob, FrameworkInfo  # noqa: E402
from xfverify.evaluator.system.devices import cpu_name  # noqa: E402
from xfverify.models.cards import ModelCard  # noqa: E402
from xfverify.models.errors import UserError  # noqa: E402
from xfverify.models.precision import Precision  # noqa: E402
from xfverify.models.preprocess import PreprocessSpec  # noqa: E402

# --- evaluation ----------------------------------------------------------------------------

# The global mixed-precision policy each precision builds the network under (every precision has one).
POLICIES: dict[Precision, str] = {"fp32": "float32", "tf32": "float32", "bf16": "mixed_bfloat16",
                                  "fp16": "mixed_float16"}


def _configure(device: str, precision: Precision) -> tuple[str, str, list[str]]:
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
    keras.mixed_precision.set_global_policy(POLICIES[precision])
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return "cuda", details.get("device_name", "GPU"), notes
    return "cpu", cpu_name(), notes


def _weights_path(card: ModelCard) -> Path:
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    return keras_home / "models" / card.weights.file


def _builder(card: ModelCard):
    builder = getattr(keras.applications, card.network_name, None)
    if builder is None:
        raise UserError(f"keras.applications has no {card.network_name} in keras {keras.__version__}")
    return builder


class KerasBackend(CardModelLoader, Backend, ScalesRandomOutputs, SwitchesPrecision, Exporter, CapturesIntermediates):
    """Keras applications on TensorFlow. Random weights are calibrated: Keras's default initialisers shrink the
    activations to nothing through depthwise layers (MobileNetV2's softmax is then 0.001 for every class) or blow
    them up (ResNet50's saturates), so each BatchNormalization gets the statistics of its input on a random batch
    of photo-like pixels put through the model's own preprocessing, and the classifier's logits (before its
    softmax) are scaled to a spread of 1."""

    name = "tensorflow"
    calibration_batch = 4
    calibration_layout = "NHWC"
    calibrates_on_photo_like_pixels = True  # preprocess_input modes range from raw 0-255 pixels to normalised ones
    random_scheme = "-calibrated-photo-like"

    def resolve_device(self, requested: str, precision: Precision) -> Device:
        device_type, device_name, notes = _configure(requested, precision)
        self.loaded_policy = POLICIES[precision]  # the policy the network will be built under
        return Device(device_type, device_name, None, notes)

    def check_precision(self, precision: Precision, device: Device) -> None:
        if precision == "tf32" and device.type != "cuda":
            raise UserError("--precisions tf32 applies to CUDA GPUs only and this run is on the CPU; bf16 and fp16 "
                            "run on the CPU too (a Keras mixed-precision policy)")

    def with_precision(self, model, card: ModelCard, precision: Precision, device: Device):
        """A layer's policy is fixed when it is built: the network is built again under the precision's policy and
        given the loaded network's weights (mixed policies keep float32 variables, so they are the same numbers)."""
        tf.config.experimental.enable_tensor_float_32_execution(precision == "tf32")
        policy = POLICIES[precision]
        keras.mixed_precision.set_global_policy(policy)
        if policy == self.loaded_policy:
            return model
        rebuilt = _builder(card)(weights=None)
        rebuilt.set_weights(model.get_weights())
        return rebuilt

    def seed(self, seed: int) -> None:
        keras.utils.set_random_seed(seed)

    def random_network(self, card: ModelCard, device: Device):
        return _builder(card)(weights=None)

    def calibrate(self, model, batch: np.ndarray, device: Device) -> None:
        """Each BatchNormalization's moving statistics set to its input's on the batch, all in one pass in training
        mode (where each normalises by the batch's statistics): inference then computes what that pass did."""
        norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
        if not norms:
            return
        inputs = keras.Model(model.inputs, [layer.input for layer in norms])(tf.constant(batch), training=True)
        for layer, value in zip(norms, inputs):
            axes = [axis for axis in range(len(value.shape)) if axis != layer.axis % len(value.shape)]
            mean, variance = tf.nn.moments(tf.cast(value, tf.float32), axes=axes)
            layer.moving_mean.assign(tf.cast(mean, layer.moving_mean.dtype))
            layer.moving_variance.assign(tf.cast(variance, layer.moving_variance.dtype))

    def logits_std(self, model, batch: np.ndarray, device: Device) -> float:
        """The spread of the classifier's logits: its last layer with a kernel (a Dense, or MobileNet's 1 x 1
        Conv2D), before the softmax (a Dense's own activation left out)."""
        layer = _classifier(model)
        if layer is None:
            return 0.0  # nothing to scale
        if isinstance(layer, keras.layers.Dense) and getattr(layer.activation, "__name__", "") != "linear":
            features = keras.Model(model.inputs, layer.input)(tf.constant(batch), training=False)
            kernel, *bias = layer.get_weights()
            logits = np.asarray(features, dtype=np.float64) @ kernel + (bias[0] if bias else 0.0)
        else:
            logits = np.asarray(keras.Model(model.inputs, layer.output)(tf.constant(batch), training=False))
        return float(np.std(logits, ddof=1))

    def scale_last_layer(self, model, std: float) -> None:
        layer = _classifier(model)
        if layer is not None:
            layer.set_weights([weight / np.float32(std) for weight in layer.get_weights()])

    def network_from_file(self, card: ModelCard, path: str, device: Device):
        model = _builder(card)(weights=None)
        try:
            model.load_weights(path)
        except (ValueError, OSError) as exc:
            raise UserError(f"--weights {path}: cannot be loaded into {card.name} ({exception_text(exc)})") from None
        return model

    def pretrained_network(self, card: ModelCard, device: Device) -> tuple[keras.Model, CheckedWeights]:
        builder = _builder(card)
        expected = _weights_path(card)
        if expected.exists():
            block = checked_weights(card, expected)  # a damaged or foreign file is named, not loaded
            return builder(weights="imagenet"), block
        try:
            if card.weights.url:  # fetched before the network is built: offline, that fails at once
                keras.utils.get_file(card.weights.file, card.weights.url, cache_subdir="models")
            model = builder(weights="imagenet")
        except Exception as exc:  # keras wraps download failures in plain Exception
            raise missing_weights_error(card, expected, exc) from None
        return model, checked_weights(card, expected)

    def step(self, model, spec: PreprocessSpec, device: Device, job: EvaluateJob) -> HostStep:
        infer = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        return HostStep(lambda tensors: infer(tf.constant(tensors)).numpy().astype(np.float32, copy=False))

    def describe(self) -> FrameworkInfo:
        return FrameworkInfo(name="tensorflow", version=tf.__version__, libraries={"keras": keras.__version__})

    def precision(self, requested: Precision, device: Device, step: HostStep) -> KerasPrecision:
        return KerasPrecision(requested=requested, tf32=bool(tf.config.experimental.tensor_float_32_execution_enabled()),
                              policy=keras.mixed_precision.global_policy().name)

    def is_out_of_memory(self, exc: BaseException) -> bool:
        return isinstance(exc, tf.errors.ResourceExhaustedError)

    def exporter(self, opset: int | None) -> ExporterIdentity:
        from xfverify.converter import tensorflow_export

        return ExporterIdentity(*tensorflow_export.exporter_identity(), opset or tensorflow_export.DEFAULT_OPSET)

    def export_onnx(self, model, path: Path, opset: int, hw: tuple[int, int], device: Device) -> ExportResult:
        from xfverify.converter.tensorflow_export import export_keras

        return export_keras(model, path, opset)  # the graph ends as the model does: softmax for applications

    def capture(self, model, image: np.ndarray, device: Device, record: Record) -> None:
        """A functional sub-model over every layer's output (tf2onnx keeps the layer names in its nodes' scopes),
        built once per network."""
        if getattr(self, "_captured", (None,))[0] is not model:
            layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
            self._captured = (model, layers, keras.Model(model.inputs, [layer.output for layer in layers]))
        _, layers, submodel = self._captured
        outputs = submodel(tf.constant(image), training=False)
        for layer, output in zip(layers, outputs):
            record(layer.name, np.asarray(output), op_type=_layer_type(layer),
                   composite=isinstance(layer, keras.Model))


def _classifier(model):
    """The network's last layer with a kernel (the classifier whose logits its softmax turns into the output)."""
    return next((layer for layer in reversed(model.layers)
                 if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D))), None)


def _layer_type(layer) -> str:
    """A layer's class, an Activation layer's function with it (Activation(relu))."""
    kind = type(layer).__name__
    function = getattr(layer, "activation", None) if kind == "Activation" else None
    return f"{kind}({getattr(function, '__name__', function)})" if function is not None else kind


BACKEND = KerasBackend
TASKS = worker_tasks(BACKEND, decode_tensorflow_window=decode_tensorflow_window)
