"""A report table for the console: plain text that fits the terminal (80 columns when stdout is not a
terminal). Columns that do not fit are left out whole, least important first, and the table says
which; a cell is never cut."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence

from planner.report.tables import Table

DEFAULT_WIDTH = 80
GAP = "  "


def console_width() -> int:
    if sys.stdout.isatty():
        return max(40, shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns)
    return DEFAULT_WIDTH


def _widths(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[int]:
    return [max([len(c)] + [len(str(r[i])) for r in rows]) for i, c in enumerate(columns)]


def _total(widths: Sequence[int]) -> int:
    return sum(widths) + len(GAP) * (len(widths) - 1)


def fit_columns(columns: Sequence[str], rows: Sequence[Sequence[str]], width: int,
                drop_order: Sequence[str]) -> list[int]:
    """Indices of the columns to show: all of them, less columns from `drop_order` (first dropped first)
    until the table fits `width`."""
    keep = list(range(len(columns)))
    widths = _widths(columns, rows)
    for name in drop_order:
        if _total([widths[i] for i in keep]) <= width:
            break
        if name in columns:
            keep.remove(list(columns).index(name))
    return keep


def _is_number(cell: str) -> bool:
    text = cell.replace(",", "").replace("$", "").split(" ")[0]
    try:
        float(text)
    except ValueError:
        return cell == "-"
    return True


def render(table: Table, width: int, drop_order: Sequence[str] = ()) -> str:
    keep = fit_columns(table.columns, table.rows, width, drop_order)
    columns = [table.columns[i] for i in keep]
    rows = [[str(r[i]) for i in keep] for r in table.rows]
    widths = _widths(columns, rows)
    right = [i > 0 and all(_is_number(r[i]) for r in rows) for i in range(len(columns))]

    def line(cells: Sequence[str]) -> str:
        return GAP.join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)).rstrip()

    out = [table.title, line(columns), GAP.join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    left_out = [c for c in table.columns if c not in columns]
    if left_out:
        out.append(f"(left out to fit {width} columns: {', '.join(left_out)}; every column is in report.md)")
    return "\n".join(out)
