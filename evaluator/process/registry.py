"""Framework back-ends. Each module imports its framework and runs only inside its own worker process.

The parent process never imports these modules' frameworks: it names a back-end here and
:mod:`xfverify.evaluator.process.worker` runs it in a subprocess (TensorFlow and torchvision crash
in one process; GluonCV refuses to import beside torch >= 2).
"""

BACKENDS = {
    "torch": "xfverify.evaluator.backends.torch_backend",
    "tensorflow": "xfverify.evaluator.backends.keras_backend",
    "mxnet": "xfverify.evaluator.backends.mxnet_backend",
    "onnxruntime": "xfverify.evaluator.backends.onnxruntime_backend",  # runs .onnx files; exports nothing
}
