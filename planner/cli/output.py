"""Shared output helpers for the subcommands: rich tables for people, canonical JSON for machines."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from planner.jsonio import dumps_canonical


def console() -> Console:
    # Pipes and CliRunner get a wide, colourless console so tables are not squeezed to 80 columns.
    if sys.stdout.isatty():
        return Console()
    return Console(width=200, no_color=True, highlight=False, file=sys.stdout)


def print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    table = Table(title=title, show_lines=False, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*[str(c) for c in row])
    console().print(table)


def echo_json(obj: Any) -> None:
    click.echo(dumps_canonical(obj), nl=False)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def human_count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"
