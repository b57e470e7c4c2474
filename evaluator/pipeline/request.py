"""A run's request resolved: the model card, the preprocessing spec and the dataset, checked together."""

from __future__ import annotations

from typing import NamedTuple

from xfverify.evaluator.data.layouts import SAMPLE_DIR, Dataset, load_dataset
from xfverify.evaluator.pipeline.options import NativeOptions, RunOptions
from xfverify.evaluator.process.registry import BACKENDS
from xfverify.models.cards import ModelCard, get_card
from xfverify.models.errors import UserError
from xfverify.models.overrides import parse_overrides
from xfverify.models.preprocess import PreprocessSpec, resolve_preprocess


class Request(NamedTuple):
    """What a run is asked about, resolved once: the model's card, the preprocessing spec, the images."""

    card: ModelCard
    spec: PreprocessSpec
    dataset: Dataset


def prepare(options: NativeOptions) -> Request:
    """Resolve the card, the preprocessing and the dataset; validate their combination."""
    card = get_card(options.model)
    if options.cuda_graphs and not BACKENDS[card.framework].cuda_graphs:
        graphed = ", ".join(name for name, backend in BACKENDS.items() if backend.cuda_graphs)
        raise UserError(f"--cuda-graphs applies to {graphed} models; {card.id} runs in {card.framework}")
    spec = resolved_spec(card, options)
    if spec.layout != card.input_layout:
        raise UserError(
            f"preprocessing {spec.name} produces {spec.layout} tensors but {card.id} takes {card.input_layout}: "
            f"add --set layout={card.input_layout}"
        )
    return Request(card, spec, scored_and_held_out(options)[0])


def scored_and_held_out(options: RunOptions) -> tuple[Dataset, Dataset | None]:
    """The images a run scores (``--data`` after ``--limit`` and ``--per-class``) and those ``--calibration-split``
    holds out of them to calibrate int8 (None without it)."""
    dataset = load_dataset(options.data or SAMPLE_DIR, devkit=options.devkit)
    dataset = dataset.select(limit=options.limit, per_class=options.per_class)
    if not options.calibration_split:
        return dataset, None
    held, scored = dataset.calibration_split(options.calibration_split)
    return scored, held


def resolved_spec(card: ModelCard, options: RunOptions) -> PreprocessSpec:
    """The preprocessing a run of ``card`` feeds: ``--preprocess`` (else the card's reference) with ``--set``."""
    return resolve_preprocess(options.preprocess, default=card.reference_spec,
                              overrides=parse_overrides(options.overrides))
