"""torchvision's ``transforms.v2.functional.resize`` on uint8 CHW tensors, on the CPU (run as a script).

The parity tests check xfverify's numpy ``torch`` resize against this. It imports nothing of xfverify and runs
apart from TensorFlow: ``python torchvision_resize.py JOB.npz OUT.npz``, where JOB.npz holds ``image_<i>`` (uint8
HWC) and ``cases``, a JSON list of ``[image index, height, width, interpolation, antialias]``; OUT.npz holds
``out_<j>`` per case, back in HWC (uint8, as torchvision returns it). The image becomes a tensor as
``v2.functional.to_image`` makes one of an array (a contiguous CHW copy).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
import torchvision
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

MODES = {"nearest": InterpolationMode.NEAREST, "bilinear": InterpolationMode.BILINEAR,
         "bicubic": InterpolationMode.BICUBIC}


def resize(image: np.ndarray, height: int, width: int, interpolation: str, antialias: bool) -> np.ndarray:
    tensor = F.to_image(image)
    out = F.resize(tensor, [height, width], interpolation=MODES[interpolation], antialias=antialias)
    return out.permute(1, 2, 0).numpy()


def describe() -> str:
    capability = torch.backends.cpu.get_cpu_capability()
    return f"torchvision {torchvision.__version__} v2.functional.resize, torch {torch.__version__} ({capability})"


def main(job_path: str, out_path: str) -> None:
    torch.set_num_threads(1)
    with np.load(job_path) as job:
        cases = json.loads(str(job["cases"]))
        images = [job[f"image_{i}"] for i in range(len(job.files) - 1)]
    outputs = {f"out_{j}": resize(images[i], h, w, method, aa) for j, (i, h, w, method, aa) in enumerate(cases)}
    np.savez(out_path, **outputs)


if __name__ == "__main__":
    main(*sys.argv[1:3])
