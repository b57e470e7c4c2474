"""Warm workers: a framework imported once, a fresh worker process forked from it per job.

Importing torch with torchvision or timm takes seconds of CPU, paid by every worker a run starts. A caller that
starts many (``xfverify study``, a Python session, the test suite) can hold a server per framework: a process
that has imported the back-end module and forks, for each job, a child that runs exactly what a started
worker runs (its own process, environment, working folder, stdout pipe and stderr file; ends with ``os._exit``).
Nothing carries over from one job to the next but the imported modules. A server is used only while the
environment variables a framework may read when it is imported are what they were when it started; any other
change starts a new one. Linux only (pidfds); elsewhere, and for an interpreter set by ``XFVERIFY_PYTHON_<FW>``,
workers are started as usual.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import IO

from xfverify.evaluator.process.registry import BACKENDS
from xfverify.evaluator.process.wire import SERVER_MESSAGE, Exited, ForkRequest, Started

# Read by xfverify or the frameworks when a task runs, not when a framework is imported: they may differ per job.
RUN_TIME_VARIABLES = ("COLUMNS", "HOME", "NO_PROXY", "no_proxy", "PYTEST_CURRENT_TEST", "XDG_CACHE_HOME")
RUN_TIME_PREFIXES = ("XFVERIFY_", "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")
RUN_TIME_SUFFIXES = ("_HOME",)  # TORCH_HOME, KERAS_HOME, MXNET_HOME: where weights are looked for


def _read_at_run_time(name: str) -> bool:
    return not name.startswith("XFVERIFY_PYTHON_") and (
        name in RUN_TIME_VARIABLES or name.startswith(RUN_TIME_PREFIXES) or name.endswith(RUN_TIME_SUFFIXES))


def _import_time_environment(env: dict[str, str]) -> dict[str, str]:
    """The variables a framework may read when imported: a server serves only jobs that agree with it on them."""
    return {name: value for name, value in env.items() if not _read_at_run_time(name)}


class WarmProcess:
    """A forked worker, with what the launcher uses of a ``subprocess.Popen``: stdout, poll, wait, kill."""

    def __init__(self, pid: int, stdout: IO[str]) -> None:
        self.pid = pid
        self.stdout = stdout
        self.returncode: int | None = None
        self._exited = threading.Event()
        try:
            self._handle: int | None = os.pidfd_open(pid)  # signals reach this process, never a reused pid
        except ProcessLookupError:
            self._handle = None

    def _set_exit(self, code: int) -> None:
        self.returncode = code
        self._exited.set()
        if self._handle is not None:
            os.close(self._handle)
            self._handle = None

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0)
        return self.returncode

    def kill(self) -> None:
        handle = self._handle
        if handle is not None and not self._exited.is_set():
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(handle, signal.SIGKILL)


class WarmServer:
    """One framework's server process and the workers it forked."""

    def __init__(self, framework: str, env: dict[str, str]) -> None:
        self.framework = framework
        self.environment = _import_time_environment(env)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._channel = ours
        self._lock = threading.Lock()
        self._requesting = threading.Lock()
        self._started: list[int] = []
        self._early_exits: dict[int, int] = {}
        self._answered = threading.Condition(self._lock)
        self._workers: dict[int, WarmProcess] = {}
        self._closed = False
        command = [sys.executable, "-m", "xfverify.evaluator.process.worker", "--serve", str(theirs.fileno()),
                   BACKENDS[framework].module]
        self.process = subprocess.Popen(command, pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        theirs.close()
        self.ready = bool(ours.recv(1 << 16))  # the server's import failed or it died: not ready
        if self.ready:
            threading.Thread(target=self._read, name=f"xfverify-warm-{framework}", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                message = self._channel.recv(1 << 16)
            except OSError:
                message = b""
            with self._lock:
                if not message:  # the server died: its workers' exits can no longer be learnt
                    self._closed = True
                    for worker in self._workers.values():
                        worker._set_exit(-signal.SIGKILL)
                    self._answered.notify_all()
                    return
                answer = SERVER_MESSAGE.validate_json(message)
                if isinstance(answer, Started):
                    self._started.append(answer.pid)
                    self._answered.notify_all()
                elif isinstance(answer, Exited):
                    worker = self._workers.pop(answer.pid, None)
                    if worker is None:  # it ended before its starter took it: handed over there
                        self._early_exits[answer.pid] = answer.code
                    else:
                        worker._set_exit(answer.code)

    def start(self, job_path: str, env: dict[str, str], stderr: IO) -> WarmProcess | None:
        """Fork a worker on ``job_path``; None if this server can no longer serve."""
        read_end, write_end = os.pipe()
        request = ForkRequest(job=job_path, env=env, cwd=os.getcwd()).model_dump_json().encode()
        try:
            # one request at a time (the server answers in order): waiting releases _lock, not _requesting
            with self._requesting, self._lock:
                if self._closed:
                    return None
                socket.send_fds(self._channel, [request], [write_end, stderr.fileno()])
                while not self._started and not self._closed:
                    self._answered.wait()
                if not self._started:
                    return None
                worker = WarmProcess(self._started.pop(0), os.fdopen(read_end, "r"))
                read_end = -1
                if worker.pid in self._early_exits:
                    worker._set_exit(self._early_exits.pop(worker.pid))
                else:
                    self._workers[worker.pid] = worker
                return worker
        finally:
            os.close(write_end)
            if read_end != -1:
                os.close(read_end)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._channel.shutdown(socket.SHUT_RDWR)  # the server sees the end, and so does our reading thread
        self._channel.close()
        self.process.wait()


class WarmWorkers:
    """The servers of one scope (:func:`warm_workers`), one per framework, started when first needed."""

    def __init__(self, frameworks: tuple[str, ...]) -> None:
        self.frameworks = frameworks
        self._servers: dict[str, WarmServer] = {}
        self._lock = threading.Lock()
        self._framework_locks: dict[str, threading.Lock] = {}
        self._closed = False

    def start(self, framework: str, job_path: str, env: dict[str, str], stderr: IO) -> WarmProcess | None:
        """A worker forked from the framework's server, or None where one cannot be (the caller starts it)."""
        if framework not in self.frameworks or f"XFVERIFY_PYTHON_{framework.upper()}" in env \
                or not hasattr(os, "pidfd_open"):
            return None
        with self._lock:
            if self._closed:  # its scope has ended: the caller starts its worker as usual
                return None
            own_lock = self._framework_locks.setdefault(framework, threading.Lock())
        with own_lock:  # a framework's server starting (seconds) does not hold up another framework's jobs
            if self._closed:
                return None
            server = self._servers.get(framework)
            if server is not None and server.environment != _import_time_environment(env):
                server.close()
                server = None
            if server is None:
                server = WarmServer(framework, env)
                self._servers[framework] = server
        return server.start(job_path, env, stderr) if server.ready else None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for framework, server in list(self._servers.items()):
                with self._framework_locks[framework]:
                    server.close()
            self._servers.clear()


# Each caller's own scope: a thread (or task) sees the scope it entered, or the one its starter handed on with
# ``contextvars.copy_context``; two scopes at once (two threads, two studies) never use or close each other's servers.
_active: contextvars.ContextVar[WarmWorkers | None] = contextvars.ContextVar("xfverify_warm_workers", default=None)


def active() -> WarmWorkers | None:
    """The warm workers of the current scope, if any."""
    return _active.get()


# Checked to fork cleanly after their import (bit-identical logits, tests/test_warm_workers.py and the suite).
# MXNet's engine threads are stopped before a fork and started again in the child by MXNet's own fork handlers.
FORKABLE = ("torch", "tensorflow", "onnxruntime", "mxnet")


@contextlib.contextmanager
def caller_or_own_warm_workers() -> Iterator[WarmWorkers]:
    """The caller's warm workers when it is in a scope (its servers serve this work too), else a scope of its own."""
    scope = active()
    if scope is not None:
        yield scope
        return
    with warm_workers() as own:
        yield own


@contextlib.contextmanager
def warm_workers(frameworks: tuple[str, ...] = FORKABLE) -> Iterator[WarmWorkers]:
    """Within this scope, workers of these frameworks are forked from a warm server instead of started."""
    scope = WarmWorkers(frameworks)
    token = _active.set(scope)
    try:
        yield scope
    finally:
        scope.close()
        _active.reset(token)
