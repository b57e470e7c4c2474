"""The worker loop: host and device feeding give the same fingerprint and logits order; a device that fed
other bytes than the cache stored digests of is stopped, naming the image."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xfverify.evaluator.backends import runloop
from xfverify.evaluator.backends.steps import DeviceBatch, DeviceFedStep, HostBatch, HostFedStep, PendingBatch
from xfverify.evaluator.cache.digests import ensure_digests, fed_checksums
from xfverify.evaluator.cache.shards import ShardSidecar
from xfverify.evaluator.data.normalise import normalise
from xfverify.models.errors import UserError
from xfverify.models.preprocess import PRESETS

SPEC = PRESETS["torchvision-256"]


class _LateResult(PendingBatch):
    """Stands in for a GPU handle: results (and the fed tensors' checksums) arrive after the next launch."""

    def __init__(self, u8, tamper=None):
        self.u8, self.tamper = u8, tamper

    def result(self) -> DeviceBatch:
        fed = normalise(np.ascontiguousarray(self.u8), SPEC)
        if self.tamper:
            self.tamper(fed)
        return DeviceBatch(fed.reshape(len(fed), -1)[:, :1000].copy(), 1.0, fed_checksums(fed))


class _LateStep(DeviceFedStep):
    """Stands in for a GPU step: normalises on "the device" (here), optionally tampering with what it feeds."""

    def __init__(self, tamper=None):
        self.tamper = tamper

    def warm_up(self, sizes, hw, full_batches) -> float:
        return 0.0

    def stage(self, u8):
        return u8

    def launch(self, staged) -> _LateResult:
        return _LateResult(staged, self.tamper)


class _FirstValues(HostFedStep):
    """A host step whose "logits" are the first 1000 values of each fed tensor (so the loop's order shows)."""

    def run(self, tensors) -> HostBatch:
        return HostBatch(tensors.reshape(len(tensors), -1)[:, :1000].copy(), 1.0)


def _shards(tmp_path, sizes, hw=(224, 224)) -> list[str]:
    rng = np.random.default_rng(0)
    shards = []
    for i, n in enumerate(sizes):
        path = tmp_path / f"s{i}.npy"
        np.save(path, rng.integers(0, 256, (n, *hw, 3), dtype=np.uint8))
        path.with_suffix(".json").write_text(ShardSidecar.of(np.load(path), [f"img{i}-{j}" for j in range(n)]).to_json())
        shards.append(str(path))
    return shards


def test_device_feeding_reports_the_digests_host_feeding_hashes(tmp_path):
    shards = _shards(tmp_path, (70, 45))  # batches of 32 straddle the shard boundary
    ensure_digests(shards, SPEC)

    device = runloop.run_loop(shards, 115, SPEC, 32, _LateStep(), tmp_path / "d.npy",
                              threads=3, wait_for_shards=True)
    host = runloop.run_loop(shards, 115, SPEC, 32, _FirstValues(), tmp_path / "h.npy", threads=3)
    assert device.n_images == host.n_images == 115
    assert device.tensors_sha256 == host.tensors_sha256
    assert (device.tensor_proof, host.tensor_proof) == ("device checksums against digests stored at cache build",
                                                        "hashed on host")
    assert np.array_equal(np.load(tmp_path / "d.npy"), np.load(tmp_path / "h.npy"))
    assert len(device.batch_ms) == 4


def _swap_two_values(fed):
    if len(fed) == 6:  # the last batch of 8: images 16 to 21, of the second shard
        values = fed[3].reshape(-1)
        values[[0, 1]] = values[[1, 0]]  # the same values, elsewhere: only the weighted checksum sees it


def _one_ulp_up(fed):
    if len(fed) == 8:  # the first batch it sees
        values = fed[5].reshape(-1)
        values[100] = np.nextafter(values[100], np.float32(10))


@pytest.mark.parametrize("tamper, named", [(_swap_two_values, "image img1-3 (#19)"),
                                           (_one_ulp_up, "image img0-5 (#5)")])
def test_a_device_that_fed_other_bytes_is_stopped_naming_the_image(tmp_path, tamper, named):
    shards = _shards(tmp_path, (16, 6), hw=(20, 20))
    ensure_digests(shards, SPEC)
    with pytest.raises(UserError) as info:
        runloop.run_loop(shards, 22, SPEC, 8, _LateStep(tamper), tmp_path / "d.npy",
                         threads=2, device_name="NVIDIA H200")
    message = str(info.value)
    assert message.startswith(named) and "fed on NVIDIA H200" in message and "\n" not in message


def test_the_checksums_see_every_bit_and_every_position():
    rng = np.random.default_rng(3)
    tensors = normalise(rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8), SPEC)
    base = fed_checksums(tensors)
    changed = tensors.copy()
    changed[1].reshape(-1)[7] = np.nextafter(changed[1].reshape(-1)[7], np.float32(10))  # one ulp
    assert (fed_checksums(changed)[1] != base[1]).all() and (fed_checksums(changed)[0] == base[0]).all()
    zero = np.zeros((1, 4), np.float32)
    assert (fed_checksums(-zero) != fed_checksums(zero)).all()  # equal values, other bytes: sha256 differs too
    moved = tensors.copy()
    moved[0] = moved[0][:, :, ::-1]  # channels swapped: the same values, so the plain sum cannot see it
    assert fed_checksums(moved)[0, 0] == base[0, 0] and fed_checksums(moved)[0, 1] != base[0, 1]


def test_device_feeding_without_stored_digests_is_a_bug_named_at_once(tmp_path):
    shards = _shards(tmp_path, (4,), hw=(8, 8))
    with pytest.raises(RuntimeError, match=r"s0\.fed-[0-9a-f]{16}\.digests: missing"):
        runloop.run_loop(shards, 4, SPEC, 2, _LateStep(), tmp_path / "d.npy", threads=2)


def test_a_device_fed_worker_computes_the_digests_a_cpu_bound_cache_did_not_store(tmp_path):
    """The parent stores digests only where a run may feed a GPU; a device-fed loop told none are stored makes
    them itself (and they are the host feed's)."""
    shards = _shards(tmp_path, (5, 3), hw=(20, 20))
    device = runloop.run_loop(shards, 8, SPEC, 3, _LateStep(), tmp_path / "d.npy", threads=2, wait_for_shards=True, digests_stored=False)
    host = runloop.run_loop(shards, 8, SPEC, 3, _FirstValues(),
                            tmp_path / "h.npy", threads=2)
    assert device.tensors_sha256 == host.tensors_sha256
    assert len(list(tmp_path.glob("s*.fed-*.digests"))) == 2


def test_steady_rate_of_a_synchronous_step_counts_each_batch_once(tmp_path):
    import time

    path = tmp_path / "s.npy"
    np.save(path, np.zeros((24, 8, 8, 3), dtype=np.uint8))

    class SlowStep(HostFedStep):
        def run(self, tensors) -> HostBatch:
            time.sleep(0.02)  # sleeps never end early, so the true rate is at most 4 / 0.02 = 200 images/s
            return HostBatch(np.zeros((len(tensors), 1000), dtype=np.float32), 20.0)

    result = runloop.run_loop([str(path)], 24, SPEC, 4, SlowStep(), tmp_path / "l.npy", threads=2)
    assert len(result.batch_ms) == 6
    assert 50 < result.steady_images_per_s <= 200 * 1.02  # counting a batch twice would give ~250


def test_the_worker_takes_the_data_part_of_its_job_once_the_parent_writes_it(tmp_path):
    import json
    import threading

    from xfverify.evaluator.backends.feeding import receive_data
    from xfverify.evaluator.process.tasks import EvaluateJob
    from xfverify.models.preprocess import PRESETS

    job = EvaluateJob(model="m", preprocess=PRESETS["torchvision-256"], device="cpu", precision="fp32",
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


def test_device_feeding_waits_for_digests_the_cache_computes_after_the_shard(tmp_path):
    import threading

    shards = _shards(tmp_path, (5, 3), hw=(20, 20))  # shards published, their digests not yet computed
    later = threading.Timer(0.1, ensure_digests, args=(shards, SPEC))
    later.start()
    device = runloop.run_loop(shards, 8, SPEC, 4, _LateStep(), tmp_path / "d.npy", threads=2, wait_for_shards=True)
    later.join()
    host = runloop.run_loop(shards, 8, SPEC, 4, _FirstValues(),
                            tmp_path / "h.npy", threads=2)
    assert device.tensors_sha256 == host.tensors_sha256 and device.n_images == 8


def test_a_device_fed_loop_reads_the_digests_the_tensor_cache_stored(tmp_path):
    from helpers import write_jpeg
    from xfverify.evaluator.cache.store import TensorCache
    from xfverify.evaluator.data.layouts import load_dataset

    for i in range(7):
        write_jpeg(tmp_path / "d" / f"im_{i}.jpg", seed=i, width=120 + i, height=90)
    cached, _ = TensorCache(tmp_path / "cache", SPEC, shard_size=3).ensure(load_dataset(tmp_path / "d").records,
                                                                            workers=1)
    device = runloop.run_loop(cached.shard_paths, 7, SPEC, 2, _LateStep(), tmp_path / "d.npy",
                              threads=2)
    host = runloop.run_loop(cached.shard_paths, 7, SPEC, 2, _FirstValues(),
                            tmp_path / "h.npy", threads=2)
    assert device.tensors_sha256 == host.tensors_sha256
    with pytest.raises(UserError, match=r"^image im_0 \(#0\): the tensor fed on the device differs"):
        runloop.run_loop(cached.shard_paths, 7, SPEC, 2, _LateStep(_first_value_one_ulp_up),
                         tmp_path / "t.npy", threads=2)


def _first_value_one_ulp_up(fed):
    values = fed[0].reshape(-1)
    values[0] = np.nextafter(values[0], np.float32(10))
