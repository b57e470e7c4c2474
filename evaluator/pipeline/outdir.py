"""A run's --out folder: its default name, owned while the run works, and the earlier outputs a run replaces."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Callable, TypeVar

from xfverify.evaluator.system import console
from xfverify.evaluator.system.files import owned_folder, writable_folder
from xfverify.models.errors import UserError


def default_out_dir(model_id: str, verb: str = "native") -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id)
    return Path.cwd() / "xfverify-out" / f"{verb}-{safe}-{stamp}"


Result = TypeVar("Result")


WORK = ".work"
WORK_MARKER = ".xfverify-work"  # written into WORK when a run makes it: a folder without it is not ours to remove


def in_owned_folder(out_dir: Path, work: Callable[[Path], Result]) -> Result:
    """``work(WORKDIR)`` while this run owns ``out_dir`` (a second run there is refused); its work folder is
    removed afterwards, and a folder this run created is removed again when it fails before writing to it."""
    created = not out_dir.exists()
    writable_folder(out_dir, "--out")
    try:
        with owned_folder(out_dir, "--out"):
            workdir = _fresh_work_folder(out_dir)
            try:
                return work(workdir)
            finally:
                if workdir.is_dir() and not workdir.is_symlink():
                    shutil.rmtree(workdir, ignore_errors=True)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # only if empty
        raise


def _fresh_work_folder(out_dir: Path) -> Path:
    """``out_dir/.work``, made empty with its marker; one left by a killed run (marked) is removed first, and
    anything else there (a link, a file, a folder xfverify did not make) is refused, nothing followed or removed."""
    workdir = out_dir / WORK
    try:
        mode = os.lstat(workdir).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None:
        if not stat.S_ISDIR(mode):
            raise UserError(f"--out {out_dir}: {WORK} there is not a folder (a symbolic link or a file) and xfverify "
                            "keeps its work files there; move it away or choose another --out")
        if not (workdir / WORK_MARKER).is_file():
            raise UserError(f"--out {out_dir}: {WORK} there is a folder xfverify did not make (it lacks "
                            f"{WORK_MARKER}) and a run replaces it; move it away or choose another --out")
        shutil.rmtree(workdir)  # left by a killed run of xfverify: this run holds --out, no other uses it
    workdir.mkdir()
    (workdir / WORK_MARKER).write_text("made by xfverify for a run's work files; removed when the run ends\n")
    return workdir


def earlier_outputs_note(out_dir: Path, names: tuple[str, ...]) -> list[str]:
    """Refuse outputs that cannot be replaced (checked before any work); say so when an earlier report will be."""
    for name in names:
        if (out_dir / name).is_dir():
            raise UserError(f"--out {out_dir}: {name} there is a folder; move it away or choose another --out")
    if not (out_dir / "report.json").exists():
        return []
    console.info(f"--out {out_dir} holds an earlier report: this run replaces it when it finishes")
    return [f"this report replaced an earlier one in {out_dir}"]
