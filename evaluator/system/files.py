"""Folders the user names (--out, --cache-dir): created on demand, files given their disk space up front,
or one clear line saying why not."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np

from xfverify.evaluator.system.locks import open_lock_file
from xfverify.models.errors import UserError
from xfverify.models.user_input import shown


def writable_folder(path: Path, what: str) -> Path:
    """Create ``path`` if needed; a folder that cannot be created or written is the user's to fix."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{what} {path}: cannot create this folder ({exc.strerror or exc}); choose another") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: this folder is not writable; choose another")
    return path


def refuse_a_broad_out(path: Path, what: str = "--out") -> None:
    """An output folder is a folder of its own: the file system's root, the home folder and those above it are
    refused (a run there would mix its files with everything the user keeps)."""
    try:
        resolved, home = path.expanduser().resolve(), Path.home().resolve()
    except (OSError, RuntimeError):
        return
    if resolved == Path(resolved.anchor) or home.is_relative_to(resolved):
        which = "the root folder" if resolved == Path(resolved.anchor) else "your home folder or one above it"
        raise UserError(f"{what} {shown(path)}: that is {which}, not a folder for one run's outputs; give a folder "
                        f"of its own (e.g. {what} xfverify-out/run)")


def owned_subfolder(root: Path, relative: str | Path, what: str = "--out") -> Path:
    """``root/relative``, each folder under ``root`` made or found as a real folder: a symbolic link, a file or a
    device in the way is refused in one line (never followed), and so is a folder that cannot be made."""
    path = root
    for part in Path(relative).parts:
        path = path / part
        try:
            os.mkdir(path)
            continue
        except FileExistsError:
            pass
        except OSError as exc:
            raise UserError(f"{what} {shown(root)}: cannot create {shown(path.relative_to(root))} there "
                            f"({exc.strerror or exc}); choose another {what}") from None
        mode = os.lstat(path).st_mode
        if not stat.S_ISDIR(mode):
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a folder"
            raise UserError(f"{what} {shown(root)}: {shown(path.relative_to(root))} there is {kind} and xfverify "
                            f"writes a folder of its own there (links are never followed); move it away or choose "
                            f"another {what}")
    return path


RUN_LOCK = ".xfverify-run.lock"


@contextlib.contextmanager
def owned_folder(folder: Path, what: str) -> Iterator[None]:
    """Hold ``folder`` for this run: another run given the same folder is refused, naming this one's pid.

    The lock file (holding the pid) is removed when the run ends; a run that finds the file it locked
    already replaced by a newer one locks that one instead, so two runs never both think they own it.
    """
    path = folder / RUN_LOCK
    while True:
        handle = open_lock_file(path, what)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise UserError(
                f"{what} {folder} is in use by another xfverify run (pid {owner}): wait for it to end, "
                f"or choose another {what}"
            ) from None
        try:
            current = os.lstat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        handle.close()
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        handle.close()


def _megabytes(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:,.0f} MB" if n_bytes >= 10e6 else f"{n_bytes / 1e6:.1f} MB"


def no_space_error(folder: Path, needed: int, fix: str, free: int | None = None) -> UserError:
    """One line: how much room ``folder``'s disk lacks, and what to do about it."""
    if free is None:
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            pass
    shown = "unknown" if free is None else _megabytes(free)
    return UserError(f"no room for {_megabytes(needed)} in {folder} (free: {shown}): {fix}")


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a write refused for want of room (no space left, or over a disk quota)."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


def disk_full_error(exc: OSError, folder: Path) -> UserError:
    """One line for a full disk: the folder written to (the file's, where the error names it) and its free space."""
    where = Path(exc.filename).parent if isinstance(exc.filename, (str, os.PathLike)) and exc.filename else folder
    try:
        free = _megabytes(shutil.disk_usage(where).free)
    except OSError:
        free = "unknown"
    quota = " (over the disk quota)" if exc.errno == errno.EDQUOT else ""
    return UserError(f"no space left on the disk of {shown(where)}{quota} (free: {free}): free some space there, or "
                     "choose another --out or --cache-dir; finished cache shards are kept")


def ensure_room(folder: Path, needed: int, fix: str) -> None:
    """Fail before any work when ``folder``'s disk cannot hold ``needed`` more bytes."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise no_space_error(folder, needed, fix, free)


def allocated_npy(path: Path, dtype, shape: tuple[int, ...], fix: str) -> np.memmap:
    """A new ``.npy`` file as a writable memory map whose disk blocks are reserved before anything is written.

    Pages of a sparse file get their blocks when first written; on a full disk that write kills the
    process with SIGBUS. Reserving them here turns a full disk into one line naming the folder.
    """
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    if not hasattr(os, "posix_fallocate"):  # not Linux: the file stays sparse
        return array
    try:
        with open(path, "rb+") as handle:
            os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):  # a file system that cannot reserve: stays sparse
            return array
        path.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise no_space_error(path.parent, array.nbytes, fix) from None
        raise
    return array


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that readers see the old one or the whole new one, never part of it."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)
