"""Solving a report's cells: in this process, on a spawn-safe process pool over the local cores, or on
an existing Dask cluster. Each cell is one `planner.search.solve`; results come back in grid order.

Worker processes never outlive the report: they start with SIGINT blocked (Ctrl-C reaches the
parent, which stops them; no worker prints a traceback), and on Linux they ask the kernel to kill
them when their parent dies (prctl PR_SET_PDEATHSIG), elsewhere a watchdog thread polls the parent.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context, resource_tracker

from planner.errors import KvplanError
from planner.models import ModelConfig
from planner.profile import Profile, profile_from_dict
from planner.report.grid import Cell, CellResult, Grid, SweepContext
from planner.report.progress import Progress

ProgressFn = Callable[[int], None]
_PROFILES: dict[str, Profile] = {}  # per worker process: profiles built from the context, by name
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _profile_for(context: SweepContext, name: str) -> Profile:
    cached = _PROFILES.get(name)
    if cached is None or cached.data != context.profiles[name]:
        cached = _PROFILES[name] = profile_from_dict(context.profiles[name], origin=name)
    return cached


def _one_line(text: str) -> str:
    return " ".join(text.split())


def solve_cell(context: SweepContext, cell: Cell) -> CellResult:
    """Solve one cell with the real planner: the automatic plan and, in its baselines, every pinned
    strategy."""
    from planner.search import Infeasible, SolveRequest, solve

    try:
        request = SolveRequest(model=ModelConfig(**context.models[cell.model]), seq=cell.seq, gen=cell.gen,
                               batch=cell.batch, objective=cell.objective, strategy="auto")
        plan = solve(request, _profile_for(context, cell.gpu))
    except Infeasible as exc:
        return CellResult(cell, "infeasible", _one_line(str(exc)), None)
    except KvplanError as exc:  # a request the planner refuses (e.g. a context it cannot size) is infeasible too
        return CellResult(cell, "infeasible", _one_line(str(exc)), None)
    except Exception as exc:  # noqa: BLE001 - a planner bug must not sink a 1,000-cell sweep
        return CellResult(cell, "error", _one_line(f"internal error: {type(exc).__name__}: {exc}"), None)
    return CellResult(cell, "feasible", "", plan)


def solve_chunk(context: SweepContext, cells: Sequence[Cell]) -> list[CellResult]:
    return [solve_cell(context, c) for c in cells]


def _chunks(cells: Sequence[Cell], jobs: int) -> list[list[Cell]]:
    # ~8 chunks per worker balances the load while keeping per-task overhead small.
    size = max(1, min(32, math.ceil(len(cells) / max(1, jobs * 8))))
    return [list(cells[i:i + size]) for i in range(0, len(cells), size)]


def _watch_parent(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        threading.Event().wait(1.0)


def worker_init(parent_pid: int) -> None:
    """Pool initializer: exit when the parent dies, whatever killed it."""
    armed = False
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os._exit(1)
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="kvplan-parent-watch").start()


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread while worker processes are started: they inherit the mask, so a
    Ctrl-C during their start-up reaches only this process (delivered here when the block ends)."""
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - not POSIX
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        with contextlib.suppress(Exception):
            process.terminate()
    for process in processes:
        with contextlib.suppress(Exception):
            process.join(timeout=5)


def run_local(context: SweepContext, cells: Sequence[Cell], jobs: int, advance: ProgressFn) -> list[CellResult]:
    """Solve on `jobs` local processes (1 = in this process). Workers are spawned, not forked, so the
    pool is safe with threads (Dask, BLAS) in the parent and on every platform."""
    if jobs <= 1 or len(cells) <= 1:
        results = []
        for cell in cells:
            results.append(solve_cell(context, cell))
            advance(1)
        return results
    chunks = _chunks(cells, jobs)
    results: list[CellResult] = []
    # The resource tracker must run before the block: starting it unblocks SIGINT on its way out.
    resource_tracker.ensure_running()
    with sigint_blocked():
        pool = ProcessPoolExecutor(max_workers=min(jobs, len(chunks)), mp_context=get_context("spawn"),
                                   initializer=worker_init, initargs=(os.getpid(),))
        pending = {pool.submit(solve_chunk, context, chunk) for chunk in chunks}
    try:
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                part = future.result()
                results.extend(part)
                advance(len(part))
    except BrokenProcessPool as exc:
        _stop_workers(pool)
        raise KvplanError("a worker process died while solving (out of memory?); try fewer --jobs or a smaller "
                          "grid") from exc
    except BaseException:
        _stop_workers(pool)
        raise
    pool.shutdown(wait=True)
    return sorted(results, key=lambda r: r.cell.index)


def _check_reachable(address: str) -> None:
    """A refused TCP connection fails at once, instead of after the Dask client's 10 s of retries."""
    match = re.match(r"^(?:tcp|tls)://\[?([^\]/]+?)\]?:(\d+)/?$", address)
    if not match:
        return
    import socket

    try:
        socket.create_connection((match.group(1), int(match.group(2))), timeout=5).close()
    except OSError as exc:
        raise KvplanError(f"cannot reach the Dask scheduler at {address}: {exc.strerror or exc}") from exc


def run_dask(context: SweepContext, cells: Sequence[Cell], address: str, advance: ProgressFn) -> list[CellResult]:
    """Solve on an existing Dask cluster. Its workers need kvplan installed (same version)."""
    try:
        from distributed import Client, as_completed
    except ImportError as exc:
        raise KvplanError("--dask needs the 'distributed' package: pip install 'kvplan[dask]'") from exc
    _check_reachable(address)
    try:
        client = Client(address, timeout="10s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise KvplanError(f"cannot reach the Dask scheduler at {address}: {_one_line(str(exc))}") from exc
    try:
        workers = max(1, len(client.scheduler_info().get("workers", {})))
        shared = client.scatter(context, broadcast=True)
        futures = [client.submit(solve_chunk, shared, chunk, pure=False) for chunk in _chunks(cells, workers)]
        results: list[CellResult] = []
        for future in as_completed(futures, loop=client.loop):
            try:
                part = future.result()
            except Exception as exc:  # noqa: BLE001 - e.g. kvplan missing on a worker
                raise KvplanError(
                    f"a Dask worker failed: {type(exc).__name__}: {_one_line(str(exc))} "
                    "(do the workers have this kvplan installed?)"
                ) from exc
            results.extend(part)
            advance(len(part))
    finally:
        client.close()
    return sorted(results, key=lambda r: r.cell.index)


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def effective_jobs(n_cells: int, jobs: int | None) -> int:
    """Local worker processes for a sweep: --jobs, or all cores; spawning a worker costs about a second,
    so a sweep of fewer than 8 cells runs in this process unless --jobs says otherwise."""
    if jobs is not None:
        return max(1, min(jobs, n_cells))
    return 1 if n_cells < 8 else min(default_jobs(), n_cells)


def run_sweep(grid: Grid, *, jobs: int | None = None, dask_address: str | None = None,
              progress: Progress | None = None) -> list[CellResult]:
    """Solve every cell of the grid once; results come back in grid order."""
    cells = grid.cells()
    context = grid.context()
    progress = progress or Progress(enabled=False)
    progress.start("solving", len(cells))
    if dask_address:
        return run_dask(context, cells, dask_address, progress.advance)
    return run_local(context, cells, effective_jobs(len(cells), jobs), progress.advance)
