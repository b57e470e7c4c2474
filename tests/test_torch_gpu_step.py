"""The torch GPU step's logic (three streams, gather-normalisation, optional CUDA graph), run on the CPU
with a synchronous stand-in for torch.cuda, in its own process (this one never imports torch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import needs_torch

pytestmark = [needs_torch, pytest.mark.torch]


def test_gpu_step_feeds_the_cpu_bytes_and_falls_back_from_bad_graphs(tmp_path):
    script = Path(__file__).with_name("torch_gpu_step_checks.py")
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    outcomes = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcomes["graphs"]["captures"] == 1
    assert outcomes["eager"]["recorded_streams"] > 0  # eager tensors are handed to the side streams
