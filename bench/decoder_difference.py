"""Why a zoo-parity configuration differs on some photos: the source's own JPEG decoder against xfverify's, before
any geometry.

    python bench/decoder_difference.py          # the photos bench/results/zoo_parity.json lists as differing

For each source with differing photos, each such photo is decoded by the source's loader (GluonCV:
``mx.image.imread``, MXNet's bundled OpenCV and libjpeg) in a process of that framework alone, and by the decoder
xfverify's spec names (``cv2.imread`` here), and the two RGB arrays are compared; the JPEG's chroma subsampling
(PIL's ``layer``) and every library version are recorded. Results: ``bench/results/decoder_difference.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "imagenet-sample-500"

# Run in a process of its own: MXNet only (GluonCV refuses torch >= 2; MXNet 1.9 needs numpy's removed np.bool).
COMPARE = """
import json, sys
import numpy as np
np.bool = bool
import cv2, mxnet as mx
from PIL import Image
rows = []
for path in json.loads(sys.argv[1]):
    ours = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    theirs = mx.image.imread(path).asnumpy()
    diff = np.abs(ours.astype(np.int16) - theirs.astype(np.int16))
    with Image.open(path) as image:
        sampling = [f"{h}x{v}" for _, h, v, _ in image.layer] if image.format == "JPEG" else None
    rows.append({"image": path.rsplit("/", 1)[-1], "component_sampling": sampling, "shape": list(ours.shape),
                 "values_differing": int((diff > 0).sum()), "max_abs_diff": int(diff.max())})
print(json.dumps({"rows": rows, "versions": {"mxnet": mx.__version__, "opencv-python": cv2.__version__,
      "opencv_jpeg": next(l.split(":", 1)[1].strip() for l in cv2.getBuildInformation().splitlines()
                          if l.strip().startswith("JPEG:"))}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parity", default=str(ROOT / "bench" / "results" / "zoo_parity.json"))
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "decoder_difference.json"))
    args = parser.parse_args()
    parity = json.loads(Path(args.parity).read_text())
    names = sorted({name for row in parity["sources"].get("gluoncv", {}).get("configurations", [])
                    for name in row["differing"]})
    paths = [str(next(Path(args.data).rglob(name))) for name in names]
    done = subprocess.run([sys.executable, "-c", COMPARE, json.dumps(paths)], capture_output=True, text=True,
                          check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    payload = {
        "what": ("each photo zoo_parity.json lists as differing for GluonCV, decoded by GluonCV's loader "
                 "(mx.image.imread: MXNet's bundled decoder) and by xfverify's spec decoder (cv2.imread), RGB, "
                 "before any resize or crop; component_sampling is each JPEG component's h x v sampling factors "
                 "(1x2 for luma with 1x1 chroma: 4:4:0)"),
        "data": "../shared/data/imagenet-sample-500",
        **result,
    }
    Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
    for row in result["rows"]:
        print(f"{row['image']}: sampling {row['component_sampling']}, {row['values_differing']} values differ, "
              f"max {row['max_abs_diff']}")


if __name__ == "__main__":
    main()
