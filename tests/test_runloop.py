"""The worker loop: host and device feeding give the same fingerprint and logits order."""

from __future__ import annotations

import numpy as np

from xfverify.evaluator import runloop
from xfverify.evaluator.normalise import normalise
from xfverify.models.preprocess import PRESETS

SPEC = PRESETS["torchvision-256"]


class _LateResult:
    """Stands in for a GPU handle: results (and the fed tensors) arrive after the next launch."""

    def __init__(self, u8):
        self.u8 = u8

    def result(self):
        fed = normalise(np.ascontiguousarray(self.u8), SPEC)
        return fed.reshape(len(fed), -1)[:, :1000].copy(), 1.0, fed


def test_device_feeding_hashes_what_host_feeding_hashes(tmp_path):
    rng = np.random.default_rng(0)
    shards = []
    for i, n in enumerate((70, 45)):  # batches of 32 straddle the shard boundary
        path = tmp_path / f"s{i}.npy"
        np.save(path, rng.integers(0, 256, (n, 224, 224, 3), dtype=np.uint8))
        path.with_suffix(".json").write_text("{}")
        shards.append(str(path))

    def host_step(u8, tensors):
        return tensors.reshape(len(tensors), -1)[:, :1000].copy(), 1.0

    device = runloop.run_loop(shards, 115, SPEC, 32, lambda u8, _: _LateResult(u8), tmp_path / "d.npy",
                              feed="device", threads=3, wait_for_shards=True)
    host = runloop.run_loop(shards, 115, SPEC, 32, host_step, tmp_path / "h.npy", feed="host", threads=3)
    assert device.n_images == host.n_images == 115
    assert device.tensors_sha256 == host.tensors_sha256
    assert np.array_equal(np.load(tmp_path / "d.npy"), np.load(tmp_path / "h.npy"))
    assert len(device.batch_ms) == 4


def test_steady_rate_of_a_synchronous_step_counts_each_batch_once(tmp_path):
    import time

    path = tmp_path / "s.npy"
    np.save(path, np.zeros((24, 8, 8, 3), dtype=np.uint8))

    def slow_step(u8, tensors):
        time.sleep(0.02)  # sleeps never end early, so the true rate is at most 4 / 0.02 = 200 images/s
        return np.zeros((len(u8), 1000), dtype=np.float32), 20.0

    result = runloop.run_loop([str(path)], 24, SPEC, 4, slow_step, tmp_path / "l.npy", feed="host", threads=2)
    assert len(result.batch_ms) == 6
    assert 50 < result.steady_images_per_s <= 200 * 1.02  # counting a batch twice would give ~250


def test_the_worker_takes_the_data_part_of_its_job_once_the_parent_writes_it(tmp_path):
    import json
    import threading

    from xfverify.evaluator.frameworks.feeding import receive_data
    from xfverify.evaluator.jobs import EvaluateJob
    from xfverify.models.preprocess import PRESETS

    job = EvaluateJob(model="m", preprocess=PRESETS["torchvision-256"].to_dict(), device="cpu", precision="fp32",
                      batch_size=2, n_images=3, hw=(224, 224), shard_paths=["given.npy"])
    assert receive_data(job) is job  # a job that came whole
    data_file = tmp_path / "data.json"
    staged = tmp_path / "data.json.tmp"

    def parent_finishes_its_survey():
        staged.write_text(json.dumps({"shard_paths": ["a.npy"], "wait_for_shards": True}))
        staged.replace(data_file)

    timer = threading.Timer(0.05, parent_finishes_its_survey)
    timer.start()
    merged = receive_data(job.model_copy(update={"data_file": str(data_file), "shard_paths": None}))
    timer.join()
    assert merged.shard_paths == ["a.npy"] and merged.wait_for_shards is True and merged.n_images == 3
