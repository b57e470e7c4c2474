"""The README's `--localize` run: a planted conversion bug in the EfficientNet-Lite0 export, named by xfverify.

    python bench/localize_lite0.py --results bench/results/localize_lite0

EfficientNet-Lite0 was trained in TensorFlow with 'SAME' padding: a stride-2 3x3 convolution pads one row and
column at the bottom and right only, and the export writes ``pads=[0, 0, 1, 1]``. Converters that pad the top and
left instead (PyTorch's habit) compute a shifted feature map and lose a little accuracy without any error. This
plants that bug in one node of xfverify's own export (its ``pads`` become ``[1, 1, 0, 0]``), runs the planted file
against the native run with ``--localize`` on the embedded sample, and copies what it printed and wrote.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx

PLANTED_NODE_INDEX = 2  # the third (and last) 3x3 Conv padded [0, 0, 1, 1]: a middle block's depthwise convolution


def xfverify(*args: str, env: dict) -> str:
    done = subprocess.run([sys.executable, "-m", "xfverify", *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"xfverify {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return f"$ xfverify {' '.join(args)}\n{done.stdout}"


def plant(export: Path, target: Path) -> str:
    """Swap one 'SAME' padding to the top-left; the node's name."""
    model = onnx.load(str(export))
    same = [n for n in model.graph.node if n.op_type == "Conv" and any(
        a.name == "pads" and list(a.ints) == [0, 0, 1, 1] for a in n.attribute)]
    node = same[PLANTED_NODE_INDEX]
    pads = next(a for a in node.attribute if a.name == "pads")
    del pads.ints[:]
    pads.ints.extend([1, 1, 0, 0])
    onnx.save(model, str(target))
    return node.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True)
    args = parser.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="xfverify-localize-lite0-") as scratch:
        root = Path(scratch)
        env = {**os.environ, "XFVERIFY_CACHE": str(root / "cache"), "COLUMNS": "160"}
        xfverify("onnx", "--provider", "cpu", "--out", str(root / "plain"), env=env)
        [export] = (root / "cache" / "onnx").glob("*/model.onnx")
        node = plant(export, root / "lite0-planted.onnx")
        printed = xfverify("onnx", str(root / "lite0-planted.onnx"), "--preprocess", "lite-tf-224", "--against",
                           str(root / "plain" / "native"), "--provider", "cpu", "--localize", "--out",
                           str(root / "planted"), env=env)
        printed = printed.replace(str(root), "$TMP")
        (args.results / "stdout.txt").write_text(f"# planted: {node} pads [0, 0, 1, 1] -> [1, 1, 0, 0]\n{printed}")
        for name in ("report.md", "report.json", "localize.html"):
            text = (root / "planted" / name).read_text().replace(str(root), "$TMP")
            (args.results / name).write_text(text)
    print((args.results / "stdout.txt").read_text())


if __name__ == "__main__":
    main()
