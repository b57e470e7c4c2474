"""Finding NVIDIA GPUs without a framework, and the note a CPU run leaves when one went unused."""

from __future__ import annotations

from xfverify.evaluator.backends.machine import gpu_left_unused_note
from xfverify.evaluator.system.devices import nvidia_gpus

H100_INFO = """Model: \t\t NVIDIA H100 80GB HBM3
IRQ:   \t\t 0
GPU UUID: \t GPU-0000
Bus Location: \t 0000:18:00.0
"""


def test_nvidia_gpus_are_read_from_the_drivers_proc_tree(tmp_path):
    for bus in ("0000:18:00.0", "0000:2a:00.0"):
        (tmp_path / bus).mkdir()
        (tmp_path / bus / "information").write_text(H100_INFO)
    assert nvidia_gpus(tmp_path) == ["NVIDIA H100 80GB HBM3"] * 2
    assert nvidia_gpus(tmp_path / "absent") == []


def test_a_cpu_run_beside_an_unused_gpu_says_why_and_how_to_fix_it(capsys):
    notes = gpu_left_unused_note("TensorFlow", "TensorFlow 2.21.0 sees no GPU", "pip install 'tensorflow[and-cuda]'",
                                 gpus=["NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"])
    assert notes == ["TensorFlow ran on the CPU although this machine has an NVIDIA H100 80GB HBM3 and 1 more: "
                     "TensorFlow 2.21.0 sees no GPU; pip install 'tensorflow[and-cuda]'"]
    assert "sees no GPU" in capsys.readouterr().out  # also shown while the run goes on
    assert gpu_left_unused_note("torch", "no CUDA build", "install one", gpus=[]) == []
