"""``xfverify models`` and ``xfverify presets``: the model cards and the preprocessing presets."""

from __future__ import annotations

import json

import click

from xfverify.evaluator.commands.options import CONTEXT
from xfverify.models.errors import UserError


@click.command("models", context_settings=CONTEXT)
@click.argument("pattern", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the cards as JSON.")
def models_command(pattern: str | None, as_json: bool) -> None:
    """List model cards (ids source/name:weights) with published errors and their sources."""
    from xfverify.models.cards import find_cards

    cards = find_cards(pattern)
    if not cards:
        raise UserError(f"no model matches {pattern!r}; `xfverify models` lists them all")
    if as_json:
        click.echo(json.dumps([c.model_dump(mode="json") for c in cards], indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    from xfverify.evaluator.system.console import console

    table = Table(title="xfverify model cards", title_justify="left", caption="* the default weights of its "
                  "architecture; the source of each number in grey; under a reference preset, the other sources' "
                  "presets (diagnosis variants)", caption_justify="left")
    table.add_column("id (source/name:weights)", overflow="fold", min_width=30)
    table.add_column("preprocess", no_wrap=True)
    for column in ("top-1 err %", "top-5 err %"):
        table.add_column(column, justify="right", no_wrap=True)
    for card in cards:
        number = card.primary_published
        source = f"\n[dim]{escape(number.source)}[/dim]" if number else ""
        table.add_row(
            escape(card.id + (" *" if card.default else "")) + source,
            escape(card.preprocess) + "".join(f"\n[dim]{escape(a.preset)}[/dim]" for a in card.alternatives),
            f"{number.top1_error:.3f}" if number else "n/a",
            f"{number.top5_error:.3f}" if number and number.top5_error is not None else "n/a",
        )
    console.print(table)


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
