"""Exports kept on disk, keyed by (card, weights, exporter and its version, opset); framework-free.

An entry is a folder ``ROOT/<card>-<key>/`` holding ``model.onnx`` (and its ``.data`` file, when the
exporter writes one) and ``export.json`` (the :class:`ExportResult`). It is built in a temporary folder
beside it and moved into place whole, reused while its files match the recorded sha256, and built again
when they do not. A build holds a lock in its temporary folder: a folder left by a build that was killed
(its lock free) is removed by the next export into the same cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

from xfverify.converter.onnx_file import ExportResult, files_intact
from xfverify.models.user_input import cached_bytes

MODEL_FILE = "model.onnx"
RECORD_FILE = "export.json"
BUILDING_LOCK = ".building.lock"  # held while a temporary folder is being filled
Record = TypeVar("Record")


def entry_folder(root: Path, card_id: str, weights_sha256: str, exporter: str, exporter_version: str, opset: int) -> Path:
    """Where the export with this key lives (``weights_sha256`` must identify the weights: for random
    weights, say so with their seed)."""
    key = json.dumps([card_id, weights_sha256, exporter, exporter_version, opset])
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", card_id).strip("_")[:80]
    return Path(root) / f"{readable}-{hashlib.sha256(key.encode()).hexdigest()[:20]}"


def _cached(folder: Path) -> ExportResult | None:
    """The entry's result when its record reads and its files are intact, else None."""
    record = cached_bytes(folder / RECORD_FILE)  # a FIFO or a device there: a damaged entry, never waited on
    if record is None:
        return None
    try:
        result = ExportResult.model_validate_json(record)
    except ValueError:
        return None
    result = result.model_copy(update={"path": folder / result.description.file})
    return result if files_intact(result.path, result.description) else None


def cached_export(root: Path, card_id: str, weights_sha256: str, exporter: str, exporter_version: str, opset: int,
                  export: Callable[[Path], ExportResult]) -> tuple[ExportResult, bool]:
    """The cached export, or ``export(PATH)``'s (PATH: the .onnx file to write) put in the cache; and
    whether it came from the cache."""
    folder = entry_folder(root, card_id, weights_sha256, exporter, exporter_version, opset)

    def build(building: Path) -> ExportResult:
        made = export(building / MODEL_FILE).model_copy(update={"path": folder / MODEL_FILE})
        (building / RECORD_FILE).write_text(made.model_dump_json(indent=2))
        return made

    return cached_build(folder, build, _cached)


def cached_build(folder: Path, build: Callable[[Path], Record], cached: Callable[[Path], Record | None]
                 ) -> tuple[Record, bool]:
    """``cached(folder)`` when it finds an intact entry there, else ``build(BUILDING)``'s: the entry's files written
    into a temporary folder beside ``folder``, moved into place whole; and whether it came from the cache. The export
    and variant caches share it."""
    found = cached(folder)
    if found is not None:
        return found, True
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_builds(folder.parent)
    building = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    lock = _locked_building(building)
    try:
        made = build(building)
        if folder.exists():  # damaged: move it aside whole, then remove it
            damaged = Path(tempfile.mkdtemp(prefix=f".{folder.name}.damaged.", dir=folder.parent))
            os.replace(folder, damaged / "entry")
            shutil.rmtree(damaged, ignore_errors=True)
        (building / BUILDING_LOCK).unlink()  # the entry does not keep it (the open lock still holds)
        try:
            os.replace(building, folder)
        except OSError:  # another process put an entry there meanwhile: use it when it is intact
            found = cached(folder)
            if found is None:
                raise
            return found, True
    finally:
        shutil.rmtree(building, ignore_errors=True)
        lock.close()
    return made, False


def _locked_building(building: Path):
    """Lock ``building`` as in progress: the lock file appears already locked (made under another name, locked,
    then renamed), so a sweep never finds it free; the kernel releases it when this process ends."""
    temporary = building / f"{BUILDING_LOCK}.new"
    handle = open(temporary, "w")
    fcntl.flock(handle, fcntl.LOCK_EX)
    os.replace(temporary, building / BUILDING_LOCK)
    return handle


def remove_abandoned_builds(root: Path) -> list[Path]:
    """Remove the temporary folders under ``root`` whose build ended without finishing (killed: nothing is
    building there any more); returns them. Folders a live build holds are left alone."""
    removed = []
    for candidate in Path(root).glob(".*"):
        lock_path = candidate / BUILDING_LOCK
        if candidate.is_symlink() or not candidate.is_dir():
            continue
        try:  # never through a symbolic link, never creating one
            fd = os.open(lock_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # none (not a build of ours), a link, or gone meanwhile
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            shutil.rmtree(candidate, ignore_errors=True)
        except BlockingIOError:  # a build in progress
            continue
        except OSError:  # not ours to remove
            continue
        finally:
            os.close(fd)
        removed.append(candidate)
    return removed
