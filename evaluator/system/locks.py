"""Advisory file locks (fcntl): lock files opened only as regular files, never through a symbolic link."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import IO

from xfverify.models.errors import UserError


def open_lock_file(path: Path, what: str) -> IO[str]:
    """``path`` opened for reading and writing, created if missing; a symbolic link or anything else that is not a
    regular file there is refused in one line (nothing is followed, written or removed)."""
    refused = UserError(f"{what}: {path} is not a regular file (a symbolic link, a folder or a device): xfverify "
                        "opens its lock files only as regular files; remove it")
    try:
        # O_NONBLOCK: opening a FIFO or a device put there never waits
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise refused from None
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise UserError(f"{what}: cannot create its lock file {path} ({exc.strerror or exc}): xfverify keeps one in "
                        f"the folder it writes; choose another {what}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise refused
    return os.fdopen(fd, "r+")


class ShardLock:
    """An advisory lock on one shard: taken without waiting, or waited for later."""

    def __init__(self, path: Path, what: str = "the tensor cache"):
        self.path = path
        self.what = what
        self.acquired = False
        self._handle = None

    def __enter__(self) -> "ShardLock":
        self._handle = open_lock_file(self.path, self.what)
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.acquired = True
        except BlockingIOError:
            self.acquired = False
        return self

    def wait(self) -> None:
        fcntl.flock(self._handle, fcntl.LOCK_EX)
        self.acquired = True

    def release(self) -> None:
        if self.acquired:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self.acquired = False

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            if self.acquired:
                fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
