"""Sweep results -> one pandas DataFrame: one row per configuration (cell x strategy), in grid order.

The automatic row of a cell carries every plan decision and prediction as a column (nested objects
flattened to dotted names such as `prediction.per_layer_busy_s.h2d`); a pinned strategy's row carries
what the plan's `baselines` entry for it gives (throughput, decode step, total time, batch, split,
the strategy label) under the same column names. Infeasible configurations keep their row, with
`status` and `reason` filled and the plan columns empty.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from planner.report.grid import CellResult, StrategyOutcome, strategy_outcomes

# Columns that describe the configuration itself, first in every results table.
CONFIG_COLUMNS = (
    "model", "gpu", "seq", "prompt", "gen", "batch_request", "strategy_request", "objective", "status", "reason",
)
DERIVED_COLUMNS = ("recompute_fraction", "price_usd_per_hour", "cost_usd_per_mtok")
# Plan sections copied into the row, in this order after the configuration columns.
SECTIONS = ("decisions", "prediction", "lower_bound", "baselines", "inputs", "solver", "hardware")

# Short names used by the figures and tables.
THROUGHPUT = "prediction.throughput_tokens_per_s"
STEP = "prediction.decode_step_s"
BATCH = "decisions.batch"
SPLIT = "decisions.split_tokens"
CHOSEN = "decisions.strategy"


def flatten(obj: Any, prefix: str, out: dict[str, Any]) -> None:
    """Nested dicts -> dotted keys; lists of strings -> one ' | '-joined string; other lists -> JSON."""
    if isinstance(obj, Mapping):
        for key in sorted(obj):
            flatten(obj[key], f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(obj, (list, tuple)):
        if all(isinstance(x, str) for x in obj):
            out[prefix] = " | ".join(obj)
        else:
            out[prefix] = json.dumps(obj, sort_keys=True)
    else:
        out[prefix] = obj


def _run_dependent(key: str) -> bool:
    # Solver wall-clock times differ run to run; they stay out of the table so it is reproducible.
    leaf = key.rsplit(".", 1)[-1]
    return key.startswith("solver.") and ("time" in leaf or leaf.endswith("_s") or "wall" in leaf)


# The fields of a baselines entry that are decisions; the others are predictions.
DECISION_KEYS = frozenset(("strategy", "dtype", "batch", "gpu_batch", "num_gpu_batches", "split_tokens",
                           "kv_placement", "x_placement", "weight_placement", "attention_where"))


def _plan_columns(outcome: StrategyOutcome) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    plan = outcome.plan or {}
    for section in SECTIONS:
        if section in plan:
            flatten(plan[section], section, flat)
    if "warnings" in plan:
        flatten(list(plan["warnings"]), "warnings", flat)
    for key, value in sorted((outcome.baseline or {}).items()):
        if key not in ("feasible", "reason"):
            flatten(value, f"{'decisions' if key in DECISION_KEYS else 'prediction'}.{key}", flat)
    return flat


def result_row(outcome: StrategyOutcome, prices: Mapping[str, float]) -> dict[str, Any]:
    c = outcome.cell
    row: dict[str, Any] = {
        "model": c.model, "gpu": c.gpu, "seq": c.seq, "prompt": c.seq - c.gen, "gen": c.gen,
        "batch_request": "auto" if c.batch is None else str(c.batch), "strategy_request": outcome.strategy,
        "objective": c.objective, "status": outcome.status, "reason": outcome.reason,
    }
    flat = _plan_columns(outcome)
    row.update({k: v for k, v in flat.items() if not _run_dependent(k)})
    split = flat.get(SPLIT)
    row["recompute_fraction"] = split / c.seq if isinstance(split, (int, float)) else math.nan
    price = prices.get(c.gpu)
    row["price_usd_per_hour"] = price if price is not None else math.nan
    row["cost_usd_per_mtok"] = cost_per_mtok(price, flat.get(THROUGHPUT))
    return row


def cost_per_mtok(price_usd_per_hour: float | None, throughput_tokens_per_s: Any) -> float:
    """Dollars per million generated tokens: price_per_hour / 3600 / throughput * 1e6."""
    if price_usd_per_hour is None or not isinstance(throughput_tokens_per_s, (int, float)):
        return math.nan
    if throughput_tokens_per_s <= 0:
        return math.nan
    return price_usd_per_hour / 3600.0 / throughput_tokens_per_s * 1e6


def _group(col: str) -> int:
    head = col.split(".", 1)[0]
    return SECTIONS.index(head) if head in SECTIONS else len(SECTIONS)


def results_frame(results: Sequence[CellResult], strategies: Sequence[str],
                  prices: Mapping[str, float] | None = None) -> pd.DataFrame:
    """The table of a sweep; rows in grid order (cells, then strategies in the order given); columns
    in a fixed order (configuration, derived, then each plan section's columns sorted by name)."""
    prices = prices or {}
    rows = [result_row(o, prices) for r in sorted(results, key=lambda r: r.cell.index)
            for o in strategy_outcomes(r, tuple(strategies))]
    # The columns the figures and tables read exist even when nothing was feasible.
    seen: set[str] = {THROUGHPUT, STEP, BATCH, SPLIT, CHOSEN}
    for row in rows:
        seen.update(row)
    fixed = list(CONFIG_COLUMNS) + list(DERIVED_COLUMNS)
    rest = sorted((c for c in seen if c not in fixed), key=lambda c: (_group(c), c))
    frame = pd.DataFrame(rows, columns=fixed + rest)
    return frame


def to_csv_text(frame: pd.DataFrame) -> str:
    buf = io.StringIO()
    frame.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


def to_parquet_bytes(frame: pd.DataFrame) -> bytes | None:
    """Parquet of the table, or None when pyarrow is not installed (CSV is always written)."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return None
    # Mixed-type object columns (NaN next to strings) are stored as strings so Parquet accepts them.
    clean = frame.copy()
    for col in clean.columns:
        if clean[col].dtype == object:
            kinds = {type(v) for v in clean[col] if not _missing(v)}
            if len(kinds) > 1 or (kinds and not kinds <= {str}):
                clean[col] = [None if _missing(v) else str(v) for v in clean[col]]
    buf = io.BytesIO()
    clean.to_parquet(buf, index=False, engine="pyarrow")
    return buf.getvalue()


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def feasible(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] == "feasible"]


def status_counts(frame: pd.DataFrame) -> dict[str, int]:
    return {k: int(v) for k, v in frame["status"].value_counts().sort_index().items()}


def best_rows(frame: pd.DataFrame, keys: Iterable[str], by: str, *, largest: bool) -> pd.DataFrame:
    """For each group of `keys`, the feasible row with the largest (or smallest) `by`; ties go to the
    earlier row in grid order, so the choice is deterministic."""
    ok = feasible(frame)
    ok = ok[ok[by].notna()] if by in ok.columns else ok.iloc[0:0]
    if ok.empty:
        return ok
    # Ranked on the key columns alone (no column is added to the wide frame: pandas warns when one is
    # inserted into a table read back column by column); a stable sort keeps ties in grid order.
    narrow = ok[list(dict.fromkeys([*keys, by]))].reset_index(drop=True)
    ranked = narrow.sort_values(by, ascending=not largest, kind="mergesort")
    firsts = ranked.groupby(list(keys), sort=False).head(1).index  # positions in `ok`
    return ok.iloc[sorted(firsts)]


def objective_of(frame: pd.DataFrame) -> str:
    values = frame["objective"].dropna().unique() if "objective" in frame.columns else []
    return str(values[0]) if len(values) else "throughput"


def best_by_objective(frame: pd.DataFrame, keys: Iterable[str]) -> pd.DataFrame:
    """Best feasible row per group under the sweep's objective: the highest throughput, or for
    --objective latency the shortest decode step."""
    if objective_of(frame) == "latency":
        return best_rows(frame, keys, STEP, largest=False)
    return best_rows(frame, keys, THROUGHPUT, largest=True)
