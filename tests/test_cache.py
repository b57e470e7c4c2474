"""The tensor cache: decode once, verify always, resume after a kill, rebuild what is damaged, share safely."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import broken_images, write_jpeg
from xfverify.evaluator.cache.store import TensorCache
from xfverify.evaluator.data.layouts import load_dataset
from xfverify.evaluator.data.imaging import BadImageError, load_geometry
from xfverify.models.errors import UserError
from xfverify.models.preprocess import PRESETS

SPEC = PRESETS["torchvision-256"]


def make_images(root: Path, n: int, size=(160, 120)) -> Path:
    for i in range(n):
        write_jpeg(root / f"im_{i:03d}.jpg", seed=i, width=size[0] + i % 7, height=size[1])
    return root


def read_all(cached) -> np.ndarray:
    return np.concatenate([batch for _, batch in cached.batches(5)])


def test_build_then_reuse_matches_direct_decoding(tmp_path):
    dataset = load_dataset(make_images(tmp_path / "d", 11))
    cache = TensorCache(tmp_path / "cache", SPEC, shard_size=4)
    cached, stats = cache.ensure(dataset.records, workers=2)
    assert (stats.decoded, stats.built_shards, stats.reused_shards) == (11, 3, 0)
    expected = np.stack([load_geometry(r.path, SPEC) for r in dataset.records])
    assert np.array_equal(read_all(cached), expected)
    again, stats2 = cache.ensure(dataset.records, workers=2)
    assert (stats2.decoded, stats2.reused_shards) == (0, 3)
    assert np.array_equal(read_all(again), expected)
    assert [start for start, _ in again.batches(4)] == [0, 4, 8]


def test_corrupted_shard_is_detected_and_rebuilt(tmp_path):
    dataset = load_dataset(make_images(tmp_path / "d", 8))
    cache = TensorCache(tmp_path / "cache", SPEC, shard_size=4)
    cached, _ = cache.ensure(dataset.records, workers=1)
    good = read_all(cached)
    victim = Path(cached.shard_paths[1])
    raw = bytearray(victim.read_bytes())
    raw[-1000] ^= 0xFF  # one flipped byte inside the pixel data
    victim.write_bytes(bytes(raw))
    messages = []
    rebuilt, stats = cache.ensure(dataset.records, workers=1, log=messages.append)
    assert stats.rebuilt_corrupt == 1 and stats.decoded == 4 and stats.reused_shards == 1
    assert any("checksum mismatch" in m for m in messages)
    assert np.array_equal(read_all(rebuilt), good)


def test_a_shard_lock_that_is_a_link_is_refused_and_its_target_untouched(tmp_path):
    dataset = load_dataset(make_images(tmp_path / "d", 4))
    cache = TensorCache(tmp_path / "cache", SPEC, shard_size=4)
    cached, _ = cache.ensure(dataset.records, workers=1)
    [shard] = cached.shard_paths
    Path(shard).write_bytes(b"damaged")  # to be rebuilt: its lock is taken
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    [lock] = (tmp_path / "cache").rglob("*.lock")
    lock.unlink()
    lock.symlink_to(victim)
    with pytest.raises(UserError, match=f"the tensor cache: {lock} is not a regular file"):
        cache.ensure(dataset.records, workers=1)
    assert victim.read_text() == "precious" and lock.is_symlink()


def test_changed_source_file_invalidates_only_its_shard(tmp_path):
    root = make_images(tmp_path / "d", 8)
    dataset = load_dataset(root)
    cache = TensorCache(tmp_path / "cache", SPEC, shard_size=4)
    cache.ensure(dataset.records, workers=1)
    write_jpeg(root / "im_006.jpg", seed=99, width=200, height=150)
    _, stats = cache.ensure(load_dataset(root).records, workers=1)
    assert (stats.decoded, stats.reused_shards) == (4, 1)


BUILD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from xfverify.evaluator.cache.store import TensorCache
    from xfverify.evaluator.data.layouts import load_dataset
    from xfverify.models.preprocess import PRESETS
    data, cache_dir, shard_size, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    cache = TensorCache(cache_dir, PRESETS["torchvision-256"], shard_size=shard_size)
    _, stats = cache.ensure(load_dataset(data).records, workers=workers)
    print(json.dumps({"decoded": stats.decoded, "reused": stats.reused_shards}))
    """
)


def start_build(data: Path, cache_dir: Path, shard_size: int, workers: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", BUILD_SCRIPT, str(data), str(cache_dir), str(shard_size), str(workers)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


@pytest.mark.slow
def test_killed_run_resumes_where_it_stopped(tmp_path):
    data = make_images(tmp_path / "d", 60, size=(900, 700))
    cache_dir = tmp_path / "cache"
    process = start_build(data, cache_dir, shard_size=5, workers=1)
    deadline = time.time() + 120
    while time.time() < deadline and not list(cache_dir.glob("*/shards/*.json")):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    committed = len(list(cache_dir.glob("*/shards/*.json")))
    assert 1 <= committed < 12, "the run should have been killed part-way"
    dataset = load_dataset(data)
    cache = TensorCache(cache_dir, SPEC, shard_size=5)
    cached, stats = cache.ensure(dataset.records, workers=2)
    assert stats.reused_shards >= committed and stats.decoded == 60 - 5 * stats.reused_shards
    assert not list(cache_dir.glob("*/shards/*.tmp-*")), "temporaries of the dead run are removed"
    some = [0, 17, 59]
    full = read_all(cached)
    for i in some:
        assert np.array_equal(full[i], load_geometry(dataset.records[i].path, SPEC))


@pytest.mark.slow
def test_two_runs_sharing_a_cache_do_not_duplicate_or_corrupt(tmp_path):
    data = make_images(tmp_path / "d", 24, size=(500, 400))
    cache_dir = tmp_path / "cache"
    runs = [start_build(data, cache_dir, shard_size=4, workers=1) for _ in range(2)]
    outputs = []
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(o["decoded"] for o in outputs) == 24  # every shard decoded exactly once
    cache = TensorCache(cache_dir, SPEC, shard_size=4)
    dataset = load_dataset(data)
    for plan in cache.plan(dataset.records):
        meta, why = cache.load_valid(plan)
        assert meta is not None, why
    assert cache.survey(dataset.records).pending is False  # and every shard's digests are there, intact


def test_a_run_lets_go_of_its_shards_before_waiting_for_another_runs(tmp_path):
    """Two runs that each hold a shard the other waits for would wait forever (seen once in CI)."""
    import fcntl
    import threading

    data = make_images(tmp_path / "d", 8)
    cache = TensorCache(tmp_path / "cache", SPEC, shard_size=4)
    records = load_dataset(data).records
    first, second = cache.plan(records)
    shards = cache.directory / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    other_run = open(shards / f"{second.key}.lock", "a+")
    fcntl.flock(other_run, fcntl.LOCK_EX)  # another run is building the second shard
    done: dict = {}
    run = threading.Thread(target=lambda: done.update(stats=cache.ensure(records, workers=1)[1]), daemon=True)
    run.start()
    wanted = open(shards / f"{first.key}.lock", "a+")
    try:
        deadline = time.monotonic() + 120
        while not (shards / f"{first.key}.json").exists():  # this run has built the first shard
            assert time.monotonic() < deadline and run.is_alive(), "the first shard was never built"
            time.sleep(0.02)
        while True:  # the other run now waits for the first shard: it must be free
            try:
                fcntl.flock(wanted, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "the run kept its shard locked while waiting for another"
                time.sleep(0.02)
    finally:
        fcntl.flock(wanted, fcntl.LOCK_UN)
        fcntl.flock(other_run, fcntl.LOCK_UN)  # the other run "died" without building its shard
    run.join(timeout=120)
    assert not run.is_alive()
    assert done["stats"].decoded == 8  # so this run built the second shard itself


def test_bad_image_stops_the_build_after_saving_its_shard(tmp_path):
    root = make_images(tmp_path / "d", 6)
    bad = broken_images(tmp_path / "d")["empty"]  # the first broken file in image-id order
    dataset = load_dataset(root)
    cache = TensorCache(tmp_path / "cache", SPEC, shard_size=4)
    with pytest.raises(BadImageError) as info:
        cache.ensure(dataset.records, workers=1, stop_on_bad=True)
    assert str(bad) in str(info.value)
    cached, stats = cache.ensure(dataset.records, workers=1, stop_on_bad=False)
    assert stats.reused_shards >= 1  # the work done before stopping was kept
    names = sorted(Path(b.path).name for b in cached.bad)
    assert names == ["empty.JPEG", "text.JPEG", "truncated.JPEG"]
    rows = read_all(cached)
    assert all(not rows[b.index].any() for b in cached.bad)
    assert all(b.reason for b in cached.bad)


def _disk_with_free_bytes(free: int):
    import shutil

    real = shutil.disk_usage

    def disk_usage(path):
        return real(path)._replace(free=free)

    return disk_usage


def test_a_disk_too_small_for_the_cache_is_named_before_decoding(tmp_path, monkeypatch):
    import xfverify.evaluator.system.files as folders

    dataset = load_dataset(make_images(tmp_path / "d", 8))
    cache = TensorCache(tmp_path / "cache", SPEC, shard_size=4)
    monkeypatch.setattr(folders.shutil, "disk_usage", _disk_with_free_bytes(1_000_000))
    with pytest.raises(UserError) as info:
        cache.ensure(dataset.records, workers=1)
    message = str(info.value)
    assert f"no room for 1.2 MB in {cache.directory / 'shards'} (free: 1.0 MB)" in message  # 8 x 224 x 224 x 3 bytes
    assert "--cache-dir" in message and "\n" not in message
    assert not list(cache.directory.glob("shards/*.npy*")), "no shard was started"


def test_a_disk_that_fills_during_the_build_keeps_finished_shards(tmp_path, monkeypatch):
    import errno

    dataset = load_dataset(make_images(tmp_path / "d", 8))
    cache = TensorCache(tmp_path / "cache", SPEC, shard_size=4)
    cache.ensure(dataset.records[:4], workers=1)  # the first shard of the full run, finished earlier

    def full_disk(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "posix_fallocate", full_disk)
        with pytest.raises(UserError, match="no room for 0.6 MB in .*shards"):
            cache.ensure(dataset.records, workers=1)
    assert not list(cache.directory.glob("shards/*.tmp-*")), "the half-made shard is removed"
    cached, stats = cache.ensure(dataset.records, workers=1)
    assert (stats.reused_shards, stats.decoded) == (1, 4)
    assert np.array_equal(read_all(cached)[7], load_geometry(dataset.records[7].path, SPEC))


def test_memory_mapped_outputs_have_their_disk_blocks_before_writing(tmp_path):
    from xfverify.evaluator.system.files import allocated_npy

    array = allocated_npy(tmp_path / "x.npy", np.float32, (300, 1000), "fix")
    assert os.stat(tmp_path / "x.npy").st_blocks * 512 >= array.nbytes  # not sparse: no SIGBUS on a full disk
    array[:] = 1.5
    array.flush()
    assert np.load(tmp_path / "x.npy").sum() == 1.5 * 300 * 1000


def write_ppm(path: Path, seed: int, width: int = 90, height: int = 70) -> Path:
    """A raw PPM: every picture of one size is a file of one size."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.write_bytes(f"P6 {width} {height} 255\n".encode() + pixels.tobytes())
    return path


def test_a_file_replaced_by_one_of_the_same_size_and_mtime_is_decoded_again(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    for i in range(8):
        write_ppm(root / f"im_{i}.ppm", seed=i)
    cache = TensorCache(tmp_path / "cache", SPEC, shard_size=4)
    cache.ensure(load_dataset(root).records, workers=1)
    victim = root / "im_6.ppm"
    before = victim.stat()
    write_ppm(victim, seed=99)  # rewritten in place: same inode, same size
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))  # what `touch -r` does
    assert (victim.stat().st_size, victim.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    records = load_dataset(root).records
    cached, stats = cache.ensure(records, workers=1)
    assert (stats.decoded, stats.reused_shards) == (4, 1)
    assert np.array_equal(read_all(cached)[6], load_geometry(victim, SPEC))


def running_in_session(session: int) -> list[int]:
    """Processes of a session that have not exited (zombies have)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.slow
@pytest.mark.parametrize("start", ["fork", "forkserver"])
def test_kill_9_of_the_run_ends_its_decode_pool(tmp_path, start):
    data = make_images(tmp_path / "d", 60, size=(900, 700))
    cache_dir = tmp_path / "cache"
    script = BUILD_SCRIPT
    if start == "forkserver":  # a second thread makes the cache start its pool through a fork server
        script = "import threading, time; threading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n" + script
    process = subprocess.Popen([sys.executable, "-c", script, str(data), str(cache_dir), "5", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(cache_dir.glob("*/shards/*.json")):
        time.sleep(0.05)
    assert len(running_in_session(process.pid)) > 2, "the decode pool is running"
    process.kill()  # the run only: its decode processes are left to notice
    process.wait()
    deadline = time.time() + 30
    while running_in_session(process.pid):
        assert time.time() < deadline, f"left running: {running_in_session(process.pid)}"
        time.sleep(0.1)


def _stored(cache, cached, spec) -> list[np.ndarray]:
    from xfverify.evaluator.cache.digests import FedNormalisation, read_digests

    key = FedNormalisation.of(spec).key
    return [read_digests(path, key, len(np.load(path, mmap_mode="r")), None) for path in cached.shard_paths]


def test_the_fed_tensors_digests_are_stored_at_build_and_computed_once_for_another_normalisation(tmp_path):
    from xfverify.evaluator.cache.digests import fed_checksums
    from xfverify.evaluator.data.normalise import image_digests, normalise

    dataset = load_dataset(make_images(tmp_path / "d", 11))
    cache = TensorCache(tmp_path / "cache", SPEC, shard_size=4)
    cached, stats = cache.ensure(dataset.records, workers=2)
    images = read_all(cached)
    stored = np.concatenate(_stored(cache, cached, SPEC))
    tensors = normalise(images, SPEC)
    assert [bytes(d) for d in stored["sha256"]] == image_digests(tensors)  # what host feeding hashes
    assert np.array_equal(stored["checks"], fed_checksums(tensors)) and stats.digested == 0

    other = SPEC.replace(channel_order="BGR", layout="NHWC")  # the same geometry, other tensors
    assert other.geometry_key() == SPEC.geometry_key()
    assert cache.survey(dataset.records).pending is False  # SPEC's digests are there: nothing to do
    _, stats = cache.ensure(dataset.records, workers=2, normalisations=[SPEC, other])
    assert (stats.decoded, stats.digested, stats.reused_shards) == (0, 11, 3)  # lazily, once, from the shards
    assert np.array_equal(np.concatenate(_stored(cache, cached, other))["sha256"].reshape(11, 32),
                          np.array([list(d) for d in image_digests(normalise(images, other))], dtype=np.uint8))
    _, stats = cache.ensure(dataset.records, workers=2, normalisations=[other])
    assert (stats.decoded, stats.digested) == (0, 0)  # reused by later runs


def test_digests_go_with_their_shard(tmp_path):
    dataset = load_dataset(make_images(tmp_path / "d", 8))
    cache = TensorCache(tmp_path / "cache", SPEC, shard_size=4)
    cached, _ = cache.ensure(dataset.records, workers=1)
    good = _stored(cache, cached, SPEC)
    victim = Path(cached.shard_paths[1])
    raw = bytearray(victim.read_bytes())
    raw[-1000] ^= 0xFF
    victim.write_bytes(bytes(raw))
    (digest_file,) = victim.parent.glob(f"{victim.stem}.fed-*.digests")
    survey = cache.survey(dataset.records)  # the damaged shard is unpublished with its digests
    assert not digest_file.exists() and len(survey.todo) == 1
    cached, stats = cache.complete(survey, workers=1)
    assert stats.decoded == 4 and all(np.array_equal(a, b) for a, b in zip(_stored(cache, cached, SPEC), good))
    # digests bound to other data than the shard's (its checksum) are not used, and made again
    payload = json.loads(digest_file.read_text())
    digest_file.write_text(json.dumps({**payload, "shard_xxh3_128": "0" * 32, "checks": [[0, 0]] * 4}))
    _, stats = cache.ensure(dataset.records, workers=1)
    assert (stats.decoded, stats.digested) == (0, 4)
    assert json.loads(digest_file.read_text()) == payload


def _one_digested_shard(tmp_path):
    """A cache of one shard of 4 images: the cache, its records, its result, its digests file and that file's JSON."""
    dataset = load_dataset(make_images(tmp_path / "d", 4))
    cache = TensorCache(tmp_path / "cache", SPEC, shard_size=4)
    cached, _ = cache.ensure(dataset.records, workers=1)
    (digest_file,) = Path(cached.shard_paths[0]).parent.glob("*.fed-*.digests")
    return cache, dataset.records, cached, digest_file, json.loads(digest_file.read_text())


def _assert_digests_made_again(cache, records, digest_file, payload) -> None:
    _, stats = cache.ensure(records, workers=1)
    assert (stats.decoded, stats.digested) == (0, 4)
    assert json.loads(digest_file.read_text()) == payload


@pytest.mark.parametrize("foreign", ["[1, 2]", "null", '"digests"', "7", '{"format": 1, "n": 4, "sha256": 5}'])
def test_a_digests_file_of_foreign_json_is_damaged_and_made_again_not_a_crash(tmp_path, foreign):
    cache, records, _, digest_file, payload = _one_digested_shard(tmp_path)
    digest_file.write_text(foreign)
    _assert_digests_made_again(cache, records, digest_file, payload)


@pytest.mark.parametrize("field", ["sha256", "checks"])
def test_a_digests_file_changed_by_one_digit_is_damaged_and_made_again(tmp_path, field):
    # A stored sha256 is reported as what was fed: one flipped hex digit must not become a wrong tensors_sha256
    # (which `onnx` reads as "the tensors differ from the native run's").
    cache, records, cached, digest_file, payload = _one_digested_shard(tmp_path)
    damaged = json.loads(digest_file.read_text())
    if field == "sha256":
        digit = damaged["sha256"][2][7]
        damaged["sha256"][2] = damaged["sha256"][2][:7] + ("0" if digit != "0" else "1") + damaged["sha256"][2][8:]
    else:
        damaged["checks"][1][1] += 1
    digest_file.write_text(json.dumps(damaged))
    assert _stored(cache, cached, SPEC) == [None]
    _assert_digests_made_again(cache, records, digest_file, payload)


def test_sidecars_and_digests_are_written_as_before_and_a_cache_built_before_is_reused(tmp_path):
    """The cache's files are typed (ShardSidecar, DigestsFile) with their bytes unchanged: the dicts the cache wrote
    before, through json.dumps, rows of bad images as strings; such a cache is reused as it is."""
    from xfverify.evaluator.cache.shards import checksum

    root = make_images(tmp_path / "d", 6)
    broken_images(root)
    dataset = load_dataset(root)
    cache = TensorCache(tmp_path / "cache", SPEC, shard_size=4)
    cached, _ = cache.ensure(dataset.records, workers=1)
    starts = range(0, len(dataset.records), 4)
    for start, shard in zip(starts, map(Path, cached.shard_paths)):
        records = dataset.records[start : start + 4]
        old_sidecar = {"format": 2, "n": len(records), "image_ids": [r.image_id for r in records],
                       "bad": {str(b.index - start): b.reason for b in cached.bad if start <= b.index < start + 4},
                       "caveats": {}, "xxh3_128": checksum(np.load(shard))}
        assert shard.with_suffix(".json").read_text() == json.dumps(old_sidecar)
        (digests,) = shard.parent.glob(f"{shard.stem}.fed-*.digests")
        payload = json.loads(digests.read_text())
        assert list(payload) == ["format", "normalisation", "table_sha256", "channel_order", "layout",
                                 "shard_xxh3_128", "n", "sha256", "checks", "records_sha256"]
        assert digests.read_text() == json.dumps(payload)
    assert sum(bool(json.loads(Path(s).with_suffix(".json").read_text())["bad"]) for s in cached.shard_paths) >= 1
    again, stats = TensorCache(tmp_path / "cache", SPEC, shard_size=4).ensure(dataset.records, workers=1)
    assert (stats.decoded, stats.digested, stats.reused_shards) == (0, 0, 3)
    assert again.bad == cached.bad and np.array_equal(read_all(again), read_all(cached))


def test_a_chunk_whose_digests_cannot_be_started_fails_instead_of_waiting_forever():
    """Before: a decode worker's chunk was marked reported before its digests were handed to the CPU pool, so a pool
    that could not start (its fork server's socket path too long) left the build waiting forever on that chunk."""
    from xfverify.evaluator.cache.decoding import decode_chunk
    from xfverify.evaluator.process.worker_decode_pool import WorkerDecodePool

    class PoolThatCannotStart:
        def submit(self, *args):
            raise OSError("AF_UNIX path too long")

    pool = WorkerDecodePool(PRESETS["lite-tf-224"], PoolThatCannotStart(), ["key"])
    future = pool.submit(decode_chunk, "/nowhere.npy.tmp", 0, ["a.jpg"])
    pool._decoded(0, [], [])
    assert future.done() and "AF_UNIX path too long" in str(future.exception(timeout=0))


def test_a_cancelled_build_stops_even_when_no_chunk_ever_finishes(tmp_path):
    """A decode worker that is gone leaves its chunks unfinished: the build still sees its cancel (the run's worker
    failed) within a second, instead of waiting on them forever."""
    import threading
    from concurrent.futures import Future

    from xfverify.evaluator.cache.store import BuildCancelled

    class DecoderThatNeverAnswers:
        def __init__(self, spec, cpu_pool, keys):
            self.cpu_pool = cpu_pool

        def submit(self, function, *args):
            return Future()

        def start(self):  # every chunk is submitted, none will finish: now the run's worker fails
            cancel.set()

        def shutdown(self, wait=True, cancel_futures=False):
            self.cpu_pool.shutdown(wait=wait, cancel_futures=cancel_futures)

    dataset = load_dataset(make_images(tmp_path / "d", 3))
    cache = TensorCache(tmp_path / "cache", PRESETS["lite-tf-224"], shard_size=4, decoder_pool=DecoderThatNeverAnswers)
    cancel, outcome = threading.Event(), {}

    def build() -> None:
        try:
            cache.complete(cache.survey(dataset.records), workers=1, cancel=cancel)
        except BuildCancelled as exc:
            outcome["cancelled"] = exc

    builder = threading.Thread(target=build, daemon=True)
    builder.start()
    builder.join(10)
    assert not builder.is_alive() and "cancelled" in outcome
