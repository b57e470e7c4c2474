"""The worker process protocol: what happens around a back-end's task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from xfverify.models.preprocess import PRESETS


def _ended(pid: int) -> bool:
    """Gone, or a zombie nobody has reaped yet (both mean the process ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in status


def test_a_worker_whose_parent_dies_ends_itself(tmp_path):
    job = tmp_path / "describe_onnx.job.json"
    job.write_text(json.dumps({"framework": "test", "backend": "sleeping_backend", "task": "describe_onnx",
                               "workdir": str(tmp_path), "job": {"path": "x.onnx", "layout": "NCHW"}}))
    pid_file = tmp_path / "worker.pid"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}
    parent = subprocess.Popen(
        ["bash", "-c", f'"{sys.executable}" -m xfverify.evaluator.process.worker "{job}" & echo $! > "{pid_file}"; wait'], env=env
    )
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    worker = int(pid_file.read_text())
    while not (tmp_path / "waiting").exists():  # the worker is up, watching its parent, and waiting in its task
        assert time.monotonic() < deadline and not _ended(worker)
        time.sleep(0.05)
    assert not _ended(worker)
    parent.kill()
    parent.wait()
    while not _ended(worker):
        assert time.monotonic() < deadline, "the orphaned worker kept running"
        time.sleep(0.1)


def test_a_worker_whose_run_died_before_it_started_ends_itself(tmp_path):
    job = tmp_path / "describe_onnx.job.json"
    job.write_text(json.dumps({"framework": "test", "backend": "sleeping_backend", "task": "describe_onnx",
                               "workdir": str(tmp_path), "job": {"path": "x.onnx", "layout": "NCHW"}}))
    gone = subprocess.Popen(["true"])
    gone.wait()  # a run that has ended: its worker is re-parented before it can look at its parent
    env = {**os.environ, "XFVERIFY_RUN_PID": str(gone.pid),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "xfverify.evaluator.process.worker", str(job)], env=env, timeout=60)
    assert done.returncode == 3  # ORPHANED_EXIT, not a wait for ever


EVALUATE_JOB = {"model": None, "preprocess": PRESETS["torchvision-256"].to_dict(), "device": "cpu", "precision": "fp32", "n_images": 0, "hw": [8, 8]}


def _run_worker(tmp_path: Path, backend: str) -> subprocess.CompletedProcess:
    job = tmp_path / "evaluate.job.json"
    job.write_text(json.dumps({"framework": "test", "backend": backend, "task": "evaluate", "workdir": str(tmp_path),
                               "job": EVALUATE_JOB}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "xfverify.evaluator.process.worker", str(job)], env=env, capture_output=True,
                          text=True, timeout=120)


def test_a_missing_framework_is_a_user_error_naming_it(tmp_path):
    done = _run_worker(tmp_path, "backend_lacking_a_framework")
    assert done.returncode == 2, done.stderr
    message = json.loads((tmp_path / "evaluate.error.json").read_text())["message"]
    assert "cannot import no_such_framework_xfverify_test" in message and "pip install 'xfverify[test]'" in message


def test_a_broken_import_inside_xfverify_is_a_bug_with_its_traceback(tmp_path):
    done = _run_worker(tmp_path, "backend_with_a_bug")
    assert done.returncode == 1, done.stderr
    assert not (tmp_path / "evaluate.error.json").exists()
    assert "Traceback" in done.stderr and "no_such_module_xfverify_test" in done.stderr
