"""A run's request resolved: the model card, the preprocessing spec and the dataset, checked together."""

from __future__ import annotations

from xfverify.evaluator.data.layouts import SAMPLE_DIR, Dataset, load_dataset
from xfverify.evaluator.pipeline.options import NativeOptions, check_run_options
from xfverify.evaluator.process.registry import BACKENDS
from xfverify.models.cards import ModelCard, get_card
from xfverify.models.errors import UserError
from xfverify.models.overrides import parse_overrides
from xfverify.models.preprocess import PreprocessSpec, resolve_preprocess


def prepare(options: NativeOptions) -> tuple[ModelCard, PreprocessSpec, Dataset]:
    """Resolve the card, the preprocessing and the dataset; validate their combination."""
    check_run_options(options)
    card = get_card(options.model)
    if options.device == "cpu":  # the worker would say so too, after loading the model
        if options.precision == "tf32":
            raise UserError("--precision tf32 applies to CUDA GPUs only; use fp32 on the CPU")
        if options.cuda_graphs:
            raise UserError("--cuda-graphs needs a CUDA GPU (--device cuda or auto on a machine with one)")
    if options.cuda_graphs and not BACKENDS[card.framework].cuda_graphs:
        graphed = ", ".join(name for name, backend in BACKENDS.items() if backend.cuda_graphs)
        raise UserError(f"--cuda-graphs applies to {graphed} models; {card.id} runs in {card.framework}")
    spec = resolve_preprocess(options.preprocess, default=card.reference_spec, overrides=parse_overrides(options.overrides))
    if spec.layout != card.input_layout:
        raise UserError(
            f"preprocessing {spec.name} produces {spec.layout} tensors but {card.id} takes {card.input_layout}: "
            f"add --set layout={card.input_layout}"
        )
    dataset = load_dataset(options.data or SAMPLE_DIR, devkit=options.devkit)
    dataset = dataset.select(limit=options.limit, per_class=options.per_class)
    return card, spec, dataset
