"""Helpers for the tests: generated images and datasets, the shipped sample, framework availability."""

from __future__ import annotations

import importlib.util
import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from browser import CHROMIUM
from PIL import Image

from xfverify.models.imagenet import class_table

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "evaluator" / "data" / "sample"
PHOTOS = ["grace_hopper.jpg", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png"]
# 500 labelled ImageNet photographs beside the checkout (never copied into it); CI has them too.
IMAGENET_SAMPLE_500 = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample-500"


def without_gpus() -> dict[str, str]:
    """The environment that hides this machine's NVIDIA GPUs; none where it has none (a changed import-time variable
    starts another warm server: seconds of CPU per test)."""
    return {"CUDA_VISIBLE_DEVICES": ""} if Path("/dev/nvidiactl").exists() else {}


def imagenet_sample_500() -> Path:
    """The folder of real labelled photographs; skips the test without it, except under CI, where that fails."""
    if not IMAGENET_SAMPLE_500.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{IMAGENET_SAMPLE_500} is missing: CI must have ../shared beside the checkout")
        pytest.skip(f"no {IMAGENET_SAMPLE_500}")
    return IMAGENET_SAMPLE_500


def real_photos(every: int) -> list[str]:
    """Every ``every``-th photograph of imagenet-sample-500 (sorted by path), as strings."""
    return [str(p) for p in sorted(imagenet_sample_500().glob("*/*.JPEG"))[::every]]


def framework_available(name: str) -> bool:
    """Whether a framework is installed, found without importing it (the test process stays framework-free)."""
    modules = {"torch": ["torch", "torchvision", "timm"], "tensorflow": ["tensorflow", "keras"], "mxnet": ["mxnet", "gluoncv"]}
    return all(importlib.util.find_spec(m) is not None for m in modules[name])


needs_torch = pytest.mark.skipif(not framework_available("torch"), reason="torch/torchvision/timm not installed")
needs_tensorflow = pytest.mark.skipif(not framework_available("tensorflow"), reason="tensorflow not installed")
needs_mxnet = pytest.mark.skipif(not framework_available("mxnet"), reason="mxnet/gluoncv not installed")


def synthetic_image(seed: int, width: int, height: int) -> Image.Image:
    """A smooth-plus-noise RGB picture (compresses like a photo, unlike pure noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            128 + 100 * np.sin(x / (7 + seed % 5) + seed),
            128 + 100 * np.cos(y / (11 + seed % 3)),
            128 + 100 * np.sin((x + y) / 17.0),
        ],
        axis=-1,
    )
    noisy = base + rng.normal(0, 12, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def write_jpeg(path: Path, seed: int, width: int = 120, height: int = 90, quality: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    synthetic_image(seed, width, height).save(path, format="JPEG", quality=quality)
    return path


VAL_SIZES = [(120, 90), (90, 120), (100, 100), (131, 77), (64, 200), (300, 240)]


def imagenet_val_files(n: int) -> list[tuple[str, int]]:
    """(file name, class index) for n fake validation images; classes are spread over 0..999."""
    return [(f"ILSVRC2012_val_{i:08d}.JPEG", (i * 137) % 1000) for i in range(1, n + 1)]


def odd_images(folder: Path) -> dict[str, Path]:
    """Real ImageNet oddities made from a real photo: CMYK JPEG, grayscale JPEG, PNG named .JPEG, EXIF-rotated, a JPEG
    with 4:4:0 chroma subsampling (one of the 500 photos in ../shared has it)."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = Image.open(SAMPLE_DIR / "coffee.png").convert("RGB").resize((300, 200))
    made = {}
    made["cmyk"] = folder / "cmyk.JPEG"
    photo.convert("CMYK").save(made["cmyk"], format="JPEG", quality=92)
    made["gray"] = folder / "gray.JPEG"
    photo.convert("L").save(made["gray"], format="JPEG", quality=92)
    made["png_named_jpeg"] = folder / "png_inside.JPEG"
    photo.save(made["png_named_jpeg"], format="PNG")
    made["exif_rotated"] = folder / "exif_rotated.JPEG"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW on display
    photo.save(made["exif_rotated"], format="JPEG", quality=92, exif=exif.tobytes())
    made["chroma_440"] = folder / "chroma_440.JPEG"  # luma sampled 1 x 2: libjpeg builds decode it differently
    made["chroma_440"].write_bytes(cv2.imencode(".jpg", np.asarray(photo)[:, :, ::-1], [
        cv2.IMWRITE_JPEG_QUALITY, 92, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_440])[1])
    return made


def broken_images(folder: Path) -> dict[str, Path]:
    """Files that are not decodable images: truncated JPEG, empty file, text named .JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    synthetic_image(7, 200, 150).save(buffer, format="JPEG", quality=90)
    made = {"truncated": folder / "truncated.JPEG", "empty": folder / "empty.JPEG", "text": folder / "text.JPEG"}
    made["truncated"].write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    made["empty"].write_bytes(b"")
    made["text"].write_text("this is not an image\n")
    return made


def decompression_bomb(path: Path, side: int = 20000) -> Path:
    """A real, valid 1-bit PNG of side x side pixels (past PIL's bomb limit) that takes a few kB on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (side + 7) // 8)  # filter byte, then the row's bits: all black
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1 bit per pixel, grayscale
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


def run_cli(*args: str, env: dict | None = None, timeout: int = 600, isolated: bool = False,
            ) -> subprocess.CompletedProcess:
    """``xfverify ARGS``, output captured: in this process (its workers are processes of their own either way,
    and a bug raises as itself), or with ``isolated`` in a ``python -m xfverify`` subprocess, for what needs a
    process of its own (signals, the traceback a bug prints, a blocked import)."""
    if not isolated:
        return run_cli_here(*args, env=env)
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("COLUMNS", "200")
    return subprocess.run(
        [sys.executable, "-m", "xfverify", *args], capture_output=True, text=True, env=full_env, timeout=timeout
    )


def run_cli_here(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``xfverify ARGS`` in this process, for what is refused before any worker starts (a second of start-up
    saved per call): stdout and stderr captured, the exit code kept, a bug raised as itself."""
    import contextlib

    from xfverify.evaluator.commands.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.update({"COLUMNS": "200", **(env or {})})
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                main(list(args))
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(["xfverify", *args], code, stdout.getvalue(), stderr.getvalue())


def wnid(index: int) -> str:
    return class_table()[index][0]


def native_json(options) -> dict:
    """``run_native``'s report as report.json holds it (what the tests check is what users read)."""
    from xfverify.evaluator.pipeline.native import run_native

    return run_native(options).report.model_dump(mode="json")


needs_chromium = pytest.mark.skipif(CHROMIUM is None and os.environ.get("CI") != "true",
                                    reason="no chromium (apt-get install chromium)")
