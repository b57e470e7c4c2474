"""``xfverify native``: a model in its own framework, on its reference preprocessing, against its published number."""

from __future__ import annotations

from xfverify.evaluator.pipeline.native_pass import native_run
from xfverify.evaluator.pipeline.options import NativeOptions
from xfverify.evaluator.pipeline.outdir import Finished
from xfverify.evaluator.reports.run import NativeReport


def run_native(options: NativeOptions) -> Finished[NativeReport]:
    """Evaluate one model natively; write report.json, report.md, logits.npy, predictions.csv into --out; the report,
    the folder and each image's predictions. The native pass is the one ``xfverify onnx`` runs when it needs a native
    run (pipeline/native_pass.py)."""
    return native_run(options)
