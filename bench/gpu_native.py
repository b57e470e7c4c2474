"""Native torch on a GPU, every number from one run on one machine.

    python bench/gpu_native.py --out results.json [--images 10000]

Measures ResNet50 (random weights: speed does not depend on them) on synthetic 500x375 JPEGs:

1. the raw model: random input already on the GPU, fp32 (TF32 off) / tf32 / bf16 (autocast +
   channels_last), batch 10 and 256, CUDA-event timed; the floor for each configuration;
2. ``xfverify native`` fed from a warm tensor cache, same configurations: images/s of its loop and the
   ratio to the raw model (target >= 0.90);
3. a cold run (empty cache: decoding overlaps inference) of ``xfverify native`` against the usual
   torchvision ImageFolder + transforms + DataLoader(all cores, pinned) pipeline, both fp32 batch 256,
   both timed end to end as whole processes (target >= 2x the usual pipeline's images/s).

Needs torch with CUDA, torchvision, Pillow, OpenCV and xfverify importable (no TensorFlow/MXNet).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

RAW_SCRIPT = r"""
import json, sys, torch, torchvision
precision, batch, device, reps = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
torch.backends.cudnn.benchmark = True
model = torchvision.models.resnet50().to(device).eval()
x = torch.randn(batch, 3, 224, 224, device=device)
if precision == "bf16":
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
def run():
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
        return model(x)
import time
for _ in range(min(10, reps)):
    run()
times = []
for _ in range(reps):
    if device == "cuda":
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); run(); e.record(); e.synchronize()
        times.append(s.elapsed_time(e))
    else:
        t = time.perf_counter(); run(); times.append((time.perf_counter() - t) * 1000)
times.sort()
median = times[len(times) // 2]
print(json.dumps({"batch_ms_median": median, "images_per_s": batch / median * 1000}))
"""

DATALOADER_SCRIPT = r"""
import sys, time, torch, torchvision
from torchvision import datasets, transforms as T
root, workers, device = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
torch.backends.cudnn.benchmark = True
model = torchvision.models.resnet50().to(device).eval()
tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
loader = torch.utils.data.DataLoader(datasets.ImageFolder(root, tf), batch_size=256, num_workers=workers, pin_memory=True)
n = 0
with torch.inference_mode():
    for x, _ in loader:
        model(x.to(device, non_blocking=True)).argmax(1).cpu()
        n += len(x)
print(n)
"""


def _make_one(args: tuple[Path, int, str]) -> None:
    from PIL import Image

    folder, i, wnid = args
    rng = np.random.default_rng(i)
    y, x = np.mgrid[0:375, 0:500].astype(np.float32)
    phase = rng.uniform(0, 6.28, 3)
    base = np.stack([128 + 90 * np.sin(x / (9 + i % 7) + phase[0]), 128 + 90 * np.cos(y / (13 + i % 5) + phase[1]),
                     128 + 90 * np.sin((x + y) / 21 + phase[2])], axis=-1)
    noisy = np.clip(base + rng.normal(0, 14, base.shape), 0, 255).astype(np.uint8)
    target = folder / wnid / f"ILSVRC2012_val_{i + 1:08d}.JPEG"
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(noisy).save(target, format="JPEG", quality=90)


def make_dataset(folder: Path, n: int) -> None:
    """n synthetic photos in ImageNet class folders (10 classes)."""
    from xfverify.models.imagenet import class_table

    wnids = [class_table()[i][0] for i in range(10)]
    with Pool(os.cpu_count()) as pool:
        pool.map(_make_one, [(folder, i, wnids[i % 10]) for i in range(n)], chunksize=64)


def run_json(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def timed(command: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{command} failed:\n{result.stderr[-3000:]}")
    return elapsed, result


def xfverify_native(data: Path, cache: Path, out: Path, precision: str, batch: int, device: str) -> tuple[float, dict]:
    command = [sys.executable, "-m", "xfverify", "native", "torchvision/resnet50:IMAGENET1K_V1", "--random-weights",
               "--data", str(data), "--device", device, "--precision", precision, "--batch-size", str(batch),
               "--cache-dir", str(cache), "--out", str(out)]
    elapsed, _ = timed(command)
    return elapsed, json.loads((out / "report.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny batches: checks the script itself runs")
    args = parser.parse_args()
    import torch

    device = "cpu" if args.smoke else "cuda"
    precisions = ("fp32",) if args.smoke else ("fp32", "tf32", "bf16")
    batches = (2, 8) if args.smoke else (10, 256)
    big = batches[-1]

    results: dict = {
        "machine": {"gpu": torch.cuda.get_device_name(0) if device == "cuda" else "none (smoke run)", "cpus": os.cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version()},
        "images": args.images,
        "model": "resnet50 (random weights)",
    }
    scratch = Path(tempfile.mkdtemp(prefix="xfverify-gpu-bench-"))
    data = scratch / "val"
    started = time.perf_counter()
    make_dataset(data, args.images)
    results["dataset_seconds"] = round(time.perf_counter() - started, 1)
    for path in data.rglob("*.JPEG"):  # page cache warm for every contestant
        path.read_bytes()

    # 3. cold: usual DataLoader pipeline vs xfverify with an empty cache (both whole processes).
    loader_s, _ = timed([sys.executable, "-c", DATALOADER_SCRIPT, str(data), str(os.cpu_count()), device])
    cold_s, cold_report = xfverify_native(data, scratch / "cache", scratch / "cold", "fp32", big, device)
    results["cold"] = {
        "dataloader_wall_s": round(loader_s, 2),
        "dataloader_images_per_s": round(args.images / loader_s, 1),
        "xfverify_wall_s": round(cold_s, 2),
        "xfverify_images_per_s": round(args.images / cold_s, 1),
        "xfverify_over_dataloader": round(loader_s / cold_s, 2),
        "xfverify_decode_images_per_s": cold_report["cache"]["decode_images_per_s"],
        "xfverify_loop_timing": cold_report["timing"],
        "target": ">= 2.0",
    }
    print(json.dumps(results["cold"], indent=1), flush=True)

    # 1 + 2. raw model vs fed from the warm cache.
    rows = []
    for precision in precisions:
        for batch in batches:
            reps = 3 if args.smoke else (40 if batch > 64 else 100)
            raw = run_json(RAW_SCRIPT, precision, str(batch), device, str(reps))
            _, report = xfverify_native(data, scratch / "cache", scratch / f"warm-{precision}-{batch}", precision, batch, device)
            timing = report["timing"]
            row = {
                "precision": precision, "batch": batch,
                "raw_images_per_s": round(raw["images_per_s"], 1), "raw_batch_ms": round(raw["batch_ms_median"], 3),
                "fed_images_per_s": timing["images_per_s"], "fed_over_raw": round(timing["images_per_s"] / raw["images_per_s"], 3),
                "fed_steady_images_per_s": timing["steady_images_per_s"],
                "fed_steady_over_raw": round(timing["steady_images_per_s"] / raw["images_per_s"], 3),
                "warmup_s": timing.get("warmup_s"),
                "fed_batch_ms_mean": timing["batch_ms_mean"], "fed_batch_ms_std": timing["batch_ms_std"],
                "data_wait_s": timing["data_wait_s"], "wall_s": timing["wall_s"],
                "decoded_in_this_run": report["cache"]["decoded"], "tensors_sha256": report["tensors_sha256"][:16],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    results["warm"] = rows
    results["warm_target"] = "fed_over_raw >= 0.90 (fed_* include the first real batch and the bit-identity check of the GPU normalisation; warm-up of cuDNN is outside, reported as warmup_s)"
    hashes = {r["tensors_sha256"] for r in rows} | {cold_report["tensors_sha256"][:16]}
    results["same_tensors_in_every_run"] = len(hashes) == 1
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
