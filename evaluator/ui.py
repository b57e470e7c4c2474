"""Terminal output: progress bars with images/s, tables, one-line messages (all on stderr but tables)."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def info(message: str) -> None:
    """A status line on stderr."""
    err_console.print(f"[dim]xfverify:[/dim] {message}", highlight=False)


@contextlib.contextmanager
def progress_bar(description: str, unit: str = "img") -> Iterator[Callable[[int, int], None]]:
    """A progress bar showing done/total and rate; a no-op (plus one summary line) when stderr is not a terminal."""
    # The clock starts at the first update (done=0 is sent when work begins), so process start-up
    # and model building do not count against the rate.
    state = {"done": 0, "total": 0, "started": None}

    def mark(done: int, total: int) -> float:
        now = time.perf_counter()
        if state["started"] is None:
            state["started"] = now
        state["done"], state["total"] = done, total
        return now - state["started"]

    if not err_console.is_terminal:
        yield mark
        if state["done"] and state["started"] is not None:
            elapsed = time.perf_counter() - state["started"]
            info(f"{description}: {state['done']} {unit} in {elapsed:.1f} s ({state['done'] / max(elapsed, 1e-9):.0f} {unit}/s)")
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=err_console, transient=False) as progress:
        task = progress.add_task(description, total=None, rate="")

        def update(done: int, total: int) -> None:
            elapsed = mark(done, total)
            rate = f"{done / elapsed:,.0f} {unit}/s" if elapsed > 0 else ""
            progress.update(task, completed=done, total=total, rate=rate)

        yield update


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    """A two-column table on stdout."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def fail(message: str, code: int = 2) -> "NoReturn":  # noqa: F821
    """Print one error line and exit."""
    err_console.print(f"[bold red]xfverify: error:[/bold red] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)
