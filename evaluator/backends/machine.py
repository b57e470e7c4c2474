"""What a back-end says about the machine it runs on (worker side: it emits a status line)."""

from __future__ import annotations

from xfverify.evaluator.process.events import Status, emit
from xfverify.evaluator.system.devices import nvidia_gpus


def gpu_left_unused_note(framework: str, why: str, fix: str, gpus: list[str] | None = None) -> list[str]:
    """A note for the report when ``--device auto`` ran on the CPU while the machine has an NVIDIA GPU the
    framework could not use (a CPU-only build, missing CUDA libraries); none when there is no such GPU."""
    gpus = nvidia_gpus() if gpus is None else gpus
    if not gpus:
        return []
    more = f" and {len(gpus) - 1} more" if len(gpus) > 1 else ""
    note = f"{framework} ran on the CPU although this machine has an {gpus[0]}{more}: {why}; {fix}"
    emit(Status(message=note))
    return [note]
