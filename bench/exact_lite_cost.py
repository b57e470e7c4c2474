"""What the exact lite-tf presets cost: disk and time of the float32 cache and of TensorFlow's window decode.

    python bench/exact_lite_cost.py --out bench/results/exact_lite_cost.json

On the photographs of imagenet-sample-500 (or --data), for lite-tf-224:

* decode + geometry, cold: the exact path (each crop window decoded by ``tf.image.decode_and_crop_jpeg`` in a
  tensorflow worker, TensorFlow's bilinear resize kept as float32), worker start-up included, against the path
  it replaced (the whole image decoded by libjpeg-turbo through simplejpeg, the window cut from it and the
  resize rounded to uint8), both on one core of this process' machine, one image after another;
* disk: the bytes a cache shard holds per image (float32 against uint8) and for the whole set;
* the warm feed: normalising a batch of 64 from the cache, the float32 arithmetic against the uint8 table's
  gather (what a CPU run does per batch).

Run it on an idle machine: numbers taken beside other work say little.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from xfverify.evaluator.data.imaging import apply_geometry, decode_tensorflow_noting
from xfverify.evaluator.data.normalise import normalise
from xfverify.evaluator.pipeline.preprocess import preprocess_files
from xfverify.evaluator.system.devices import cpu_name
from xfverify.models.preprocess import PRESETS

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample-500"


def _median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    paths = sorted(str(p) for p in Path(args.data).rglob("*.JPEG"))
    spec = PRESETS["lite-tf-224"]
    load = os.getloadavg()

    started = time.perf_counter()
    exact = preprocess_files(paths, spec)  # the window decode in a tensorflow worker, then normalised
    exact_s = time.perf_counter() - started

    started = time.perf_counter()
    rounded = []
    for path in paths:
        picture, _ = decode_tensorflow_noting(path)  # the whole image, as before
        rounded.append(np.clip(np.rint(apply_geometry(picture, spec)), 0, 255).astype(np.uint8))
    rounded_s = time.perf_counter() - started

    floats = np.ascontiguousarray(np.random.default_rng(0).uniform(-2, 257, (64, 224, 224, 3)).astype(np.float32))
    u8 = np.stack(rounded[:64])
    uint8_spec = PRESETS["lite-timm-224"]  # the same size and layout, a uint8 cache
    result = {
        "what": __doc__.splitlines()[0],
        "machine": {"cpu": cpu_name(), "load_average_at_start": [round(v, 2) for v in load]},
        "images": len(paths),
        "decode_and_geometry_s": {
            "exact: tensorflow worker (start-up included), decode_and_crop_jpeg, float32 resize": round(exact_s, 2),
            "before: simplejpeg whole-image decode, window cut, resize rounded to uint8": round(rounded_s, 2),
        },
        "exact_tensors_shape": list(exact.shape),  # what the exact path produced (normalised, NCHW)
        "cache_bytes_per_image": {"float32": 224 * 224 * 3 * 4, "uint8": 224 * 224 * 3},
        "cache_bytes_for_the_set": {"float32": len(paths) * 224 * 224 * 3 * 4, "uint8": len(paths) * 224 * 224 * 3},
        "normalise_batch_of_64_ms": {
            "float32 arithmetic": round(1000 * _median_seconds(lambda: normalise(floats, spec), 9), 2),
            "uint8 table gather": round(1000 * _median_seconds(lambda: normalise(u8, uint8_spec), 9), 2),
        },
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
