"""Warm workers: a process forked from a server that imported the framework once runs a job exactly as a
started worker does (same logits, bit for bit), can be stopped, and a changed import-time environment gets a
new server."""

from __future__ import annotations


import time

import numpy as np
import pytest

from helpers import needs_mxnet, needs_torch
from xfverify.evaluator.pipeline.native import run_native
from xfverify.evaluator.pipeline.options import NativeOptions
from xfverify.evaluator.process.warm import WarmWorkers, warm_workers

pytestmark = needs_torch


def _logits(out, **kw) -> np.ndarray:
    run_native(NativeOptions(model="torchvision/mobilenet_v2", random_weights=True, out=str(out), limit=2, **kw))
    return np.load(out / "logits.npy")


def test_a_forked_worker_gives_a_started_workers_logits_bit_for_bit(tmp_path):
    import contextvars

    started = contextvars.Context().run(_logits, tmp_path / "started")  # no scope: started as the CLI starts it
    with warm_workers() as servers:
        forked = _logits(tmp_path / "forked")
        again = _logits(tmp_path / "again", seed=1)
        assert list(servers._servers) == ["torch"]
    assert np.array_equal(started, forked)
    assert not np.array_equal(forked, again)  # another seed, another network: the job's own options reached it


def _gluoncv_logits(out):
    """GluonCV's preprocessing decodes in MXNet workers too: both the decode and the network's pass are forked."""
    run_native(NativeOptions(model="gluoncv/mobilenet1.0", random_weights=True, out=str(out), limit=3,
                             cache_dir=str(out.parent / f"cache-{out.name}")))
    return np.load(out / "logits.npy")


def _conv_net_logits(out):
    """A small convolutional classifier with seeded weights (ONNX Runtime's convolution and GEMM kernels), run as a
    user's file."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from xfverify.evaluator.pipeline.onnx import run_onnx
    from xfverify.evaluator.pipeline.options import OnnxOptions

    rng = np.random.default_rng(3)
    weights = [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)
               for name, shape in (("w", (16, 3, 3, 3)), ("fc", (16, 1000)), ("bias", (1000,)))]
    nodes = [helper.make_node("Conv", ["image", "w"], ["conv"], strides=[4, 4]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc", "bias"], ["logits"])]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                            ["N", 3, 224, 224])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])], weights)
    model = out.parent / f"{out.name}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7), model)
    run_onnx(OnnxOptions(target=str(model), preprocess="torchvision-256", provider="cpu", limit=3, out=str(out),
                         cache_dir=str(out.parent / f"cache-{out.name}")))
    return np.load(out / "logits.npy")


@pytest.mark.parametrize("framework, logits", [pytest.param("mxnet", _gluoncv_logits, marks=needs_mxnet),
                                               ("onnxruntime", _conv_net_logits)])
def test_a_forked_worker_of_the_other_back_ends_gives_a_started_workers_logits_bit_for_bit(framework, logits,
                                                                                           tmp_path):
    import contextvars

    started = contextvars.Context().run(logits, tmp_path / "started")  # no scope: started as the CLI starts it
    with warm_workers((framework,)) as servers:
        forked = logits(tmp_path / "forked")
        assert list(servers._servers) == [framework]
    assert np.array_equal(started, forked) and np.ptp(started) > 0


def test_a_forked_worker_can_be_killed_and_says_its_exit(tmp_path):
    servers = WarmWorkers(("torch",))
    try:
        job = tmp_path / "evaluate.job.json"
        job.write_text("{}")  # never read: the worker is killed first or fails on it
        with open(tmp_path / "stderr.txt", "w") as stderr:
            process = servers.start("torch", str(job), {"PATH": "/usr/bin", "XFVERIFY_RUN_PID": "1"}, stderr)
        assert process is not None
        process.kill()
        code = process.wait(timeout=30)
        assert code != 0 and process.poll() == code
    finally:
        servers.close()


def test_an_import_time_variable_changed_starts_a_new_server_and_a_run_time_one_does_not(tmp_path):
    servers = WarmWorkers(("torch",))
    try:
        job = tmp_path / "evaluate.job.json"
        job.write_text("{}")
        pids = []
        for env in ({"XFVERIFY_CACHE": "a"}, {"XFVERIFY_CACHE": "b"}, {"XFVERIFY_CACHE": "b", "OMP_NUM_THREADS": "1"}):
            with open(tmp_path / "stderr.txt", "w") as stderr:
                process = servers.start("torch", str(job), {"PATH": "/usr/bin", **env}, stderr)
            process.wait(timeout=60)
            pids.append(servers._servers["torch"].process.pid)
        assert pids[0] == pids[1] != pids[2]
        assert servers.start("mxnet", str(job), {}, None) is None  # not in this scope: started as usual
    finally:
        servers.close()


def test_workers_started_at_once_from_many_threads_each_get_their_own_process_and_exit(tmp_path):
    """Jobs that fail at once (a broken job file: exit 1) and jobs that wait (a FIFO as job file: killed, -9),
    started together from threads: each caller's process is its own (its kill and its exit code)."""
    import os
    import threading

    servers = WarmWorkers(("torch",))
    outcomes: dict[int, int] = {}
    try:
        def one(index: int) -> None:
            job = tmp_path / f"job{index}.json"
            if index % 2:
                os.mkfifo(job)  # the worker blocks reading it until killed
            else:
                job.write_text("not json")
            with open(tmp_path / f"stderr{index}.txt", "w") as stderr:
                process = servers.start("torch", str(job), {"PATH": "/usr/bin", "XFVERIFY_RUN_PID": str(os.getpid())},
                                        stderr)
            if index % 2:
                time.sleep(0.5)
                process.kill()
            outcomes[index] = process.wait(timeout=60)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        servers.close()
    assert outcomes == {i: (-9 if i % 2 else 1) for i in range(6)}
