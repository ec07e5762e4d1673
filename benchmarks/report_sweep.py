"""Benchmark: how long `kvplan report` takes to solve and write 1,000-configuration sweeps.

    /work/venv/bin/python benchmarks/report_sweep.py [--jobs 1,2] [--grids fixed,auto] [--no-write]

Prints one row per (grid, jobs): configurations, wall seconds to solve them all with the real planner,
CPU seconds spent on it (this process and its workers), wall milliseconds per configuration, seconds
to write the report folder, and the feasible count. The target (issue 6) is a 1,000-configuration
sweep within 60 s on a 2-core machine. Timings depend on what else the machine runs: the load
average before each run is printed beside it.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

from planner.report.execute import run_sweep
from planner.report.grid import Grid
from planner.report.options import parse_batches, parse_seqs, parse_strategies, resolve_gpus, resolve_models
from planner.report.write import write_report

GPUS = "a100-40g-pcie,h100-sxm,l4,t4,a10g"
# Two 1,000-configuration grids: fixed batches (one MILP per cell) and automatic batch choice (the planner
# also searches the batch, several times the work per cell).
GRIDS = {
    "fixed": dict(models="opt-6.7b,llama-3-8b", seqs="1k:16k:x2", batches="1,8,32,128"),  # 2x5x5x4x5
    "auto": dict(models="opt-1.3b,opt-6.7b,llama-2-7b,llama-3-8b", seqs="1k:512k:x2", batches="auto"),  # 4x5x10x1x5
}


def make_grid(name: str) -> Grid:
    spec = GRIDS[name]
    return Grid(
        models=tuple(resolve_models([spec["models"]])), gpus=tuple(resolve_gpus([GPUS])),
        seqs=tuple(parse_seqs([spec["seqs"]])), batches=tuple(parse_batches([spec["batches"]])), gen=128,
        strategies=tuple(parse_strategies([])), objective="throughput",
    )


def _cpu_s() -> float:
    """CPU seconds of this process and of its finished workers (the pool's workers are reaped on exit)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", default="1,2", help="comma-separated worker counts to time")
    parser.add_argument("--grids", default="fixed,auto", help=f"comma-separated grids among {', '.join(GRIDS)}")
    parser.add_argument("--no-write", action="store_true", help="time the solving only")
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}")
    header = f"{'grid':<6} {'configs':>7} {'jobs':>4} {'load1':>5} {'solve s':>8} {'cpu s':>6} {'ms/config':>9} " \
             f"{'write s':>7} {'feasible':>8}"
    print(header)
    print("-" * len(header))
    for grid_name in args.grids.split(","):
        grid = make_grid(grid_name.strip())
        for jobs in (int(j) for j in args.jobs.split(",")):
            load = os.getloadavg()[0]
            cpu_before = _cpu_s()
            start = time.perf_counter()
            results = run_sweep(grid, jobs=jobs)
            solve_s = time.perf_counter() - start
            cpu_s = _cpu_s() - cpu_before
            write_s = float("nan")
            if not args.no_write:
                with tempfile.TemporaryDirectory() as out:
                    start = time.perf_counter()
                    write_report(out, grid, results, [])
                    write_s = time.perf_counter() - start
            feasible = sum(r.status == "feasible" for r in results)  # cells with a plan
            print(f"{grid_name:<6} {grid.size:>7} {jobs:>4} {load:>5.1f} {solve_s:>8.1f} {cpu_s:>6.1f} "
                  f"{solve_s / grid.size * 1e3:>9.1f} {write_s:>7.1f} {feasible:>8}", flush=True)


if __name__ == "__main__":
    main()
