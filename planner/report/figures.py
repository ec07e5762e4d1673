"""The report's figures: matplotlib (object API, Agg canvas, no global pyplot state) -> PNG bytes.

Each figure comes with a one-sentence caption saying what it shows. PNGs carry no software or date
metadata, so the same results give byte-identical files.
"""

from __future__ import annotations

import io
import math
import numbers
import re
from dataclasses import dataclass

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from planner.report.frame import (
    BATCH,
    SPLIT,
    STEP,
    THROUGHPUT,
    best_by_objective,
    best_rows,
    feasible,
    objective_of,
)
from planner.report.runs import RunRecord
from planner.report.tables import resident_feasible
from planner.units import format_seconds

STRATEGY_STYLE = {
    # auto is dashed and drawn last, so it stays visible on top of the pinned strategy it picked
    "auto": dict(color="black", linewidth=1.8, linestyle="--", marker="o", zorder=4),
    "resident": dict(color="tab:green", marker="s"),
    "transfer": dict(color="tab:blue", marker="^"),
    "recompute": dict(color="tab:orange", marker="D"),
    "cpu-attention": dict(color="tab:purple", marker="v"),
}
GPUS_PER_FIGURE = 4
DPI = 100


@dataclass(frozen=True)
class FigureOut:
    name: str  # file name under figures/
    title: str
    caption: str  # one sentence: what the figure shows and how to read it
    png: bytes


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _seq_label(value: float, _pos: int = 0) -> str:
    v = int(round(value))
    return f"{v // 1024}k" if v >= 1024 and v % 1024 == 0 else str(v)


def _seq_axis(ax, seqs: list[int]) -> None:
    if len(seqs) > 1 and seqs[-1] / seqs[0] >= 4:
        ax.set_xscale("log", base=2)
    ax.set_xticks(seqs if len(seqs) <= 10 else seqs[:: math.ceil(len(seqs) / 10)])
    ax.xaxis.set_major_formatter(FuncFormatter(_seq_label))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("context (tokens)")


def _num_label(value: float, _pos: int = 0) -> str:
    if value <= 0:
        return ""
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    if value >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def _minor_label(value: float, _pos: int = 0) -> str:
    # Label the 2s and 5s between decades so short log ranges still read as plain numbers.
    if value <= 0:
        return ""
    lead = round(value / 10 ** math.floor(math.log10(value)), 6)
    return _num_label(value) if lead in (2.0, 5.0) else ""


def _model_panels(models: list[str]) -> tuple[Figure, list[tuple[str, object]]]:
    """One panel per model, three to a row; returns the figure and (model, axes) pairs."""
    cols, rows = min(len(models), 3), math.ceil(len(models) / 3)
    fig = Figure(figsize=(4.6 * cols + 0.4, 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for k in range(len(models), rows * cols):  # the empty cells of the last row
        axes[k // 3][k % 3].set_visible(False)
    return fig, [(model, axes[k // 3][k % 3]) for k, model in enumerate(models)]


def _positive_number(y: object) -> bool:
    """numpy integers and floats are numbers too (a batch column is int64 when every cell is feasible)."""
    return isinstance(y, numbers.Real) and not isinstance(y, bool) and math.isfinite(float(y)) and float(y) > 0


def _log_y(ax) -> None:
    has_data = any(any(_positive_number(y) for y in line.get_ydata()) for line in ax.get_lines())
    if not has_data:  # nothing feasible here: say so instead of an empty log axis
        ax.text(0.5, 0.5, "no feasible configuration", transform=ax.transAxes, ha="center", va="center",
                color="tab:red")
        ax.set_yticks([])
        return
    ax.set_yscale("log")
    ax.yaxis.set_minor_locator(LogLocator(subs="auto"))
    ax.yaxis.set_major_formatter(FuncFormatter(_num_label))
    ax.yaxis.set_minor_formatter(FuncFormatter(_minor_label))


def _seconds_y(ax) -> None:
    """A time axis in seconds, its ticks in the one time format of the report ('37.2 ms', '3.36 s')."""
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: format_seconds(v) if v > 0 else ""))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _label_batches(ax, xs, ys, batches, color: str) -> None:
    """Each point's batch beside it, so strategies that chose different batches are not read as equals."""
    for x, y, b in zip(xs, ys, batches, strict=True):
        if _positive_number(y) and _positive_number(b):
            ax.annotate(f"b{int(b)}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6, color=color)


def _chunks(items: list[str], n: int) -> list[list[str]]:
    return [items[i:i + n] for i in range(0, len(items), n)] or [[]]


def _mark_infeasible(ax, xs: list[int], color: str, marker: str = "x") -> None:
    """Infeasible points: a cross on the bottom edge of the axes, in the strategy's colour."""
    if xs:
        ax.scatter(xs, [0.03] * len(xs), transform=ax.get_xaxis_transform(), color=color, marker=marker,
                   s=40, clip_on=False, zorder=5)


def strategy_figure(frame: pd.DataFrame, model: str, gpus: list[str]) -> Figure:
    """One model's figure for up to GPUS_PER_FIGURE GPUs: throughput (top) and decode step (bottom) vs
    context, one line per strategy, each point labelled with its batch."""
    strategies = [s for s in STRATEGY_STYLE if s in set(frame["strategy_request"])]
    best = best_by_objective(frame, ["model", "gpu", "seq", "strategy_request"])
    fig = Figure(figsize=(4.2 * len(gpus) + 0.6, 6.6), layout="constrained")
    axes = fig.subplots(2, len(gpus), squeeze=False, sharex="col")
    for j, gpu in enumerate(gpus):
        cell = frame[(frame["model"] == model) & (frame["gpu"] == gpu)]
        seqs = sorted(int(s) for s in cell["seq"].unique())
        top, bottom = axes[0][j], axes[1][j]
        for strategy in strategies:
            pts = best[(best["model"] == model) & (best["gpu"] == gpu) & (best["strategy_request"] == strategy)]
            pts = pts.sort_values("seq")
            style = STRATEGY_STYLE[strategy]
            top.plot(pts["seq"], pts[THROUGHPUT], label=strategy, markersize=4, **style)
            bottom.plot(pts["seq"], pts[STEP], label=strategy, markersize=4, **style)
            _label_batches(top, list(pts["seq"]), list(pts[THROUGHPUT]), list(pts[BATCH]), style["color"])
            missing = sorted(set(seqs) - set(int(s) for s in pts["seq"]))
            for ax in (top, bottom):
                _mark_infeasible(ax, missing, style["color"])
        top.set_title(f"{model} on {gpu}", fontsize=10)
        top.set_ylabel("throughput (tokens/s)")
        bottom.set_ylabel("decode step (whole batch)")
        for ax in (top, bottom):
            _log_y(ax)
            ax.grid(True, which="major", alpha=0.3)
        _seconds_y(bottom)
        _seq_axis(bottom, seqs)
        top.tick_params(labelbottom=False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=len(handles), fontsize=9)
    return fig


def strategy_figures(frame: pd.DataFrame) -> list[FigureOut]:
    """Per model: throughput (top row) and decode-step latency (bottom row) vs context, one line per
    strategy, one column per GPU; each point is the strategy's best batch at that context, labelled."""
    out = []
    for model in frame["model"].drop_duplicates():
        gpus_all = list(frame.loc[frame["model"] == model, "gpu"].drop_duplicates())
        for part, gpus in enumerate(_chunks(gpus_all, GPUS_PER_FIGURE)):
            suffix = f"-{part + 1}" if len(gpus_all) > GPUS_PER_FIGURE else ""
            out.append(FigureOut(
                name=f"strategies-{slug(model)}{suffix}.png",
                title=f"Throughput and step latency vs context: {model}",
                caption=(f"Predicted end-to-end throughput (top) and decode-step latency of the whole batch (bottom) "
                         f"for {model} as the context grows, one line per strategy, each point the strategy's best "
                         f"batch for the {objective_of(frame)} objective, labelled with that batch (b16 = 16 "
                         "sequences): strategies at different batches trade latency for throughput; a cross on the "
                         "bottom edge marks a context where that strategy has no feasible plan."),
                png=_png(strategy_figure(frame, model, gpus)),
            ))
    return out


GPU_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def recompute_figure(frame: pd.DataFrame) -> FigureOut | None:
    """The recompute fraction (KVPR's split l / context) vs context, per GPU: what the automatic plan
    chose (solid) and what the pinned recompute strategy uses when recompute is forced (dashed)."""
    present = set(frame["strategy_request"])
    sources = [(s, ls) for s, ls in (("auto", "-"), ("recompute", "--")) if s in present]
    best = {s: best_by_objective(frame[frame["strategy_request"] == s], ["model", "gpu", "seq"]) for s, _ in sources}
    if all(b.empty for b in best.values()):
        return None
    models = list(frame["model"].drop_duplicates())
    fig, panels = _model_panels(models)
    for model, ax in panels:
        seqs = sorted(int(s) for s in frame.loc[frame["model"] == model, "seq"].unique())
        for g, gpu in enumerate(frame.loc[frame["model"] == model, "gpu"].drop_duplicates()):
            color = f"C{g % 10}"
            for source, linestyle in sources:
                b = best[source]
                pts = b[(b["model"] == model) & (b["gpu"] == gpu)].sort_values("seq")
                ax.plot(pts["seq"], pts[SPLIT] / pts["seq"], color=color, linestyle=linestyle,
                        marker=GPU_MARKERS[g % len(GPU_MARKERS)], markersize=5 if source == "auto" else 3,
                        label=f"{gpu} ({source})")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(model, fontsize=10)
        ax.set_ylabel("recomputed share of context")
        ax.grid(True, alpha=0.3)
        _seq_axis(ax, seqs)
    handles: dict[str, object] = {}
    for _, ax in panels:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=min(len(handles), 4),
               fontsize=8)
    return FigureOut(
        name="recompute-fraction.png",
        title="Chosen recompute fraction vs context",
        caption=("The share of each sequence's context whose K,V are recomputed from stored layer inputs (KVPR's "
                 "split point divided by the context) instead of transferred, as chosen by the automatic plan "
                 "(solid) and by the pinned recompute strategy (dashed); 0 means no recompute, which is right for "
                 "GQA models, whose layer inputs are larger than their K,V."),
        png=_png(fig),
    )


def fit_figure(frame: pd.DataFrame) -> FigureOut | None:
    """Left: longest feasible context per GPU (any strategy vs KV resident). Right: largest feasible batch
    vs context per GPU."""
    models = list(frame["model"].drop_duplicates())
    fig = Figure(figsize=(11, 3.4 * len(models) + 0.4), layout="constrained")
    axes = fig.subplots(len(models), 2, squeeze=False)
    ok = feasible(frame)
    for k, model in enumerate(models):
        left, right = axes[k]
        gpus = list(frame.loc[frame["model"] == model, "gpu"].drop_duplicates())
        seqs = sorted(int(s) for s in frame.loc[frame["model"] == model, "seq"].unique())
        mine = ok[ok["model"] == model]
        any_fit = [mine.loc[mine["gpu"] == g, "seq"].max() for g in gpus]
        res = resident_feasible(frame)
        res = res[res["model"] == model]
        res_fit = [res.loc[res["gpu"] == g, "seq"].max() for g in gpus]
        xs = list(range(len(gpus)))
        series = [("any strategy (offloading allowed)", any_fit, "tab:blue", "o", -0.12)]
        if not resident_feasible(frame).empty or "resident" in set(frame["strategy_request"]):
            series.append(("KV resident in GPU memory", res_fit, "tab:green", "s", 0.12))
        for label, values, color, marker, dx in series:
            px = [x + dx for x, v in zip(xs, values, strict=True) if not pd.isna(v)]
            py = [v for v in values if not pd.isna(v)]
            left.vlines(px, seqs[0] / 1.5, py, color=color, linewidth=3, alpha=0.5)
            left.scatter(px, py, color=color, marker=marker, s=50, label=label, zorder=3)
            none_x = [x + dx for x, v in zip(xs, values, strict=True) if pd.isna(v)]
            if none_x:
                left.scatter(none_x, [0.03] * len(none_x), transform=left.get_xaxis_transform(), color=color,
                             marker="x", s=50, clip_on=False)
        left.set_yscale("log", base=2)
        left.set_ylim(seqs[0] / 1.5, seqs[-1] * 1.6)
        left.set_yticks(seqs if len(seqs) <= 10 else seqs[:: math.ceil(len(seqs) / 10)])
        left.yaxis.set_major_formatter(FuncFormatter(_seq_label))
        left.yaxis.set_minor_formatter(NullFormatter())
        left.set_xticks(xs, gpus, rotation=20, ha="right", fontsize=8)
        left.set_xlim(-0.6, len(gpus) - 0.4)
        left.set_ylabel("longest feasible context (tokens)")
        left.set_title(f"{model}: longest context that fits (x: none)", fontsize=10)
        left.legend(fontsize=8, loc="lower right")
        left.grid(True, axis="y", alpha=0.3)
        for gpu in gpus:
            pts = mine[mine["gpu"] == gpu].groupby("seq")[BATCH].max()
            right.plot(pts.index, pts.values, marker="o", markersize=4, label=gpu)
        right.set_title(f"{model}: largest feasible batch", fontsize=10)
        right.set_ylabel("batch (sequences)")
        _log_y(right)
        right.grid(True, alpha=0.3)
        _seq_axis(right, seqs)
        right.legend(fontsize=8)
    return FigureOut(
        name="fit.png",
        title="Largest batch and context that fit each GPU",
        caption=("Left: the longest context swept with a feasible plan on each GPU, with any strategy and with the KV "
                 "cache kept in GPU memory; right: the largest batch among the feasible configurations swept at each "
                 "context (with --batches auto, the batch the planner chose)."),
        png=_png(fig),
    )


def cost_figure(frame: pd.DataFrame) -> FigureOut | None:
    priced = frame[frame["cost_usd_per_mtok"].notna()]
    if priced.empty:
        return None
    best = best_rows(priced, ["model", "gpu", "seq"], "cost_usd_per_mtok", largest=False)
    models = list(frame["model"].drop_duplicates())
    fig, panels = _model_panels(models)
    for model, ax in panels:
        seqs = sorted(int(s) for s in frame.loc[frame["model"] == model, "seq"].unique())
        for gpu in priced.loc[priced["model"] == model, "gpu"].drop_duplicates():
            pts = best[(best["model"] == model) & (best["gpu"] == gpu)].sort_values("seq")
            ax.plot(pts["seq"], pts["cost_usd_per_mtok"], marker="o", markersize=4, label=gpu)
        ax.set_title(model, fontsize=10)
        ax.set_ylabel("USD per million tokens")
        _log_y(ax)
        ax.grid(True, alpha=0.3)
        _seq_axis(ax, seqs)
        ax.legend(fontsize=8)
    return FigureOut(
        name="cost.png",
        title="Cost per million tokens",
        caption=("The lowest predicted cost per million generated tokens on each priced GPU (its hourly price / 3600 / "
                 "the best configuration's throughput x 10^6) as the context grows; lower is better."),
        png=_png(fig),
    )


def measured_figure(records: list[RunRecord]) -> FigureOut | None:
    records = [r for r in records if r.metrics()]
    if not records:
        return None
    fig = Figure(figsize=(max(6.0, 1.3 * len(records) + 3), 4.2), layout="constrained")
    ax = fig.subplots()
    metric_of = [r.metrics()[0] for r in records]
    xs = range(len(records))
    pred = [r.predicted[m] for r, m in zip(records, metric_of, strict=True)]
    meas = [r.measured[m] for r, m in zip(records, metric_of, strict=True)]
    ax.bar([x - 0.2 for x in xs], pred, width=0.4, label="predicted", color="tab:blue")
    ax.bar([x + 0.2 for x in xs], meas, width=0.4, label="measured", color="tab:red")
    for x, p, m in zip(xs, pred, meas, strict=True):
        if p:
            ax.annotate(f"{(m / p - 1) * 100:+.0f}%", (x + 0.2, m), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs), [f"{i + 1}: {r.label}" for i, r in enumerate(records)], rotation=15, ha="right",
                  fontsize=7)
    ax.set_xlabel("run (as labelled in the table below)")
    names = sorted(set(metric_of))
    ax.set_ylabel(" / ".join(n.replace("_", " ") for n in names))
    if all(n.endswith("_s") for n in names):
        ax.set_ylabel(" / ".join(n[:-2].replace("_", " ") for n in names))
        _seconds_y(ax)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return FigureOut(
        name="measured.png",
        title="Predicted vs measured",
        caption=("For each run record, the plan's predicted decode-step time next to the measured one, labelled with "
                 "the gap (measured / predicted - 1); bars of equal height mean the cost model was right."),
        png=_png(fig),
    )


def all_figures(frame: pd.DataFrame, records: list[RunRecord]) -> list[FigureOut]:
    out = strategy_figures(frame)
    for fn in (recompute_figure, fit_figure, cost_figure):
        fig = fn(frame)
        if fig is not None:
            out.append(fig)
    measured = measured_figure(records)
    if measured is not None:
        out.append(measured)
    return out
