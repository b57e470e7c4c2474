"""What the fed loop (:mod:`xfverify.evaluator.backends.runloop`) feeds: a step, fed on the host or on the device.

* A :class:`HostFedStep` (CPU back-ends) is given each batch as the float32 tensors the loop normalised and
  hashed on the host, and returns the logits and the batch's milliseconds at once.
* A :class:`DeviceFedStep` (GPU back-ends) warms itself up, has each uint8 batch staged in a loader thread
  (:meth:`~DeviceFedStep.stage`: pinned, or uploaded), normalises it on the device and returns a
  :class:`PendingBatch` at once, so batch i+1 is launched before batch i's results arrive; its result adds the
  checksums of the tensors it fed (:mod:`xfverify.evaluator.cache.digests`), which the loop checks.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Literal, NamedTuple

import numpy as np

Feed = Literal["host", "device"]


class HostBatch(NamedTuple):
    logits: np.ndarray
    batch_ms: float


class DeviceBatch(NamedTuple):
    logits: np.ndarray
    batch_ms: float
    fed_checksums: np.ndarray  # (n, 2) int64: the checksums of the tensors fed, per image


class HostFedStep(ABC):
    """Fed CPU-normalised float32 batches; synchronous."""

    feed: ClassVar[Feed] = "host"

    @abstractmethod
    def run(self, tensors: np.ndarray) -> HostBatch:
        """The logits of a float32 batch, and the milliseconds it took."""


class PendingBatch(ABC):
    """A device step's batch in flight."""

    @abstractmethod
    def result(self) -> DeviceBatch:
        """Wait for the batch; its logits, milliseconds and fed-tensor checksums."""


class DeviceFedStep(ABC):
    """Fed uint8 batches, normalised on the device; asynchronous."""

    feed: ClassVar[Feed] = "device"

    @abstractmethod
    def warm_up(self, sizes: list[int], hw: tuple[int, int], full_batches: int) -> float:
        """Run each batch shape before the timed loop (autotuning, lazy initialisation); returns seconds."""

    @abstractmethod
    def stage(self, u8: np.ndarray) -> Any:
        """In a loader thread: what :meth:`launch` is given of a uint8 NHWC batch (pinned, uploaded); it has a
        length, its number of images."""

    @abstractmethod
    def launch(self, staged: Any) -> PendingBatch:
        """Start a staged batch; its results come later."""


Step = HostFedStep | DeviceFedStep


class HostStep(HostFedStep):
    """A host-fed step around a framework's call ``infer(tensors) -> logits``, timed on the host."""

    def __init__(self, infer: Callable[[np.ndarray], np.ndarray]):
        self.infer = infer

    def run(self, tensors: np.ndarray) -> HostBatch:
        started = time.perf_counter()
        out = self.infer(tensors)
        return HostBatch(out, (time.perf_counter() - started) * 1000.0)


class FinishedBatch(PendingBatch):
    """A batch a device step ran synchronously, in the shape of a pending one."""

    def __init__(self, batch: DeviceBatch):
        self.batch = batch

    def result(self) -> DeviceBatch:
        return self.batch
