"""``xfverify study``: a whole comparison in one command (models x native, onnx, diagnose), resumable.

Every cell runs through the same pipeline functions as its own command, into ``--out/cells/<cell>/``, so its
numbers are that command's. A cell is keyed by everything that determines its result (its card, the reference
preprocessing, the images' manifest, the options, xfverify's and the frameworks' versions, and for an ONNX cell its
native cell's key); ``cell.json``, written last, records the key and the numbers, so a rerun or a study killed
mid-way skips the finished cells and an edited study runs only what changed. Cells share the tensor cache, so each
geometry is decoded once. The cells run in order on this machine (where it has a GPU, CPU-only cells and the GPU
cells' ONNX exports beside the GPU's passes), or as Ray tasks (``--executor ray``).
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import hashlib
import json
import os
import stat
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

from xfverify.version import __version__
from xfverify.evaluator.data.layouts import SAMPLE_DIR, Dataset, load_dataset
from xfverify.evaluator.pipeline.diagnose import chosen_variants, run_diagnose
from xfverify.evaluator.pipeline.native import run_native
from xfverify.evaluator.pipeline.native_run import DIAGNOSE_REFERENCE_FOLDER, check_scores, load_native
from xfverify.evaluator.pipeline.onnx import run_onnx
from xfverify.evaluator.pipeline.onnx_pass import export_ahead
from xfverify.evaluator.pipeline.options import DiagnoseOptions, NativeOptions, OnnxOptions, StudyOptions
from xfverify.evaluator.pipeline.outdir import Finished, in_owned_folder, refuse_another_study, write_in
from xfverify.evaluator.reports.diagnose import DiagnoseReport
from xfverify.evaluator.reports.run import NativeReport, OnnxReport
from xfverify.evaluator.reports.study import (
    STUDY_OUTPUTS,
    Cause,
    CellResult,
    DiagnoseCell,
    ModelRow,
    NativeCell,
    OnnxCell,
    StudyDataset,
    StudyReport,
    VariantCell,
    cell_pages,
    csv_text,
    html_page,
    markdown,
)
from xfverify.evaluator.system import console
from xfverify.evaluator.system.files import atomic_write_text, owned_subfolder
from xfverify.models.cards import ModelCard, get_card
from xfverify.models.errors import UserError
from xfverify.models.preprocess import resolve_preprocess
from xfverify.models.study import Cell, StudySpec, cells_of, load_study
from xfverify.models.user_input import cached_bytes, open_regular, shown

CELL_FILE = "cell.json"
# Distributions whose versions can change a cell's numbers (those installed go into every cell's key).
KEYED_DISTRIBUTIONS = ("numpy", "pillow", "opencv-python-headless", "opencv-python", "torch", "torchvision", "timm",
                       "onnxscript", "tensorflow", "tensorflow-cpu", "keras", "tf2onnx", "mxnet", "mxnet-cu101",
                       "gluoncv", "onnx", "onnxruntime", "onnxruntime-gpu")


@dataclass(frozen=True)
class PlannedCell:
    """A cell with its key and folder, and the cell it needs first (an ONNX cell's native cell)."""

    cell: Cell
    key: str
    folder: Path
    needs: PlannedCell | None = None
    options: NativeOptions | OnnxOptions | DiagnoseOptions | None = None  # its verb's, made and checked when planned


def run_study(options: StudyOptions) -> Finished[StudyReport]:
    """Run every cell of the study not already done in --out; write study.json, .md, .csv and .html there."""
    started = time.time()
    if options.executor == "local" and "cuda" in (options.device, options.provider):
        from xfverify.evaluator.system.devices import may_have_a_gpu

        if not may_have_a_gpu():  # every cell would start its worker only to fail on it
            asked = "--device cuda" if options.device == "cuda" else "--provider cuda"
            raise UserError(f"{asked}: this machine has no GPU (no NVIDIA GPU or GPU device file found): use "
                            f"{asked.split()[0]} cpu or auto, or --executor ray on a cluster with GPUs")
    study = load_study(options.study)
    cells = cells_of(study)
    if options.random_weights:
        cells = list(dict.fromkeys(cell.model_copy(update={"random_weights": True}) for cell in cells))
    dataset = load_dataset(options.data or SAMPLE_DIR, devkit=options.devkit).select(limit=options.limit,
                                                                                      per_class=options.per_class)
    out_dir = Path(options.out) if options.out else Path.cwd() / "xfverify-out" / f"study-{study.name}"
    plan = plan_cells(cells, dataset, options, out_dir)
    execute = _executor(options)
    report = in_owned_folder(out_dir, lambda workdir: _run_in(study, plan, dataset, options, out_dir, execute,
                                                              started))
    return Finished(report, out_dir)


def plan_cells(cells: list[Cell], dataset: Dataset, options: StudyOptions, out_dir: Path) -> list[PlannedCell]:
    """Each cell's key and folder; every card and preprocessing resolved before anything runs (errors are one line)."""
    versions = _versions()
    manifest = dataset.manifest_sha256()
    planned: dict[Cell, PlannedCell] = {}
    for cell in cells:
        card = get_card(cell.model)
        needs = None
        if cell.run == "onnx":
            needs = planned[cell.model_copy(update={"run": "native", "onnx": None})]
        payload = {
            "cell": cell.model_dump(mode="json"),
            "card": card.model_dump(mode="json"),
            "preprocess": resolve_preprocess(None, default=card.reference_spec).to_dict(),
            "manifest_sha256": manifest,
            "options": {"device": options.device, "provider": options.provider if cell.run == "onnx" else None,
                        "batch_size": options.batch_size, "seed": options.seed, "on_bad_image": options.on_bad_image},
            "machine_has_nvidia_gpu": _has_nvidia_gpu() if "auto" in (options.device, options.provider) else None,
            "versions": versions,
            "xfverify": __version__,
            "needs": needs.key if needs else None,
        }
        folder = out_dir / "cells" / cell.name
        try:
            cell_options = _cell_options(cell, card, options, folder, needs)
            if isinstance(cell_options, OnnxOptions) and cell_options.calibration:  # the images, not only their path
                payload["calibration_manifest_sha256"] = load_dataset(cell_options.calibration).select(
                    limit=cell_options.calibration_limit).manifest_sha256()
        except UserError as exc:
            raise UserError(f"study cell {cell.name}: {exc}") from None
        key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        planned[cell] = PlannedCell(cell, key, folder, needs, cell_options)
    return list(planned.values())


def _cell_options(cell: Cell, card: ModelCard, options: StudyOptions, folder: Path,
                  needs: PlannedCell | None) -> NativeOptions | OnnxOptions | DiagnoseOptions:
    """The options of the cell's command, checked as the command checks them; a diagnose cell's variants and
    precisions are checked against its card too, before any cell runs."""
    common = dict(data=options.data, devkit=options.devkit, limit=options.limit, per_class=options.per_class,
                  batch_size=options.batch_size, workers=options.workers, cache_dir=options.cache_dir,
                  random_weights=cell.random_weights, seed=options.seed, on_bad_image=options.on_bad_image,
                  device=options.device, out=str(folder))
    if cell.run == "native":
        return NativeOptions(**common, model=cell.model)
    if cell.run == "onnx":
        deploy = cell.onnx.model_dump() if cell.onnx else {}
        return OnnxOptions(**common, target=cell.model, provider=options.provider,
                           against=str(needs.folder) if needs else None, **deploy)
    diagnose = DiagnoseOptions(**common, model=cell.model, variants=",".join(cell.variants) or None,
                               precisions=",".join(cell.precisions) or None)
    chosen_variants(card, resolve_preprocess(None, default=card.reference_spec), diagnose)  # as the command chooses them
    return diagnose


def _run_in(study: StudySpec, plan: list[PlannedCell], dataset: Dataset, options: StudyOptions, out_dir: Path,
            execute: Callable, started: float) -> StudyReport:
    refuse_another_study(out_dir, study.name, STUDY_OUTPUTS)
    for planned in plan:  # every folder a cell writes in is a real folder under --out, never a link's target
        owned_subfolder(out_dir, planned.folder.relative_to(out_dir))
        recorded = planned.folder / CELL_FILE
        if os.path.lexists(recorded) and not stat.S_ISREG(os.lstat(recorded).st_mode):
            raise UserError(f"--out {shown(out_dir)}: {shown(recorded.relative_to(out_dir))} there is not a regular "
                            "file (a link, a folder or a device) and the study records its cell there; move it away "
                            "or choose another --out")
    done = {planned.key: result for planned in plan if (result := finished_cell(planned, dataset)) is not None}
    todo = [planned for planned in plan if planned.key not in done]
    console.info(f"study {study.name}: {len(plan)} cells on {len(dataset)} images from {dataset.root}; "
                 f"{len(done)} already done, {len(todo)} to run ({options.executor})")
    ran = execute(todo, run_cell, done, record_cell)
    results = {**done, **ran}
    report = StudyReport(
        name=study.name, about=study.about,
        dataset=StudyDataset(path=str(dataset.root), n_images=len(dataset), n_labelled=dataset.n_labelled,
                             manifest_sha256=dataset.manifest_sha256()),
        executor=options.executor,
        cells=[results[planned.key] for planned in plan],
        rows=model_rows([results[planned.key] for planned in plan]),
        ran=len(todo), reused=len(done), wall_s=round(time.time() - started, 3), xfverify_version=__version__,
    )
    write_in(out_dir, {"study.json": report.model_dump_json(indent=1) + "\n", "study.md": markdown(report),
                       "study.csv": csv_text(report), "study.html": html_page(report, cell_pages(report, out_dir))})
    failed = [c for c in report.cells if c.status != "done"]
    if failed:
        raise UserError(f"{len(failed)} of {len(plan)} cells did not finish (the first: {failed[0].run} "
                        f"{failed[0].model}: {failed[0].error}); the others are in {out_dir / 'study.md'}, and a "
                        "rerun runs only what is missing")
    console.info(f"wrote {', '.join(STUDY_OUTPUTS)} in {out_dir}")
    return report


def finished_cell(planned: PlannedCell, dataset: Dataset) -> CellResult | None:
    """The cell's recorded result when it finished with this very key, its numbers read again from its report and
    its files checked against the digests the report records (anything else: it runs again)."""
    path = planned.folder / CELL_FILE
    if path.is_symlink():
        return None
    recorded = cached_bytes(path)  # a FIFO or a device there: run again, never waited on
    if recorded is None:
        return None
    try:
        result = CellResult.model_validate_json(recorded)
    except ValueError:
        return None
    if result.key != planned.key or result.status != "done":
        return None
    report = cached_bytes(planned.folder / "report.json")
    if report is None or result.report_sha256 != hashlib.sha256(report).hexdigest():
        return None  # the numbers recorded are no longer those of the report beside them (replaced, edited, gone)
    try:
        outcome = _outcome_on_disk(planned, report, dataset)
    except (UserError, ValueError, OSError):
        return None  # a damaged or edited file in the cell's folder: it runs again
    return result.model_copy(update=outcome)


def _outcome_on_disk(planned: PlannedCell, report: bytes, dataset: Dataset) -> dict:
    """The cell's numbers computed from the report in its folder (never from cell.json, which anyone may edit), its
    outputs checked against the digests that report records, a native run's scores against its logits."""
    folder = planned.folder
    if planned.cell.run == "native":
        native = load_native(folder, "--out")
        check_scores(native, dataset)
        return {"native": native_cell(native.report)}
    if planned.cell.run == "onnx":
        onnx = OnnxReport.model_validate_json(report)
        for name, recorded in (("logits.npy", onnx.logits_sha256), ("predictions.csv", onnx.predictions_sha256)):
            if recorded is None or _file_sha256(folder / name) != recorded:
                raise UserError(f"{folder / name} is not the file its report.json was written with")
        return {"onnx": onnx_cell(onnx)}
    diagnosis = DiagnoseReport.model_validate_json(report)
    load_native(folder / DIAGNOSE_REFERENCE_FOLDER, "--out")
    return {"diagnose": diagnose_cell(diagnosis)}


def _file_sha256(path: Path) -> str:
    with open_regular(path, "--out") as handle:  # a FIFO or a device there: one line, never waited on
        return hashlib.file_digest(handle, "sha256").hexdigest()


def run_cell(planned: PlannedCell, results: dict[str, CellResult]) -> CellResult:
    """Run one cell through its command's pipeline function; a user error fails the cell, not the study."""
    cell, started = planned.cell, time.time()
    outcome: dict = {}
    try:
        if planned.needs is not None:
            needed = results.get(planned.needs.key)
            if needed is None or needed.status != "done":
                return _result(planned, started, "skipped", error="its native cell did not finish")
        console.info(f"cell {cell.run} {cell.model} -> {planned.folder}")
        options = dataclasses.replace(planned.options, extra_notes=[])  # a cell's notes are its own run's
        if isinstance(options, DiagnoseOptions):
            outcome["diagnose"] = diagnose_cell(run_diagnose(options).report)
        elif isinstance(options, OnnxOptions):
            outcome["onnx"] = onnx_cell(run_onnx(options).report)
        else:
            outcome["native"] = native_cell(run_native(options).report)
    except UserError as exc:
        console.info(f"cell {cell.run} {cell.model} failed: {exc}")
        return _result(planned, started, "failed", error=str(exc))
    report_sha256 = hashlib.sha256((planned.folder / "report.json").read_bytes()).hexdigest()
    return _result(planned, started, "done", report_sha256=report_sha256, **outcome)


def export_cell_ahead(planned: PlannedCell) -> None:
    """An ONNX cell's export made early, into the export cache its cell reads; a user error is left for the cell
    to meet and report."""
    try:
        export_ahead(planned.options)
    except Exception as exc:  # only a head start: the cell exports itself and reports what goes wrong, bugs too
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        console.info(f"exporting {planned.cell.model} ahead of its cell failed ({first_line}); its cell will export")


def record_cell(planned: PlannedCell, result: CellResult) -> None:
    """A finished cell's cell.json, written by the study's own process as soon as the cell is back (a study killed
    later keeps it); cells that failed are not recorded, so a rerun tries them again."""
    if result.status == "done":
        atomic_write_text(planned.folder / CELL_FILE, result.model_dump_json(indent=1) + "\n")


def _result(planned: PlannedCell, started: float, status: str, **fields) -> CellResult:
    return CellResult(key=planned.key, run=planned.cell.run, model=planned.cell.model,
                      folder=str(Path("cells") / planned.cell.name), status=status,
                      seconds=round(time.time() - started, 3), **fields)


def native_cell(report: NativeReport) -> NativeCell:
    return NativeCell(top1_error=report.top1_error, top1_error_ci95=report.top1_error_ci95,
                      top5_error=report.top5_error, n_scored=report.n_scored, tensors_sha256=report.tensors_sha256,
                      device=report.device.type, images_per_s=report.timing.images_per_s,
                      data_wait_s=report.timing.data_wait_s, compute_s=report.timing.compute_s)


def variant_cells(report: OnnxReport) -> list[VariantCell]:
    """Each deployment variant's numbers, as the onnx report gives them."""
    if report.variants is None:
        return []
    return [VariantCell(name=v.name, top1_error=v.top1_error, top1_error_ci95=v.top1_error_ci95,
                        delta_vs_plain=v.vs_plain.delta, delta_ci95=v.vs_plain.ci95,
                        top1_agreement_plain=v.agreement_plain.top1_agreement, n_flips_plain=v.agreement_plain.n_flips,
                        within_tolerance_plain=v.agreement_plain.within_tolerance,
                        delta_vs_native=v.vs_native.delta if v.vs_native else None,
                        time_over_plain=v.time_over_plain, remedy_of=v.remedy_of)
            for v in report.variants.results]


def onnx_cell(report: OnnxReport) -> OnnxCell:
    agreement = report.agreement
    calibration = report.variants.calibration if report.variants else None
    return OnnxCell(
        top1_error=report.top1_error, tensors_sha256=report.tensors_sha256, exporter=report.onnx.exporter,
        opset=report.onnx.opset, top1_agreement=agreement.top1_agreement if agreement else None,
        n_flips=agreement.n_flips if agreement else None, mcnemar_p=agreement.mcnemar_p if agreement else None,
        max_abs_diff_over_max_abs_logit=agreement.max_abs_diff_over_max_abs_logit if agreement else None,
        within_tolerance=agreement.within_tolerance if agreement else None,
        native_varies=agreement.native_varies if agreement else None,
        providers=report.runtime.providers, images_per_s=report.timing.images_per_s,
        data_wait_s=report.timing.data_wait_s, onnx_over_native_time=report.onnx_over_native_time,
        variants=variant_cells(report),
        calibration=f"{calibration.n_images} images, manifest sha256 {calibration.manifest_sha256}"
        if calibration else None)


def diagnose_cell(report: DiagnoseReport) -> DiagnoseCell:
    decomposition = report.decomposition
    causes = [Cause(name=step.name, axis=step.axis, delta=step.delta, delta_ci95=step.delta_ci95)
              for step in decomposition.steps if step.axis != "published" and step.delta_ci95 is not None]
    return DiagnoseCell(reproduced=decomposition.reproduced, n_variants=len(report.variants), causes=causes,
                        within_noise=decomposition.within_noise, sentence=decomposition.sentence)


def model_rows(results: list[CellResult]) -> list[ModelRow]:
    """One row per model, in the study's order, grouped by architecture (the cross-framework comparison)."""
    by_model: dict[str, dict[str, CellResult]] = {}
    for result in results:
        by_model.setdefault(result.model, {})[result.run] = result
    rows = []
    for model, cells in by_model.items():
        card: ModelCard = get_card(model)
        published = card.primary_published

        def part(run: str):
            result = cells.get(run)
            return getattr(result, run) if result is not None and result.status == "done" else None

        rows.append(ModelRow(
            model=model, architecture=card.architecture, framework=card.framework,
            published_top1_error=published.top1_error if published else None,
            native=part("native"), onnx=part("onnx"), diagnose=part("diagnose"),
            failed=[f"{run}: {result.status}: {result.error}" for run, result in cells.items()
                    if result.status != "done"],
        ))
    order = list(dict.fromkeys(row.architecture for row in rows))
    return sorted(rows, key=lambda row: order.index(row.architecture))


def computes_on_gpu(cell: Cell, device: str, provider: str) -> bool:
    """Whether a cell computes on a GPU where the machine has one: not with --device cpu (--provider cpu for an
    ONNX cell), and MXNet only when asked for with --device cuda (its builds miss recent GPUs)."""
    if cell.run == "onnx":
        return provider != "cpu"
    return device != "cpu" and (device == "cuda" or not cell.model.startswith("gluoncv/"))


def _executor(options: StudyOptions) -> Callable:
    def on_gpu(planned: PlannedCell) -> bool:
        return computes_on_gpu(planned.cell, options.device, options.provider)

    ahead = export_cell_ahead

    if options.executor == "ray":
        from xfverify.evaluator.pipeline.study_ray import ray_executor

        return ray_executor(options.address, on_gpu, ahead=ahead)
    return functools.partial(run_locally, on_gpu=on_gpu if _has_nvidia_gpu() else None, ahead=ahead)


def run_locally(todo: list[PlannedCell], run: Callable[[PlannedCell, dict], CellResult], done: dict[str, CellResult],
                record: Callable[[PlannedCell, CellResult], None],
                on_gpu: Callable[[PlannedCell], bool] | None = None,
                ahead: Callable[[PlannedCell], None] | None = None) -> dict[str, CellResult]:
    """The cells in plan order on this machine, every back-end's workers forked from a warm server (the
    framework imported once, not per cell; the caller's servers when it runs the study in a scope). With
    ``on_gpu`` (a machine with a GPU), the cells that compute on the CPU run in a second lane beside the GPU's,
    each lane in plan order, a cell waiting for the native cell it needs; ``ahead`` is then done first in the CPU
    lane for each ONNX cell of the GPU lane (its export, CPU work that would otherwise hold the GPU lane), and that
    cell waits for it. A failure in either lane stops both after their current cell."""
    from xfverify.evaluator.process.warm import caller_or_own_warm_workers

    lanes = [[p for p in todo if on_gpu(p)], [p for p in todo if not on_gpu(p)]] if on_gpu else [todo]
    early = [p for p in lanes[0] if p.cell.run == "onnx"] if on_gpu and ahead else []
    early_keys = {p.key for p in early}
    results = dict(done)
    prepared: set[str] = set()
    changed = threading.Condition()
    stopped: list[BaseException] = []

    def ready(planned: PlannedCell) -> bool:
        return bool(stopped) or ((planned.needs is None or planned.needs.key in results)
                                 and (planned.key not in early_keys or planned.key in prepared))

    def run_lane(lane: list[PlannedCell], first: tuple[PlannedCell, ...] | list[PlannedCell] = ()) -> None:
        try:
            for planned in first:
                if stopped:
                    return
                ahead(planned)
                with changed:
                    prepared.add(planned.key)
                    changed.notify_all()
            for planned in lane:
                with changed:
                    changed.wait_for(lambda: ready(planned))
                    if stopped:
                        return
                    known = dict(results)
                result = run(planned, known)
                with changed:
                    if stopped and isinstance(stopped[0], KeyboardInterrupt):
                        return  # interrupted: the study's folder is no longer this run's to write in
                    results[planned.key] = result
                    record(planned, result)
                    changed.notify_all()
        except BaseException as exc:
            with changed:
                stopped.append(exc)
                changed.notify_all()
            raise

    with caller_or_own_warm_workers():
        beside = []
        if len(lanes) == 2 and (lanes[1] or early):  # the lane runs in this scope's context: its warm workers
            beside = [threading.Thread(target=contextvars.copy_context().run, args=(_quietly(run_lane), lanes[1], early),
                                       name="xfverify-cpu-lane", daemon=True)]
        for thread in beside:
            thread.start()
        try:
            if lanes[0]:
                run_lane(lanes[0])
            for thread in beside:
                thread.join()
        except BaseException as exc:  # the other lane starts no new cell
            with changed:
                stopped.append(exc)
                changed.notify_all()
            if not isinstance(exc, KeyboardInterrupt):  # a bug: the other lane's current cell ends and is recorded
                for thread in beside:
                    thread.join()
            raise
    if stopped:
        raise stopped[0]
    return {key: result for key, result in results.items() if key not in done}


def _quietly(lane: Callable[..., None]) -> Callable[..., None]:
    """A lane for a thread: its exception is raised again by the main thread, not printed by ``threading``."""
    def run(*args) -> None:
        try:
            lane(*args)
        except BaseException:
            pass
    return run


def _versions() -> dict[str, str]:
    found = {}
    for name in KEYED_DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _has_nvidia_gpu() -> bool:
    from xfverify.evaluator.system.devices import nvidia_gpus

    return bool(nvidia_gpus())
