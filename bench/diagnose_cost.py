"""What a `xfverify diagnose` of k passes costs against what it is made of, all measured in one run on the same images.

    python bench/diagnose_cost.py --out bench/results/diagnose_cost.json            # 200 photos, 4 variants + bf16
    python bench/diagnose_cost.py --images 16 --variants norm-half-half,squash --precisions ""   # a smoke run

The claim: decoding is shared and the model is loaded once, so a diagnose of k passes costs about one decode
pass per distinct geometry plus k model passes. Measured, in this order, after every image file was read once
(so each part reads them from the page cache):

  a. one cold decode pass of the reference geometry: the tensor cache's survey and build alone, in this
     process, into an empty cache folder (the decode pool's start included);
  b. one model pass: `xfverify native` as a whole process on that warm cache; ``b`` is its fed pass
     (warm-up + loop, from its report), ``b_process`` the whole process, and ``fixed`` = b_process - b
     (interpreter, imports, model load, dataset listing, outputs);
  c. `xfverify diagnose` with the variants as a whole process, on another empty cache folder, and the cost
     block it reports (geometries G, model passes k).

It reports c against a x G + b x k (each geometry decoded once, nothing overlapped), against a + b x k (the
claim as stated), against fixed + a x G + b x k (one process's fixed cost added), and against k native processes
plus the decodes (what running the passes one by one would cost). ``c_parts_s`` splits c by diagnose's own
timeline: its worker (start to finish), the passes' warm-ups and loops inside it, and what follows it
(the comparison, report.json, report.md, report.html with its figures) plus the interpreter's start.
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
from pathlib import Path

from xfverify.evaluator.system.devices import cpu_model
from xfverify.evaluator.pipeline.evaluation import may_feed_on_device, tensor_cache
from xfverify.evaluator.pipeline.options import NativeOptions
from xfverify.evaluator.pipeline.request import prepare

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample-500"
MODEL = "pypi/efficientnet_lite0"
VARIANTS = "norm-imagenet-mean-std,squash,decoder-pil"  # one that reads the reference's shards, two new geometries


def machine() -> dict:
    """Cores, CPU model and load: ratios from a busy machine are not the product's."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": usable,
            "system": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def timed_process(args: list[str]) -> float:
    """Run ``python -m xfverify ARGS`` to its end; its wall seconds (a failure stops the benchmark)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "xfverify", *args], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"xfverify {' '.join(args[:2])} failed:\n{done.stderr[-3000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--images", type=int, default=200, help="the first N images by id")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--variants", default=VARIANTS, help="diagnose --variants (the reference always runs)")
    parser.add_argument("--precisions", default="bf16", help='diagnose --precisions ("" for none)')
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, help="default: xfverify's default for the device")
    parser.add_argument("--out", help="write the JSON here too")
    args = parser.parse_args()

    host = machine()
    options = NativeOptions(model=args.model, data=args.data, limit=args.images, device=args.device,
                            batch_size=args.batch_size)
    card, spec, dataset = prepare(options)
    for record in dataset.records:  # into the page cache, so no part pays for the disk
        Path(record.path).read_bytes()
    shared = ["--data", args.data, "--limit", str(args.images), "--device", args.device,
              *(["--batch-size", str(args.batch_size)] if args.batch_size else [])]
    with tempfile.TemporaryDirectory(prefix="xfverify-bench-") as work_dir:
        work = Path(work_dir)
        started = time.perf_counter()
        digests = may_feed_on_device(card.framework, args.device)  # as the runs below decide it
        # the runs' own cache: a spec that decodes in a framework's worker (TensorFlow's window) gets its pool
        _, build = tensor_cache(work / "cache-a", spec).ensure(dataset.records, stop_on_bad=True,
                                                               normalisations=None if digests else [])
        decode_s = time.perf_counter() - started
        if build.decoded != len(dataset):
            raise SystemExit(f"the cold pass decoded {build.decoded} of {len(dataset)} images: was the cache empty?")

        native_wall = timed_process(["native", card.id, *shared, "--cache-dir", str(work / "cache-a"),
                                     "--out", str(work / "native")])
        timing = json.loads((work / "native" / "report.json").read_text())["timing"]
        pass_s = timing["warmup_s"] + timing["wall_s"]

        diagnose_args = ["diagnose", card.id, *shared, "--variants", args.variants, "--cache-dir",
                         str(work / "cache-c"), "--out", str(work / "diagnose")]
        if args.precisions:
            diagnose_args += ["--precisions", args.precisions]
        diagnose_wall = timed_process(diagnose_args)
        cost = json.loads((work / "diagnose" / "report.json").read_text())["cost"]

    geometries, passes = cost["geometries"], cost["model_passes"]
    fixed_s = native_wall - pass_s
    separate = decode_s * geometries + pass_s * passes
    claimed = decode_s + pass_s * passes
    payload = {
        "what": f"xfverify diagnose {card.id} ({passes} passes: the reference, {args.variants}"
                + (f", precisions {args.precisions}" if args.precisions else "") + f"; {geometries} geometries) on "
                f"{len(dataset)} images against one cold decode pass and one model pass, measured in this run",
        "machine": {**host, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "data": args.data, "images": len(dataset), "device": args.device, "batch_size": args.batch_size,
        "a_cold_decode_pass_s": round(decode_s, 3),
        "a_images_per_s": round(len(dataset) / decode_s, 1),
        "b_model_pass_s": round(pass_s, 3),
        "b_model_pass": {"warmup_s": timing["warmup_s"], "loop_wall_s": timing["wall_s"],
                         "compute_s": timing["compute_s"]},
        "b_process_s": round(native_wall, 3),
        "fixed_s": round(fixed_s, 3),
        "c_diagnose_process_s": round(diagnose_wall, 3),
        "diagnose_cost": cost,
        "c_parts_s": {
            "worker_wall": cost["worker_wall_s"],
            "passes_warmup_plus_loop": round(sum(p["warmup_s"] + p["loop_wall_s"] for p in cost["passes"]), 3),
            "after_the_worker": round(diagnose_wall - cost["worker_wall_s"], 3),
        },
        "expected_s": {"a_x_geometries_plus_b_x_k": round(separate, 3), "a_plus_b_x_k": round(claimed, 3),
                       "fixed_plus_a_x_geometries_plus_b_x_k": round(fixed_s + separate, 3)},
        "ratios": {"c_over_a_x_geometries_plus_b_x_k": round(diagnose_wall / separate, 3),
                   "c_over_a_plus_b_x_k": round(diagnose_wall / claimed, 3),
                   "c_over_fixed_plus_a_x_geometries_plus_b_x_k": round(diagnose_wall / (fixed_s + separate), 3),
                   "c_over_k_native_processes_plus_decodes": round(
                       diagnose_wall / (native_wall * passes + decode_s * geometries), 3)},
    }
    text = json.dumps(payload, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
