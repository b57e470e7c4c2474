"""``xfverify models`` and ``xfverify presets``: the model cards and the preprocessing presets."""

from __future__ import annotations

import json

import click

from xfverify.evaluator.commands.options import CONTEXT
from xfverify.models.errors import UserError
from xfverify.models.cards import CARD_SOURCES


@click.command("models", context_settings=CONTEXT)
@click.argument("pattern", required=False)
@click.option("--filter", "filter_pattern", metavar="PATTERN",
              help="Only ids (or architectures) matching this shell-style pattern, e.g. 'convnext*' (a bare word "
                   "matches inside).")
@click.option("--source", type=click.Choice(CARD_SOURCES, case_sensitive=False),
              help="Only this source's models.")
@click.option("--json", "as_json", is_flag=True, help="Print the cards as JSON.")
def models_command(pattern: str | None, filter_pattern: str | None, source: str | None, as_json: bool) -> None:
    """List the models xfverify knows (ids source/name:weights): the hand-written cards and every pretrained
    ImageNet classifier of the zoos' catalogue, with their reference preprocessing and published errors."""
    from xfverify.models.cards import find_cards

    if pattern and filter_pattern:
        raise UserError("give the pattern once: as an argument or with --filter")
    pattern = pattern or filter_pattern
    cards = find_cards(pattern, source=source.lower() if source else None)
    if not cards:
        where = f" in {source}" if source else ""
        raise UserError(f"no model matches {pattern!r}{where}; `xfverify models` lists them all")
    if as_json:
        click.echo(json.dumps([c.model_dump(mode="json", exclude_defaults=True) for c in cards], indent=1))
        return
    rows, sources = [], []
    for card in cards:
        number = card.primary_published
        rows.append((
            card.id + (" *" if card.default else ""),
            card.preprocess + "".join(f", {a.preset}" for a in card.alternatives),
            f"{number.top1_error:.3f}" if number else "n/a",
            f"{number.top5_error:.3f}" if number and number.top5_error is not None else "n/a",
        ))
        sources.append(number.source if number else "no published number")
    header = ("id (source/name:weights, * default)", "reference preprocessing, alternatives", "top-1 err %",
              "top-5 err %")
    click.echo(_plain_table(header, rows, sources, right=(2, 3)))
    click.echo(f"{len(cards)} models; each spec in full: --json")


def _plain_table(header: tuple[str, ...], rows: list[tuple[str, ...]], notes: list[str],
                 right: tuple[int, ...] = ()) -> str:
    """Aligned columns of plain text, each row's note indented under it (a catalogue's thousands of rows print at
    once; no terminal markup)."""
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines = [line(header)]
    for row, note in zip(rows, notes):
        lines += [line(row), f"    {note}"]
    return "\n".join(lines)


@click.command("presets", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print every preset's full spec as JSON.")
def presets_command(as_json: bool) -> None:
    """List the named preprocessing presets."""
    from xfverify.models.preprocess import PRESETS

    if as_json:
        click.echo(json.dumps({name: spec.to_dict() for name, spec in PRESETS.items()}, indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    from xfverify.evaluator.system.console import console

    table = Table(title="preprocessing presets", title_justify="left")
    for column in ("name", "decode", "resize", "crop", "normalise", "layout", "source"):
        table.add_column(column, overflow="fold")
    for name, s in PRESETS.items():
        resize = f"{s.resize_mode} {s.resize_size} {s.resize_library} {s.interpolation}" + (" aa" if s.antialias else "")
        norm = f"/{s.scale:g} -{list(s.mean)} /{list(s.std)} {s.channel_order}"
        cells = (name, s.decoder, resize, str(s.crop_size or "none"), norm, s.layout, s.source)
        table.add_row(*(escape(c) for c in cells))
    console.print(table)
