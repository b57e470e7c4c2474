"""Warm workers: a process forked from a server that imported the framework once runs a job exactly as a
started worker does (same logits, bit for bit), can be stopped, and a changed import-time environment gets a
new server."""

from __future__ import annotations


import numpy as np
import pytest

from helpers import needs_torch
from xfverify.evaluator.pipeline.native import run_native
from xfverify.evaluator.pipeline.options import NativeOptions
from xfverify.evaluator.process import warm
from xfverify.evaluator.process.warm import WarmWorkers, warm_workers

pytestmark = needs_torch


def _logits(out, **kw) -> np.ndarray:
    run_native(NativeOptions(model="torchvision/mobilenet_v2", random_weights=True, out=str(out), limit=2, **kw))
    return np.load(out / "logits.npy")


def test_a_forked_worker_gives_a_started_workers_logits_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.setattr(warm, "_active", None)  # no server: started as the CLI starts it
    started = _logits(tmp_path / "started")
    with warm_workers() as servers:
        forked = _logits(tmp_path / "forked")
        again = _logits(tmp_path / "again", seed=1)
        assert list(servers._servers) == ["torch"]
    assert np.array_equal(started, forked)
    assert not np.array_equal(forked, again)  # another seed, another network: the job's own options reached it


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
        assert servers.start("mxnet", str(job), {}, None) is None  # not forkable: started as usual
    finally:
        servers.close()
