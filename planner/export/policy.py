"""The closest policy an engine can run, and kvplan's prediction for it.

An engine cannot do everything a kvplan plan does. Each engine's limits, as its documented options
allow (docs/export.md gives the sources):

- FlexGen: weights, K,V cache and activations split by percent over GPU/CPU/disk, batch = gpu batch
  x number of gpu batches, attention on the CPU for offloaded K,V (--cpu-cache-compute); no
  recompute of K,V from stored layer inputs (split 0).
- vLLM: every running sequence's K,V in GPU memory, attention on the GPU, weights partly in CPU
  memory (--cpu-offload-gb), nothing on disk, the batch run as one.
- Accelerate (Transformers' device_map): whole layers on GPU, CPU or disk; the K,V cache on the
  GPU; attention on the GPU; the batch run as one.

A plan inside those limits is exported as it is. Otherwise the request is solved again with the
engine's strategy pinned (`planner.search.solve` with a pinned strategy; the best of the plan's
feasible baselines for FlexGen), what the engine cannot express is set to what it does (one batch),
and the result is re-predicted with `planner.prediction.evaluate`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from planner.errors import KvplanError
from planner.plan import TIERS, Decisions, Plan, plan_from_dict
from planner.profile import Profile
from planner.search import Infeasible, SolveRequest, evaluate, solve
from planner.units import format_bytes

ENGINES = ("flexgen", "vllm", "accelerate")
FLEXGEN_STRATEGIES = ("resident", "transfer", "cpu-attention")  # FlexGen's policies have no recompute split


@dataclass(frozen=True)
class EnginePlan:
    """What the engine will run: its decisions, kvplan's prediction for them, and what changed."""

    engine: str
    decisions: Decisions
    prediction: dict[str, Any]
    original: dict[str, Any]  # the plan's own prediction
    usable_bytes: dict[str, int]
    lost: str  # one sentence: what the engine cannot do and what it costs, or that nothing is lost
    solved_again: bool
    warnings: tuple[str, ...] = ()


def _inputs(plan: Plan) -> dict[str, Any]:
    return {"seq": plan.seq, "prompt": plan.prompt, "gen": plan.gen, "objective": plan.data["inputs"]["objective"]}


def _request(plan: Plan, strategy: str, activations: str, **caps: int | None) -> SolveRequest:
    inp = plan.data["inputs"]
    batch = inp.get("batch", "auto")
    fields = {"gpu_mem_bytes": inp.get("gpu_mem_bytes"), "cpu_mem_bytes": inp.get("cpu_mem_bytes"),
              "disk_bytes": inp.get("disk_bytes")}
    fields.update(caps)
    return SolveRequest(model=plan.model, seq=plan.seq, gen=plan.gen, prompt=plan.prompt,
                        batch=None if batch == "auto" else int(batch), objective=inp["objective"],
                        strategy=strategy, dtype=plan.decisions.dtype, activations=activations, **fields)


def _solve_pinned(plan: Plan, profile: Profile, engine: str, strategy: str, **caps: int | None) -> dict[str, Any]:
    # FlexGen places activations as the plan's request allowed; vLLM and Accelerate keep them on the GPU
    activations = plan.data["inputs"].get("activations", "device") if engine == "flexgen" else "device"
    try:
        return solve(_request(plan, strategy, activations, **caps), profile)
    except Infeasible as exc:
        raise KvplanError(f"{engine} cannot run this request: with its limits ({strategy} K,V"
                          f"{', no disk' if caps.get('disk_bytes') == 0 else ''}) {exc}") from exc


def _better(a: dict[str, Any], b: dict[str, Any], objective: str) -> bool:
    if objective == "latency":
        return a["decode_step_s"] < b["decode_step_s"]
    return a["throughput_tokens_per_s"] > b["throughput_tokens_per_s"]


def _flexgen_strategy(plan: Plan) -> str:
    """The best of the plan's feasible baselines FlexGen can run, for the plan's objective."""
    base = plan.data.get("baselines", {})
    ok = [s for s in FLEXGEN_STRATEGIES if base.get(s, {}).get("feasible")]
    if not ok:
        raise KvplanError("FlexGen cannot run this request: none of the plan's resident, transfer or cpu-attention "
                          "baselines is feasible")
    best = ok[0]
    for s in ok[1:]:
        if _better(base[s], base[best], plan.data["inputs"]["objective"]):
            best = s
    return best


def percent_split(fractions: dict[str, float]) -> dict[str, int]:
    """Whole percents per tier summing to 100 (largest remainder), as FlexGen's --percent takes them."""
    raw = {t: 100.0 * fractions[t] for t in TIERS}
    out = {t: int(raw[t]) for t in TIERS}
    for t in sorted(TIERS, key=lambda t: (-(raw[t] - out[t]), TIERS.index(t)))[:100 - sum(out.values())]:
        out[t] += 1
    return out


def _whole_percents(d: Decisions) -> Decisions:
    """FlexGen's placement: whole percents of the weights and of the K,V (activations all on one tier)."""
    def pct(fractions: dict[str, float]) -> dict[str, float]:
        return {t: v / 100 for t, v in percent_split(fractions).items()}

    return dataclasses.replace(d, weight_placement=pct(d.weight_placement), kv_placement=pct(d.kv_placement))


def _one_batch(d: Decisions) -> Decisions:
    return dataclasses.replace(d, gpu_batch=d.batch, num_gpu_batches=1, activation_placement="device")


def _fits_engine(engine: str, d: Decisions) -> bool:
    if engine == "flexgen":
        return d.split_tokens == 0
    no_disk_weights = engine != "vllm" or d.weight_placement["disk"] == 0
    return (d.split_tokens == 0 and d.kv_placement["device"] == 1.0 and d.attention_where == "device"
            and d.num_gpu_batches == 1 and no_disk_weights and d.activation_placement == "device")


def engine_decisions(plan: Plan, profile: Profile, engine: str) -> tuple[Decisions, bool]:
    """The decisions the engine runs and whether the request was solved again for it."""
    if engine not in ENGINES:
        raise KvplanError(f"unknown engine '{engine}' (known: {', '.join(ENGINES)})")
    if _fits_engine(engine, plan.decisions):
        return (_whole_percents(plan.decisions) if engine == "flexgen" else plan.decisions), False
    if engine == "flexgen":
        data = _solve_pinned(plan, profile, engine, _flexgen_strategy(plan))
    elif engine == "vllm":
        data = _solve_pinned(plan, profile, engine, "resident", disk_bytes=0)
    else:
        data = _solve_pinned(plan, profile, engine, "resident")
    d = plan_from_dict(data, f"<{engine} plan>").decisions
    return (_whole_percents(d) if engine == "flexgen" else _one_batch(d)), True


def predict(plan: Plan, profile: Profile, decisions: Decisions) -> dict[str, Any]:
    return evaluate(plan.model, _inputs(plan), decisions, profile)


def lost_sentence(engine: str, plan: Plan, d: Decisions, pred: dict[str, Any]) -> str:
    name = {"flexgen": "FlexGen", "vllm": "vLLM", "accelerate": "Accelerate"}[engine]
    orig = plan.data["prediction"]
    p = plan.decisions
    missing = []
    if p.split_tokens and not d.split_tokens:
        missing.append(f"cannot recompute K,V from X (the plan recomputes {p.split_tokens} tokens)")
    if p.attention_where == "cpu" and d.attention_where != "cpu":
        missing.append("has no CPU attention")
    if p.kv_placement["device"] < 1.0 and d.kv_placement["device"] == 1.0:
        missing.append("keeps every running sequence's K,V in GPU memory (no host or disk K,V)")
    if engine != "flexgen" and p.num_gpu_batches > 1 and d.num_gpu_batches == 1:
        missing.append(f"runs the batch as one (the plan loads weights once per {p.num_gpu_batches} GPU batches)")
    if p.activation_placement == "host" and d.activation_placement != "host":
        missing.append("keeps the hidden states between layers on the GPU (the plan keeps them in host memory)")
    if d.batch != p.batch:
        missing.append(f"fits batch {d.batch} instead of {p.batch}")
    tput = f"predicted {pred['throughput_tokens_per_s']:.3g} tok/s vs {orig['throughput_tokens_per_s']:.3g} with " \
           "kvplan's runtime"
    if not missing:
        return f"nothing: {name} can run this plan's policy ({tput})"
    return f"{name} " + "; ".join(missing) + f": {tput}"


def engine_plan(plan: Plan, profile: Profile, engine: str) -> EnginePlan:
    decisions, again = engine_decisions(plan, profile, engine)
    pred = predict(plan, profile, decisions)
    usable = dict(plan.data.get("solver", {}).get("usable_bytes") or {})
    over = [f"kvplan predicts {format_bytes(pred['memory_bytes'][t])} of {t} memory for the engine's policy, above "
            f"the {format_bytes(usable[t])} usable" for t in TIERS
            if t in usable and pred["memory_bytes"][t] > usable[t]]
    return EnginePlan(engine=engine, decisions=decisions, prediction=pred, original=plan.data["prediction"],
                      usable_bytes=usable, lost=lost_sentence(engine, plan, decisions, pred), solved_again=again,
                      warnings=tuple(over))
