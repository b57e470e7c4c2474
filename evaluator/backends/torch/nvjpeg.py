"""The ``nvjpeg`` decoder: ``torchvision.io.decode_jpeg(..., device="cuda")``, run in a torch worker.

GPU decoding is a different preprocessing (about 5 uint8 levels from libjpeg-turbo on average), so diagnose
measures it. The decode pool cannot import torch, so the parent hands this worker the chunks it would have
given its pool (:class:`xfverify.evaluator.cache.store.WorkerDecodePool`); the worker decodes each chunk's JPEGs in
one batch on the GPU, applies the rest of the geometry exactly as the pool does, writes the rows into the
shard being built, and reports each chunk as an event. Files nvJPEG cannot take (not JPEG, CMYK) are decoded
by PIL, with a caveat for the report. ``XFVERIFY_NVJPEG_DEVICE=cpu`` decodes with torchvision's CPU
``decode_jpeg`` instead (libjpeg-turbo; the tests use it where there is no GPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from xfverify.evaluator.system.devices import nvjpeg_on_cpu
from xfverify.evaluator.data.imaging import (
    BadImageError,
    apply_geometry,
    check_jpeg_bytes,
    decode_pil_noting,
    read_image_bytes,
)
from xfverify.evaluator.process.tasks import DecodeDone, DecodeJob
from xfverify.evaluator.process.events import Decoded, emit
from xfverify.models.errors import UserError

def decode_device() -> torch.device:
    """cuda (nvJPEG), or the CPU where ``XFVERIFY_NVJPEG_DEVICE=cpu`` asks for it; one line without a GPU."""
    if nvjpeg_on_cpu():
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"decoder nvjpeg decodes on an NVIDIA GPU, and torch {torch.__version__} sees none: "
                        "run it on a machine with one, or leave that variant out")
    return torch.device("cuda")


def decode_nvjpeg(request: DecodeJob, workdir: Path) -> DecodeDone:
    """Decode every chunk of the job into its shard's rows; one ``decoded`` event per chunk."""
    spec = request.spec
    device = decode_device()
    shards: dict[str, np.ndarray] = {}
    for index, chunk in enumerate(request.chunks):
        target = shards.setdefault(chunk.tmp_path, np.load(chunk.tmp_path, mmap_mode="r+"))
        bad, caveats = [], []
        for offset, (image, caveat) in enumerate(_decoded(chunk.paths, device)):
            row = chunk.row + offset
            if isinstance(image, BadImageError):
                target[row] = 0
                bad.append((row, image.reason))
                continue
            target[row] = apply_geometry(image, spec)
            if caveat:
                caveats.append((row, caveat))
        emit(Decoded(index=index, bad=bad, caveats=caveats))
    for target in shards.values():
        target.flush()
    return DecodeDone(chunks=len(request.chunks), device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu")


def _decoded(paths: list[str], device: torch.device) -> list[tuple[Any, str | None]]:
    """Each path's RGB HWC picture and caveat, or the BadImageError that names what is wrong with it."""
    found: list[tuple[Any, str | None]] = [(None, None)] * len(paths)
    jpegs: dict[int, torch.Tensor] = {}
    for i, path in enumerate(paths):
        try:
            data = read_image_bytes(path)
            if data[:2] == b"\xff\xd8":
                check_jpeg_bytes(path, data)
                jpegs[i] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            else:
                found[i] = _by_pil(path, "not a JPEG, which nvJPEG cannot decode: decoded by PIL")
        except BadImageError as exc:
            found[i] = (exc, None)
    if jpegs:
        order = list(jpegs)
        try:
            pictures = decode_jpeg([jpegs[i] for i in order], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one file spoils the batch: decode them one at a time to find it
            pictures = [_one(jpegs[i], device) for i in order]
        for i, picture in zip(order, pictures):
            if picture is None:  # e.g. a CMYK JPEG, or one nvJPEG finds damaged: PIL judges it
                found[i] = _by_pil(paths[i], "a JPEG nvJPEG cannot decode (e.g. CMYK): decoded by PIL")
            else:
                found[i] = (picture.permute(1, 2, 0).cpu().numpy(), None)
    return found


def _one(data: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return None


def _by_pil(path: str, why: str) -> tuple[Any, str | None]:
    try:
        picture, caveat = decode_pil_noting(path)
    except BadImageError as exc:
        return exc, None
    return picture, "; ".join(filter(None, [why, caveat]))
