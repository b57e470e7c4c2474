"""The ``nvjpeg`` decoder: decoding moves into a torch worker (the GPU's), the rest of the geometry and the cache
stay as for any decoder. Without a GPU the worker decodes with torchvision's CPU ``decode_jpeg``
(``XFVERIFY_NVJPEG_DEVICE=cpu``): libjpeg-turbo with PIL's settings, so its tensors must be PIL's, byte for
byte, which checks every step around the decode. The GPU itself is checked in tests/test_gpu.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import broken_images, needs_torch, native_json, odd_images, run_cli, write_jpeg
from test_native import assert_user_error
from xfverify.evaluator.pipeline.options import NativeOptions

pytestmark = [needs_torch, pytest.mark.torch]


def _folder(tmp_path):
    root = tmp_path / "images"
    for i in range(5):
        write_jpeg(root / f"photo_{i}.jpg", seed=40 + i, width=160 + 13 * i, height=120)
    odd_images(root / "odd")
    return root


def _run(folder, out, decoder, **extra) -> dict:
    return native_json(NativeOptions(model="torchvision/resnet50", random_weights=True, data=str(folder),
                                     out=str(out), overrides=(f"decoder={decoder}",), batch_size=4, workers=1,
                                     **extra))


def test_the_cpu_stand_in_gives_pils_tensors_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv("XFVERIFY_NVJPEG_DEVICE", "cpu")
    folder = _folder(tmp_path)
    pil = _run(folder, tmp_path / "pil", "pil")
    nvjpeg = _run(folder, tmp_path / "nvjpeg", "nvjpeg")
    assert nvjpeg["preprocess"]["decoder"] == "nvjpeg"
    assert nvjpeg["tensors_sha256"] == pil["tensors_sha256"]
    assert np.array_equal(np.load(tmp_path / "pil" / "logits.npy"), np.load(tmp_path / "nvjpeg" / "logits.npy"))
    notes = " ".join(nvjpeg["notes"])
    assert "not a JPEG" in notes  # the PNG named .JPEG went through PIL, and the report says so


def test_bad_files_are_skipped_and_listed_or_stop_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("XFVERIFY_NVJPEG_DEVICE", "cpu")
    folder = _folder(tmp_path)
    broken = broken_images(folder / "broken")
    report = _run(folder, tmp_path / "skip", "nvjpeg", on_bad_image="skip")
    listed = " ".join(json.dumps(report["skipped_images"]).split())
    assert all(path.name in listed for path in broken.values()), listed
    assert "truncated" in listed
    done = run_cli("native", "torchvision/resnet50", "--random-weights", "--data", str(folder), "--set",
                   "decoder=nvjpeg", "--out", str(tmp_path / "stop"), env={"XFVERIFY_NVJPEG_DEVICE": "cpu"})
    assert_user_error(done, "cannot decode image", "--on-bad-image skip")


def test_without_a_gpu_it_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("XFVERIFY_NVJPEG_DEVICE", raising=False)
    folder = tmp_path / "images"
    write_jpeg(folder / "a.jpg", seed=1)
    done = run_cli("native", "torchvision/resnet50", "--random-weights", "--data", str(folder), "--set",
                   "decoder=nvjpeg", "--out", str(tmp_path / "o"))
    if done.returncode == 0:
        pytest.skip("this machine has a GPU torch can use")
    assert_user_error(done, "decoder nvjpeg", "NVIDIA GPU")
    assert not (tmp_path / "o" / "report.json").exists()
