"""Framework back-ends. Each module imports its framework and runs only inside its own worker process.

The parent process never imports these modules' frameworks: it names a back-end here and
:mod:`xfverify.evaluator.worker` runs it in a subprocess (TensorFlow and torchvision crash
in one process; GluonCV refuses to import beside torch >= 2).
"""

BACKENDS = {
    "torch": "xfverify.evaluator.frameworks.torch_backend",
    "tensorflow": "xfverify.evaluator.frameworks.keras_backend",
    "mxnet": "xfverify.evaluator.frameworks.mxnet_backend",
    "onnxruntime": "xfverify.evaluator.frameworks.onnxruntime_backend",  # runs .onnx files; exports nothing
}
