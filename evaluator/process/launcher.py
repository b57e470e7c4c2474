"""The parent's side of the process boundary: start a framework's worker on a job file, follow it, read its result.

One framework per process (TensorFlow and torchvision crash in one process; GluonCV refuses to import
beside torch >= 2); the worker side is :mod:`xfverify.evaluator.process.worker`.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator

from xfverify.evaluator.process.events import RUN_PID_ENV, USER_ERROR_EXIT, Event, parsed_event
from xfverify.evaluator.process.registry import BACKENDS
from xfverify.evaluator.process.tasks import TASKS, Job, ResultType, Task
from xfverify.evaluator.process.wire import JobFile, UserErrorFile
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
    job: Job[ResultType],
    *,
    workdir: str | os.PathLike | None = None,
    on_event: Callable[[Event], None] | None = None,
    on_start: Callable[[subprocess.Popen], None] | None = None,
) -> ResultType:
    """Run the task that takes ``job`` (:data:`~xfverify.evaluator.process.tasks.TASKS`) in a fresh process of
    ``framework``'s back-end; return its typed result.

    ``on_start`` receives the process (so another thread can stop it); ``on_event`` each event it sends. Within
    :func:`~xfverify.evaluator.process.warm.warm_workers` the process is forked from a warm server instead.
    """
    if framework not in BACKENDS:
        raise UserError(f"no back-end for framework {framework!r}")
    task = TASKS[type(job)]
    own_tmp = None
    if workdir is None:  # in the run's work folder where it has one: a killed run leaves nothing in the temp folder
        own_tmp = tempfile.TemporaryDirectory(prefix=f"xfverify-{framework}-", dir=_scratch.get())
        workdir = own_tmp.name
    files = _TaskFiles(Path(workdir), task.name)
    try:
        files.write_job(framework, job)
        oom_kills = out_of_memory_kills()
        with open(files.stderr, "w") as stderr_file:
            process = _start(framework, files.job, stderr_file)
            if on_start:
                on_start(process)
            code = _follow(process, on_event)
        if code == -signal.SIGKILL:  # not a bug of ours: the kernel, or someone, ended it
            raise UserError(_killed(framework, task.name, oom_kills))
        return _outcome(framework, task, files, code)
    finally:
        if own_tmp is not None:
            own_tmp.cleanup()


class _TaskFiles:
    """A task's files in its work folder: the job, and what the worker leaves (result, user error, stderr)."""

    def __init__(self, workdir: Path, task: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir, self.task = workdir, task
        self.job = workdir / f"{task}.job.json"
        self.result = workdir / f"{task}.result.json"
        self.error = workdir / f"{task}.error.json"
        self.stderr = workdir / f"{task}.stderr.txt"

    def write_job(self, framework: str, job: Job) -> None:
        for stale in (self.result, self.error):
            stale.unlink(missing_ok=True)
        self.job.write_text(JobFile(framework=framework, backend=BACKENDS[framework].module, task=self.task,
                                    workdir=str(self.workdir), job=job.model_dump(mode="json")).model_dump_json(indent=1))


def _worker_environment() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name, value in ALLOCATOR_ENVIRONMENT.items():
        env.setdefault(name, value)
    env[RUN_PID_ENV] = str(os.getpid())  # the worker watches this process, even if it dies before the worker starts
    return env


def _start(framework: str, job_path: Path, stderr_file: IO) -> subprocess.Popen | warm.WarmProcess:
    """The worker on ``job_path``: forked by a warm server when one serves ``framework``, else started."""
    env = _worker_environment()
    servers = warm.active()
    process = servers.start(framework, str(job_path), env, stderr_file) if servers else None
    if process is not None:
        return process
    command = [_python_for(framework), "-m", "xfverify.evaluator.process.worker", str(job_path)]
    try:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr_file, text=True, env=env)
    except OSError as exc:
        raise UserError(f"cannot start the {framework} worker with {command[0]} ({exc.strerror or exc}): "
                        f"check XFVERIFY_PYTHON_{framework.upper()}") from None


def _follow(process, on_event: Callable[[Event], None] | None) -> int:
    """Hand each event the worker sends to ``on_event`` until it ends; its exit code (stopped on an exception)."""
    try:
        for line in process.stdout:
            event = parsed_event(line)
            if event is not None and on_event:
                on_event(event)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process.wait()


def out_of_memory_kills() -> int | None:
    """How many processes the kernel's out-of-memory killer has ended since boot (Linux's /proc/vmstat), else None."""
    try:
        counters = Path("/proc/vmstat").read_text()
    except OSError:
        return None
    for line in counters.splitlines():
        name, _, value = line.partition(" ")
        if name == "oom_kill" and value.strip().isdigit():
            return int(value)
    return None


def _killed(framework: str, task: str, oom_kills_before: int | None) -> str:
    """The line for a worker ended by SIGKILL: the out-of-memory killer's doing only where its count went up."""
    after = out_of_memory_kills()
    if oom_kills_before is not None and after is not None and after > oom_kills_before:
        smaller_batches = "" if task == "export" else " (a smaller --batch-size needs less)"
        return (f"the {framework} worker ({task}) was ended by the kernel's out-of-memory killer: it needed more "
                f"memory than was free; free memory or run fewer jobs at once{smaller_batches}")
    return (f"the {framework} worker ({task}) was killed by SIGKILL from outside xfverify (the kernel's "
            f"out-of-memory count did not change); run it again")


def _outcome(framework: str, task: Task, files: _TaskFiles, code: int):
    """The task's typed result; or its user error's one line, a full disk, a missing xfverify, a crash."""
    if code == 0 and files.result.exists():
        return task.result.model_validate_json(files.result.read_text())
    if code == USER_ERROR_EXIT and files.error.exists():
        raise UserError(UserErrorFile.model_validate_json(files.error.read_text()).message)
    stderr_tail = files.stderr.read_text(errors="replace")[-6000:]
    full = _disk_full_at(files.workdir)
    if full is not None and (code == USER_ERROR_EXIT or not stderr_tail.strip() or "No space left" in stderr_tail):
        raise full  # the worker could not even write why: its folder's disk is full
    if "No module named 'xfverify'" in stderr_tail:
        raise UserError(f"{_python_for(framework)} cannot import xfverify: install it there "
                        f"(pip install 'xfverify[{framework}]') or unset XFVERIFY_PYTHON_{framework.upper()}")
    raise WorkerCrashed(f"the {framework} worker ({task.name}) exited with code {code}; its stderr ends:\n{stderr_tail}")


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
