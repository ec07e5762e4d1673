"""`kvplan report`: solve a grid of models x GPUs x contexts x batches (each cell once; every strategy
from that plan) and write a capacity-planning report folder (results.csv/.parquet, report.html,
report.md, figures/, config.json)."""

from __future__ import annotations

import dataclasses
import sys
import time

import click

from planner.cli.hardware import HardwareArgs, hardware_options
from planner.cli.output import OutputPath, check_output_folder, echo_json
from planner.errors import KvplanError
from planner.profile import profile_from_dict
from planner.report.console import console_width, render
from planner.report.execute import effective_jobs, run_sweep
from planner.report.grid import OBJECTIVES, GpuEntry, Grid
from planner.report.options import (
    parse_batches,
    parse_prices,
    parse_seqs,
    parse_strategies,
    resolve_gpus,
    resolve_models,
)
from planner.report.progress import Progress
from planner.report.runs import load_runs
from planner.report.tables import best_gpu_table
from planner.report.write import write_report

MULTI = dict(multiple=True, metavar="A,B,...")
# The console's best-GPU table drops these first when it does not fit the terminal.
DROP_ORDER = ("its tokens/s", "its $/M tokens", "step", "batch", "$/M tokens", "strategy")


@click.command("report")
@click.option("--models", "-m", **MULTI,
              help="Model names (kvplan models), config.json paths, or 'all'; repeat or comma-separate.")
@click.option("--gpus", "-g", **MULTI,
              help="Datasheet GPU names (kvplan gpus), 'all' of them, or 'local' for this machine's profile.")
@click.option("--profile", "profiles", multiple=True, type=click.Path(dir_okay=False),
              help="A profile JSON file to include as one more GPU (repeatable).")
@click.option("--seqs", "-s", **MULTI,
              help="Contexts (prompt + generated): 1k,4k,16k or ranges 1024:32768:x2, 1k:8k:+1k (k = 1024).")
@click.option("--batches", "-b", **MULTI, help="Batch sizes or 'auto' (the planner picks; default).")
@click.option("--gen", type=int, default=128, show_default=True, help="Tokens generated per sequence.")
@click.option("--strategies", **MULTI,
              help="Any of auto, resident, transfer, recompute, cpu-attention (default: all five; one solve per "
                   "cell gives them all).")
@click.option("--objective", type=click.Choice(OBJECTIVES), default="throughput", show_default=True)
@click.option("--price", "prices", **MULTI, help="GPU=USD_PER_HOUR, e.g. a100-40g-pcie=1.8 (no default prices).")
@click.option("--runs", "runs", multiple=True, type=click.Path(dir_okay=False),
              help="Run records from 'kvplan execute --out' for the predicted-vs-measured section (repeatable).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="Local worker processes (default: all cores; tiny sweeps run in-process).")
@click.option("--dask", "dask_address", metavar="ADDRESS", default=None,
              help="Solve on an existing Dask cluster (scheduler address, e.g. tcp://host:8786).")
@click.option("--progress/--no-progress", default=None,
              help="Progress on stderr: a bar on a terminal, a line per 10%% otherwise (default: on a terminal).")
@click.option("--out", "-o", "out_dir", required=True, type=OutputPath(file_okay=False), help="Report folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of a table.")
@hardware_options
def command(
    models: tuple[str, ...], gpus: tuple[str, ...], profiles: tuple[str, ...], seqs: tuple[str, ...],
    batches: tuple[str, ...], gen: int, strategies: tuple[str, ...], objective: str, prices: tuple[str, ...],
    runs: tuple[str, ...], jobs: int | None, dask_address: str | None, progress: bool | None, out_dir: str,
    as_json: bool, hardware: HardwareArgs,
) -> None:
    """Capacity planning across models, GPUs and contexts: solve a whole grid and write a report."""
    check_output_folder(out_dir, [*(m for spec in models for m in spec.split(",")), *profiles, *runs, hardware.host,
                                  hardware.storage])
    model_list = resolve_models(models)
    gpu_list = [_with_parts(g, hardware) for g in resolve_gpus(gpus, profiles)]
    if not seqs:
        raise KvplanError("--seqs is required: give contexts such as 1k,4k,16k or a range 1024:32768:x2")
    grid = Grid(
        models=tuple(model_list), gpus=tuple(gpu_list), seqs=tuple(parse_seqs(seqs)),
        batches=tuple(parse_batches(batches)), gen=gen, strategies=tuple(parse_strategies(strategies)),
        objective=objective, prices=parse_prices(prices, [g.name for g in gpu_list]),
        hardware_options=tuple(hardware.as_options()),
    )
    records = load_runs(list(runs))
    n_jobs = effective_jobs(grid.n_cells, jobs)
    show = sys.stderr.isatty() if progress is None else progress
    start = time.perf_counter()
    with Progress(enabled=show) as bar:
        results = run_sweep(grid, jobs=jobs, dask_address=dask_address, progress=bar)
        solve_s = time.perf_counter() - start
        report = write_report(out_dir, grid, results, records, runs=list(runs), dask=bool(dask_address),
                              step=bar.step)
    where = f"on Dask cluster {dask_address}" if dask_address else (
        "in this process" if n_jobs == 1 else f"on {n_jobs} local processes")
    click.echo(f"solved {grid.n_cells:,} cells ({grid.size:,} configurations: each solve gives every strategy) "
               f"in {solve_s:.1f} s {where}; report written in {time.perf_counter() - start - solve_s:.1f} s",
               err=True)
    counts = report.counts
    table = best_gpu_table(report.frame, bool(grid.prices))
    if as_json:
        echo_json({
            "out_dir": str(report.out_dir), "status_counts": counts,
            "files": sorted(str(p.relative_to(report.out_dir)) for p in report.files),
            "best_gpu": [dict(zip(table.columns, row, strict=True)) for row in table.rows],
        })
    else:
        click.echo(render(table, console_width(), DROP_ORDER))
        click.echo(f"{grid.size:,} configurations: " + ", ".join(f"{n:,} {k}" for k, n in counts.items()))
        click.echo(f"report: {report.out_dir / 'report.html'} (also report.md, results.csv, figures/, config.json)")
    if not counts.get("feasible"):
        reasons = report.frame["reason"].value_counts()
        raise KvplanError(
            f"no feasible configuration in the grid ({grid.size:,} tried); most common reason: "
            f"{reasons.index[0]}; every reason is listed in {report.out_dir / 'report.html'}"
        )


def _with_parts(entry: GpuEntry, hardware: HardwareArgs) -> GpuEntry:
    """The GPU entry with the --host/--storage parts and stated numbers; a CPU-only entry (its CPU is
    its device, its host its own) takes only the storage ones."""
    base = profile_from_dict(entry.data, entry.source)
    if base.host_is_device:
        hardware = hardware.storage_only()
    profile = hardware.compose(base)
    return dataclasses.replace(entry, profile_hash=profile.profile_hash, data=profile.data)
