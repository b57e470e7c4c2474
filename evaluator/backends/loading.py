"""The loader part of a back-end, as Polygraphy's loaders: the network a job asks for, on its device.

A :class:`ModelLoader` returns the network and the report's weights block, and places it on the device in the
form it runs fastest. A :class:`CardModelLoader` builds the network a model card names: seeded random weights,
a user's weights file, or the card's own weights (checksum checked); one that also
:class:`ScalesRandomOutputs` makes a random network's logits well-scaled.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any, ClassVar, NamedTuple

import numpy as np

from xfverify.models.hashing import sha256_file
from xfverify.evaluator.backends.running import Device
from xfverify.evaluator.backends.weights import calibration_batch
from xfverify.evaluator.process.blocks import CheckedWeights, FileWeights, RandomWeights, WeightsBlock
from xfverify.evaluator.process.tasks import EvaluateJob, ExportJob, IntermediatesJob
from xfverify.models.cards import ModelCard
from xfverify.models.errors import UserError


class Loaded(NamedTuple):
    """A network and the report's weights block."""

    model: Any
    weights: WeightsBlock


class ModelLoader(ABC):
    """Loads the network a job asks for."""

    @abstractmethod
    def load(self, job: EvaluateJob | ExportJob | IntermediatesJob, device: Device) -> Loaded:
        """The job's network (built on ``device`` where the framework builds in place) and its weights block."""

    def place(self, model: Any, device: Device) -> Any:
        """The model on its device, in the form it runs fastest (channels-last, hybridized, ...)."""
        return model


class ScalesRandomOutputs(ABC):
    """Makes a random network's logits well-scaled (std ~1), so their ranks are not near-ties of huge values."""

    calibration_batch: ClassVar[int]  # images of the batch that measures the logits' spread
    calibration_layout: ClassVar[str] = "NCHW"  # the layout the network takes
    random_scheme: str = ""  # in the export cache's key of random weights: changed when calibration does (per network)
    calibrates_on_photo_like_pixels: ClassVar[bool] = False  # calibration_batch with the card's spec

    def calibrate(self, model: Any, batch: np.ndarray, device: Device) -> None:
        """Set a random network's normalisation statistics from a batch, where its framework's initialisers would
        let the activations vanish or explode (before the logits are measured); by default nothing."""

    @abstractmethod
    def logits_std(self, model: Any, batch: np.ndarray, device: Device) -> float:
        """The standard deviation of the logits of a float32 NCHW batch."""

    @abstractmethod
    def scale_last_layer(self, model: Any, std: float) -> None:
        """Divide the classifier's weights and bias by ``std``."""


class CardModelLoader(ModelLoader):
    """Builds the network a model card names, with the weights the job asks for."""

    @abstractmethod
    def seed(self, seed: int) -> None:
        """Seed the framework's random generators (random weights are reproducible)."""

    @abstractmethod
    def random_network(self, card: ModelCard, device: Device) -> Any:
        """The card's network with seeded random weights, ready for inference."""

    @abstractmethod
    def network_from_file(self, card: ModelCard, path: str, device: Device) -> Any:
        """The card's network with the weights in a user's file (a user error when they do not fit)."""

    @abstractmethod
    def pretrained_network(self, card: ModelCard, device: Device) -> tuple[Any, CheckedWeights]:
        """The card's network with its own weights, and the report's weights block (checksum checked)."""

    def load(self, job: EvaluateJob | ExportJob | IntermediatesJob, device: Device) -> Loaded:
        card = job.card()
        self.seed(job.seed)
        if job.random_weights:
            model = self.random_network(card, device)
            if isinstance(self, ScalesRandomOutputs):
                scale_random_outputs(self, model, job.seed, device, card)
            return Loaded(model, RandomWeights(seed=job.seed))
        if job.weights_file:
            if not os.path.isfile(job.weights_file):
                raise UserError(f"--weights {job.weights_file}: no such file")
            model = self.network_from_file(card, job.weights_file, device)
            return Loaded(model, FileWeights(source=str(job.weights_file), sha256=sha256_file(job.weights_file)))
        return Loaded(*self.pretrained_network(card, device))


def scale_random_outputs(scaler: ScalesRandomOutputs, model: Any, seed: int, device: Device, card: ModelCard) -> None:
    """Calibrate a random network on a fixed random batch of its own input size, then divide its last layer by its
    logits' spread there."""
    size = card.reference_spec.output_hw[0] if card.reference_spec.output_hw else 224  # the network's own input size
    spec = card.reference_spec if scaler.calibrates_on_photo_like_pixels else None
    batch = calibration_batch(seed, scaler.calibration_batch, scaler.calibration_layout, size, spec)
    scaler.calibrate(model, batch, device)
    std = scaler.logits_std(model, batch, device)
    if std > 0 and np.isfinite(std):
        scaler.scale_last_layer(model, std)
