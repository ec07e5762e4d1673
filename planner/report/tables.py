"""The report's tables, computed from the results frame (pure functions: DataFrame in, rows out)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import pandas as pd

from planner.report.frame import BATCH, CHOSEN, STEP, THROUGHPUT, best_by_objective, best_rows, feasible, objective_of
from planner.report.runs import RunRecord
from planner.units import format_seconds


@dataclass(frozen=True)
class Table:
    title: str
    caption: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    note: str = ""  # e.g. "(120 more rows in results.csv)"


def fmt_num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (int,)) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def fmt_seq(seq: int) -> str:
    return f"{seq // 1024}k" if seq % 1024 == 0 and seq >= 1024 else str(seq)


def fmt_seconds(seconds: Any) -> str:
    """Times in every table (console, Markdown, HTML): planner.units.format_seconds ('37.2 ms', '3.36 s')."""
    if isinstance(seconds, numbers.Real) and not isinstance(seconds, bool):
        return format_seconds(float(seconds))
    return "-"


def best_gpu_table(frame: pd.DataFrame, has_prices: bool) -> Table:
    """For each model and context: the fastest GPU (highest predicted throughput, or shortest decode
    step for --objective latency, over every batch and strategy swept) and, with prices, the cheapest
    per million tokens."""
    fastest = best_by_objective(frame, ["model", "seq"])
    cheapest = best_rows(frame, ["model", "seq"], "cost_usd_per_mtok", largest=False) if has_prices else None
    columns = ["model", "context", "fastest GPU", "strategy", "batch", "tokens/s", "step"]
    if has_prices:
        columns += ["$/M tokens", "cheapest GPU", "its $/M tokens", "its tokens/s"]
    rows = []
    keys = frame[["model", "seq"]].drop_duplicates()
    for model, seq in keys.itertuples(index=False):
        fast = fastest[(fastest["model"] == model) & (fastest["seq"] == seq)]
        if fast.empty:
            row = [model, fmt_seq(seq), "none feasible", "-", "-", "-", "-"]
            if has_prices:
                row += ["-", "-", "-", "-"]
            rows.append(tuple(row))
            continue
        f = fast.iloc[0]
        row = [model, fmt_seq(seq), f["gpu"], _strategy_label(f), fmt_num(f[BATCH]), fmt_num(f[THROUGHPUT]),
               fmt_seconds(f[STEP])]
        if has_prices:
            row.append(fmt_num(f["cost_usd_per_mtok"]))
            cheap = cheapest[(cheapest["model"] == model) & (cheapest["seq"] == seq)] if cheapest is not None else None
            if cheap is None or cheap.empty:
                row += ["no price given", "-", "-"]
            else:
                c = cheap.iloc[0]
                row += [c["gpu"], fmt_num(c["cost_usd_per_mtok"]), fmt_num(c[THROUGHPUT])]
        rows.append(tuple(row))
    goal = ("the shortest predicted decode step" if objective_of(frame) == "latency"
            else "the highest predicted end-to-end throughput")
    caption = ("For each model and context, the GPU whose best configuration (over every batch and strategy "
               f"swept) has {goal}")
    caption += ", and the one with the lowest cost per million generated tokens." if has_prices else "."
    return Table("Best GPU for each model and context", caption, tuple(columns), tuple(rows))


def _strategy_label(row: pd.Series) -> str:
    chosen = row.get(CHOSEN)
    if row["strategy_request"] == "auto":
        return f"auto -> {chosen}" if isinstance(chosen, str) else "auto"
    return str(row["strategy_request"])


RESIDENT_OK = "baselines.resident.feasible"


def resident_feasible(frame: pd.DataFrame) -> pd.DataFrame:
    """The cells (model, gpu, seq, batch_request) where the KV cache fits resident in device memory:
    read from the resident rows when that strategy was swept, else from the automatic rows' baselines
    (every solve tries resident), so the answer does not depend on --strategies."""
    keys = ["model", "gpu", "seq", "batch_request"]
    if "resident" in set(frame["strategy_request"]):
        rows = frame[(frame["strategy_request"] == "resident") & (frame["status"] == "feasible")]
    elif RESIDENT_OK in frame.columns:
        rows = frame[(frame["strategy_request"] == "auto") & (frame[RESIDENT_OK] == True)]  # noqa: E712
    else:
        return frame.iloc[0:0][keys]
    return rows[keys].drop_duplicates()


def fit_table(frame: pd.DataFrame) -> Table:
    """Per model and GPU, on the same footing for every GPU: the longest context swept that fits at all,
    the longest that fits with the KV cache resident in device memory, and the largest feasible batch
    at one context, the model's shortest swept, for every GPU alike."""
    rows = []
    ok = feasible(frame)
    resident = resident_feasible(frame)
    for (model, gpu), _ in frame.groupby(["model", "gpu"], sort=False):
        mine = ok[(ok["model"] == model) & (ok["gpu"] == gpu)]
        res = resident[(resident["model"] == model) & (resident["gpu"] == gpu)]
        any_seq = fmt_seq(int(mine["seq"].max())) if not mine.empty else "none"
        res_seq = fmt_seq(int(res["seq"].max())) if not res.empty else "none"
        first_seq = int(frame.loc[frame["model"] == model, "seq"].min())
        at_first = mine[(mine["seq"] == first_seq) & mine[BATCH].notna()]
        batch_text = "none" if at_first.empty else f"{int(at_first[BATCH].max()):,} at {fmt_seq(first_seq)}"
        rows.append((model, gpu, any_seq, res_seq, batch_text))
    return Table(
        "What fits each GPU",
        "For every GPU alike: the longest context swept that has a feasible plan (any strategy), the longest with "
        "the KV cache resident in device memory (every solve tries that strategy), and the largest feasible batch "
        "among the configurations swept at the model's shortest context (with --batches auto, the batch the "
        "planner chose).",
        ("model", "GPU", "longest context (any)", "longest context (resident)", "largest batch"), tuple(rows),
    )


def infeasible_table(frame: pd.DataFrame, limit: int = 200) -> Table:
    bad = frame[frame["status"] != "feasible"]
    rows = tuple(
        (r.model, r.gpu, fmt_seq(int(r.seq)), str(r.batch_request), r.strategy_request, r.status, r.reason)
        for r in bad.head(limit).itertuples(index=False)
    )
    note = f"({len(bad) - limit:,} more rows in results.csv)" if len(bad) > limit else ""
    return Table(
        "Infeasible configurations",
        "Every configuration the planner could not place, with its reason (the planner's own message).",
        ("model", "GPU", "context", "batch", "strategy", "status", "reason"), rows, note,
    )


def reasons_table(frame: pd.DataFrame) -> Table:
    bad = frame[frame["status"] != "feasible"]
    counts = bad.groupby("reason", sort=False).size().sort_values(ascending=False, kind="mergesort")
    rows = tuple((str(n), reason) for reason, n in counts.items())
    return Table("Why configurations were infeasible", "Infeasible configurations grouped by reason.",
                 ("configurations", "reason"), rows)


def measured_table(records: list[RunRecord]) -> Table:
    rows = []
    for rec in records:
        for metric in rec.metrics():
            p, m = rec.predicted[metric], rec.measured[metric]
            gap = (m / p - 1.0) * 100 if p else math.nan
            rows.append((rec.label, metric, fmt_num(p), fmt_num(m), "-" if math.isnan(gap) else f"{gap:+.1f}%"))
    return Table(
        "Predicted vs measured, per run",
        "Each run record (from kvplan execute --out): the plan's prediction, what the runtime measured, and the "
        "gap (measured / predicted - 1).",
        ("run", "metric", "predicted", "measured", "gap"), tuple(rows),
    )
