"""What the commands print on stdout: a run's summary table, its notes, a small run's predictions."""

from __future__ import annotations

from rich.markup import escape as escape_markup
from rich.table import Table

from xfverify.evaluator.system.console import console
from xfverify.models.user_input import shown_lines


def escape(text: str) -> str:
    """``text`` as a table cell: neither rich's markup nor a control character in it (a terminal escape sequence in
    an ONNX node's name, an image's file name) acts on the terminal."""
    return escape_markup(shown_lines(str(text)))


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    """A two-column table on stdout."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(escape(key), escape(value))
    console.print(table)


def print_notes(notes: list[str]) -> None:
    """The report's notes (why a GPU went unused, a weights caveat, a small sample) under its table."""
    for note in notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False)


def print_predictions(rows) -> None:
    """The per-image predictions of a small run (:class:`xfverify.evaluator.reports.run.Prediction`) as a table."""
    from xfverify.models.imagenet import class_name

    table = Table(title="predictions", title_justify="left")
    for column in ("image", "labels", "top-1", "top-5", "status"):
        table.add_column(column)
    for row in rows:
        labels = ", ".join(f"{v} {class_name(v)}" for v in row.labels) or "-"
        top1 = f"{row.top5[0]} {row.top1_name}" if row.top5 else "-"
        style = {"correct": "green", "wrong": "red"}.get(row.status, "dim")
        cells = [escape(v) for v in (row.image_id, labels, top1, " ".join(map(str, row.top5)))]
        table.add_row(*cells, f"[{style}]{row.status}[/{style}]")
    console.print(table)


def print_grid(title: str, columns: tuple[str, ...], rows: list[list[str]]) -> None:
    """A table with a header row on stdout."""
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(escape(column))
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)
