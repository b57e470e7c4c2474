"""Data-path benchmark on this machine, all numbers from one run: decode ceiling, parallel cache build, warm reads.

    python bench/cpu_pipeline.py --out bench/results/cpu_pipeline.json

Reports, for synthetic 500x375 JPEGs (~76 KB, quality 90, like ImageNet's):
  * the single-core ceiling: decode + resize + crop in one process (torchvision-256 geometry);
  * bare parallel decoding (N processes, no pipeline): what the machine itself gives;
  * the parallel pipeline (the tensor cache's build, all cores) and its ratio to ceiling x workers;
  * the warm pass: verifying the cache and delivering every uint8 batch into a staging buffer, and its
    ratio to the cold pass;
  * normalise + fingerprint throughput (what a worker does on the CPU per batch);
  * for reference, torchvision's ImageFolder + DataLoader to normalised tensors (if torch is installed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from xfverify.evaluator.cache.store import TensorCache
from xfverify.evaluator.data.layouts import load_dataset
from xfverify.evaluator.data.imaging import load_geometry
from xfverify.evaluator.backends.runloop import prepared_batches
from xfverify.models.preprocess import PRESETS

SPEC = PRESETS["torchvision-256"]


def make_jpegs(folder: Path, n: int) -> None:
    """n synthetic 500x375 photos in ImageNet's class-folder layout (10 classes)."""
    from xfverify.models.imagenet import class_table

    wnids = [class_table()[i][0] for i in range(10)]
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:375, 0:500].astype(np.float32)
    for i in range(n):
        phase = rng.uniform(0, 6.28, 3)
        base = np.stack([128 + 90 * np.sin(x / (9 + i % 7) + phase[0]), 128 + 90 * np.cos(y / (13 + i % 5) + phase[1]),
                         128 + 90 * np.sin((x + y) / 21 + phase[2])], axis=-1)
        noisy = np.clip(base + rng.normal(0, 14, base.shape), 0, 255).astype(np.uint8)
        target = folder / wnids[i % 10] / f"ILSVRC2012_val_{i + 1:08d}.JPEG"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noisy).save(target, format="JPEG", quality=90)


def single_core_ceiling(paths: list[str], seconds: float) -> float:
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        load_geometry(paths[done % len(paths)], SPEC)
        done += 1
    return done / (time.perf_counter() - started)


def _decode_all(paths: list[str]) -> None:
    for path in paths:
        load_geometry(path, SPEC)


def parallel_ceiling(paths: list[str], workers: int) -> float:
    """N bare processes decoding disjoint slices: what the machine gives with no pipeline at all."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_decode_all, args=(paths[i::workers],)) for i in range(workers)]
    started = time.perf_counter()
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    return len(paths) / (time.perf_counter() - started)


def dataloader_baseline(folder: Path, workers: int) -> float | None:
    code = f"""
import time, torch
from torchvision import datasets, transforms as T
tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize((0.485,0.456,0.406),(0.229,0.224,0.225))])
loader = torch.utils.data.DataLoader(datasets.ImageFolder({str(folder)!r}, tf), batch_size=64, num_workers={workers})
n, t = 0, time.perf_counter()
for x, y in loader:
    n += len(x)
print(n / (time.perf_counter() - t))
"""
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800, check=True)
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--out", type=Path)
    parser.add_argument("--skip-dataloader", action="store_true")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="xfverify-bench-"))
    try:
        data = scratch / "val"
        make_jpegs(data, args.images)
        dataset = load_dataset(data)
        paths = [r.path for r in dataset.records]
        mean_kb = sum(os.path.getsize(p) for p in paths) / len(paths) / 1024
        for p in paths:  # page cache warm: we measure decoding, not the disk
            Path(p).read_bytes()

        ceiling = single_core_ceiling(paths, seconds=8.0)
        bare_parallel = parallel_ceiling(paths, args.workers)

        cache = TensorCache(scratch / "cache", SPEC)
        started = time.perf_counter()
        cached, stats = cache.ensure(dataset.records, workers=args.workers)
        cold_s = time.perf_counter() - started
        cold = len(paths) / cold_s

        # A warm pass: verify every shard, then deliver each batch into a reused staging buffer
        # (where a GPU run would pin it for upload).
        staging = np.empty((256, 224, 224, 3), dtype=np.uint8)
        started = time.perf_counter()
        cached, stats2 = cache.ensure(dataset.records, workers=args.workers)
        nbytes = 0
        for _, batch in cached.batches(256):
            np.copyto(staging[: len(batch)], batch)
            nbytes += batch.nbytes
        warm_s = time.perf_counter() - started
        warm = len(paths) / warm_s

        threads = max(1, (os.cpu_count() or 2))
        started = time.perf_counter()
        n = sum(len(u8) for _, u8, _, _ in prepared_batches(cached.shard_paths, 256, SPEC, threads))
        normalise_rate = n / (time.perf_counter() - started)

        baseline = None if args.skip_dataloader else dataloader_baseline(data, args.workers)

        results = {
            "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                        "python": platform.python_version()},
            "images": len(paths),
            "mean_jpeg_kb": round(mean_kb, 1),
            "geometry": SPEC.name,
            "workers": args.workers,
            "single_core_ceiling_img_s": round(ceiling, 1),
            "bare_parallel_decode_img_s": round(bare_parallel, 1),
            "bare_parallel_ratio_to_ceiling_x_workers": round(bare_parallel / (ceiling * args.workers), 3),
            "cold_pipeline_img_s": round(cold, 1),
            "cold_over_bare_parallel": round(cold / bare_parallel, 3),
            "cold_ratio_to_ceiling_x_workers": round(cold / (ceiling * args.workers), 3),
            "warm_pass_img_s": round(warm, 1),
            "warm_pass_GB_s": round(nbytes / warm_s / 1e9, 2),
            "warm_over_cold": round(warm / cold, 1),
            "normalise_and_fingerprint_img_s": round(normalise_rate, 1),
            "normalise_threads": threads,
            "torchvision_dataloader_img_s": round(baseline, 1) if baseline else None,
            "cold_over_dataloader": round(cold / baseline, 2) if baseline else None,
            "targets": {"cold_ratio_to_ceiling_x_workers": ">= 0.85", "warm_over_cold": ">= 20"},
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
