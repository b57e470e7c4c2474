"""A study's report assembled from made-up cell results, at any size, for the page's tests and its benchmark: the
page is drawn from study.json alone, so its layout at zoo scale needs no model run. Each cell's folder can be given
a page to link to. The numbers are seeded random draws, not measurements."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from xfverify.evaluator.analysis.metrics import wilson_interval
from xfverify.evaluator.reports.study import (
    Cause,
    CellResult,
    DiagnoseCell,
    ModelRow,
    NativeCell,
    OnnxCell,
    StudyDataset,
    StudyReport,
)

SOURCES = {"torchvision": "torch", "timm": "torch", "keras": "tensorflow", "gluoncv": "mxnet", "hf": "torch"}
FAMILIES = ("resnet", "resnext", "efficientnet_b", "mobilenetv3_large", "convnext", "vit_base_patch16", "regnety",
            "densenet", "deit_small_patch16", "swin_tiny_patch4_window7", "mixnet", "ghostnet")
N_IMAGES = 500


def _key(*parts: object) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()


def synthetic_study(n_models: int, folder: Path | None = None, seed: int = 0, diagnose_every: int = 10) -> StudyReport:
    """``n_models`` models, each with a native and an ONNX cell (every ``diagnose_every``-th a diagnose cell too);
    about one in twelve reproduced outside its published interval, one in fifteen disagreeing under ONNX Runtime, a
    few cells failed. With ``folder``: each finished cell's folder made there with a small report.html."""
    rng = random.Random(seed)
    cells, rows = [], []
    for i in range(n_models):
        source = list(SOURCES)[i % len(SOURCES)]
        family = FAMILIES[(i // len(SOURCES)) % len(FAMILIES)]
        model = f"{source}/{family}{i // (len(SOURCES) * len(FAMILIES))}_{i}:{rng.choice(['IMAGENET1K_V1', 'IMAGENET1K_V2', 'in1k', 'a1_in1k'])}"
        published = round(rng.uniform(12.0, 35.0), 1)
        shift = rng.choice([rng.uniform(6, 15), -rng.uniform(6, 12)]) if rng.random() < 1 / 12 else rng.gauss(0, 1.2)
        errors = max(0, min(N_IMAGES, round((published + shift) / 100 * N_IMAGES)))
        lo, hi = wilson_interval(errors, N_IMAGES)
        native_fails = rng.random() < 0.01
        native = None if native_fails else NativeCell(
            top1_error=round(100 * errors / N_IMAGES, 4), top1_error_ci95=[round(lo, 4), round(hi, 4)],
            top5_error=round(published / 3, 2), n_scored=N_IMAGES, tensors_sha256=_key("t", i), device="cpu",
            images_per_s=round(rng.lognormvariate(4.0, 0.8), 2), data_wait_s=round(rng.uniform(0.1, 2), 3),
            compute_s=round(rng.uniform(5, 60), 3))
        onnx = None
        if native is not None:
            flips = rng.choice([1, 2, 5, 12]) if rng.random() < 1 / 15 else 0
            onnx = OnnxCell(
                top1_error=round(native.top1_error + (rng.choice([-0.2, 0.2]) if flips else 0.0), 4),
                tensors_sha256=native.tensors_sha256, exporter="torch.onnx.export (dynamo=True)", opset=18,
                top1_agreement=round(100 * (N_IMAGES - flips) / N_IMAGES, 4), n_flips=flips,
                mcnemar_p=1.0 if not flips else round(rng.uniform(0.1, 1.0), 3),
                max_abs_diff_over_max_abs_logit=1e-6 if not flips else 3e-3,
                within_tolerance=1.0 if not flips else 0.9991, native_varies=i % 31 != 7,
                providers=["CPUExecutionProvider"],
                images_per_s=round(native.images_per_s * rng.uniform(1.2, 3.5), 2), data_wait_s=0.05,
                onnx_over_native_time=round(rng.uniform(0.3, 0.9), 3))
        diagnose = None
        if native is not None and i % diagnose_every == 0:
            delta = round(rng.uniform(2, 12), 1)
            diagnose = DiagnoseCell(reproduced=native.top1_error, n_variants=3, within_noise=["resize-pil"],
                                    sentence="made-up", causes=[Cause(name="norm-imagenet-mean-std", axis="preprocessing",
                                                                      delta=delta, delta_ci95=[delta - 2.5, delta + 2.5])])
        failed = [] if native is not None else ["native: failed: made-up failure", "onnx: skipped: its native cell did not finish"]
        runs = [("native", native), ("onnx", onnx)] + ([("diagnose", diagnose)] if diagnose is not None else [])
        for run, result in runs:
            safe = model.replace("/", "_").replace(":", "_")
            cell = CellResult(key=_key(run, model), run=run, model=model, folder=f"cells/{run}-{safe}",
                              status="done" if result is not None else ("failed" if run == "native" else "skipped"),
                              error=None if result is not None else "made-up failure", seconds=1.0,
                              **({run: result} if result is not None else {}))
            cells.append(cell)
            if folder is not None and result is not None:
                page = folder / cell.folder / "report.html"
                page.parent.mkdir(parents=True, exist_ok=True)
                page.write_text(f"<!DOCTYPE html><title>{run} {model}</title><h1>{run} {model}</h1>\n")
        rows.append(ModelRow(model=model, architecture=family, framework=SOURCES[source], published_top1_error=published,
                             native=native, onnx=onnx, diagnose=diagnose, failed=failed))
    return StudyReport(name=f"synthetic-{n_models}", about=f"{n_models} models with made-up results (seed {seed}): "
                       "the page at scale, not a measurement", dataset=StudyDataset(
                           path="(none: made-up results)", n_images=N_IMAGES, n_labelled=N_IMAGES,
                           manifest_sha256="0" * 64),
                       executor="local", cells=cells, rows=rows, ran=0, reused=len(cells), wall_s=0.0,
                       xfverify_version="synthetic")
