"""A native run's folder: what it holds (report.json, report.md, report.html, logits.npy, predictions.csv), saved together
and loaded back checked, for the runs that compare with it."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from xfverify.models.hashing import sha256_file

from xfverify.evaluator.analysis.metrics import error_stats, predicted_top_k
from xfverify.evaluator.data.layouts import Dataset
from xfverify.evaluator.pipeline.evaluation import CachedRun
from xfverify.evaluator.pipeline.outdir import move_in
from xfverify.evaluator.reports.run import (
    NativeReport,
    Prediction,
    predictions,
    write_markdown,
    write_predictions,
    write_report,
)
from xfverify.evaluator.reports.run_page import PAGE, run_page
from xfverify.models.errors import UserError
from xfverify.models.imagenet import NUM_CLASSES
from xfverify.models.preprocess import PreprocessSpec
from xfverify.models.user_input import UnreadableFile, open_regular, read_regular, shown
from xfverify.models.variants import changed_fields

ONNX_NATIVE_FOLDER = "native"  # where, inside an onnx run's --out, the native run goes when none is given
DIAGNOSE_REFERENCE_FOLDER = "reference"  # where, inside a diagnose run's --out, its reference run goes



# Moved from the run's work folder into --out together once all are written, report.json last.
NATIVE_OUTPUTS = ("logits.npy", "predictions.csv", "report.md", PAGE, "report.json")


def save_native_run(out_dir: Path, workdir: Path, report: NativeReport, dataset: Dataset, run: CachedRun,
                    also: tuple[str, ...] = (), stale: tuple[str, ...] = (),
                    pictures: dict[str, np.ndarray] | None = None,
                    native_page: Path | None = None) -> tuple[NativeReport, list[Prediction]]:
    """Refuse a run that scored nothing; write predictions.csv, then report.json (recording both files' sha256, so
    a run that compares with this one reads exactly these), report.md and report.html (``pictures``: the images it
    shows, by id; ``native_page``: the compared native run's page it links to) beside the logits in the work folder, then move all five into ``out_dir`` together (with
    ``also``: further outputs staged in ``workdir``; ``stale``: this command's outputs an earlier run wrote that
    this one does not, removed). The report as written, and each image's predictions."""
    skipped = run.skipped
    if skipped and report.n_scored == 0 and (len(skipped) == len(dataset) or dataset.n_labelled):
        first = run.cached.bad[0]
        raise UserError(
            f"nothing was scored: {len(skipped)} of {len(dataset)} images were skipped as undecodable "
            f"(the first, {shown(first.path)}: {first.reason}); no report was written"
        )
    rows = predictions([r.image_id for r in dataset.records], [r.labels for r in dataset.records], run.topk, skipped)
    write_predictions(workdir / "predictions.csv", rows)
    run.logits = None  # closes the memory map before the file moves
    report = report.model_copy(update={"logits_sha256": sha256_file(workdir / "logits.npy"),
                                       "predictions_sha256": sha256_file(workdir / "predictions.csv")})
    write_report(workdir, report)
    write_markdown(workdir / "report.md", report, rows)
    (workdir / PAGE).write_text(run_page(report, out_dir, pictures, native_page))
    move_in(out_dir, workdir, (*also, *NATIVE_OUTPUTS), stale)
    return report, rows


def cached_pictures(cached, indices: set[int]) -> dict[int, np.ndarray]:
    """The cached uint8 crops of the images at ``indices`` (manifest order), for a page's thumbnails (TensorFlow's
    resized floats rounded); the cache is read only as far as the last of them."""
    pictures: dict[int, np.ndarray] = {}
    if not indices:
        return pictures
    last = max(indices)
    for start, batch in cached.batches(64):
        for offset in range(len(batch)):
            if start + offset in indices:
                image = np.asarray(batch[offset])
                if image.dtype != np.uint8:
                    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
                pictures[start + offset] = image
        if start + len(batch) > last:
            break
    return pictures


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


REPORT_LIMIT = 256 * 2**20  # a report.json larger than this is not one xfverify wrote


def load_native(folder: Path, option: str = "--against") -> NativeOnDisk:
    """The native run in ``folder``, its files checked against the digests its report.json records; a folder
    without one, or with a damaged, edited or mixed one, is a user error naming the file."""
    folder = Path(folder)
    finished_run = "the --out folder of a finished `xfverify native` run"
    give = f"give {finished_run}"
    if not folder.is_dir():
        raise UnusableNativeRun(option, folder, "no such folder", give)
    path = folder / "report.json"
    if not os.path.lexists(path):
        raise UnusableNativeRun(option, folder, "no native report there (report.json)", give)
    try:
        data = read_regular(path, option, REPORT_LIMIT)
    except UnreadableFile as exc:
        raise UnusableNativeRun(option, folder, f"report.json: {exc.reason}",
                                "give another native run, or run it again") from None
    try:
        parsed = json.loads(data)
    except RecursionError:
        raise UnusableNativeRun(option, folder, "report.json is nested too deeply to be a report",
                                f"{give} (or run it again there)") from None
    except ValueError:  # not UTF-8, not JSON: the schema check says so
        parsed = None
    kind = parsed.get("kind") if isinstance(parsed, dict) else None
    if kind in ("onnx", "diagnose"):
        inner = ONNX_NATIVE_FOLDER if kind == "onnx" else DIAGNOSE_REFERENCE_FOLDER
        raise UnusableNativeRun(option, folder, f"holds an `xfverify {kind}` report, not a native one",
                                f"give the native run it made ({folder / inner}), or {finished_run}")
    try:
        report = NativeReport.model_validate_json(data)
    except (ValidationError, UserError, TypeError, RecursionError):
        raise UnusableNativeRun(option, folder, "report.json is damaged or not an `xfverify native` report",
                                f"{give} (or run it again there)") from None
    again = "run `xfverify native` again"
    if report.logits_sha256 is None:
        raise UnusableNativeRun(option, folder, "report.json records no sha256 of its logits.npy (an earlier xfverify "
                                "wrote it), so its outputs cannot be bound to it", again)
    outputs = _bound_outputs(folder, report, option, again)
    if report.predictions_sha256 is not None:
        _check_digest(folder / "predictions.csv", report.predictions_sha256, option, folder, again)
    return NativeOnDisk(report, folder, outputs)


def _bound_outputs(folder: Path, report: NativeReport, option: str, again: str) -> np.ndarray:
    """logits.npy read once: its header checked against the report (dtype, shape, the file's size) before anything
    is allocated, its bytes against the sha256 the report records."""
    path = folder / "logits.npy"
    expected = (report.dataset.n_images, NUM_CLASSES)
    try:
        handle = open_regular(path, option)
    except UnreadableFile as exc:
        reason = "is missing" if exc.reason == "no such file" else f"is {exc.reason}"
        raise UnusableNativeRun(option, folder, f"logits.npy {reason}", again) from None
    with handle:
        try:
            version = np.lib.format.read_magic(handle)
            header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)(handle)
        except (ValueError, OSError, SyntaxError):
            raise UnusableNativeRun(option, folder, "logits.npy is not a readable .npy file", again) from None
        shape, fortran, dtype = header
        if dtype != np.dtype("<f4") or tuple(shape) != expected or fortran:
            raise UnusableNativeRun(option, folder, f"logits.npy holds {dtype} {tuple(shape)}, not the float32 "
                                    f"{expected} its report.json describes (a damaged or replaced file)", again)
        offset = handle.tell()
        size = os.fstat(handle.fileno()).st_size
        if size != offset + expected[0] * expected[1] * 4:
            raise UnusableNativeRun(option, folder, f"logits.npy is {size:,} bytes, not the {offset + expected[0] * expected[1] * 4:,} "
                                    f"of {expected} float32 (a truncated or damaged file)", again)
        handle.seek(0)
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
        if digest != report.logits_sha256:
            raise UnusableNativeRun(option, folder, f"logits.npy is not the file its report.json was written with "
                                    f"(sha256 {digest[:12]}, recorded {report.logits_sha256[:12]}): another run's "
                                    "or an edited file", again)
        handle.seek(offset)
        return np.fromfile(handle, dtype=np.float32, count=expected[0] * expected[1]).reshape(expected)


def _check_digest(path: Path, recorded: str, option: str, folder: Path, again: str) -> None:
    try:
        with open_regular(path, option) as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
    except UnreadableFile as exc:
        raise UnusableNativeRun(option, folder, f"{path.name}: {exc.reason}", again) from None
    if digest != recorded:
        raise UnusableNativeRun(option, folder, f"{path.name} is not the file its report.json was written with "
                                f"(sha256 {digest[:12]}, recorded {recorded[:12]}): another run's or an edited file",
                                again)


def check_scores(native: NativeOnDisk, dataset: Dataset) -> None:
    """The errors report.json states are those its (bound) outputs give on these images: an edited number is refused."""
    skipped_ids = {s.image_id for s in native.report.skipped_images}
    skipped = [i for i, record in enumerate(dataset.records) if record.image_id in skipped_ids]
    include = np.ones(len(dataset), dtype=bool)
    include[skipped] = False
    stats = error_stats(predicted_top_k(native.outputs, skipped), [r.labels for r in dataset.records], include)
    report = native.report
    for name, stated, computed in (("top1_error", report.top1_error, stats.top1_error),
                                   ("top5_error", report.top5_error, stats.top5_error)):
        if (stated is None) != (computed is None) or (stated is not None and abs(stated - round(computed, 4)) > 1e-9):
            raise UserError(f"{native.folder / 'report.json'}: its {name} {stated} is not what its logits.npy gives on "
                            f"these images ({None if computed is None else round(computed, 4)}): an edited report; "
                            "run `xfverify native` again")


def check_against(native: NativeOnDisk, card, spec: PreprocessSpec) -> None:
    """Refuse, before any work, a native run that is not of this model or was fed another preprocessing."""
    if card is not None and native.report.model != card.id:
        raise UserError(f"--against {native.folder}: a native run of {native.report.model}, not of {card.id}: give "
                        f"a native run of {card.id}, or leave --against out")
    theirs = native.report.preprocess
    differ = changed_fields(theirs, spec)
    if differ:
        raise UserError(f"--against {native.folder}: its native run was fed {theirs.name}, this run {spec.name} "
                        f"({', '.join(sorted(differ))} differ): xfverify compares only runs fed the same tensors; "
                        "leave --preprocess and --set out, or give a native run with them")
