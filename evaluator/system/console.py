"""Terminal output every layer may use: status lines and progress bars with images/s (on stderr), the error line."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Callable, Iterator, NoReturn

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from xfverify.models.user_input import shown

# Off a terminal (a pipe, a log file) nothing limits the width: wide tables keep one line per row.
console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160)
err_console = Console(stderr=True)
_live = threading.Lock()  # held while a progress group is shown live


def info(message: str) -> None:
    """A status line on stderr (control characters escaped: names and paths from the user or the data cannot drive
    the terminal)."""
    err_console.print(f"[dim]xfverify:[/dim] {escape(shown(message))}", highlight=False)


class _Tracker:
    """One task's counters; its clock starts at the first update (done=0 is sent when work begins),
    so process start-up and model building do not count against the rate."""

    def __init__(self, description: str, unit: str):
        self.description, self.unit = description, unit
        self.done = self.total = 0
        self.started: float | None = None
        self.last: float | None = None

    def mark(self, done: int, total: int) -> float:
        now = time.perf_counter()
        if self.started is None:
            self.started = now
        self.done, self.total, self.last = done, total, now
        return now - self.started

    def summary(self) -> str | None:
        if not self.done or self.started is None or self.last is None:
            return None
        elapsed = max(self.last - self.started, 1e-9)
        return f"{self.description}: {self.done} {self.unit} in {elapsed:.1f} s ({self.done / elapsed:.0f} {self.unit}/s)"


class ProgressGroup:
    """Several progress bars at once (decoding and inference overlap); plain summary lines off a terminal."""

    def __init__(self, progress: Progress | None):
        self._progress = progress
        self._trackers: list[_Tracker] = []

    def task(self, description: str, unit: str = "img") -> Callable[[int, int], None]:
        tracker = _Tracker(description, unit)
        self._trackers.append(tracker)
        if self._progress is None:
            return tracker.mark
        progress = self._progress
        task_id = progress.add_task(description, total=None, rate="")

        def update(done: int, total: int) -> None:
            elapsed = tracker.mark(done, total)
            rate = f"{done / elapsed:,.0f} {unit}/s" if elapsed > 0 else ""
            progress.update(task_id, completed=done, total=total, rate=rate)

        return update

    def summaries(self) -> list[str]:
        return [line for line in (t.summary() for t in self._trackers) if line]


@contextlib.contextmanager
def progress_group() -> Iterator[ProgressGroup]:
    """A group of progress bars showing done/total and rate, on stderr (one group live at a time: another, such as
    a study's second lane's, says its summaries as lines)."""
    if not err_console.is_terminal or not _live.acquire(blocking=False):
        group = ProgressGroup(None)
        try:
            yield group
        finally:
            for line in group.summaries():
                info(line)
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    try:
        with Progress(*columns, console=err_console, transient=False) as progress:
            yield ProgressGroup(progress)
    finally:
        _live.release()


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one error line (control characters escaped) and exit."""
    err_console.print(f"[bold red]xfverify: error:[/bold red] {escape(shown(message))}", highlight=False, soft_wrap=True)
    sys.exit(code)
