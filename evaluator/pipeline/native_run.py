"""A native run's folder: what it holds (report.json, report.md, logits.npy, predictions.csv), saved together
and loaded back checked, for the runs that compare with it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from xfverify.evaluator.data.layouts import Dataset
from xfverify.evaluator.pipeline.evaluation import CachedRun
from xfverify.evaluator.reports.native import (
    NativeReport,
    Prediction,
    predictions,
    write_markdown,
    write_predictions,
    write_report,
)
from xfverify.models.errors import UserError
from xfverify.models.imagenet import NUM_CLASSES
from xfverify.models.preprocess import PreprocessSpec, spec_from_dict
from xfverify.models.variants import changed_fields

ONNX_NATIVE_FOLDER = "native"  # where, inside an onnx run's --out, the native run goes when none is given
DIAGNOSE_REFERENCE_FOLDER = "reference"  # where, inside a diagnose run's --out, its reference run goes



@dataclass(frozen=True)
class SavedRun:
    """What a native or ONNX run saved: the report, the folder its files are in, and each image's predictions."""

    report: NativeReport
    out_dir: Path
    predictions: list[Prediction]


# Moved from the run's work folder into --out together once all are written, report.json last.
NATIVE_OUTPUTS = ("logits.npy", "predictions.csv", "report.md", "report.json")


def save_native_run(out_dir: Path, workdir: Path, report: NativeReport, dataset: Dataset, run: CachedRun) -> list[Prediction]:
    """Refuse a run that scored nothing; write predictions.csv, report.json and report.md beside the logits
    in the work folder, then move all four into ``out_dir`` together."""
    skipped = run.skipped
    if skipped and report.n_scored == 0 and (len(skipped) == len(dataset) or dataset.n_labelled):
        first = run.cached.bad[0]
        raise UserError(
            f"nothing was scored: {len(skipped)} of {len(dataset)} images were skipped as undecodable "
            f"(the first, {first.path}: {first.reason}); no report was written"
        )
    rows = predictions([r.image_id for r in dataset.records], [r.labels for r in dataset.records], run.topk, skipped)
    write_predictions(workdir / "predictions.csv", rows)
    write_report(workdir, report)
    write_markdown(workdir / "report.md", report, rows)
    run.logits = None  # closes the memory map before the file moves
    for name in NATIVE_OUTPUTS:
        os.replace(workdir / name, out_dir / name)
    return rows


@dataclass
class NativeOnDisk:
    """A finished native run: its report and its outputs (logits or Keras's softmax)."""

    report: NativeReport
    folder: Path
    outputs: np.ndarray


class UnusableNativeRun(UserError):
    """A folder that holds no usable native run: ``reason`` says why (the message adds the fix)."""

    def __init__(self, option: str, folder: Path, reason: str, fix: str) -> None:
        super().__init__(f"{option} {folder}: {reason}: {fix}")
        self.reason = reason


def load_native(folder: Path, option: str = "--against") -> NativeOnDisk:
    """The native run in ``folder``; a folder without one, or with a damaged one, is a user error naming it."""
    folder = Path(folder)
    finished_run = "the --out folder of a finished `xfverify native` run"
    give = f"give {finished_run}"
    if not folder.is_dir():
        raise UnusableNativeRun(option, folder, "no such folder", give)
    path = folder / "report.json"
    if not path.is_file():
        raise UnusableNativeRun(option, folder, "no native report there (report.json)", give)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UnusableNativeRun(option, folder, f"cannot read report.json ({exc.strerror or exc})",
                                "fix its permissions, or give another native run") from None
    try:
        kind = json.loads(data).get("kind")
    except (ValueError, AttributeError):  # not UTF-8, not JSON, not a JSON object: the schema check says so
        kind = None
    if kind in ("onnx", "diagnose"):
        inner = ONNX_NATIVE_FOLDER if kind == "onnx" else DIAGNOSE_REFERENCE_FOLDER
        raise UnusableNativeRun(option, folder, f"holds an `xfverify {kind}` report, not a native one",
                                f"give the native run it made ({folder / inner}), or {finished_run}")
    try:
        report = NativeReport.model_validate_json(data)
        spec_from_dict(report.preprocess)
    except (ValidationError, UserError, TypeError):
        raise UnusableNativeRun(option, folder, "report.json is damaged or not an `xfverify native` report",
                                f"{give} (or run it again there)") from None
    again = "run `xfverify native` again"
    try:
        outputs = np.load(folder / "logits.npy")
    except (OSError, ValueError):
        raise UnusableNativeRun(option, folder, "logits.npy is missing or unreadable", again) from None
    expected = (report.dataset.n_images, NUM_CLASSES)
    if outputs.dtype != np.float32 or outputs.shape != expected:
        raise UnusableNativeRun(option, folder, f"logits.npy holds {outputs.dtype} {outputs.shape}, not the float32 "
                                f"{expected} its report.json describes (a damaged or replaced file)", again)
    return NativeOnDisk(report, folder, outputs)


def check_against(native: NativeOnDisk, card, spec: PreprocessSpec) -> None:
    """Refuse, before any work, a native run that is not of this model or was fed another preprocessing."""
    if card is not None and native.report.model != card.id:
        raise UserError(f"--against {native.folder}: a native run of {native.report.model}, not of {card.id}: give "
                        f"a native run of {card.id}, or leave --against out")
    theirs = spec_from_dict(native.report.preprocess)
    differ = changed_fields(theirs, spec)
    if differ:
        raise UserError(f"--against {native.folder}: its native run was fed {theirs.name}, this run {spec.name} "
                        f"({', '.join(sorted(differ))} differ): xfverify compares only runs fed the same tensors; "
                        "leave --preprocess and --set out, or give a native run with them")
