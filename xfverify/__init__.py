"""xfverify: why a pretrained ImageNet classifier misses its published accuracy, and whether its ONNX export is faithful.

The package maps the repository's root folders into one namespace:
``xfverify.models`` (cards, preprocessing specs: data), ``xfverify.converter``
(native -> ONNX) and ``xfverify.evaluator`` (data, cache, runners, reports, CLI).
Importing it imports no ML framework. The Python API (each returns the typed report the command writes):
``xfverify.native(...)``, ``xfverify.onnx(...)``, ``xfverify.diagnose(...)``, ``xfverify.study(...)``; many
calls in a row go faster inside ``with xfverify.warm_workers():`` (each framework imported once, not per call).
"""

from xfverify.version import __version__


def native(model: str | None = None, **options):
    """Evaluate ``model`` in its own framework on its reference preprocessing, as ``xfverify native`` does.

    ``options`` are the command's options by their Python names (``data=``, ``limit=``, ``out=``, ``device=``,
    ``batch_size=``, ``random_weights=``, ...; paths may be ``Path``s, repeatable options lists). Returns the typed
    report (``NativeReport``); a user error, a bad option value among them, raises
    ``xfverify.models.errors.UserError`` with the command's one-line message.
    """
    from xfverify.evaluator.pipeline.native import run_native
    from xfverify.evaluator.pipeline.options import DEFAULT_MODEL, NativeOptions

    return run_native(NativeOptions.of(model=DEFAULT_MODEL if model is None else model, **options)).report


def onnx(target=None, **options):
    """A model's ONNX export (or a user's ``.onnx`` file, a ``str`` or a ``Path``) under ONNX Runtime on the native
    run's tensors, as ``xfverify onnx`` does (``against=`` a native run's folder, ``provider=``, ``atol=``,
    ``variants=["fp16", "int8"]``, ``calibration=``, ...); the ``OnnxReport``."""
    from xfverify.evaluator.pipeline.onnx import run_onnx
    from xfverify.evaluator.pipeline.options import DEFAULT_MODEL, OnnxOptions

    return run_onnx(OnnxOptions.of(target=DEFAULT_MODEL if target is None else target, **options)).report


def diagnose(model: str | None = None, **options):
    """``model`` under its reference preprocessing and named variants, as ``xfverify diagnose`` does
    (``variants=["squash", ...]``, ``precisions=["bf16"]``, ``onnx=True``, ...); the ``DiagnoseReport``."""
    from xfverify.evaluator.pipeline.diagnose import run_diagnose
    from xfverify.evaluator.pipeline.options import DEFAULT_MODEL, DiagnoseOptions

    return run_diagnose(DiagnoseOptions.of(model=DEFAULT_MODEL if model is None else model, **options)).report


def study(study="lite", **options):
    """A whole comparison, as ``xfverify study`` does (a shipped study's name or a TOML file; ``data=``, ``out=``,
    ``executor="ray"``, ...); the ``StudyReport``. Finished cells in ``out`` are reused."""
    from xfverify.evaluator.pipeline.options import StudyOptions
    from xfverify.evaluator.pipeline.study import run_study

    return run_study(StudyOptions.of(study=study, **options)).report


def warm_workers():
    """A scope (``with``) in which every back-end's workers are forked from a server that imported the framework
    once: each call's worker is still a fresh process, seconds of start-up fewer (``xfverify study`` runs its cells
    so, in the caller's scope when there is one)."""
    from xfverify.evaluator.process.warm import warm_workers as scope

    return scope()
