"""xfverify: why a pretrained ImageNet classifier misses its published accuracy, and whether its ONNX export is faithful.

The package maps the repository's root folders into one namespace:
``xfverify.models`` (cards, preprocessing specs: data), ``xfverify.converter``
(native -> ONNX) and ``xfverify.evaluator`` (data, cache, runners, reports, CLI).
Importing it imports no ML framework.
"""

__version__ = "0.1.0"
