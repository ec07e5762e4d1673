"""`solve(request, profile)`: the MILP for the request, its re-evaluation, the pinned baselines and
the plan object (docs/plan-schema.md)."""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from planner.errors import KvplanError
from planner.hardware import hardware_record
from planner.layer_costs import (
    embedding_params,
    kv_bytes_per_token,
    layer_weight_bytes,
    recompute_saves_bytes,
    x_bytes_per_token,
)
from planner.models import DTYPE_BYTES
from planner.plan import PLAN_SCHEMA_VERSION, TIERS, Decisions, plan_from_dict
from planner.profile import Profile
from planner.search.evaluate import cost_model_for, evaluate
from planner.search.formulation import (
    Coeffs,
    Combo,
    Setting,
    activation_bytes,
    batch_candidates,
    coefficients,
    combos_for,
    pinned_zero,
    stream_buffer_bytes,
)
from planner.search.ilp import IlpResult, solve_milp
from planner.search.request import PINNED_STRATEGIES, Infeasible, SolveRequest, resolve_dtype, validate_request

# Headroom for what the planner does not model: the CUDA context and allocator fragmentation on a
# GPU; the operating system and the Python process on a CPU-only machine (docs/planner.md, "Memory").
DEVICE_HEADROOM = 0.95
CPU_POOL_HEADROOM = 0.85


@dataclass(frozen=True)
class StrategyResult:
    decisions: Decisions
    prediction: dict[str, Any]
    ilp: IlpResult
    combos: int
    milp_split_tokens: int  # the MILP's split before the full-model refinement (polish_split)
    split_hedge: dict[str, Any] | None = None  # how polish_split hedged l against the disk's drift


def capacities(req: SolveRequest, profile: Profile) -> dict[str, int]:
    """Usable bytes per tier: the profile's memory (less headroom), capped by the user's caps."""
    def capped(avail: float, cap: int | None) -> int:
        return int(avail if cap is None else min(avail, cap))

    disk = capped(profile.disk_free_bytes, req.disk_bytes)
    if profile.host_is_device:
        pool = min(profile.device_memory_bytes, profile.host_memory_bytes) * CPU_POOL_HEADROOM
        pool = capped(pool, req.gpu_mem_bytes)
        pool = capped(pool, req.cpu_mem_bytes)
        return {"device": pool, "host": 0, "disk": disk}
    return {
        "device": capped(profile.device_memory_bytes * DEVICE_HEADROOM, req.gpu_mem_bytes),
        "host": capped(profile.host_memory_bytes, req.cpu_mem_bytes),
        "disk": disk,
    }


def _gb(n: float) -> str:
    v = n / 1e9
    return f"{v:.0f} GB" if v >= 10 else f"{v:.1f} GB" if v >= 0.1 else f"{v:.3f} GB"


def _fractions(parts: dict[str, float]) -> dict[str, float]:
    """Three tier fractions rounded to 6 decimals that sum to exactly 1 (device first if empty)."""
    total = sum(parts.values())
    if total <= 1e-12:
        return {"device": 1.0, "host": 0.0, "disk": 0.0}
    out = {t: round(max(0.0, v) / total, 6) for t, v in parts.items()}
    largest = max(out, key=lambda t: (out[t], t))
    out[largest] = round(1.0 - sum(v for t, v in out.items() if t != largest), 6)
    return out


def strategy_label(split: int, kv: dict[str, float], x: dict[str, float], where: str) -> str:
    if where == "cpu":
        return "cpu-attention"
    if split == 0 and kv["device"] == 1.0:
        return "resident"
    if split == 0 and kv["device"] == 0.0:
        return "transfer"
    if split > 0 and kv["device"] == 0.0 and x["device"] == 0.0:
        return "recompute"
    return "mixed"


def _whole_tokens(parts: dict[str, float], total: int) -> dict[str, int]:
    """Whole tokens per tier summing to `total`: device and host rounded down (never more memory than
    the MILP gave them, up to the margin), the remainder to the last tier the MILP used."""
    counts = {t: 0 for t in TIERS}
    if total <= 0:
        return counts
    used = [t for t in TIERS if parts[t] > 1e-9] or ["device"]
    for t in TIERS[:-1]:
        if t != used[-1]:
            counts[t] = min(int(parts[t] + 1e-6), total - sum(counts.values()))
    counts[used[-1]] = total - sum(counts.values())
    return counts


def _token_fractions(counts: dict[str, int]) -> dict[str, float]:
    """Fractions from whole-token counts, rounded to 9 decimals so that the position cut of
    planner/plan.py (round(cumulative fraction * n)) gives back exactly these counts."""
    n = sum(counts.values())
    if n == 0:
        return {"device": 1.0, "host": 0.0, "disk": 0.0}
    out = {t: round(counts[t] / n, 9) for t in TIERS}
    last = max((t for t in TIERS if counts[t] > 0), key=TIERS.index)
    out[last] = round(1.0 - sum(v for t, v in out.items() if t != last), 9)
    return out


def decisions_from_values(st: Setting, combo: Combo, values: dict[str, float]) -> Decisions:
    seq = st.seq
    x_tok = {"device": values["xd"] * seq, "host": values["xh"] * seq, "disk": values["xk"] * seq}
    kv_tok = {"device": values["kd"] * seq, "host": values["kh"] * seq, "disk": values["kk"] * seq}
    split = min(seq, max(0, round(sum(x_tok.values()))))
    x = _token_fractions(_whole_tokens(x_tok, split))
    kv = _token_fractions(_whole_tokens(kv_tok, seq - split))
    L = st.model.num_layers
    nd, nh = round(values["nd"]), round(values["nh"])
    nk = L - nd - nh
    w = {"device": round(nd / L, 9), "host": round(nh / L, 9), "disk": round(nk / L, 9)}
    w = _fractions(w)
    return Decisions(
        strategy=strategy_label(split, kv, x, combo.attention_where), dtype=st.dtype, batch=combo.batch,
        gpu_batch=combo.gpu_batch, num_gpu_batches=combo.num_gpu_batches, split_tokens=split,
        kv_placement=kv, x_placement=x, weight_placement=w, attention_where=combo.attention_where,
    )


def _diagnose(st: Setting, req: SolveRequest, strategy: str, caps: dict[str, int], combos: list[Combo]) -> str:
    """Why nothing fits: the smallest footprint of this strategy against what is available."""
    m, dt = st.model, st.dtype
    if not combos:
        if strategy == "cpu-attention" and st.host_is_device:
            return "cpu-attention needs a host CPU beside the device; on a CPU-only profile attention already " \
                   "runs on the device (the CPU)"
        return f"no candidate batch for strategy {strategy}"
    L = m.num_layers
    W = layer_weight_bytes(m, dt)
    kvpt = kv_bytes_per_token(m, dt)
    per_tok = kvpt
    if strategy in ("auto", "recompute") and recompute_saves_bytes(m):
        per_tok = min(kvpt, x_bytes_per_token(m, dt))
    small = min(combos, key=lambda c: (c.batch, c.gpu_batch))
    b = small.batch
    kv_all = L * b * st.seq * per_tok
    weights = L * W
    emb = embedding_params(m) * DTYPE_BYTES[dt]
    act = activation_bytes(m, dt, small, st.prompt)
    what = f"{m.name} {dt}, batch {b}, seq {st.seq}"
    dev_cap = caps["device"]
    dev_word = "memory" if st.host_is_device else "device memory"
    hidden = 2 * b * st.prompt * m.hidden_size * DTYPE_BYTES[dt]  # the block's hidden states in prefill
    staging = stream_buffer_bytes(m, dt, small, st.seq)
    hint = "; try a smaller --batch" if req.batch is not None and req.batch > 1 else ""
    if strategy == "resident":
        need = emb + act + kv_all + min(weights, 2 * W)
        return (f"resident K,V needs {_gb(need)} of {dev_word} for {what} (K,V {_gb(kv_all)}, embeddings "
                f"{_gb(emb)}, prefill working memory {_gb(act)}, one streamed layer of weights double-buffered "
                f"{_gb(min(weights, 2 * W))}); {_gb(dev_cap)} available{hint}")
    dev_min = emb + act + 2 * W + staging
    if dev_min > dev_cap:
        return (f"needs {_gb(dev_min)} of {dev_word} even with everything else offloaded, for {what}: embeddings "
                f"{_gb(emb)}, prefill working memory {_gb(act)} (of which the batch's hidden states "
                f"{_gb(hidden)}), K,V staging {_gb(staging)}, two streamed layers {_gb(2 * W)}; "
                f"{_gb(dev_cap)} available{hint}")
    total = weights + kv_all
    room = (dev_cap - dev_min) + caps["host"] + caps["disk"]
    if total > room:
        if st.host_is_device:
            return (f"needs {_gb(total - (dev_cap - dev_min))} of disk for weights {_gb(weights)} + K,V "
                    f"{_gb(kv_all)} ({what}); {_gb(caps['disk'])} available")
        missing_host = total - (dev_cap - dev_min) - caps["disk"]
        return (f"needs {_gb(missing_host)} of host memory, {_gb(caps['host'])} available (weights {_gb(weights)} + "
                f"K,V {_gb(kv_all)} for {what}; device {_gb(dev_cap)}, disk {_gb(caps['disk'])})")
    return f"no placement of weights {_gb(weights)} and K,V {_gb(kv_all)} fits ({what})"


def setting_for_request(req: SolveRequest, profile: Profile) -> tuple[Setting, dict[str, int]]:
    validate_request(req)
    dtype = resolve_dtype(req, profile)
    caps = capacities(req, profile)
    st = Setting(
        model=req.model, dtype=dtype, seq=req.seq, prompt=req.prompt_tokens, gen=req.gen,
        host_is_device=profile.host_is_device, device_cap_bytes=caps["device"], host_cap_bytes=caps["host"],
        disk_cap_bytes=caps["disk"], objective=req.objective,
    )
    return st, caps


def build_problem(req: SolveRequest, st: Setting, profile: Profile, strategy: str, caps: dict[str, int],
                  cache: dict[Combo, Coeffs] | None = None) -> tuple[list[Coeffs], list[frozenset[str]]]:
    """The combos of `strategy` ("auto": nothing pinned) with their coefficients and pinned variables;
    the MILP and the exhaustive search (tests) both take exactly this."""
    cost = cost_model_for(profile)
    combos = combos_for(req.batch, profile.host_is_device, strategy)
    cache = {} if cache is None else cache
    coeffs = []
    zeros = []
    for combo in combos:
        co = cache.get(combo)
        if co is None:
            co = cache[combo] = coefficients(st, combo, cost, profile)
        # skip combos whose fixed device memory alone exceeds the device (keeps the MILP small)
        if co.memory["device"].const > caps["device"]:
            continue
        coeffs.append(co)
        zeros.append(pinned_zero(strategy, combo, profile.host_is_device))
    if not coeffs:
        raise Infeasible(_diagnose(st, req, strategy, caps, combos))
    return coeffs, zeros


def solve_surrogate(req: SolveRequest, st: Setting, profile: Profile, strategy: str, caps: dict[str, int],
                    cache: dict[Combo, Coeffs] | None = None) -> tuple[IlpResult, Combo, int]:
    """The MILP alone: (result, chosen combo, number of combos); raises Infeasible."""
    coeffs, zeros = build_problem(req, st, profile, strategy, caps, cache)
    result = solve_milp(coeffs, zeros, st.model.num_layers, {t: float(c) for t, c in caps.items()}, req.grid)
    if result.index is None:
        if result.status not in ("Infeasible", "Unbounded"):
            raise KvplanError(f"the MILP solver {result.solver} stopped with status {result.status} "
                              f"(strategy {strategy}); please report this configuration")
        combos = combos_for(req.batch, profile.host_is_device, strategy)
        raise Infeasible(_diagnose(st, req, strategy, caps, combos))
    return result, coeffs[result.index].combo, len(coeffs)


def solve_strategy(req: SolveRequest, st: Setting, profile: Profile, strategy: str,
                   caps: dict[str, int], cache: dict[Combo, Coeffs] | None = None) -> StrategyResult:
    """The MILP with `strategy` pinned ("auto": nothing pinned), re-evaluated with the full models."""
    result, combo, n_combos = solve_surrogate(req, st, profile, strategy, caps, cache)
    decisions = decisions_from_values(st, combo, result.values)
    inputs = {"seq": st.seq, "prompt": st.prompt, "gen": st.gen, "objective": st.objective}
    prediction = evaluate(st.model, inputs, decisions, profile)
    milp_split = decisions.split_tokens
    decisions, prediction, hedge = polish_split(st, decisions, prediction, profile, caps)
    return StrategyResult(decisions, prediction, result, n_combos, milp_split, hedge)


# Pinned and automatic solves of one request, remembered per process: a report sweep asks for the same
# cell under each strategy, and every solve needs the four pinned baselines, so without this each cell
# would solve each pinned MILP five times. Keyed by the request (strategy aside), the profile object and
# the strategy; the profile object is kept in the value so its id cannot be reused while cached.
_STRATEGY_MEMO: OrderedDict[tuple, tuple[Profile, StrategyResult | Infeasible]] = OrderedDict()
_STRATEGY_MEMO_SIZE = 256


def solve_strategy_memo(req: SolveRequest, st: Setting, profile: Profile, strategy: str,
                        caps: dict[str, int], cache: dict[Combo, Coeffs]) -> StrategyResult:
    key = (dataclasses.replace(req, strategy="auto"), id(profile), strategy)
    hit = _STRATEGY_MEMO.get(key)
    if hit is None or hit[0] is not profile:
        try:
            outcome: StrategyResult | Infeasible = solve_strategy(req, st, profile, strategy, caps, cache)
        except Infeasible as exc:
            outcome = exc
        hit = (profile, outcome)
    _STRATEGY_MEMO[key] = hit
    _STRATEGY_MEMO.move_to_end(key)
    while len(_STRATEGY_MEMO) > _STRATEGY_MEMO_SIZE:
        _STRATEGY_MEMO.popitem(last=False)
    outcome = hit[1]
    if isinstance(outcome, Infeasible):
        raise Infeasible(str(outcome))
    return dataclasses.replace(outcome, prediction=copy.deepcopy(outcome.prediction))


def _cost(pred: dict[str, Any], objective: str) -> float:
    """Positive, smaller is better: seconds per decode step (latency) or per generated token (throughput)."""
    return pred["decode_step_s"] if objective == "latency" else 1.0 / pred["throughput_tokens_per_s"]


def _pattern_search(start: int, seq: int, cost: Callable[[int], float]) -> int:
    """The whole-token l in [0, seq] that a deterministic pattern search from `start` finds for `cost`
    (steps of seq/16 halving down to one token; moves only on a strictly smaller cost)."""
    best_l, step = start, max(1, seq // 16)
    while True:
        moved = False
        for cand in (best_l - step, best_l + step):
            cand = min(seq, max(0, cand))
            best = cost(best_l)
            if cand != best_l and cost(cand) < best - abs(best) * 1e-9:
                best_l, moved = cand, True
        if not moved:
            if step == 1:
                return best_l
            step = max(1, step // 2)


def polish_split(st: Setting, decisions: Decisions, prediction: dict[str, Any], profile: Profile,
                 caps: dict[str, int]) -> tuple[Decisions, dict[str, Any], dict[str, Any] | None]:
    """Refine the MILP's split l with the full cost models, everything else fixed; returns the
    decisions, their prediction and, when l was hedged, how (else None).

    The MILP chose l on the linear surrogate (per-token rates sampled at one shape); the full models
    are not linear in l (launch and latency terms, a fitted GEMM or link model, the positional
    layout). A short pattern search over whole tokens keeps the plan's placements and takes a
    different l only when it fits every tier and predicts strictly better for the objective.
    Plans without recompute (l = 0) are left alone: whether to recompute at all is the MILP's call.

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

    nominal = _pattern_search(decisions.split_tokens, st.seq, lambda l_tok: trial(l_tok)[0])
    _, d, p = trial(nominal)
    spread = profile.disk_time_spread
    if spread is None or spread == (1.0, 1.0) or p["link_bytes_per_step"]["disk_read"] <= 0:
        return d, p, None
    scales = (spread[0], 1.0, spread[1])
    best = {s: trial(_pattern_search(nominal, st.seq, lambda l_tok, s=s: trial(l_tok, s)[0]), s)[0] for s in scales}

    def regret(l_tok: int) -> float:
        return max(trial(l_tok, s)[0] / best[s] for s in scales)

    hedged = _pattern_search(nominal, st.seq, regret)
    _, d, p = trial(hedged)
    hedge = {"disk_time_scales": list(scales), "nominal_split_tokens": nominal,
             "worst_regret_pct": round(100 * (regret(hedged) - 1), 3),
             "nominal_worst_regret_pct": round(100 * (regret(nominal) - 1), 3)}
    return d, p, hedge


def _better(a: dict[str, Any], b: dict[str, Any], objective: str) -> bool:
    """Is prediction a strictly better than b for the objective?"""
    if objective == "throughput":
        return a["throughput_tokens_per_s"] > b["throughput_tokens_per_s"] * (1 + 1e-9)
    return a["decode_step_s"] < b["decode_step_s"] * (1 - 1e-9)


def _gain(pred: dict[str, Any], base: dict[str, Any], name: str) -> dict[str, Any]:
    return {
        "strategy": name,
        "throughput_pct": round(100.0 * (pred["throughput_tokens_per_s"] / base["throughput_tokens_per_s"] - 1), 3),
        "decode_step_pct": round(100.0 * (1 - pred["decode_step_s"] / base["decode_step_s"]), 3),
    }


def solve(request: SolveRequest, profile: Profile) -> dict[str, Any]:
    """The full plan object for `request` on `profile` (deterministic; raises Infeasible)."""
    st, caps = setting_for_request(request, profile)
    dtype = st.dtype
    results: dict[str, StrategyResult] = {}
    cache: dict[Combo, Coeffs] = {}
    baselines: dict[str, Any] = {}
    for name in PINNED_STRATEGIES:
        try:
            results[name] = solve_strategy_memo(request, st, profile, name, caps, cache)
        except Infeasible as exc:
            baselines[name] = {"feasible": False, "reason": str(exc)}
            continue
        r = results[name]
        baselines[name] = {
            "feasible": True,
            "decode_step_s": r.prediction["decode_step_s"],
            "throughput_tokens_per_s": r.prediction["throughput_tokens_per_s"],
            "total_s": r.prediction["total_s"],
            "batch": r.decisions.batch,
            "split_tokens": r.decisions.split_tokens,
            "strategy": r.decisions.strategy,
        }
    picked_from = request.strategy
    if request.strategy == "auto":
        chosen = solve_strategy_memo(request, st, profile, "auto", caps, cache)
        # The MILP optimises the linear surrogate; if a pinned plan re-evaluates better under the full
        # models, take it, so that auto is never predicted worse than a pinned strategy.
        for name in PINNED_STRATEGIES:
            if name in results and _better(results[name].prediction, chosen.prediction, request.objective):
                chosen = results[name]
                picked_from = f"pinned:{name}"
    else:
        if request.strategy not in results:
            raise Infeasible(f"strategy {request.strategy}: {baselines[request.strategy]['reason']}")
        chosen = results[request.strategy]
    prediction = dict(chosen.prediction)
    lower_bound = prediction.pop("lower_bound")
    feasible = [n for n in PINNED_STRATEGIES if n in results]
    if feasible:
        key = (lambda n: -results[n].prediction["throughput_tokens_per_s"]) if request.objective == "throughput" \
            else (lambda n: results[n].prediction["decode_step_s"])
        best = min(feasible, key=lambda n: (key(n), PINNED_STRATEGIES.index(n)))
        prediction["gain_over_best_pinned"] = _gain(prediction, results[best].prediction, best)
    else:
        prediction["gain_over_best_pinned"] = None
    prediction["gain_over_transfer"] = _gain(prediction, results["transfer"].prediction, "transfer") \
        if "transfer" in results else None

    warnings = []
    m = request.model
    if request.seq > m.max_position_embeddings:
        warnings.append(f"seq {request.seq} exceeds {m.name}'s trained context of {m.max_position_embeddings} "
                        "tokens; the plan is sized for it, but output quality past that length is not assured")
    if request.batch is None and chosen.decisions.batch == max(batch_candidates(None)):
        warnings.append(f"batch auto chose {chosen.decisions.batch}, the largest it searches; a larger --batch "
                        "may be faster still")
    ilp = chosen.ilp
    plan = {
        "schema_version": PLAN_SCHEMA_VERSION,
        "model": m.to_dict(),
        "hardware": hardware_record(profile, dtype),
        "inputs": {
            "model": m.name, "seq": request.seq, "prompt": request.prompt_tokens, "gen": request.gen,
            "batch": "auto" if request.batch is None else request.batch, "objective": request.objective,
            "strategy": request.strategy, "dtype": dtype, "gpu_mem_bytes": request.gpu_mem_bytes,
            "cpu_mem_bytes": request.cpu_mem_bytes, "disk_bytes": request.disk_bytes,
        },
        "decisions": chosen.decisions.to_dict(),
        "prediction": prediction,
        "baselines": baselines,
        "lower_bound": lower_bound,
        "solver": {
            "name": ilp.solver, "status": ilp.status, "formulation": "milp", "combos": chosen.combos,
            "variables": ilp.variables, "constraints": ilp.constraints,
            "objective_value": float(f"{ilp.objective_value:.9g}") if ilp.objective_value is not None else None,
            "picked_from": picked_from,
            "milp_split_tokens": chosen.milp_split_tokens,
            "split_hedge": chosen.split_hedge,
            "usable_bytes": caps,
        },
        "warnings": warnings,
    }
    plan_from_dict(plan, origin="<solve>")
    return plan
