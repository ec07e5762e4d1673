"""`solve(request, profile)`: the MILP for the request, its re-evaluation, the pinned baselines and
the plan object (docs/plan-schema.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from planner.errors import KvplanError
from planner.hardware import hardware_record
from planner.layer_costs import recompute_saves_bytes
from planner.memory import smallest_footprint, usable_bytes
from planner.placement import (
    PINNED_STRATEGIES,
    TIER_INITIAL,
    TIERS,
    strategy_label,
    token_fractions,
    weight_fractions,
    whole_tokens,
)
from planner.plan import PLAN_SCHEMA_VERSION, Decisions, plan_from_dict
from planner.prediction import cost_model_for, evaluate
from planner.profile import Profile
from planner.search.formulation import (
    Coeffs,
    Combo,
    Setting,
    batch_candidates,
    coefficients,
    combos_for,
    empty_range_tier,
    min_split_fraction,
    pinned_zero,
)
from planner.search.ilp import IlpResult, solve_milp
from planner.search.refine import better, polish_split
from planner.search.request import Infeasible, SolveRequest, resolve_dtype, validate_request


@dataclass(frozen=True)
class StrategyResult:
    decisions: Decisions
    prediction: dict[str, Any]
    ilp: IlpResult
    combos: int
    milp_split_tokens: int  # the MILP's split before the full-model refinement (polish_split)
    split_hedge: dict[str, Any] | None = None  # how polish_split hedged l against the disk's drift


def capacities(req: SolveRequest, profile: Profile) -> dict[str, int]:
    """Usable bytes per tier (planner/memory.py), capped by the request's --gpu-mem/--cpu-mem/--disk."""
    return usable_bytes(profile, req.gpu_mem_bytes, req.cpu_mem_bytes, req.disk_bytes)


def _gb(n: float) -> str:
    v = n / 1e9
    return f"{v:.0f} GB" if v >= 10 else f"{v:.1f} GB" if v >= 0.1 else f"{v:.3f} GB"


def decisions_from_values(st: Setting, combo: Combo, values: dict[str, float],
                          zero: frozenset[str] = frozenset()) -> Decisions:
    """The MILP's point as whole tokens per piece and whole layers per tier (planner/placement.py);
    an empty X or K,V range is placed on the first tier the pinned variables `zero` allow."""
    seq = st.seq
    x_tok = {t: values["x" + TIER_INITIAL[t]] * seq for t in TIERS}
    kv_tok = {t: values["k" + TIER_INITIAL[t]] * seq for t in TIERS}
    split = min(seq, max(0, round(sum(x_tok.values()))))
    x = token_fractions(whole_tokens(x_tok, split), empty=empty_range_tier("x", zero))
    kv = token_fractions(whole_tokens(kv_tok, seq - split), empty=empty_range_tier("k", zero))
    L = st.model.num_layers
    nd, nh = round(values["nd"]), round(values["nh"])
    w = weight_fractions({"device": nd, "host": nh, "disk": L - nd - nh})
    return Decisions(
        strategy=strategy_label(split, kv, x, combo.attention_where), dtype=st.dtype, batch=combo.batch,
        gpu_batch=combo.gpu_batch, num_gpu_batches=combo.num_gpu_batches, split_tokens=split,
        kv_placement=kv, x_placement=x, weight_placement=w, attention_where=combo.attention_where,
        activation_placement=combo.activation_placement,
    )


def _diagnose(st: Setting, req: SolveRequest, strategy: str, caps: dict[str, int], combos: list[Combo]) -> str:
    """Why nothing fits: the smallest footprint of this strategy against what is available."""
    m, dt = st.model, st.dtype
    if not combos:
        if strategy == "cpu-attention" and st.host_is_device:
            return "cpu-attention needs a host CPU beside the device; on a CPU-only profile attention already " \
                   "runs on the device (the CPU)"
        return f"no candidate batch for strategy {strategy}"
    small = min(combos, key=lambda c: (c.batch, c.gpu_batch, c.activation_placement != "host"))
    fp = smallest_footprint(st, small, strategy in ("auto", "recompute") and recompute_saves_bytes(m))
    what = f"{m.name} {dt}, batch {small.batch}, seq {st.seq}"
    dev_cap = caps["device"]
    dev_word = "memory" if st.host_is_device else "device memory"
    hint = "; try a smaller --batch" if req.batch is not None and req.batch > 1 else ""
    if small.num_gpu_batches > 2 and small.activation_placement == "device" and not st.host_is_device:
        hint += " or --activations host"
    kv, weights, two_layers = _gb(fp.cache_bytes), _gb(fp.weight_bytes), 2 * fp.layer_weight_bytes
    if strategy == "resident":
        return (f"resident K,V needs {_gb(fp.resident_bytes)} of {dev_word} for {what} (K,V {kv}, embeddings "
                f"{_gb(fp.embedding_bytes)}, prefill working memory {_gb(fp.activation_bytes)}, one streamed layer "
                f"of weights double-buffered {_gb(min(fp.weight_bytes, two_layers))}); {_gb(dev_cap)} available{hint}")
    dev_min = fp.device_min_bytes
    if dev_min > dev_cap:
        return (f"needs {_gb(dev_min)} of {dev_word} even with everything else offloaded, for {what}: embeddings "
                f"{_gb(fp.embedding_bytes)}, prefill working memory {_gb(fp.activation_bytes)} (of which hidden "
                f"states {_gb(fp.hidden_bytes)}, activations on the {small.activation_placement}), K,V staging "
                f"{_gb(fp.staging_bytes)}, two streamed layers "
                f"{_gb(two_layers)}; {_gb(dev_cap)} available{hint}")
    total = fp.weight_bytes + fp.cache_bytes
    room = (dev_cap - dev_min) + caps["host"] + caps["disk"]
    if total > room:
        if st.host_is_device:
            return (f"needs {_gb(total - (dev_cap - dev_min))} of disk for weights {weights} + K,V {kv} ({what}); "
                    f"{_gb(caps['disk'])} available")
        missing_host = total - (dev_cap - dev_min) - caps["disk"]
        return (f"needs {_gb(missing_host)} of host memory, {_gb(caps['host'])} available (weights {weights} + "
                f"K,V {kv} for {what}; device {_gb(dev_cap)}, disk {_gb(caps['disk'])})")
    return f"no placement of weights {weights} and K,V {kv} fits ({what})"


def setting_for_request(req: SolveRequest, profile: Profile) -> tuple[Setting, dict[str, int]]:
    validate_request(req)
    if req.activations == "host" and profile.host_is_device:
        raise KvplanError("--activations host needs a host beside the device; on a CPU-only profile the host is "
                          "the device (use auto or device)")
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
    combos = combos_for(req.batch, profile.host_is_device, strategy, req.max_batch, req.activations)
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
    result = solve_milp(coeffs, zeros, st.model.num_layers, {t: float(c) for t, c in caps.items()}, req.grid,
                        min_split_fraction=min_split_fraction(strategy, st.seq))
    if result.index is None:
        if result.status not in ("Infeasible", "Unbounded"):
            raise KvplanError(f"the MILP solver {result.solver} stopped with status {result.status} "
                              f"(strategy {strategy}); please report this configuration")
        combos = combos_for(req.batch, profile.host_is_device, strategy, req.max_batch, req.activations)
        raise Infeasible(_diagnose(st, req, strategy, caps, combos))
    return result, coeffs[result.index].combo, len(coeffs)


def solve_strategy(req: SolveRequest, st: Setting, profile: Profile, strategy: str,
                   caps: dict[str, int], cache: dict[Combo, Coeffs] | None = None) -> StrategyResult:
    """The MILP with `strategy` pinned ("auto": nothing pinned), re-evaluated with the full models."""
    result, combo, n_combos = solve_surrogate(req, st, profile, strategy, caps, cache)
    decisions = decisions_from_values(st, combo, result.values, pinned_zero(strategy, combo, profile.host_is_device))
    inputs = {"seq": st.seq, "prompt": st.prompt, "gen": st.gen, "objective": st.objective}
    prediction = evaluate(st.model, inputs, decisions, profile)
    milp_split = decisions.split_tokens
    min_split = 1 if strategy == "recompute" else 0
    decisions, prediction, hedge = polish_split(st, decisions, prediction, profile, caps, min_split)
    return StrategyResult(decisions, prediction, result, n_combos, milp_split, hedge)


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
            results[name] = solve_strategy(request, st, profile, name, caps, cache)
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
        chosen = solve_strategy(request, st, profile, "auto", caps, cache)
        # The MILP optimises the linear surrogate; if a pinned plan re-evaluates better under the full
        # models, take it, so that auto is never predicted worse than a pinned strategy.
        for name in PINNED_STRATEGIES:
            if name in results and better(results[name].prediction, chosen.prediction, request.objective):
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
    if request.batch is None and chosen.decisions.batch == max(batch_candidates(None, request.max_batch)):
        warnings.append(f"batch auto chose {chosen.decisions.batch}, the largest it searches (--max-batch "
                        f"{request.max_batch}); a larger --max-batch may be faster still")
    ilp = chosen.ilp
    plan = {
        "schema_version": PLAN_SCHEMA_VERSION,
        "model": m.to_dict(),
        "hardware": hardware_record(profile, dtype),
        "inputs": {
            "model": m.name, "seq": request.seq, "prompt": request.prompt_tokens, "gen": request.gen,
            "batch": "auto" if request.batch is None else request.batch, "max_batch": request.max_batch,
            "activations": request.activations, "objective": request.objective,
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
