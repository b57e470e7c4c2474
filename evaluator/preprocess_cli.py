"""``xfverify preprocess``: the exact tensor a model is fed, and (``--verify``) proof against the framework's own code."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from xfverify.evaluator import ui
from xfverify.evaluator.data import records_from_paths
from xfverify.evaluator.folders import writable_folder
from xfverify.evaluator.imaging import BadImageError, load_geometry
from xfverify.evaluator.normalise import normalise
from xfverify.evaluator.worker import run_worker
from xfverify.models.cards import get_card
from xfverify.models.errors import UserError
from xfverify.models.preprocess import PRESETS, PreprocessSpec, parse_overrides, resolve_preprocess

# Which framework's worker holds the reference implementation of each preset.
REFERENCE_FRAMEWORK = {
    "torchvision-256": "torch",
    "torchvision-232": "torch",
    "lite-bicubic": "torch",
    "lite-bilinear": "torch",
    "keras-caffe": "tensorflow",
    "keras-tf": "tensorflow",
    "keras-torch": "tensorflow",
    "keras-caffe-load-img-nearest": "tensorflow",
    "keras-caffe-pil-bilinear": "tensorflow",
    "gluoncv": "mxnet",
}


def preprocess_files(paths: list[str], spec: PreprocessSpec) -> np.ndarray:
    """The float32 batch (layout ``spec.layout``) xfverify feeds for these image files."""
    try:
        images = [load_geometry(path, spec) for path in paths]
    except BadImageError as exc:
        raise UserError(f"cannot decode image {exc.path}: {exc.reason} (fix the file, or leave it out)") from None
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise UserError(f"preprocessing {spec.name} gives images of different sizes {sorted(shapes)}: add a crop")
    return normalise(np.stack(images), spec)


def reference_tensors(preset: str, paths: list[str]) -> tuple[np.ndarray, str]:
    """The framework's own preprocessing of ``paths`` for a preset, computed in its worker."""
    framework = REFERENCE_FRAMEWORK.get(preset)
    if framework is None:
        raise UserError(f"no framework reference pipeline is known for preset {preset!r}")
    with tempfile.TemporaryDirectory(prefix=f"xfverify-{framework}-") as workdir:
        result = run_worker(framework, "reference_preprocess", {"preset": preset, "paths": paths}, workdir=workdir)
        return np.load(result["path"]), result["framework"]


def run_preprocess(model: str, images: list[str], out: str, preset: str | None, overrides, verify: bool) -> None:
    card = get_card(model)
    spec = resolve_preprocess(preset, default=card.preprocess, overrides=parse_overrides(list(overrides)))
    dataset = records_from_paths(images)
    paths = [r.path for r in dataset.records]
    tensors = preprocess_files(paths, spec)
    out_path = Path(out)
    if out_path.suffix != ".npy":  # np.save adds it
        out_path = out_path.with_name(out_path.name + ".npy")
    writable_folder(out_path.parent, "--out's folder")
    try:
        np.save(out_path, tensors)
    except OSError as exc:
        raise UserError(f"--out {out_path}: cannot write it ({exc.strerror or exc})") from None
    ui.info(f"wrote {out_path}: float32 {spec.layout} {tuple(tensors.shape)} ({spec.name}, {spec.channel_order})")
    if not verify:
        return
    if spec.name not in PRESETS:
        raise UserError("--verify compares a named preset with its framework's own code; it cannot check --set overrides")
    reference, where = reference_tensors(spec.name, paths)
    if reference.shape != tensors.shape:
        raise UserError(f"{where} produced {reference.shape}, xfverify {tensors.shape}: layouts differ")
    diff = np.abs(reference.astype(np.float64) - tensors.astype(np.float64))
    identical = reference.tobytes() == tensors.tobytes()
    ui.info(
        f"against {where}: "
        + ("bit-identical" if identical else f"max |diff| {diff.max():.3g}, {np.mean(diff > 0) * 100:.3f} % of values differ")
    )
