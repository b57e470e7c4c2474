"""How `xfverify onnx --localize` grows with the graph: the same graph with n Identity nodes in a chain, measured in
one run on one machine.

    python bench/localize_scaling.py --out bench/results/localize_scaling.json

For each n: the seconds ONNX Runtime's worker takes to open the file with every node output marked (the marked
session), and the seconds the comparison takes over the tensors both sides wrote (``localize``: by names, the graph
against itself as ``--localize-against`` does, and with its names stripped against a two-layer reference, paired
by values and the graph), and the bytes of report.json's block, report.md's section and localize.html. Then a
node named with 2 MB of text: the same three sizes. The claim: time grows linearly with n (the ratios of
seconds per node stay near 1), and what is written is bounded whatever the graph's size or its names.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xfverify.evaluator.analysis.localize import localize  # noqa: E402
from xfverify.evaluator.process.tasks import CapturedTensor  # noqa: E402
from xfverify.evaluator.reports.localize import localization_page  # noqa: E402
from xfverify.evaluator.reports.run import localization_markdown  # noqa: E402

SIZES = (1_000, 10_000, 100_000)
ROW = (2, 8)  # two images of 8 values per tensor: the cost is in the number of tensors, not their size


def identity_chain(n: int, folder: Path, *, named: bool, long_name: str = "") -> tuple[list, list]:
    """Graph tensors (a Conv, n Identity nodes, a Gemm) and reference tensors (conv, fc), each written to a .npy."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    conv, fc = rng.normal(size=ROW).astype(np.float32), rng.normal(size=ROW).astype(np.float32)
    np.save(folder / "conv.npy", conv)
    np.save(folder / "fc.npy", fc)
    reference = [CapturedTensor(name="conv", file=str(folder / "conv.npy"), shape=[8], order=0, op_type="Conv2d"),
                 CapturedTensor(name="fc", file=str(folder / "fc.npy"), shape=[8], order=1, op_type="Linear")]
    graph = [CapturedTensor(name="t0", file=str(folder / "conv.npy"), shape=[8], order=0, node=long_name or "t0",
                            op_type="Conv", inputs=["image"], scopes=["conv"] if named else [])]
    for k in range(1, n + 1):  # the Identity outputs hold the Conv's values: one file serves them all
        graph.append(CapturedTensor(name=f"t{k}", file=str(folder / "conv.npy"), shape=[8], order=k,
                                    node=f"t{k}", op_type="Identity", inputs=[f"t{k - 1}"]))
    wrong = folder / "wrong.npy"
    np.save(wrong, fc + 1)  # the Gemm departs: a culprit to name and draw
    graph.append(CapturedTensor(name=f"t{n + 1}", file=str(wrong), shape=[8], order=n + 1, node=f"t{n + 1}",
                                op_type="Gemm", inputs=[f"t{n}"], scopes=["fc"] if named else []))
    return graph, reference


def written(found) -> dict:
    return {"report_json_bytes": len(found.model_dump_json(indent=2)),
            "report_md_bytes": len("\n".join(localization_markdown(found))),
            "localize_html_bytes": len(localization_page("bench", found))}


def timed_localize(graph, reference, against: str) -> tuple[float, object]:
    started = time.perf_counter()
    found = localize(graph, reference if against == "native" else graph, against=against, reference_name="bench",
                     image_ids=["a", "b"], atol_fraction=1e-4, rtol=1e-3)
    return round(time.perf_counter() - started, 3), found


def marked_session_seconds(n: int, folder: Path) -> float:
    """ONNX Runtime's worker opening an n-Identity graph with every output marked."""
    import onnx
    from onnx import TensorProto, helper

    from xfverify.evaluator.backends.onnxruntime.backend import _marked_session

    nodes = [helper.make_node("Identity", [f"x{k}"], [f"x{k + 1}"], name=f"identity_{k}") for k in range(n)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x0", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info(f"x{n}", TensorProto.FLOAT, [1, 8])])
    path = folder / "chain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    started = time.perf_counter()
    _marked_session(str(path), [8])
    return round(time.perf_counter() - started, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for n in SIZES:
            graph, reference = identity_chain(n, root / f"named-{n}", named=True)
            names_s, by_names = timed_localize(graph, reference, "onnx")
            graph, reference = identity_chain(n, root / f"stripped-{n}", named=False)
            stripped_s, by_graph = timed_localize(graph, reference, "native")
            rows.append({"n_identity": n, "marked_session_s": marked_session_seconds(n, root / f"named-{n}"),
                         "localize_by_names_s": names_s, "localize_by_graph_s": stripped_s,
                         "culprit_by_graph": by_graph.culprit.node if by_graph.culprit else None,
                         **written(by_graph)})
            print(rows[-1], flush=True)
            shutil.rmtree(root / f"named-{n}")
            shutil.rmtree(root / f"stripped-{n}")
        graph, reference = identity_chain(10, root / "long", named=False, long_name="n" * 2_000_000)
        graph[-1] = graph[-1].model_copy(update={"node": "g" * 2_000_000})
        _, found = timed_localize(graph, reference, "native")
        long_name = {"name_chars": 2_000_000, "culprit_name_kept_whole": len(found.culprit.node) == 2_000_000,
                     **written(found)}
    first = rows[0]
    result = {
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()},
        "sizes": rows,
        "seconds_per_node_ratio_to_smallest": [
            {"n_identity": row["n_identity"],
             **{key: round((row[key] / row["n_identity"]) / (first[key] / first["n_identity"]), 2)
                for key in ("marked_session_s", "localize_by_names_s", "localize_by_graph_s") if first[key]}}
            for row in rows],
        "two_megabyte_node_name": long_name,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
