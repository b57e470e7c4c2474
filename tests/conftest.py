"""Shared fixtures (helpers live in helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import VAL_SIZES, imagenet_val_files, write_jpeg
from xfverify.evaluator.process.launcher import ALLOCATOR_ENVIRONMENT

os.environ.setdefault("COLUMNS", "200")  # before the console is imported: tables as wide as a run_cli subprocess's
for _name, _value in ALLOCATOR_ENVIRONMENT.items():  # the test workers (started after this) allocate as ours do
    os.environ.setdefault(_name, _value)
# Under `pytest -n N` the N test workers share the cores: each framework takes its share of threads (two
# two-thread torch passes on two cores spend a third of their CPU time waiting on each other).
_TEST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _TEST_WORKERS > 1:
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ.setdefault(_name, str(max(1, (os.cpu_count() or 1) // _TEST_WORKERS)))

# `make test` runs `pytest -n auto`: each file's tests run on one worker (its module fixtures run once), except
# in these files of long independent tests, whose tests spread over the workers.
SPREAD = ("test_real_photos.py",)
# The longest first, so that the workers finish together: these files' tests are handed out before the others.
LONGEST = ("test_real_photos.py", "test_study.py", "test_diagnose.py", "test_onnx.py", "test_native.py",
           "test_diagnose_precisions.py", "test_nvjpeg.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: place for place, name in enumerate(LONGEST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST)))  # stable: a file's own order is kept


def pytest_xdist_make_scheduler(config, log):
    """With ``-n`` (xdist's plain ``load``): whole files as work units but SPREAD's tests one by one, in the
    order collected (longest first)."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FilesButSpreadTests(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            return nodeid if file.endswith(SPREAD) else file

    config.option.loadscopereorder = False
    return FilesButSpreadTests(config, log)


@pytest.fixture(scope="session", autouse=True)
def _warm_workers():
    """Torch's and TensorFlow's workers are forked from a server that imported the framework once (as `xfverify
    study` does): the CLI's own way, a fresh process per worker, is what the tests run with ``isolated=True`` take."""
    from xfverify.evaluator.process.warm import warm_workers

    with warm_workers():
        yield


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own tensor cache and no network for weight downloads."""
    monkeypatch.setenv("XFVERIFY_CACHE", str(tmp_path_factory.mktemp("cache")))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # a closed port: downloads fail at once
    monkeypatch.setenv("NO_PROXY", "")



@pytest.fixture(scope="session")
def shared_cache_dir(tmp_path_factory) -> Path:
    """One tensor and export cache for the whole run, every test worker's (the cache is built for runs that share
    it): for the tests of real weights, so that each Lite export and each decode of the photos is made once. Tests
    that look at what a cache holds or how it was built keep their own."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # xdist: the workers' common folder
    path = root / "shared-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def made_export(shared_cache_dir):
    """``made_export(CACHE_DIR, MODEL)``: MODEL's random-weights export (the default exporter) put into the export
    cache under CACHE_DIR as a copy of one made once for the whole run, for the tests whose subject is not the
    export itself (an export by torch's dynamo exporter costs a CPU quarter-minute): their runs find it there, as a
    second run finds the first's."""
    import fcntl
    import shutil

    from xfverify.evaluator.pipeline.onnx_pass import export_ahead
    from xfverify.evaluator.pipeline.options import OnnxOptions

    store = shared_cache_dir.parent / "export-store"
    store.mkdir(exist_ok=True)

    def made(cache_dir: Path, model: str) -> Path:
        with open(store / ".lock", "w") as lock:  # the test workers make each export once, one at a time
            fcntl.flock(lock, fcntl.LOCK_EX)
            entry = export_ahead(OnnxOptions(target=model, random_weights=True, provider="cpu",
                                             cache_dir=str(store))).export.path.parent
        copy = Path(cache_dir) / "onnx" / entry.name
        shutil.copytree(entry, copy)
        return copy

    return made


@pytest.fixture
def shared_cache(shared_cache_dir, monkeypatch) -> Path:
    """This test's runs use the run's shared cache (see shared_cache_dir)."""
    monkeypatch.setenv("XFVERIFY_CACHE", str(shared_cache_dir))
    return shared_cache_dir


@pytest.fixture
def val_images(tmp_path) -> dict[str, Path]:
    """Generated 'validation' JPEGs, keyed by file name (the same bytes for every layout)."""
    folder = tmp_path / "_originals"
    out = {}
    for i, (name, _) in enumerate(imagenet_val_files(10)):
        w, h = VAL_SIZES[i % len(VAL_SIZES)]
        out[name] = write_jpeg(folder / name, seed=i, width=w, height=h)
    return out



@pytest.fixture
def generated_folder(tmp_path) -> Path:
    """A tiny own-images dataset (layout 'folder') with a labels.csv."""
    root = tmp_path / "own"
    lines = ["image,labels"]
    for i in range(7):
        w, h = VAL_SIZES[i % len(VAL_SIZES)]
        write_jpeg(root / f"img_{i:02d}.jpg", seed=100 + i, width=w, height=h)
        lines.append(f"img_{i:02d}.jpg,{(i * 97) % 1000}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root



@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session's page tests (each test opens its page in the same tab)."""
    from browser import Browser

    with Browser() as session:
        yield session
