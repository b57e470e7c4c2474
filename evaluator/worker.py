"""The worker process's side: ``python -m xfverify.evaluator.worker JOB.json`` runs one task of one back-end.

The worker imports exactly the back-end module its job file names (the parent's
:mod:`xfverify.evaluator.launcher` chose it). Progress goes to the parent as JSON lines on stdout
prefixed with ``@xfverify``; a user error (missing weights, no GPU, ...) comes back as ``error.json``
and exit code 2; any other failure is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from xfverify.models.errors import UserError

EVENT_PREFIX = "@xfverify "
USER_ERROR_EXIT = 2


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
RUN_PID_ENV = "XFVERIFY_RUN_PID"  # set by the launcher: the process a worker must not outlive


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # there, but another user's
        return True
    return True


def exit_when_orphaned(parent: int, poll_s: float = 0.5) -> None:
    """A process whose run died (killed, crashed) must not wait for shards or data forever, nor keep a GPU or
    the terminal's output: a watcher thread ends it once ``parent`` has exited (at once if it already has).
    ``parent`` is the run that launched it (a framework worker: ``XFVERIFY_RUN_PID``, so a run that dies before
    its worker starts watching is still noticed), or the run that started it through a fork server (a decode
    process)."""
    import select
    import threading

    def watch() -> None:
        try:
            handle = os.pidfd_open(parent)  # readable once that process has exited, even before it is reaped
        except ProcessLookupError:
            os._exit(ORPHANED_EXIT)
        except (AttributeError, OSError):  # no pidfd (not Linux): poll for the process instead
            while _exists(parent):
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
    exit_when_orphaned(int(os.environ.get(RUN_PID_ENV) or os.getppid()))
    argv = sys.argv[1:] if argv is None else argv
    job_path = Path(argv[0])
    spec = json.loads(job_path.read_text())
    workdir = Path(spec["workdir"])
    task = spec["task"]
    try:
        try:
            backend = importlib.import_module(spec["backend"])
        except ImportError as exc:
            if (exc.name or "").partition(".")[0] == "xfverify":  # xfverify's own module: a bug, not the environment
                raise
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
    if hasattr(result, "model_dump_json"):  # the typed results of xfverify.evaluator.jobs
        (workdir / f"{task}.result.json").write_text(result.model_dump_json())
    else:
        (workdir / f"{task}.result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)  # skip interpreter teardown: torch's takes ~2 s, and every result is on disk
