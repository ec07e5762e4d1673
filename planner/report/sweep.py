"""Capacity-planning sweeps: parse a grid (models x GPUs x contexts x batches x strategies), expand it
into configurations in a fixed order, and solve every configuration with the planner, in this
process, on a spawn-safe process pool over the local cores, or on an existing Dask cluster.

Every configuration yields one `SolveResult`: the plan object when the planner found one, otherwise
the planner's one-line reason ("infeasible") or, for a planner bug, the exception text ("error").
Nothing is dropped: the report shows infeasible cells with their reason.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from planner.errors import KvplanError
from planner.hardware import hardware_record
from planner.models import ModelConfig, load_model
from planner.profile import Profile, datasheet_names, find_local_profile, load_profile, profile_from_dict

STRATEGY_CHOICES = ("auto", "resident", "transfer", "recompute", "cpu-attention")
PINNED_STRATEGIES = STRATEGY_CHOICES[1:]
OBJECTIVES = ("throughput", "latency")
MAX_CONFIGURATIONS = 200_000

# Size suffixes for --seqs: contexts are counted in powers of two, as people say "a 4k context"
# for 4,096 tokens.
_SUFFIX = {"": 1, "k": 1024, "m": 1024 * 1024}
_NUMBER = re.compile(r"^\s*(\d+)\s*([kKmM]?)\s*$")


# -- grid parsing ---------------------------------------------------------------------------------
def split_values(values: Iterable[str]) -> list[str]:
    """Options may be repeated and comma-separated: ('a,b', 'c') -> ['a', 'b', 'c']."""
    out: list[str] = []
    for value in values:
        out.extend(part.strip() for part in str(value).split(",") if part.strip())
    return out


def parse_size(text: str, what: str) -> int:
    match = _NUMBER.match(text)
    if not match:
        raise KvplanError(f"{what}: '{text}' is not a whole number (suffixes k = 1024, m = 1024*1024 allowed)")
    return int(match.group(1)) * _SUFFIX[match.group(2).lower()]


def parse_seq_spec(spec: str) -> list[int]:
    """One --seqs item: a number ('4096', '4k') or a range START:STOP:STEP, inclusive of STOP when
    the steps land on it. STEP is 'xF' (multiply by F, F >= 2) or '+N' / 'N' (add N)."""
    parts = spec.split(":")
    if len(parts) == 1:
        return [parse_size(spec, "--seqs")]
    if len(parts) != 3:
        raise KvplanError(f"--seqs: range '{spec}' must be START:STOP:STEP, e.g. 1024:32768:x2 or 1k:8k:+1k")
    start = parse_size(parts[0], f"--seqs range '{spec}'")
    stop = parse_size(parts[1], f"--seqs range '{spec}'")
    step = parts[2].strip().lower()
    if start <= 0:
        raise KvplanError(f"--seqs: range '{spec}' must start above 0")
    if stop < start:
        raise KvplanError(f"--seqs: range '{spec}' is empty (STOP {stop} is below START {start})")
    out: list[int] = []
    if step.startswith("x") or step.startswith("*"):
        factor_text = step[1:]
        if not factor_text.isdigit() or int(factor_text) < 2:
            raise KvplanError(f"--seqs: range '{spec}': multiplicative step must be x2, x4, ... (got '{parts[2]}')")
        factor = int(factor_text)
        value = start
        while value <= stop:
            out.append(value)
            value *= factor
    else:
        add = parse_size(step.lstrip("+"), f"--seqs range '{spec}' step")
        if add <= 0:
            raise KvplanError(f"--seqs: range '{spec}': step must be positive")
        out = list(range(start, stop + 1, add))
    if len(out) > 10_000:
        raise KvplanError(f"--seqs: range '{spec}' expands to {len(out)} contexts; use a coarser step")
    return out


def parse_seqs(values: Iterable[str]) -> list[int]:
    items = split_values(values)
    if not items:
        raise KvplanError("--seqs is empty: give contexts such as 1k,4k,16k or a range 1024:32768:x2")
    seqs: set[int] = set()
    for item in items:
        seqs.update(parse_seq_spec(item))
    return sorted(seqs)


def parse_batches(values: Iterable[str]) -> list[int | None]:
    """'auto' (the planner picks; None in a SolveRequest) or positive integers; order kept, duplicates dropped."""
    items = split_values(values) or ["auto"]
    out: list[int | None] = []
    for item in items:
        value: int | None = None if item.lower() == "auto" else parse_size(item, "--batches")
        if value is not None and value <= 0:
            raise KvplanError(f"--batches: {item} is not a positive batch size")
        if value not in out:
            out.append(value)
    return out


def parse_strategies(values: Iterable[str]) -> list[str]:
    items = split_values(values) or list(STRATEGY_CHOICES)
    out: list[str] = []
    for item in items:
        key = item.lower()
        if key not in STRATEGY_CHOICES:
            raise KvplanError(f"--strategies: unknown strategy '{item}' (known: {', '.join(STRATEGY_CHOICES)})")
        if key not in out:
            out.append(key)
    return out


def parse_prices(values: Iterable[str], gpu_names: Sequence[str]) -> dict[str, float]:
    """--price NAME=USD_PER_HOUR for GPUs in the grid."""
    prices: dict[str, float] = {}
    for item in split_values(values):
        name, sep, amount = item.partition("=")
        name = name.strip().lower()
        if not sep or not name:
            raise KvplanError(f"--price: '{item}' must be GPU=USD_PER_HOUR, e.g. a100-40g-pcie=1.8")
        try:
            usd = float(amount)
        except ValueError as exc:
            raise KvplanError(f"--price: '{amount}' in '{item}' is not a number of dollars per hour") from exc
        if not math.isfinite(usd) or usd <= 0:
            raise KvplanError(f"--price: {item}: the price must be a positive number of dollars per hour")
        if name not in gpu_names:
            raise KvplanError(f"--price: '{name}' is not one of the GPUs in this sweep ({', '.join(gpu_names)})")
        prices[name] = usd
    return prices


@dataclass(frozen=True)
class GpuEntry:
    name: str  # label in the report: the profile's name
    source: str  # "datasheet", "local" or the profile file's path
    profile_hash: str
    data: dict[str, Any]  # the profile JSON, shipped to the workers


def resolve_models(values: Iterable[str]) -> list[ModelConfig]:
    names = split_values(values)
    if not names:
        raise KvplanError("--models is empty: give one or more names from 'kvplan models' or config.json paths")
    out: list[ModelConfig] = []
    for name in names:
        model = load_model(name)
        same = [m for m in out if m.name == model.name]
        if same and same[0] != model:
            raise KvplanError(f"two different models are both named '{model.name}' in --models; "
                              "put each config.json in a folder of its own name")
        if not same:
            out.append(model)
    return out


def resolve_gpus(values: Iterable[str], profile_files: Iterable[str | Path] = ()) -> list[GpuEntry]:
    """Datasheet GPUs by name, 'local' for this machine's measured profile, and --profile files."""
    entries: list[GpuEntry] = []
    pairs: list[tuple[str, Profile]] = []
    for name in split_values(values):
        if name.lower() == "local":
            path = find_local_profile()
            if path is None:
                raise KvplanError("--gpus local: this machine has no measured profile yet; run 'kvplan profile' first")
            pairs.append(("local", load_profile(path=path)))
        else:
            pairs.append(("datasheet", load_profile(gpu=name)))
    for path in profile_files:
        pairs.append((str(path), load_profile(path=path)))
    if not pairs:
        raise KvplanError(f"--gpus is empty: give names from 'kvplan gpus' ({', '.join(datasheet_names())}), "
                          "'local', or --profile FILE")
    for source, profile in pairs:
        name = profile.name.strip().lower()
        same = [e for e in entries if e.name == name]
        if same and same[0].profile_hash == profile.profile_hash:
            continue
        if same:
            raise KvplanError(f"two different profiles are both named '{name}' ({same[0].source} and {source})")
        entries.append(GpuEntry(name=name, source=source, profile_hash=profile.profile_hash, data=profile.data))
    return entries


# -- the grid ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """One configuration of the sweep; `index` is its place in the deterministic grid order."""

    index: int
    model: str
    gpu: str
    seq: int
    gen: int
    batch: int | None  # None = the planner picks
    strategy: str
    objective: str


@dataclass(frozen=True)
class Grid:
    models: tuple[ModelConfig, ...]
    gpus: tuple[GpuEntry, ...]
    seqs: tuple[int, ...]
    batches: tuple[int | None, ...]
    gen: int
    strategies: tuple[str, ...]
    objective: str
    prices: dict[str, float] = field(default_factory=dict)
    hardware_options: tuple[str, ...] = ()  # --host/--storage/stated numbers as typed (planner/cli/hardware.py)

    def __post_init__(self) -> None:
        if self.gen < 1:
            raise KvplanError(f"--gen must be at least 1, got {self.gen}")
        if self.objective not in OBJECTIVES:
            raise KvplanError(f"--objective must be one of {', '.join(OBJECTIVES)}")
        too_short = [s for s in self.seqs if s <= self.gen]
        if too_short:
            raise KvplanError(
                f"--seqs {too_short[0]} is not longer than --gen {self.gen}: a context is prompt + generated "
                "tokens, so every context must exceed --gen"
            )
        if self.size > MAX_CONFIGURATIONS:
            raise KvplanError(f"the grid has {self.size} configurations (limit {MAX_CONFIGURATIONS}); narrow it")

    @property
    def size(self) -> int:
        return (len(self.models) * len(self.gpus) * len(self.seqs) * len(self.batches)
                * len(self.strategies))

    def configs(self) -> list[Config]:
        """Model, GPU, context, batch, strategy: outermost to innermost, in the order given."""
        out: list[Config] = []
        for model in self.models:
            for gpu in self.gpus:
                for seq in self.seqs:
                    for batch in self.batches:
                        for strategy in self.strategies:
                            out.append(Config(len(out), model.name, gpu.name, seq, self.gen, batch, strategy,
                                              self.objective))
        return out

    def context(self) -> SweepContext:
        return SweepContext(
            models={m.name: m.to_dict() for m in self.models},
            profiles={g.name: g.data for g in self.gpus},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": [m.name for m in self.models],
            "gpus": [{"name": g.name, "source": g.source, "profile_hash": g.profile_hash,
                      "hardware": hardware_record(profile_from_dict(g.data, g.name))} for g in self.gpus],
            "hardware_options": list(self.hardware_options),
            "seqs": list(self.seqs),
            "batches": ["auto" if b is None else b for b in self.batches],
            "gen": self.gen,
            "strategies": list(self.strategies),
            "objective": self.objective,
            "prices_usd_per_hour": dict(sorted(self.prices.items())),
            "configurations": self.size,
        }


# -- solving ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepContext:
    """What every worker needs besides the configurations: plain dicts, so it pickles anywhere."""

    models: dict[str, dict[str, Any]]
    profiles: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class SolveResult:
    config: Config
    status: str  # "feasible" | "infeasible" | "error"
    reason: str  # empty when feasible
    plan: dict[str, Any] | None


_WORKER_CACHE: dict[str, Any] = {}


def _profile_for(context: SweepContext, name: str) -> Profile:
    key = f"profile:{name}"
    cached = _WORKER_CACHE.get(key)
    if cached is None or cached.data != context.profiles[name]:
        cached = profile_from_dict(context.profiles[name], origin=name)
        _WORKER_CACHE[key] = cached
    return cached


def _model_for(context: SweepContext, name: str) -> ModelConfig:
    return ModelConfig(**context.models[name])


def solve_one(context: SweepContext, config: Config) -> SolveResult:
    """Solve one configuration with the real planner (planner.search)."""
    from planner.search import Infeasible, SolveRequest, solve

    try:
        request = SolveRequest(
            model=_model_for(context, config.model), seq=config.seq, gen=config.gen, batch=config.batch,
            objective=config.objective, strategy=config.strategy,
        )
        plan = solve(request, _profile_for(context, config.gpu))
    except Infeasible as exc:
        return SolveResult(config, "infeasible", _one_line(str(exc)), None)
    except KvplanError as exc:  # a request the planner refuses (e.g. a context it cannot size) is infeasible too
        return SolveResult(config, "infeasible", _one_line(str(exc)), None)
    except Exception as exc:  # noqa: BLE001 - a planner bug must not sink a 1,000-configuration sweep
        return SolveResult(config, "error", _one_line(f"internal error: {type(exc).__name__}: {exc}"), None)
    return SolveResult(config, "feasible", "", plan)


def solve_chunk(context: SweepContext, configs: Sequence[Config]) -> list[SolveResult]:
    return [solve_one(context, c) for c in configs]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _chunks(configs: Sequence[Config], jobs: int) -> list[list[Config]]:
    # ~8 chunks per worker balances the load while keeping per-task overhead small.
    size = max(1, min(32, math.ceil(len(configs) / max(1, jobs * 8))))
    return [list(configs[i:i + size]) for i in range(0, len(configs), size)]


ProgressFn = Callable[[int], None]


def run_local(context: SweepContext, configs: Sequence[Config], jobs: int, advance: ProgressFn) -> list[SolveResult]:
    """Solve on `jobs` local processes (1 = in this process). Workers are spawned, not forked, so the
    pool is safe with threads (Dask, BLAS) in the parent and on every platform."""
    if jobs <= 1 or len(configs) <= 1:
        results = []
        for config in configs:
            results.append(solve_one(context, config))
            advance(1)
        return results
    chunks = _chunks(configs, jobs)
    results: list[SolveResult] = []
    with ProcessPoolExecutor(max_workers=min(jobs, len(chunks)), mp_context=get_context("spawn")) as pool:
        pending = {pool.submit(solve_chunk, context, chunk) for chunk in chunks}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    part = future.result()
                    results.extend(part)
                    advance(len(part))
        except BrokenProcessPool as exc:
            raise KvplanError(
                "a worker process died while solving (out of memory?); try fewer --jobs or a smaller grid"
            ) from exc
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return sorted(results, key=lambda r: r.config.index)


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


def run_dask(context: SweepContext, configs: Sequence[Config], address: str, advance: ProgressFn) -> list[SolveResult]:
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
        futures = [client.submit(solve_chunk, shared, chunk, pure=False) for chunk in _chunks(configs, workers)]
        results: list[SolveResult] = []
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
    return sorted(results, key=lambda r: r.config.index)


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def effective_jobs(n_configs: int, jobs: int | None) -> int:
    """Local worker processes for a sweep: --jobs, or all cores; spawning a worker costs about a second,
    so a sweep of fewer than 16 configurations runs in this process unless --jobs says otherwise."""
    if jobs is not None:
        return max(1, min(jobs, n_configs))
    return 1 if n_configs < 16 else min(default_jobs(), n_configs)


def run_sweep(
    grid: Grid, *, jobs: int | None = None, dask_address: str | None = None, progress: bool | None = None
) -> list[SolveResult]:
    """Solve every configuration of the grid; results come back in grid order."""
    configs = grid.configs()
    context = grid.context()
    show = sys.stderr.isatty() if progress is None else progress
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("solving"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), disable=not show, transient=True,
    ) as bar:
        task = bar.add_task("solve", total=len(configs))

        def advance(n: int) -> None:
            bar.advance(task, n)

        if dask_address:
            return run_dask(context, configs, dask_address, advance)
        return run_local(context, configs, effective_jobs(len(configs), jobs), advance)
