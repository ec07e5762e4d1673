"""Render the report: one self-contained HTML page (figures inlined as base64 PNG data URIs, inline CSS,
no scripts, nothing fetched) and the same content as Markdown (figures linked from figures/)."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from typing import Any

from planner.report.figures import FigureOut
from planner.report.tables import Table, fmt_seq

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0;
       color: #1d232a; background: #fff; line-height: 1.45; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 60px; }
h1 { font-size: 1.7em; margin: 0 0 4px; }
h2 { font-size: 1.25em; margin: 34px 0 6px; border-bottom: 1px solid #d6dbe1; padding-bottom: 4px; }
p.lead { color: #4a5561; margin-top: 0; }
p.caption { color: #39434d; margin: 6px 0 10px; max-width: 70em; }
figure { margin: 12px 0 18px; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e7eb; }
table { border-collapse: collapse; font-size: 0.88em; margin: 8px 0 6px; }
th, td { border: 1px solid #d6dbe1; padding: 3px 8px; text-align: right; vertical-align: top; }
th { background: #f1f4f7; text-align: left; }
td:first-child, th:first-child, td.text { text-align: left; }
tr.infeasible td { background: #fff4f2; }
code { background: #f1f4f7; padding: 1px 4px; border-radius: 3px; }
.summary td { text-align: left; }
.note { color: #6a7480; font-size: 0.9em; }
"""


@dataclass(frozen=True)
class ReportContent:
    title: str
    command: str
    summary: list[tuple[str, str]]  # (label, value) rows of the summary table
    figures: list[FigureOut]
    tables_before: list[Table]  # shown after the figures: best GPU, fit
    tables_after: list[Table]  # measured, infeasible
    notes: list[str]


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _html_table(table: Table) -> str:
    out = [f'<h2 id="{_anchor(table.title)}">{_e(table.title)}</h2>', f'<p class="caption">{_e(table.caption)}</p>']
    if not table.rows:
        out.append('<p class="note">(none)</p>')
        return "\n".join(out)
    out.append("<table>")
    out.append("<thead><tr>" + "".join(f"<th>{_e(c)}</th>" for c in table.columns) + "</tr></thead><tbody>")
    for row in table.rows:
        bad = any(cell in ("infeasible", "error", "none feasible") for cell in row)
        cls = ' class="infeasible"' if bad else ""
        cells = "".join(
            f'<td class="text">{_e(c)}</td>' if _is_text(c) else f"<td>{_e(c)}</td>" for c in row
        )
        out.append(f"<tr{cls}>{cells}</tr>")
    out.append("</tbody></table>")
    if table.note:
        out.append(f'<p class="note">{_e(table.note)}</p>')
    return "\n".join(out)


_NUMERIC = re.compile(r"^[-+$]?[\d.,]+(e[-+]?\d+)?\s*(%|µs|ms|s|min|h|k|x)?$|^-$")


def _is_text(cell: str) -> bool:
    """Left-align words, right-align numbers."""
    return not _NUMERIC.match(str(cell).strip())


def _html_figure(fig: FigureOut) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    return "\n".join([
        f'<h2 id="{_anchor(fig.name)}">{_e(fig.title)}</h2>',
        f'<p class="caption">{_e(fig.caption)}</p>',
        f'<figure><img src="data:image/png;base64,{data}" alt="{_e(fig.title)}"></figure>',
    ])


def render_html(content: ReportContent) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(content.title)}</title>",
        f"<style>{CSS}</style></head><body><main>",
        f"<h1>{_e(content.title)}</h1>",
        f'<p class="lead">Made by <code>{_e(content.command)}</code>. Every number is a prediction of the kvplan '
        "cost models for the hardware profile named, unless marked measured. The full table, one row per "
        "configuration, is results.csv beside this page.</p>",
        '<table class="summary"><tbody>',
        *[f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in content.summary],
        "</tbody></table>",
    ]
    for note in content.notes:
        parts.append(f'<p class="note">{_e(note)}</p>')
    links = [(_anchor(t.title), t.title) for t in content.tables_before]
    links += [(_anchor(f.name), f.title) for f in content.figures]
    links += [(_anchor(t.title), t.title) for t in content.tables_after]
    parts.append('<nav><p class="note">Contents: ' + " &middot; ".join(
        f'<a href="#{a}">{_e(title)}</a>' for a, title in links) + "</p></nav>")
    for table in content.tables_before:
        parts.append(_html_table(table))
    for fig in content.figures:
        parts.append(_html_figure(fig))
    for table in content.tables_after:
        parts.append(_html_table(table))
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> str:
    out = [f"## {table.title}", "", table.caption, ""]
    if not table.rows:
        return "\n".join(out + ["(none)", ""])
    out.append("| " + " | ".join(_md_cell(c) for c in table.columns) + " |")
    out.append("|" + "|".join(" --- " for _ in table.columns) + "|")
    for row in table.rows:
        out.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
    if table.note:
        out += ["", table.note]
    return "\n".join(out + [""])


def render_markdown(content: ReportContent) -> str:
    out = [f"# {content.title}", "", f"Made by `{content.command}`. Every number is a prediction of the kvplan cost "
           "models for the hardware profile named, unless marked measured; results.csv has one row per "
           "configuration.", ""]
    out += ["| | |", "| --- | --- |"] + [f"| {_md_cell(k)} | {_md_cell(v)} |" for k, v in content.summary] + [""]
    for note in content.notes:
        out += [note, ""]
    for table in content.tables_before:
        out.append(_md_table(table))
    for fig in content.figures:
        out += [f"## {fig.title}", "", fig.caption, "", f"![{fig.title}](figures/{fig.name})", ""]
    for table in content.tables_after:
        out.append(_md_table(table))
    return "\n".join(out).rstrip("\n") + "\n"


def seqs_text(seqs: list[int]) -> str:
    return ", ".join(fmt_seq(s) for s in seqs)
