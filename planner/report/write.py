"""Write a report folder: results.csv (+ results.parquet with pyarrow), figures/*.png, report.html,
report.md and config.json (the command and the grid). The folder is written whole into a temporary
sibling and renamed into place, so an interrupted or failed write (Ctrl-C, a full disk) leaves the
previous folder, or none, never a half report. The same grid gives byte-identical files (no
timestamps, no run times inside)."""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from planner import __version__
from planner.errors import KvplanError
from planner.hardware import hardware_record, parts_line
from planner.jsonio import dumps_canonical, write_bytes_atomic
from planner.profile import profile_from_dict
from planner.report.figures import all_figures
from planner.report.frame import results_frame, status_counts, to_csv_text, to_parquet_bytes
from planner.report.grid import CellResult, Grid
from planner.report.html import ReportContent, render_html, render_markdown, seqs_text
from planner.report.runs import RunRecord
from planner.report.tables import best_gpu_table, fit_table, infeasible_table, measured_table, reasons_table


def command_line(grid: Grid, runs: list[str], dask: bool) -> str:
    """The command that reproduces this report (less its -o folder, so copies of a report folder
    stay identical), rebuilt from the parsed grid in canonical spelling."""
    args = ["kvplan", "report", "--models", ",".join(m.name for m in grid.models)]
    named = ["local" if g.source == "local" else g.name for g in grid.gpus if g.source in ("datasheet", "local")]
    if named:
        args += ["--gpus", ",".join(named)]
    for g in grid.gpus:
        if g.source not in ("datasheet", "local"):
            args += ["--profile", g.source]
    args += ["--seqs", ",".join(str(s) for s in grid.seqs)]
    args += ["--batches", ",".join("auto" if b is None else str(b) for b in grid.batches)]
    args += ["--gen", str(grid.gen), "--strategies", ",".join(grid.strategies), "--objective", grid.objective]
    args += list(grid.hardware_options)
    for name, usd in sorted(grid.prices.items()):
        args += ["--price", f"{name}={usd:g}"]
    for run in runs:
        args += ["--runs", run]
    if dask:
        args += ["--dask", "ADDRESS"]
    return shlex.join(args)


def hardware_rows(grid: Grid) -> list[tuple[str, str]]:
    """Each GPU's parts with their provenance, and the numbers that were assumed (planner/hardware.py)."""
    records = {g.name: hardware_record(profile_from_dict(g.data, g.name)) for g in grid.gpus}
    rows = [("hardware parts (provenance, source)", "; ".join(f"{n}: {parts_line(r)}" for n, r in records.items()))]
    assumed = [f"{n}: {', '.join(r['assumed'])}" for n, r in records.items() if r["assumed"]]
    rows.append(("assumed, not measured or stated", "; ".join(assumed) or "nothing"))
    return rows


@dataclass(frozen=True)
class ReportFiles:
    out_dir: Path
    frame: pd.DataFrame
    files: list[Path]
    counts: dict[str, int]


def build_content(grid: Grid, frame: pd.DataFrame, records: list[RunRecord], command: str) -> ReportContent:
    counts = status_counts(frame)
    has_prices = bool(grid.prices)
    summary = [
        ("models", ", ".join(m.name for m in grid.models)),
        ("GPUs", ", ".join(f"{g.name} ({g.source})" for g in grid.gpus)),
        *hardware_rows(grid),
        ("contexts (prompt + generated tokens)", seqs_text(list(grid.seqs))),
        ("tokens generated per sequence", str(grid.gen)),
        ("batches", ", ".join("auto" if b is None else str(b) for b in grid.batches)),
        ("strategies", ", ".join(grid.strategies)),
        ("objective", grid.objective),
        ("configurations", f"{len(frame):,}: " + ", ".join(f"{n:,} {k}" for k, n in counts.items())),
        ("prices (USD per GPU-hour)",
         ", ".join(f"{k} = {v:g}" for k, v in sorted(grid.prices.items())) if has_prices else "none given"),
    ]
    notes = []
    if not has_prices:
        notes.append("No --price was given, so cost per million tokens is not computed: kvplan ships no price table "
                     "because GPU-hour prices change often and differ by provider and contract.")
    if counts.get("error"):
        notes.append(f"{counts['error']} configuration(s) hit an internal planner error; they are listed with the "
                     "error text in the infeasible table. Please report them.")
    tables_after = []
    if records:
        tables_after.append(measured_table(records))
    if counts.get("infeasible") or counts.get("error"):
        tables_after += [reasons_table(frame), infeasible_table(frame)]
    return ReportContent(
        title="kvplan capacity report: " + ", ".join(m.name for m in grid.models),
        command=command, summary=summary, figures=all_figures(frame, records),
        tables_before=[best_gpu_table(frame, has_prices), fit_table(frame)],
        tables_after=tables_after, notes=notes,
    )


REPORT_FILES = frozenset(("results.csv", "results.parquet", "report.html", "report.md", "config.json", "figures"))


def check_out_dir(out: Path) -> None:
    """-o must be a new folder, an empty one, or an earlier report (which is replaced whole); a folder
    holding anything else is refused, so a report never deletes a file it did not write."""
    if out.exists() and not out.is_dir():
        raise KvplanError(f"-o {out} is a file, not a folder")
    if not out.is_dir():
        return
    for entry in sorted(out.iterdir()):
        figures_ok = entry.name == "figures" and entry.is_dir() and all(
            p.suffix == ".png" and p.is_file() for p in entry.iterdir())
        if entry.name not in REPORT_FILES or (entry.name == "figures" and not figures_ok):
            raise KvplanError(f"-o {out} holds {entry.name}, which is not part of a kvplan report; give a new or "
                              "empty folder (an earlier report folder is replaced whole)")


def _make_sibling(out: Path) -> Path:
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp's 0700 would otherwise become the report folder's mode
        return tmp
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise KvplanError(f"disk full while creating the report folder {out}; nothing was written") from exc
        raise KvplanError(f"cannot create the report folder {out}: {exc.strerror}") from exc


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder onto `out`; an earlier report there is moved aside first and then
    deleted, and put back if the rename fails."""
    old = None
    if out.is_dir():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=tmp.parent))
        os.rename(out, old / "report")
    try:
        os.rename(tmp, out)
    except BaseException:
        if old is not None:
            os.rename(old / "report", out)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_files(folder: Path, frame: pd.DataFrame, content: ReportContent, config: dict,
                 step: Callable[[str], None]) -> list[Path]:
    step("writing the report: results table")
    files: list[Path] = [write_bytes_atomic(folder / "results.csv", to_csv_text(frame).encode())]
    parquet = to_parquet_bytes(frame)
    if parquet is not None:
        files.append(write_bytes_atomic(folder / "results.parquet", parquet))
    step(f"writing the report: {len(content.figures)} figures")
    for fig in content.figures:
        files.append(write_bytes_atomic(folder / "figures" / fig.name, fig.png))
    step("writing the report: report.md, report.html, config.json")
    files.append(write_bytes_atomic(folder / "report.md", render_markdown(content).encode()))
    files.append(write_bytes_atomic(folder / "report.html", render_html(content).encode()))
    config["files"] = sorted(str(p.relative_to(folder)) for p in files) + ["config.json"]
    files.append(write_bytes_atomic(folder / "config.json", dumps_canonical(config).encode()))
    return [p.relative_to(folder) for p in files]


def write_report(
    out_dir: str | Path, grid: Grid, results: list[CellResult], records: list[RunRecord], *,
    runs: list[str] | None = None, dask: bool = False, step: Callable[[str], None] | None = None,
) -> ReportFiles:
    out = Path(out_dir)
    check_out_dir(out)
    step = step or (lambda _text: None)
    step("writing the report: table and figures")
    frame = results_frame(results, grid.strategies, grid.prices)
    command = command_line(grid, list(runs or []), dask)
    content = build_content(grid, frame, records, command)
    config = {
        "kvplan_version": __version__,
        "command": command + " -o " + shlex.quote(str(out_dir)),
        "grid": grid.to_dict(),
        "runs": list(runs or []),
        "status_counts": status_counts(frame),
    }
    tmp = _make_sibling(out)
    try:
        names = _write_files(tmp, frame, content, config, step)
        step(f"writing the report: moving it into {out}")
        _move_into_place(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    return ReportFiles(out_dir=out, frame=frame, files=[out / n for n in names], counts=status_counts(frame))
