"""The parent's side of the process boundary: start a framework's worker on a job file, follow it, read its result.

One framework per process (TensorFlow and torchvision crash in one process; GluonCV refuses to import
beside torch >= 2); the worker side is :mod:`xfverify.evaluator.process.worker`.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from pydantic import BaseModel

from xfverify.evaluator.process.events import RUN_PID_ENV, USER_ERROR_EXIT, Event, parsed_event
from xfverify.evaluator.process.registry import BACKENDS
from xfverify.evaluator.process.tasks import TASKS
from xfverify.evaluator.process import warm
from xfverify.evaluator.system.files import disk_full_error
from xfverify.models.errors import UserError


# Torch's CPU kernels allocate and free activations of tens of MB on every layer; glibc hands such blocks back
# to the kernel and faults them in again on the next batch, which was half of a Lite0 pass on 2 cores. Kept in
# the heap, the same pass takes half the time with the same bits (bench/results/allocator.json). A worker then
# keeps its peak memory until it ends (one job each, so nothing builds up across runs). A user's own settings win;
# other C libraries ignore these names.
ALLOCATOR_ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": str(1 << 32), "MALLOC_TRIM_THRESHOLD_": str(1 << 32)}


class WorkerCrashed(RuntimeError):
    """A worker process died of a bug (not a user error); carries its stderr."""


def _python_for(framework: str) -> str:
    """The interpreter for a framework: ``XFVERIFY_PYTHON_<FRAMEWORK>`` if set, else this one."""
    return os.environ.get(f"XFVERIFY_PYTHON_{framework.upper()}", sys.executable)


Result = TypeVar("Result", bound=BaseModel)

# The folder a run's workers without a folder of their own work in (its --out/.work, removed when the run ends and,
# after a kill, by the next run there); None: the system's temporary folder.
_scratch: contextvars.ContextVar[str | None] = contextvars.ContextVar("xfverify_scratch", default=None)


@contextlib.contextmanager
def scratch_in(folder: Path) -> Iterator[None]:
    """Within this scope (and the threads it hands its context to), workers' own folders are made in ``folder``."""
    token = _scratch.set(str(folder))
    try:
        yield
    finally:
        _scratch.reset(token)


def run_worker(
    framework: str,
    job: BaseModel,
    *,
    workdir: str | os.PathLike | None = None,
    on_event: Callable[[Event], None] | None = None,
    on_start: Callable[[subprocess.Popen], None] | None = None,
) -> BaseModel:
    """Run the task that takes ``job`` (:data:`~xfverify.evaluator.process.tasks.TASKS`) in a fresh process of
    ``framework``'s back-end; return its typed result.

    ``on_start`` receives the process (so another thread can stop it); ``on_event`` each event it sends. Within
    :func:`~xfverify.evaluator.process.warm.warm_workers` the process is forked from a warm server instead.
    """
    if framework not in BACKENDS:
        raise UserError(f"no back-end for framework {framework!r}")
    task_type = TASKS[type(job)]
    task = task_type.name
    own_tmp = None
    if workdir is None:  # in the run's work folder where it has one: a killed run leaves nothing in the temp folder
        own_tmp = tempfile.TemporaryDirectory(prefix=f"xfverify-{framework}-", dir=_scratch.get())
        workdir = own_tmp.name
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    job_path = workdir / f"{task}.job.json"
    result_path = workdir / f"{task}.result.json"
    error_path = workdir / f"{task}.error.json"
    for stale in (result_path, error_path):
        stale.unlink(missing_ok=True)
    job_path.write_text(
        json.dumps({"framework": framework, "backend": BACKENDS[framework].module, "task": task, "workdir": str(workdir),
                    "job": job.model_dump(mode="json")}, indent=1)
    )
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name, value in ALLOCATOR_ENVIRONMENT.items():
        env.setdefault(name, value)
    env[RUN_PID_ENV] = str(os.getpid())  # the worker watches this process, even if it dies before the worker starts
    command = [_python_for(framework), "-m", "xfverify.evaluator.process.worker", str(job_path)]
    stderr_path = workdir / f"{task}.stderr.txt"
    try:
        with open(stderr_path, "w") as stderr_file:
            servers = warm.active()
            process = servers.start(framework, str(job_path), env, stderr_file) if servers else None
            if process is None:
                try:
                    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr_file, text=True,
                                               env=env)
                except OSError as exc:
                    raise UserError(
                        f"cannot start the {framework} worker with {command[0]} ({exc.strerror or exc}): "
                        f"check XFVERIFY_PYTHON_{framework.upper()}"
                    ) from None
            if on_start:
                on_start(process)
            try:
                for line in process.stdout:
                    event = parsed_event(line)
                    if event is not None and on_event:
                        on_event(event)
            except BaseException:
                process.kill()
                process.wait()
                raise
            code = process.wait()
        if code == 0 and result_path.exists():
            return task_type.result.model_validate_json(result_path.read_text())
        if code == USER_ERROR_EXIT and error_path.exists():
            raise UserError(json.loads(error_path.read_text())["message"])
        stderr_tail = stderr_path.read_text(errors="replace")[-6000:]
        full = _disk_full_at(workdir)
        if full is not None and (code == USER_ERROR_EXIT or not stderr_tail.strip() or "No space left" in stderr_tail):
            raise full  # the worker could not even write why: its folder's disk is full
        if "No module named 'xfverify'" in stderr_tail:
            raise UserError(
                f"{command[0]} cannot import xfverify: install it there (pip install 'xfverify[{framework}]') "
                f"or unset XFVERIFY_PYTHON_{framework.upper()}"
            )
        raise WorkerCrashed(
            f"the {framework} worker ({task}) exited with code {code}; its stderr ends:\n{stderr_tail}"
        )
    finally:
        if own_tmp is not None:
            own_tmp.cleanup()


FULL_BELOW = 1 << 20  # free bytes under which a worker that died without saying why is taken to have hit a full disk


def _disk_full_at(folder: Path) -> UserError | None:
    """A full-disk error for ``folder`` when its disk has (next to) no room left, else None."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if free >= FULL_BELOW:
        return None
    return disk_full_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), folder)
