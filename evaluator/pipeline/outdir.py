"""A run's --out folder: its default name, owned while the run works, and the earlier outputs a run replaces."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Generic, Iterator, TypeVar

from pydantic import BaseModel

from xfverify.evaluator.reports.run import Prediction
from xfverify.evaluator.process.launcher import scratch_in
from xfverify.evaluator.system import console
from xfverify.evaluator.system.files import (
    atomic_write_text,
    disk_full_error,
    is_disk_full,
    owned_folder,
    refuse_a_broad_out,
    writable_folder,
)
from xfverify.models.errors import UserError
from xfverify.models.user_input import cached_json, read_regular, shown


ReportType = TypeVar("ReportType", bound=BaseModel)


@dataclass(frozen=True)
class Finished(Generic[ReportType]):
    """What every verb returns: its typed report, the folder its outputs are in, and (native and ONNX runs) each
    image's predictions."""

    report: ReportType
    out_dir: Path
    predictions: list[Prediction] = field(default_factory=list)


def default_out_dir(model_id: str, verb: str = "native") -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id)
    return Path.cwd() / "xfverify-out" / f"{verb}-{safe}-{stamp}"


Result = TypeVar("Result")


WORK = ".work"
LEDGER = ".xfverify-outputs.json"  # in --out: the names of the files xfverify runs put there
WORK_MARKER = ".xfverify-work"  # written into WORK when a run makes it: a folder without it is not ours to remove


def in_owned_folder(out_dir: Path, work: Callable[[Path], Result]) -> Result:
    """``work(WORKDIR)`` while this run owns ``out_dir`` (a second run there is refused); its work folder is
    removed afterwards, and a folder this run created is removed again when it fails before writing to it."""
    refuse_a_broad_out(out_dir)
    created = not out_dir.exists()
    writable_folder(out_dir, "--out")
    try:
        with owned_folder(out_dir, "--out"):
            workdir = _fresh_work_folder(out_dir)
            try:
                with scratch_in(workdir):
                    return work(workdir)
            finally:
                if workdir.is_dir() and not workdir.is_symlink():
                    shutil.rmtree(workdir, ignore_errors=True)
    except OSError as exc:
        if created:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # only if empty
        if is_disk_full(exc):  # anywhere in the run (the lock, the work folder, a report): one line, not a traceback
            raise disk_full_error(exc, out_dir) from None
        raise
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


REPORT = "report.json"
STUDY_REPORT = "study.json"  # a study's --out holds this, and its cells' runs in cells/
VERBS = ("native", "onnx", "diagnose")


def refuse_a_commands_run(out_dir: Path) -> None:
    """A study's --out is not another command's: one holding a native, onnx or diagnose run is refused, naming it."""
    kind = _earlier_kind(out_dir)
    if kind is not None:
        raise UserError(f"--out {shown(out_dir)} holds an `xfverify {kind}` run (its {REPORT}): a study does not mix its "
                        "outputs with another command's; choose another --out, or move that run away")


def refuse_another_study(out_dir: Path, name: str, names: tuple[str, ...]) -> None:
    """Before a study's first cell: its --out holds no other command's run, no other study (whose study.json names
    another study), and none of the user's files where the study writes ``names``."""
    refuse_a_commands_run(out_dir)
    earlier = cached_json(out_dir / STUDY_REPORT) if not os.path.islink(out_dir / STUDY_REPORT) else None
    other = earlier.get("name") if isinstance(earlier, dict) else None
    if isinstance(other, str) and other != name:
        raise UserError(f"--out {shown(out_dir)} holds another study, {shown(other)} (its {STUDY_REPORT}): a study "
                        f"does not take over another's folder; choose another --out for {name}, or move that one away")
    refuse_users_files(out_dir, names, legacy=other == name)


def earlier_outputs_note(out_dir: Path, names: tuple[str, ...], verb: str,
                         folders: dict[str, tuple[str, ...]] | None = None) -> list[str]:
    """Before any work: refuse a --out holding another command's run (its report.json says which, or a study's
    study.json), an output name
    taken by a folder, and an output folder holding files xfverify does not write there (``folders``: each folder's
    name and the files a run puts in it); say so when an earlier report of this command will be replaced."""
    for name in names:
        if os.path.isdir(out_dir / name):
            raise UserError(f"--out {shown(out_dir)}: {name} there is a folder; move it away or choose another --out")
    study = os.path.lexists(out_dir / STUDY_REPORT)
    kind = "study" if study else _earlier_kind(out_dir)
    if kind is not None and kind != verb:
        found = STUDY_REPORT if study else REPORT
        raise UserError(f"--out {shown(out_dir)} holds an `xfverify {kind}` run (its {found}): a {verb} run does not "
                        "mix its outputs with another command's; choose another --out, or move that run away")
    for name, expected in (folders or {}).items():
        _check_output_folder(out_dir, name, expected)
    refuse_users_files(out_dir, names, legacy=kind == verb)
    if not os.path.lexists(out_dir / REPORT):
        return []
    console.info(f"--out {shown(out_dir)} holds an earlier report: this run replaces it when it finishes")
    return [f"this report replaced an earlier one in {out_dir}"]


def _earlier_kind(out_dir: Path) -> str | None:
    """The command whose report.json is in ``out_dir``; None when there is none or it says no command (damaged)."""
    path = out_dir / REPORT
    if not os.path.lexists(path):
        return None
    data = read_regular(path, "--out", 256 * 2**20)  # a FIFO or a device there: one line, never waited on
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        return None
    kind = parsed.get("kind") if isinstance(parsed, dict) else None
    return kind if kind in VERBS else None


def _check_output_folder(out_dir: Path, name: str, expected: tuple[str, ...]) -> None:
    """``out_dir/name`` is absent, or a real folder holding only files a run of xfverify writes there."""
    path = out_dir / name
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(mode):
        raise UserError(f"--out {shown(out_dir)}: {name} there is not a folder (a symbolic link or a file) and a run "
                        f"writes its {name}/ folder there; move it away or choose another --out")
    for entry in sorted(os.listdir(path)):
        if entry not in (*expected, LEDGER) or not stat.S_ISREG(os.lstat(path / entry).st_mode):
            raise UserError(f"--out {shown(out_dir)}: {name}/{shown(entry)} there is not a file xfverify writes, and a "
                            f"run replaces {name}/ whole; move it away or choose another --out")


def _ledger(out_dir: Path) -> set[str]:
    """The names of the files earlier runs put in ``out_dir`` (a run may replace these, and only these)."""
    if os.path.islink(out_dir / LEDGER):
        return set()
    recorded = cached_json(out_dir / LEDGER)
    files = recorded.get("files") if isinstance(recorded, dict) else None
    return {name for name in files if isinstance(name, str)} if isinstance(files, list) else set()


def refuse_users_files(out_dir: Path, names: tuple[str, ...], legacy: bool = False) -> None:
    """Before any work: each of ``names`` already in ``out_dir`` (folders aside, checked by their contents) must be a
    file an earlier xfverify run put there (its ledger names it; ``legacy``: an earlier run of this command from
    before the ledger, whose report is there); anything else is the user's and is refused, never replaced."""
    ledger_path = out_dir / LEDGER
    if os.path.lexists(ledger_path) and not stat.S_ISREG(os.lstat(ledger_path).st_mode):
        raise UserError(f"--out {shown(out_dir)}: {LEDGER} there is not a regular file (a link, a folder or a device) "
                        "and xfverify records its outputs in it; move it away or choose another --out")
    ledger = _ledger(out_dir)
    for name in names:
        try:
            mode = os.lstat(out_dir / name).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(mode):
            continue
        if stat.S_ISREG(mode) and (name in ledger or (legacy and not os.path.lexists(ledger_path))):
            continue
        raise UserError(f"--out {shown(out_dir)}: {name} there is not a file an earlier xfverify run wrote, and this "
                        f"run writes its own {name}; move it away or choose another --out")


@contextlib.contextmanager
def recording_outputs(out_dir: Path, names: tuple[str, ...] | list[str]) -> Iterator[None]:
    """Around the writing or moving in of ``names``: the ledger names them first (a run interrupted on the way
    leaves no file it cannot account for), and afterwards only the files still there."""
    before = _ledger(out_dir)
    if not names and not os.path.lexists(out_dir / LEDGER):
        yield  # folders only (checked by their contents): nothing to account for
        return
    atomic_write_text(out_dir / LEDGER, _ledger_text(before | set(names)))
    yield
    atomic_write_text(out_dir / LEDGER, _ledger_text({name for name in before | set(names)
                                                      if os.path.lexists(out_dir / name)}))


def _ledger_text(names: set[str]) -> str:
    return json.dumps({"about": "files xfverify runs wrote here: a run replaces only these",
                       "files": sorted(names)}, indent=1) + "\n"


def write_in(out_dir: Path, texts: dict[str, str]) -> None:
    """Write text outputs into ``out_dir`` (each atomically), named in its ledger."""
    with recording_outputs(out_dir, list(texts)):
        for name, text in texts.items():
            atomic_write_text(out_dir / name, text)


def move_in(out_dir: Path, staged: Path, names: tuple[str, ...], stale: tuple[str, ...] = ()) -> None:
    """Move a finished run's outputs from ``staged`` into ``out_dir`` as one step: the earlier report.json is taken
    away first and the new one comes last, so the folder never holds a report beside another run's files (an
    interruption in between leaves no report, never a wrong one). Folders replace folders of the same name (checked
    by ``earlier_outputs_note`` to hold only xfverify's files); ``stale`` names this command's outputs an earlier
    run wrote that this one does not (diagnose's onnx/ without --onnx, onnx's localize.html without localization):
    removed (a link of that name is left alone)."""
    retired = staged / ".replaced"
    retired.mkdir(exist_ok=True)
    files = [name for name in names if not os.path.isdir(staged / name)]
    with recording_outputs(out_dir, files):
        if os.path.lexists(out_dir / REPORT):
            os.replace(out_dir / REPORT, retired / REPORT)
        for name in stale:
            if os.path.isdir(out_dir / name) and not os.path.islink(out_dir / name) or (
                    name in _ledger(out_dir) and os.path.isfile(out_dir / name) and not os.path.islink(out_dir / name)):
                os.replace(out_dir / name, retired / name)
        ordered = [n for n in names if n != REPORT] + [n for n in names if n == REPORT]
        for name in ordered:
            source, target = staged / name, out_dir / name
            if os.path.isdir(source) and os.path.isdir(target) and not os.path.islink(target):
                os.replace(target, retired / name)
            os.replace(source, target)
    shutil.rmtree(retired, ignore_errors=True)
