"""What happens after the MILP: the full models refine its split l (`polish_split`, with the hedge
against the disk's measured drift), and `--strategy auto` takes a pinned plan when it re-evaluates
better (`best_of`). Both only ever move between plans the MILP's constraints allow."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from planner.placement import strategy_label
from planner.plan import Decisions
from planner.prediction import evaluate
from planner.profile import Profile
from planner.stepcost import Setting


def _cost(pred: dict[str, Any], objective: str) -> float:
    """Positive, smaller is better: seconds per decode step (latency) or per generated token (throughput)."""
    return pred["decode_step_s"] if objective == "latency" else 1.0 / pred["throughput_tokens_per_s"]


def _pattern_search(start: int, seq: int, cost: Callable[[int], float], lo: int = 0) -> int:
    """The whole-token l in [lo, seq] that a deterministic pattern search from `start` finds for `cost`
    (steps of seq/16 halving down to one token; moves only on a strictly smaller cost)."""
    best_l, step = start, max(1, seq // 16)
    while True:
        moved = False
        for cand in (best_l - step, best_l + step):
            cand = min(seq, max(lo, cand))
            best = cost(best_l)
            if cand != best_l and cost(cand) < best - abs(best) * 1e-9:
                best_l, moved = cand, True
        if not moved:
            if step == 1:
                return best_l
            step = max(1, step // 2)


def polish_split(st: Setting, decisions: Decisions, prediction: dict[str, Any], profile: Profile,
                 caps: dict[str, int], min_split: int = 0) -> tuple[Decisions, dict[str, Any], dict[str, Any] | None]:
    """Refine the MILP's split l with the full cost models, everything else fixed; returns the
    decisions, their prediction and, when l was hedged, how (else None).

    The MILP chose l on the linear surrogate (per-token rates sampled at one shape); the full models
    are not linear in l (launch and latency terms, a fitted GEMM or link model, the positional
    layout). A short pattern search over whole tokens keeps the plan's placements and takes a
    different l only when it fits every tier and predicts strictly better for the objective.
    Plans without recompute (l = 0) are left alone: whether to recompute at all is the MILP's call;
    l stays >= `min_split` (1 for a pinned recompute). Only l moves: the placement fractions, which
    the pinned strategy constrained, are kept, and the ranges' empty-tier defaults respect it too
    (search/solve.decisions_from_values), so the refined plan keeps the strategy's contract.

    Hedging: when the plan reads from disk and the profile measured how far the disk's rate moved
    between its rounds (Profile.disk_time_spread: transfer times x fast .. x slow), the best l for
    the profiled rate sits where compute and disk balance, and a disk that runs faster at run time
    moves that balance to a smaller l, a slower one to a larger l. So l is chosen to minimise the
    worst relative regret over the disk at x fast, x 1 and x slow: max over those scales of
    cost(l) / (the best cost at that scale). Minimax regret (Savage's criterion) is the standard
    choice when only the range of a parameter is known, not its distribution."""
    if decisions.split_tokens == 0:
        return decisions, prediction, None
    inputs = {"seq": st.seq, "prompt": st.prompt, "gen": st.gen, "objective": st.objective}
    seen: dict[tuple[int, float], tuple[float, Decisions, dict[str, Any]]] = {
        (decisions.split_tokens, 1.0): (_cost(prediction, st.objective), decisions, prediction)}

    def trial(l_tok: int, scale: float = 1.0) -> tuple[float, Decisions, dict[str, Any]]:
        if (l_tok, scale) not in seen:
            d = dataclasses.replace(decisions, split_tokens=l_tok, strategy=strategy_label(
                l_tok, decisions.kv_placement, decisions.x_placement, decisions.attention_where))
            p = evaluate(st.model, inputs, d, profile, disk_time_scale=scale)
            fits = all(p["memory_bytes"][t] <= caps[t] for t in caps)
            seen[(l_tok, scale)] = (_cost(p, st.objective) if fits else float("inf"), d, p)
        return seen[(l_tok, scale)]

    nominal = _pattern_search(decisions.split_tokens, st.seq, lambda l_tok: trial(l_tok)[0], min_split)
    _, d, p = trial(nominal)
    spread = profile.disk_time_spread
    if spread is None or spread == (1.0, 1.0) or p["link_bytes_per_step"]["disk_read"] <= 0:
        return d, p, None
    scales = (spread[0], 1.0, spread[1])
    best = {s: trial(_pattern_search(nominal, st.seq, lambda l_tok, s=s: trial(l_tok, s)[0], min_split), s)[0]
            for s in scales}

    def regret(l_tok: int) -> float:
        return max(trial(l_tok, s)[0] / best[s] for s in scales)

    hedged = _pattern_search(nominal, st.seq, regret, min_split)
    _, d, p = trial(hedged)
    hedge = {"disk_time_scales": list(scales), "nominal_split_tokens": nominal,
             "worst_regret_pct": round(100 * (regret(hedged) - 1), 3),
             "nominal_worst_regret_pct": round(100 * (regret(nominal) - 1), 3)}
    return d, p, hedge


def better(a: dict[str, Any], b: dict[str, Any], objective: str) -> bool:
    """Is prediction a strictly better than b for the objective?"""
    if objective == "throughput":
        return a["throughput_tokens_per_s"] > b["throughput_tokens_per_s"] * (1 + 1e-9)
    return a["decode_step_s"] < b["decode_step_s"] * (1 - 1e-9)


