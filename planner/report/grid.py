"""The report's grid as typed records: the GPUs and models swept, the cells solved (one
`planner.search.solve` per model x GPU x context x batch), and each cell's outcome per strategy.

Every solve already solves each pinned strategy (the plan's `baselines` section) beside the
automatic plan, so strategy is not a grid axis of solving: a cell is solved once and every strategy
row of the report is read from that one plan (`strategy_outcomes`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from planner.errors import KvplanError
from planner.hardware import hardware_record
from planner.models import ModelConfig
from planner.placement import REQUEST_STRATEGIES
from planner.profile import profile_from_dict
from planner.search.request import OBJECTIVES as REQUEST_OBJECTIVES

STRATEGY_CHOICES = REQUEST_STRATEGIES
OBJECTIVES = REQUEST_OBJECTIVES
MAX_CONFIGURATIONS = 200_000
STATUSES = ("feasible", "infeasible", "error")


@dataclass(frozen=True)
class GpuEntry:
    name: str  # label in the report: the profile's name
    source: str  # "datasheet", "local" or the profile file's path
    profile_hash: str
    data: dict[str, Any]  # the profile JSON, shipped to the workers
    host_is_device: bool = False  # a CPU-only profile: the CPU is the device


@dataclass(frozen=True)
class Cell:
    """One solve of the sweep; `index` is its place in the deterministic grid order."""

    index: int
    model: str
    gpu: str
    seq: int
    gen: int
    batch: int | None  # None = the planner picks
    objective: str


@dataclass(frozen=True)
class CellResult:
    """What one solve gave: the plan (with its baselines), or the planner's one-line reason
    ("infeasible") or, for a planner bug, the exception text ("error")."""

    cell: Cell
    status: str
    reason: str  # empty when feasible
    plan: dict[str, Any] | None


@dataclass(frozen=True)
class StrategyOutcome:
    """One row of the report: a cell under one strategy. `plan` is the whole plan for the automatic
    row; a pinned strategy's row has `baseline`, that strategy's entry of the plan's baselines."""

    cell: Cell
    strategy: str
    status: str
    reason: str
    plan: dict[str, Any] | None = None
    baseline: dict[str, Any] | None = None


def strategy_outcomes(result: CellResult, strategies: tuple[str, ...]) -> list[StrategyOutcome]:
    """The rows of one cell, in the order of `strategies`."""
    out = []
    for strategy in strategies:
        if result.status != "feasible" or result.plan is None:
            out.append(StrategyOutcome(result.cell, strategy, result.status, result.reason))
        elif strategy == "auto":
            out.append(StrategyOutcome(result.cell, strategy, "feasible", "", plan=result.plan))
        else:
            base = result.plan["baselines"][strategy]
            if base.get("feasible"):
                out.append(StrategyOutcome(result.cell, strategy, "feasible", "", baseline=base))
            else:  # the same wording as `kvplan solve --strategy NAME` gives
                out.append(StrategyOutcome(result.cell, strategy, "infeasible",
                                           f"strategy {strategy}: {base.get('reason', '')}"))
    return out


@dataclass(frozen=True)
class SweepContext:
    """What every worker needs besides the cells: plain dicts, so it pickles anywhere."""

    models: dict[str, dict[str, Any]]
    profiles: dict[str, dict[str, Any]]


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
    def n_cells(self) -> int:
        return len(self.models) * len(self.gpus) * len(self.seqs) * len(self.batches)

    @property
    def size(self) -> int:
        """Configurations (rows of the report): cells x strategies."""
        return self.n_cells * len(self.strategies)

    def cells(self) -> list[Cell]:
        """Model, GPU, context, batch: outermost to innermost, in the order given."""
        out: list[Cell] = []
        for model in self.models:
            for gpu in self.gpus:
                for seq in self.seqs:
                    for batch in self.batches:
                        out.append(Cell(len(out), model.name, gpu.name, seq, self.gen, batch, self.objective))
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
