"""One framework per process: the parent writes a job file, a worker runs it, results come back as files.

Parent side: :func:`run_worker`. Worker side: ``python -m xfverify.evaluator.worker JOB.json``.
The worker imports exactly one back-end module (see :mod:`xfverify.evaluator.frameworks`).
Progress comes back as JSON lines on stdout prefixed with ``@xfverify``; a user error
(missing weights, no GPU, ...) comes back as ``error.json`` and exit code 2; any other
failure is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from xfverify.models.errors import UserError

EVENT_PREFIX = "@xfverify "
USER_ERROR_EXIT = 2


class WorkerCrashed(RuntimeError):
    """A worker process died of a bug (not a user error); carries its stderr."""


def _python_for(framework: str) -> str:
    """The interpreter for a framework: ``XFVERIFY_PYTHON_<FRAMEWORK>`` if set, else this one."""
    return os.environ.get(f"XFVERIFY_PYTHON_{framework.upper()}", sys.executable)


def run_worker(
    framework: str,
    task: str,
    job: dict[str, Any],
    *,
    workdir: str | os.PathLike | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    on_start: Callable[[subprocess.Popen], None] | None = None,
) -> dict[str, Any]:
    """Run ``task`` of ``framework``'s back-end in a fresh process; return its result dict.

    ``on_start`` receives the process (so another thread can stop it); ``on_event`` each progress event.
    """
    from xfverify.evaluator.frameworks import BACKENDS

    if framework not in BACKENDS:
        raise UserError(f"no back-end for framework {framework!r}")
    own_tmp = None
    if workdir is None:
        own_tmp = tempfile.TemporaryDirectory(prefix=f"xfverify-{framework}-")
        workdir = own_tmp.name
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    job_path = workdir / f"{task}.job.json"
    result_path = workdir / f"{task}.result.json"
    error_path = workdir / f"{task}.error.json"
    for stale in (result_path, error_path):
        stale.unlink(missing_ok=True)
    job_path.write_text(
        json.dumps({"framework": framework, "backend": BACKENDS[framework], "task": task, "workdir": str(workdir),
                    "job": job}, indent=1)
    )
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    command = [_python_for(framework), "-m", "xfverify.evaluator.worker", str(job_path)]
    stderr_path = workdir / f"{task}.stderr.txt"
    try:
        with open(stderr_path, "w") as stderr_file:
            try:
                process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr_file, text=True, env=env)
            except OSError as exc:
                raise UserError(
                    f"cannot start the {framework} worker with {command[0]} ({exc.strerror or exc}): "
                    f"check XFVERIFY_PYTHON_{framework.upper()}"
                ) from None
            if on_start:
                on_start(process)
            try:
                for line in process.stdout:
                    if line.startswith(EVENT_PREFIX):
                        if on_event:
                            on_event(json.loads(line[len(EVENT_PREFIX) :]))
            except BaseException:
                process.kill()
                process.wait()
                raise
            code = process.wait()
        if code == 0 and result_path.exists():
            return json.loads(result_path.read_text())
        if code == USER_ERROR_EXIT and error_path.exists():
            raise UserError(json.loads(error_path.read_text())["message"])
        stderr_tail = stderr_path.read_text(errors="replace")[-6000:]
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


_MILESTONES: dict[str, float] = {}


def milestone(name: str) -> None:
    """Worker side: note when a phase ended (wall-clock seconds since the epoch; the first call per name wins)."""
    _MILESTONES.setdefault(name, time.time())


def milestones() -> dict[str, float]:
    """The phases noted so far in this process."""
    return dict(_MILESTONES)


def emit(event: str, **fields: Any) -> None:
    """Worker side: send a progress event to the parent."""
    print(EVENT_PREFIX + json.dumps({"event": event, **fields}), flush=True)


ORPHANED_EXIT = 3


def exit_when_orphaned(parent: int, poll_s: float = 0.5) -> None:
    """A process whose run died (killed, crashed) must not wait for shards or data forever, nor keep a GPU or
    the terminal's output: a watcher thread ends it once ``parent`` has exited. ``parent`` is the process's
    own parent (a framework worker), or the run that started it through a fork server (a decode process)."""
    import select
    import threading

    def watch() -> None:
        try:
            handle = os.pidfd_open(parent)  # readable once that process has exited, even before it is reaped
        except ProcessLookupError:
            os._exit(ORPHANED_EXIT)
        except (AttributeError, OSError):  # no pidfd (not Linux): notice being re-parented instead
            while os.getppid() == parent:
                time.sleep(poll_s)
            os._exit(ORPHANED_EXIT)
        select.select([handle], [], [])
        os._exit(ORPHANED_EXIT)

    threading.Thread(target=watch, name="xfverify-parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    """Worker entry point: run one job file."""
    import signal

    # Run as ``python -m``, this file is ``__main__``; the back-ends record into the importable module.
    from xfverify.evaluator.worker import milestone

    milestone("worker_started")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops this process
    exit_when_orphaned(os.getppid())
    argv = sys.argv[1:] if argv is None else argv
    job_path = Path(argv[0])
    spec = json.loads(job_path.read_text())
    workdir = Path(spec["workdir"])
    task = spec["task"]
    try:
        try:
            backend = importlib.import_module(spec["backend"])
        except ImportError as exc:
            missing = exc.name or str(exc)
            framework = spec["framework"]  # the package's extras are named after the frameworks
            raise UserError(
                f"the {framework} back-end cannot import {missing} in {sys.executable}: "
                f"pip install 'xfverify[{framework}]' there"
            ) from None
        milestone("framework_imported")
        result = getattr(backend, task)(spec["job"], workdir)
    except UserError as exc:
        (workdir / f"{task}.error.json").write_text(json.dumps({"message": str(exc)}))
        return USER_ERROR_EXIT
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        return 1
    (workdir / f"{task}.result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)  # skip interpreter teardown: torch's takes ~2 s, and every result is on disk
