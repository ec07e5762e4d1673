"""Shared output helpers for the subcommands: rich tables for people, canonical JSON for machines."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from planner.errors import KvplanError
from planner.jsonio import dumps_canonical
from planner.units import escape_name


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


# ---- outputs never replace inputs ------------------------------------------------------------------------

class OutputPath(click.Path):
    """click.Path for a file or folder a command writes: an empty name (`-o ''`) is refused instead of
    falling back to a default or to the current folder."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("is empty: give a file name", param, ctx)
        return super().convert(value, param, ctx)


def input_files(*paths: str | Path | None) -> list[Path]:
    """The files a command reads, from the paths the user gave: a folder stands for the files directly in
    it (a model folder's config.json, a checkpoint's *.safetensors); a name that is no file (a catalog
    model, a datasheet GPU) for nothing."""
    out: list[Path] = []
    for p in paths:
        if p is None or str(p) == "":
            continue
        path = Path(p)
        try:
            if path.is_dir():
                out.extend(sorted(c for c in path.iterdir() if c.is_file()))
            elif path.exists():
                out.append(path)
        except OSError:
            continue  # unreadable: the command's own reader reports it
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:  # realpath first: "new/../in.json" is in.json once the writer has made the folder "new"
        return os.path.samefile(os.path.realpath(a), b)  # the same inode: symlinks and hard links alike
    except OSError:
        return False  # one of them does not exist: writing `a` cannot replace `b`


def check_outputs(outputs: Iterable[str | Path | None], inputs: Iterable[str | Path | None],
                  option: str = "-o") -> None:
    """Refuse (KvplanError, exit 2) an output file that is one of the command's input files, whatever the
    path spells (symlink, hard link, ../), or an empty output name. Call before any work is done."""
    files = input_files(*inputs)
    for out in outputs:
        if out is None:
            continue
        if not str(out).strip():
            raise KvplanError(f"{option} is empty: give a file name")
        for src in files:
            if _same_file(Path(out), src):
                same = "" if Path(out) == src else f" (the same file as {escape_name(src)})"
                raise KvplanError(f"{option} {escape_name(out)} is an input of this command{same}; it would be "
                                  "replaced: write the output to another file")


def check_output_folder(folder: str | Path, inputs: Iterable[str | Path | None], option: str = "-o") -> None:
    """A command that writes a whole folder (and may replace it as one): no input file may live inside it."""
    root = Path(folder).resolve()
    for src in input_files(*inputs):
        real = src.resolve()
        if real == root or root in real.parents:
            raise KvplanError(f"{option} {escape_name(folder)} holds an input of this command ({escape_name(src)}) "
                              "that writing the folder would replace: choose another folder")
