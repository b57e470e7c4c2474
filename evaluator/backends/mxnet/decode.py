"""MXNet's own decoder, ``mx.image.imdecode`` (its bundled OpenCV and libjpeg), run in an mxnet worker.

GluonCV loads every image with ``mx.image.imread``. MXNet's wheel bundles its own OpenCV and libjpeg, which decode
some JPEGs otherwise than opencv-python's libjpeg-turbo (a file with 4:4:0 chroma subsampling differs in
hundreds of thousands of values, by up to 2 levels, before any resize). The decode pool cannot import MXNet, so the
parent hands this worker the chunks it would have given its pool
(:class:`xfverify.evaluator.process.worker_decode_pool.WorkerDecodePool`); the geometry after the decode is the
pool's own (OpenCV's resize, as GluonCV's transforms call it, bit-identical).
"""

from __future__ import annotations

from pathlib import Path

import mxnet as mx
import numpy as np

from xfverify.evaluator.backends.decoding import decode_chunks
from xfverify.evaluator.data.imaging import BadImageError, apply_geometry, check_jpeg_bytes, read_image_bytes
from xfverify.evaluator.process.tasks import DecodeDone, MxnetDecodeJob
from xfverify.models.preprocess import PreprocessSpec


def decode_mxnet_file(path: str, spec: PreprocessSpec) -> tuple[np.ndarray, None]:
    """The file's geometry for ``spec``, decoded by ``mx.image.imdecode`` (RGB) as ``mx.image.imread`` does; a
    BadImageError for a file it cannot decode."""
    data = read_image_bytes(path)
    check_jpeg_bytes(path, data)  # a truncated JPEG or a decompression bomb, refused as by the other decoders
    try:
        image = mx.image.imdecode(data).asnumpy()
    except mx.base.MXNetError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = lines[-1].removeprefix("MXNetError: ") if lines else type(exc).__name__  # its C++ trace ends in why
        raise BadImageError(path, f"MXNet could not decode it ({reason})") from None
    if image.ndim != 3 or image.shape[2] != 3:
        raise BadImageError(path, f"MXNet decoded it to shape {image.shape}, not RGB")
    return apply_geometry(image, spec), None


def decode_mxnet(request: MxnetDecodeJob, workdir: Path) -> DecodeDone:
    """Decode every chunk of the job into its shard's rows; one ``decoded`` event per chunk."""
    chunks = decode_chunks(request, decode_mxnet_file)
    return DecodeDone(chunks=chunks, device=f"mxnet {mx.__version__} on the CPU")
