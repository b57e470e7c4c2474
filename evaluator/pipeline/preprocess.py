"""``xfverify preprocess``: the exact tensor a model is fed, and (``--verify``) proof against the framework's own code."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from xfverify.evaluator.analysis.comparison import TensorMatch, compare_tensors
from xfverify.evaluator.data.imaging import BadImageError, load_geometry
from xfverify.evaluator.data.layouts import records_from_paths
from xfverify.evaluator.data.normalise import normalise
from xfverify.evaluator.process.launcher import run_worker
from xfverify.evaluator.process.tasks import DECODE_JOBS, DecodeChunk, ReferenceJob
from xfverify.evaluator.references import CATALOGUE_REFERENCES, REFERENCES, Reference
from xfverify.evaluator.system import console
from xfverify.evaluator.system.files import writable_folder
from xfverify.models.cards import get_card
from xfverify.models.errors import UserError
from xfverify.models.overrides import parse_overrides
from xfverify.models.preprocess import PRESETS, PreprocessSpec, resolve_preprocess
from xfverify.models.user_input import not_regular_kind, shown


def preprocess_files(paths: list[str], spec: PreprocessSpec) -> np.ndarray:
    """The float32 batch (layout ``spec.layout``) xfverify feeds for these image files."""
    if spec.decoder == "nvjpeg":
        raise UserError("xfverify preprocess decodes on the CPU; decoder nvjpeg decodes on a GPU inside a run "
                        "(native, onnx, diagnose): use --set decoder=pil to see the libjpeg-turbo decode")
    if spec.decode_worker is not None:  # TensorFlow's crop windows, MXNet's own decoder
        images = list(_decoded_in_worker(paths, spec))
    else:
        try:
            images = [load_geometry(path, spec) for path in paths]
        except BadImageError as exc:
            raise UserError(f"cannot decode image {exc.path}: {exc.reason} (fix the file, or leave it out)") from None
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise UserError(f"preprocessing {spec.name} gives images of different sizes {sorted(shapes)}: add a crop")
    return normalise(np.stack(images), spec)


def _decoded_in_worker(paths: list[str], spec: PreprocessSpec) -> np.ndarray:
    """The geometry of ``paths`` decoded in the spec's framework's worker (TensorFlow's crop windows, MXNet's own
    decoder), as the tensor cache has them decoded."""
    with tempfile.TemporaryDirectory(prefix="xfverify-decode-") as workdir:
        rows = Path(workdir) / "rows.npy"
        images = np.lib.format.open_memmap(rows, mode="w+", dtype=spec.cached_dtype,
                                           shape=(len(paths), *spec.output_hw, 3))
        del images  # the worker writes the rows
        bad: list[tuple[int, str]] = []
        job = DECODE_JOBS[spec.decode_worker](spec=spec, chunks=[DecodeChunk(tmp_path=str(rows), row=0, paths=paths)])
        run_worker(spec.decode_worker, job, workdir=workdir, on_event=lambda event: bad.extend(event.bad or []))
        if bad:
            row, reason = bad[0]
            raise UserError(f"cannot decode image {paths[row]}: {reason} (fix the file, or leave it out)")
        return np.load(rows)


def reference_tensors(preset: str, paths: list[str]) -> tuple[np.ndarray, str]:
    """The preset's reference pipeline on ``paths``, computed in its framework's worker, in the preset's layout."""
    reference = REFERENCES.get(preset)
    if reference is None:
        raise UserError(f"no framework reference pipeline is known for preset {preset!r}")
    return _run_reference(reference, ReferenceJob(preset=preset, paths=paths), PRESETS[preset].layout)


def catalogue_reference(card_id: str) -> Reference | None:
    """The reference of a catalogue card's source (its own evaluation transform), if xfverify has one."""
    return CATALOGUE_REFERENCES.get(card_id.partition("/")[0])


def catalogue_reference_tensors(card_id: str, paths: list[str], layout: str) -> tuple[np.ndarray, str]:
    """A catalogue entry's source's own evaluation transform on ``paths`` (torchvision's ``weights.transforms()``,
    timm's ``create_transform`` of the tag's pretrained_cfg, ...), computed in its framework's worker, in ``layout``."""
    reference = catalogue_reference(card_id)
    if reference is None:
        raise UserError(f"no framework reference pipeline is known for the source of {card_id!r}")
    return _run_reference(reference, ReferenceJob(catalogue=card_id, paths=paths), layout)


def _run_reference(reference: Reference, job: ReferenceJob, layout: str) -> tuple[np.ndarray, str]:
    with tempfile.TemporaryDirectory(prefix=f"xfverify-{reference.framework}-") as workdir:
        result = run_worker(reference.framework, job, workdir=workdir)
        batch = np.load(result.path)
    if result.layout != layout:
        batch = np.ascontiguousarray(batch.transpose((0, 3, 1, 2) if result.layout == "NHWC" else (0, 2, 3, 1)))
    return batch, result.framework


def _check_readable_by_reference(preset: str, paths: list[str]) -> None:
    """A JPEG-only reference given other files: one line naming them, before its worker starts."""
    reference = REFERENCES.get(preset)
    if reference is None or not reference.jpeg_only:
        return
    others = []
    for path in paths:
        with open(path, "rb") as handle:
            if handle.read(3) != b"\xff\xd8\xff":
                others.append(Path(path).name)
    if others:
        raise UserError(f"--verify: {preset}'s source reads JPEG files only, and {len(others)} of {len(paths)} "
                        f"image(s) are not JPEG ({', '.join(others[:5])}): verify it with JPEG files")


def compare_with_reference(ours: np.ndarray, theirs: np.ndarray, reference: Reference) -> TensorMatch:
    """xfverify's tensors against a reference pipeline's, within the bound that reference documents."""
    return compare_tensors(ours, theirs, reference.bound, reference.outlier_fraction)


def describe_match(match: TensorMatch, reference: Reference, paths: list[str]) -> str:
    """The comparison in one line, naming the images outside the reference's bound."""
    if match.identical:
        return "bit-identical"
    worst = max(match.outlier_fractions, default=0.0)
    text = (
        f"max |diff| {match.max_abs_diff:.3g}; at most {worst * 100:.3f} % of an image's values beyond "
        f"{reference.bound:.3g}"
    )
    if reference.exact:
        return text + " (expected bit-identical)"
    if match.within_bound:
        return f"{text}: within the expected bound ({reference.why})"
    named = ", ".join(Path(paths[i]).name for i in match.outside[:5])
    return f"{text}: {len(match.outside)} image(s) outside the expected bound ({named}); {reference.why}"


def run_preprocess(model: str, images: list[str], out: str, preset: str | None, overrides, verify: bool) -> None:
    card = get_card(model)
    spec = resolve_preprocess(preset, default=card.reference_spec, overrides=parse_overrides(list(overrides)))
    dataset = records_from_paths(images)
    paths = [r.path for r in dataset.records]
    # a catalogue card's own spec is checked against its source's own transform for that entry
    by_source = spec.name not in PRESETS and card.spec is not None and spec == card.spec
    if verify:  # refused before anything is computed or written
        if by_source and catalogue_reference(card.id) is None:
            raise UserError(f"--verify: no framework reference pipeline is known for {card.id}'s source")
        if spec.name not in PRESETS and not by_source:
            raise UserError("--verify compares a named preset or a catalogue card's own preprocessing with its "
                            "source's own code; it cannot check --set overrides")
        _check_readable_by_reference(spec.name, paths)
    out_path = _npy_path(Path(out))  # before anything is computed
    tensors = preprocess_files(paths, spec)
    try:
        np.save(out_path, tensors)
    except OSError as exc:
        raise UserError(f"--out {out_path}: cannot write it ({exc.strerror or exc})") from None
    console.info(f"wrote {out_path}: float32 {spec.layout} {tuple(tensors.shape)} ({spec.name}, {spec.channel_order})")
    if not verify:
        return
    if by_source:
        theirs, where = catalogue_reference_tensors(card.id, paths, spec.layout)
        reference = catalogue_reference(card.id)
    else:
        theirs, where = reference_tensors(spec.name, paths)
        reference = REFERENCES[spec.name]
    if theirs.shape != tensors.shape:
        raise UserError(f"{where} produced {theirs.shape}, xfverify {tensors.shape}: layouts differ")
    console.info(f"against {where}: " + describe_match(compare_with_reference(tensors, theirs, reference), reference, paths))


def _npy_path(out: Path) -> Path:
    """The .npy file --out names (``.npy`` added when it lacks it, as ``np.save`` would); a device, a folder or a FIFO
    named, or one at the path written, is one line: nothing is written beside it under another name."""
    for path in dict.fromkeys((out, out if out.suffix == ".npy" else out.with_name(out.name + ".npy"))):
        try:
            kind = not_regular_kind(os.stat(path).st_mode)
        except OSError:
            continue
        if kind is not None:
            raise UserError(f"--out {shown(path)}: {kind}, not a file; give the path of a .npy file to write")
    out_path = out if out.suffix == ".npy" else out.with_name(out.name + ".npy")
    writable_folder(out_path.parent, "--out's folder")
    return out_path
