"""Files and text that come from the user: opened only as regular files (a FIFO or a device never blocks a run or
fills its memory), parsed JSON without a traceback, and shown with control characters escaped."""

from __future__ import annotations

import errno
import json
import os
import stat
from typing import IO, Any

from xfverify.models.errors import UserError

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def not_regular_kind(mode: int) -> str | None:
    """What a file of ``mode`` is when it is not a regular file (a folder, a FIFO, a device), else None."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


class UnreadableFile(UserError):
    """A file the user named that cannot be read as one: ``reason`` says why without naming it (callers that name
    the file themselves use it)."""

    def __init__(self, what: str, path: str | os.PathLike, reason: str, fix: str = "give a regular file") -> None:
        super().__init__(f"{what} {shown(path)}: {reason}; {fix}")
        self.reason = reason


def open_regular(path: str | os.PathLike, what: str) -> IO[bytes]:
    """``path`` opened for reading, following links, but only when it is a regular file; anything else (a FIFO, a
    device, a folder) is refused in one line naming ``what`` and the path, without waiting on it or reading it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UnreadableFile(what, path, "no such file", "check the path") from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket or a FIFO with no writer cannot be opened for reading this way
            raise UnreadableFile(what, path, "not a regular file (a socket or a device)") from None
        raise UnreadableFile(what, path, f"cannot read it ({exc.strerror or exc})", "fix its permissions") from None
    kind = not_regular_kind(os.fstat(fd).st_mode)
    if kind is not None:
        os.close(fd)
        raise UnreadableFile(what, path, f"{kind}, not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_regular(path: str | os.PathLike, what: str, limit: int | None = None) -> bytes:
    """The bytes of a regular file (see ``open_regular``); one over ``limit`` bytes is refused in one line."""
    with open_regular(path, what) as handle:
        size = os.fstat(handle.fileno()).st_size
        if limit is not None and size > limit:
            raise UnreadableFile(what, path, f"{size:,} bytes, more than the {limit:,} such a file can be",
                                 "give the right file")
        return handle.read() if limit is None else handle.read(limit + 1)


def cached_bytes(path: str | os.PathLike, limit: int = 256 * 2**20) -> bytes | None:
    """A cache's own file (a sidecar, a record) when it is a readable regular file within ``limit`` bytes, else None:
    the caller treats it as damaged and makes it again (a FIFO or a device put there is never waited on)."""
    try:
        return read_regular(path, "cache file", limit)
    except (UserError, OSError):
        return None


def cached_json(path: str | os.PathLike) -> Any:
    """A cache's own JSON file as Python data, or None when missing, not a regular file, malformed or nested too
    deeply (made again by the caller)."""
    data = cached_bytes(path)
    if data is None:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def is_regular(path: str | os.PathLike) -> bool:
    """Whether ``path`` (links followed) is a regular file; never opens it."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def read_text(path: str | os.PathLike, what: str, limit: int | None = None) -> str:
    """A regular file's text, UTF-8; other bytes are one line naming the file."""
    data = read_regular(path, what, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableFile(what, path, f"not UTF-8 text (byte {exc.start})", "save it as UTF-8") from None


def parse_json(text: str | bytes, where: str) -> Any:
    """JSON as Python data; malformed, or nested too deeply for Python to read, is one line naming ``where``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    except RecursionError:
        raise UserError(f"{where}: JSON nested too deeply to read (thousands of levels); give the right file") from None


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def shown(text: object) -> str:
    """``text`` as it may be printed: control characters (terminal escape sequences among them) written as escapes,
    so a name or a file name from the user or the data cannot move the cursor, recolour or retitle a terminal."""
    value = os.fspath(text) if isinstance(text, os.PathLike) else str(text)
    if value.isprintable():
        return value
    return "".join(ch if ch.isprintable() or ch == " " else _ESCAPES.get(ch, f"\\x{ord(ch):02x}" if ord(ch) < 256
                                                                         else f"\\u{ord(ch):04x}") for ch in value)


def shown_lines(text: str) -> str:
    """``text`` with each of its lines ``shown``: line breaks kept, every other control character escaped (a report
    or a table holding names from the user or the data: an ONNX node's, a study's about, a path)."""
    return "\n".join(shown(line) for line in text.split("\n"))
