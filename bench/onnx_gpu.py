"""ONNX Runtime CUDA against native torch on a GPU, on the same cached tensors, every number from one run.

    python bench/onnx_gpu.py --out results.json [--images 5120] [--models resnet50,mobilenet_v2]

For each torchvision model (random weights: speed does not depend on them), fp32 (TF32 off in both):

1. ``xfverify native`` on the GPU fed from a warm tensor cache, then ``xfverify onnx --against`` that run with
   ``--provider cuda`` (uint8 uploaded and normalised in the graph, IO binding): the report's
   ``onnx_over_native_time`` (compute seconds) and the ratio of the two loops' wall times (target <= 1.05),
   and that both saw the same ``tensors_sha256``;
2. the bare models on input already on the GPU: torch (CUDA events) against ONNX Runtime with IO binding
   (the export xfverify made, from its cache), the floor for each.

Needs torch with CUDA, torchvision, onnx, onnxruntime-gpu (``onnxruntime.preload_dlls()`` finds the CUDA
libraries torch's wheels bring) and xfverify importable. ``--smoke`` runs it on the CPU, tiny, to check the
script itself.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_native import make_dataset  # noqa: E402  (the same synthetic JPEGs as the native benchmark)

RAW_SCRIPT = r"""
import json, sys, time
import numpy as np
mode, path, model_name, batch, reps, device = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
if mode == "torch":
    import torch, torchvision
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    model = getattr(torchvision.models, model_name)().to(device).eval()
    x = torch.randn(batch, 3, 224, 224, device=device)
    def run():
        with torch.inference_mode():
            return model(x)
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()
else:
    import onnxruntime as ort
    if device == "cuda":
        ort.preload_dlls()
    options = ort.SessionOptions()
    providers = [("CUDAExecutionProvider", {"use_tf32": "0"})] if device == "cuda" else ["CPUExecutionProvider"]
    if device == "cuda":
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    session = ort.InferenceSession(path, options, providers=providers)
    binding = session.io_binding()
    x = ort.OrtValue.ortvalue_from_numpy(np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32), device, 0)
    binding.bind_ortvalue_input(session.get_inputs()[0].name, x)
    binding.bind_output(session.get_outputs()[0].name, device)
    def run():
        session.run_with_iobinding(binding)
    def sync():
        binding.synchronize_outputs()
for _ in range(5):
    run()
sync()
times = []
for _ in range(reps):
    started = time.perf_counter()
    run()
    sync()
    times.append((time.perf_counter() - started) * 1000)
print(json.dumps({"median_ms": float(np.median(times)), "images_per_s": batch / (float(np.median(times)) / 1000)}))
"""


def run_json(code: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def xfverify(*args: str) -> dict:
    """Run the CLI; the report.json of its --out."""
    out = Path(args[args.index("--out") + 1])
    done = subprocess.run([sys.executable, "-m", "xfverify", *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"xfverify {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads((out / "report.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5120, help="cached images each run is fed")
    parser.add_argument("--models", default="resnet50,mobilenet_v2", help="torchvision models, comma-separated")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny: checks the script itself runs")
    args = parser.parse_args()
    device = "cpu" if args.smoke else "cuda"
    images, batch, reps = (24, 8, 3) if args.smoke else (args.images, args.batch, 30)
    import onnxruntime
    import torch

    results: dict = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "settings": {"images": images, "batch": batch, "precision": "fp32 (TF32 off)", "device": device},
        "models": {},
    }

    def save() -> None:
        args.out.write_text(json.dumps(results, indent=2))

    with tempfile.TemporaryDirectory(prefix="xfverify-onnx-bench-") as scratch:
        root = Path(scratch)
        data, cache = root / "images", root / "cache"
        make_dataset(data, images, min(images, 2000))
        for name in args.models.split(","):
            model = f"torchvision/{name}"
            common = ["--random-weights", "--batch-size", str(batch), "--cache-dir", str(cache)]
            xfverify("native", model, "--data", str(data), "--device", device, "--out", str(root / f"{name}-cold"),
                     *common)  # builds the cache
            native = xfverify("native", model, "--data", str(data), "--device", device,
                              "--out", str(root / f"{name}-native"), *common)
            onnx = xfverify("onnx", model, "--against", str(root / f"{name}-native"),
                            "--provider", "cpu" if args.smoke else "cuda", "--out", str(root / f"{name}-onnx"), *common)
            entry = {
                "native_timing": native["timing"], "onnx_timing": onnx["timing"],
                "onnx_over_native_time": onnx["onnx_over_native_time"],
                "onnx_over_native_wall": round(onnx["timing"]["wall_s"] / native["timing"]["wall_s"], 3),
                "same_tensors": onnx["tensors_sha256"] == native["tensors_sha256"],
                "runtime": onnx["runtime"], "agreement_top1": onnx["agreement"]["top1_agreement"],
                "max_abs_diff_over_max_abs_logit": onnx["agreement"]["max_abs_diff_over_max_abs_logit"],
            }
            results["models"][name] = entry
            save()
            [export] = (cache / "onnx").glob(f"*{name}*/model.onnx") or list((cache / "onnx").glob("*/model.onnx"))[-1:]
            raw_torch = run_json(RAW_SCRIPT, "torch", "", name, str(batch), str(reps), device)
            raw_ort = run_json(RAW_SCRIPT, "ort", str(export), name, str(batch), str(reps), device)
            entry["raw"] = {"torch_ms": round(raw_torch["median_ms"], 3), "onnxruntime_ms": round(raw_ort["median_ms"], 3),
                            "onnxruntime_over_torch": round(raw_ort["median_ms"] / raw_torch["median_ms"], 3)}
            save()
            print(json.dumps({name: {k: entry[k] for k in ("onnx_over_native_time", "onnx_over_native_wall",
                                                           "same_tensors", "raw")}}), flush=True)
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    save()


if __name__ == "__main__":
    main()
