"""The runner part of a back-end, as Polygraphy's runners: where it computes and how it is fed a batch.

A :class:`Runner` resolves the device (and the precision set up on it), makes the step the fed loop feeds
(:mod:`xfverify.evaluator.backends.steps`), and says what it ran: the framework, the precision block, the
runtime block, whether an exception means the batch did not fit. A back-end that can run its next passes of a
loaded network at another precision is also a :class:`SwitchesPrecision`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from xfverify.evaluator.backends.steps import Step
from xfverify.evaluator.process.blocks import PrecisionBlock
from xfverify.evaluator.process.tasks import EvaluateJob, FrameworkInfo, RuntimeInfo
from xfverify.models.cards import ModelCard
from xfverify.models.precision import Precision
from xfverify.models.preprocess import PreprocessSpec


@dataclass
class Device:
    """Where a back-end computes: ``type`` cpu or cuda, a name for reports, the framework's own handle, and notes
    for the report (a GPU left unused, and why)."""

    type: str
    name: str
    handle: Any = None
    notes: list[str] = field(default_factory=list)


class Runner(ABC):
    """Runs a loaded network over fed batches."""

    name: ClassVar[str]

    @abstractmethod
    def resolve_device(self, requested: str, precision: Precision) -> Device:
        """Probe the device (a small kernel where a build may lack the card's code) and set up precision: the
        device returned is the one the network will run on."""

    @abstractmethod
    def step(self, model: Any, spec: PreprocessSpec, device: Device, job: EvaluateJob) -> Step:
        """What the fed loop feeds: a host-fed or a device-fed step."""

    @abstractmethod
    def describe(self) -> FrameworkInfo:
        """Framework name, version and the libraries that matter."""

    @abstractmethod
    def precision(self, requested: Precision, device: Device, step: Step) -> PrecisionBlock:
        """The report's precision block: what was asked, and what the framework actually did."""

    def runtime(self, model: Any, step: Step) -> RuntimeInfo | None:
        """The report's runtime block (providers and the options that change numbers), where there is one."""
        return None

    @abstractmethod
    def is_out_of_memory(self, exc: BaseException) -> bool:
        """Whether an exception means the batch did not fit the device."""


class SwitchesPrecision(ABC):
    """Runs the next passes of a loaded network at another precision (``diagnose --precisions``)."""

    @abstractmethod
    def check_precision(self, precision: Precision, device: Device) -> None:
        """Refuse, as a user error naming what works, a precision this device cannot switch to (called before the
        model is loaded)."""

    @abstractmethod
    def with_precision(self, model: Any, card: ModelCard | None, precision: Precision, device: Device) -> Any:
        """The loaded network set up to run its next passes at ``precision`` (the same weights)."""
