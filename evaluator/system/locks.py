"""Advisory file locks (fcntl), for shards that two runs might build at once."""

from __future__ import annotations

import fcntl
from pathlib import Path


class ShardLock:
    """An advisory lock on one shard: taken without waiting, or waited for later."""

    def __init__(self, path: Path):
        self.path = path
        self.acquired = False
        self._handle = None

    def __enter__(self) -> "ShardLock":
        self._handle = open(self.path, "a+")
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
