"""The models with real weights on 500 real labelled ImageNet photographs, under their reference and variants.

    python bench/real_photos.py --out bench/results/imagenet_sample_500.json

Each run is `xfverify native` (the same code path as the command). Every variant is compared with its
model's reference run on the same images: the error difference, the images it flips (right -> wrong and
wrong -> right) and McNemar's exact p-value on those flips. The README quotes this file.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import tempfile
from pathlib import Path


from xfverify.evaluator.analysis.metrics import mcnemar_exact_p
from xfverify.evaluator.pipeline.native import run_native
from xfverify.evaluator.pipeline.options import NativeOptions
from xfverify.models.cards import get_card

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample-500"
MODELS = ["pypi/efficientnet_lite0", "pypi/efficientnet_lite1", "pypi/efficientnet_lite2"]


def _correct(out: Path) -> dict[str, bool]:
    with open(out / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    return {row["image_id"]: row["top5"].split()[0] in row["labels"].split() for row in rows if row["labels"]}


def _run(model: str, preset: str | None, data: Path, work: Path) -> tuple[dict, dict[str, bool]]:
    out = work / f"{model.replace('/', '_')}-{preset or 'reference'}"
    options = NativeOptions(model=model, data=str(data), preprocess=preset, out=str(out))
    report = run_native(options).report.model_dump(mode="json")
    return report, _correct(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--out", default="bench/results/imagenet_sample_500.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="xfverify-bench-") as work:
        for model in MODELS:
            card = get_card(model)
            reference, ref_correct = _run(model, None, Path(args.data), Path(work))
            runs = [{"preset": card.preprocess, "role": "reference", **_summary(reference)}]
            for alternative in card.alternatives:
                report, correct = _run(model, alternative.preset, Path(args.data), Path(work))
                to_wrong = sum(ref_correct[i] and not correct[i] for i in ref_correct)
                to_right = sum(correct[i] and not ref_correct[i] for i in ref_correct)
                p = mcnemar_exact_p(to_wrong, to_right)
                runs.append({
                    "preset": alternative.preset, "role": "variant", "why": alternative.reason, **_summary(report),
                    "top1_error_delta": round(report["top1_error"] - reference["top1_error"], 2),
                    "flipped_right_to_wrong": to_wrong, "flipped_wrong_to_right": to_right, "mcnemar_exact_p": p,
                })
            results.append({"model": card.id, "published_top1_error": card.primary_published.top1_error, "runs": runs})
    payload = {
        "what": "top-1/top-5 error (%) on imagenet-sample-500 (500 ImageNet photos, one per even class); "
                "variants paired with the reference on the same images",
        "data": "../shared/data/imagenet-sample-500",
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "models": results,
    }
    Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
    print(json.dumps(payload, indent=1))


def _summary(report: dict) -> dict:
    return {
        "top1_error": report["top1_error"], "top1_error_ci95": report["top1_error_ci95"],
        "top5_error": report["top5_error"], "n_scored": report["n_scored"], "tensors_sha256": report["tensors_sha256"],
        "batch_size": report["batch_size"], "device": report["device"]["name"],
    }


if __name__ == "__main__":
    main()
