"""The worker process's side: ``python -m xfverify.evaluator.process.worker JOB.json`` runs one task of one back-end.

The worker imports exactly the back-end module its job file names (the parent's
:mod:`xfverify.evaluator.process.launcher` chose it). Progress goes to the parent as JSON lines on stdout
prefixed with ``@xfverify``; a user error (missing weights, no GPU, ...) comes back as ``error.json``
and exit code 2; any other failure is a bug and keeps its traceback.

``python -m xfverify.evaluator.process.worker --serve FD MODULE`` is a warm worker's server
(:mod:`xfverify.evaluator.process.warm`): it imports the back-end module once, then forks a fresh worker
process per job the parent sends on the socket FD, which runs exactly as a started one would.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from pathlib import Path

from xfverify.evaluator.process.events import RUN_PID_ENV, USER_ERROR_EXIT, milestone
from xfverify.evaluator.process.tasks import TASKS_BY_NAME
from xfverify.evaluator.process.wire import Exited, ForkRequest, JobFile, Ready, Started, UserErrorFile
from xfverify.evaluator.system.files import disk_full_error, is_disk_full
from xfverify.evaluator.system.orphans import exit_when_orphaned
from xfverify.models.errors import UserError


def main(argv: list[str] | None = None) -> int:
    """Worker entry point: run one job file."""
    import signal

    milestone("worker_started")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops this process
    exit_when_orphaned(int(os.environ.get(RUN_PID_ENV) or os.getppid()))
    argv = sys.argv[1:] if argv is None else argv
    envelope = JobFile.model_validate_json(Path(argv[0]).read_text())
    workdir, task = Path(envelope.workdir), TASKS_BY_NAME[envelope.task]
    try:
        try:
            backend = importlib.import_module(envelope.backend)
        except ImportError as exc:
            if (exc.name or "").partition(".")[0] == "xfverify":  # xfverify's own module: a bug, not the environment
                raise
            missing = exc.name or str(exc)
            framework = envelope.framework  # the package's extras are named after the frameworks
            raise UserError(
                f"the {framework} back-end cannot import {missing} in {sys.executable}: "
                f"pip install 'xfverify[{framework}]' there"
            ) from None
        milestone("framework_imported")
        result = backend.TASKS[task.name](task.job.model_validate(envelope.job), workdir)
        if not isinstance(result, task.result):
            raise TypeError(f"task {task.name} of {envelope.backend} returned {type(result).__name__}, "
                            f"not {task.result.__name__}")
    except UserError as exc:
        return _user_error(workdir, task.name, exc)
    except OSError as exc:
        if not is_disk_full(exc):
            traceback.print_exc()
            sys.stderr.flush()
            return 1
        return _user_error(workdir, task.name, disk_full_error(exc, workdir))
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        return 1
    try:
        (workdir / f"{task.name}.result.json").write_text(result.model_dump_json())
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        return _user_error(workdir, task.name, disk_full_error(exc, workdir))
    return 0


def _forked_worker(request: ForkRequest, fds: list[int]) -> None:
    """In a process forked by :func:`serve`: become the worker the request describes, run it, never return."""
    code = 1
    try:
        stdout_fd, stderr_fd = fds
        os.dup2(stdout_fd, 1)
        os.dup2(stderr_fd, 2)
        os.close(stdout_fd)
        os.close(stderr_fd)
        os.chdir(request.cwd)
        os.environ.clear()
        os.environ.update(request.env)
        code = main([request.job])
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(socket_fd: int, module: str) -> int:
    """A warm worker's server: import ``module`` (the framework) once, then for each request on the socket fork
    a worker, answer its pid, and when it exits, its exit code. Ends when the parent closes the socket."""
    import selectors
    import signal
    import socket

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = socket.socket(fileno=socket_fd)
    try:
        importlib.import_module(module)
    except BaseException:  # the parent falls back to starting workers itself, which says what is wrong
        return 1
    channel.sendall(Ready().model_dump_json().encode())
    waiting = selectors.DefaultSelector()
    waiting.register(channel, selectors.EVENT_READ)
    while True:
        for key, _ in waiting.select():
            if key.fileobj is channel:
                message, fds, _, _ = socket.recv_fds(channel, 1 << 20, 2)
                if not message:
                    return 0  # the parent is gone or done: workers still running watch the run themselves
                pid = os.fork()
                if pid == 0:
                    for other in list(waiting.get_map().values()):
                        if other.fileobj is not channel:
                            os.close(other.fileobj)  # the pidfds of the other workers
                    waiting.close()
                    channel.close()
                    _forked_worker(ForkRequest.model_validate_json(message), fds)
                for fd in fds:
                    os.close(fd)
                waiting.register(os.pidfd_open(pid), selectors.EVENT_READ, data=pid)
                channel.sendall(Started(pid=pid).model_dump_json().encode())
            else:
                waiting.unregister(key.fileobj)
                os.close(key.fileobj)
                _, status = os.waitpid(key.data, 0)
                channel.sendall(Exited(pid=key.data, code=os.waitstatus_to_exitcode(status)).model_dump_json().encode())


def _user_error(workdir: Path, task: str, exc: UserError) -> int:
    """error.json for the parent and the user-error exit code; on a disk too full even for that file, the parent
    finds the disk full itself (launcher.py)."""
    try:
        (workdir / f"{task}.error.json").write_text(UserErrorFile(message=str(exc)).model_dump_json())
    except OSError:
        pass
    return USER_ERROR_EXIT


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        os._exit(serve(int(sys.argv[2]), sys.argv[3]))
    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)  # skip interpreter teardown: torch's takes ~2 s, and every result is on disk
