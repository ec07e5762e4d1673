"""The plan's "prediction" (docs/plan-schema.md): a fixed decision set evaluated exactly with the
profile's full cost models, whole tokens and whole layers laid out by position as the runtime stores
them (planner/placement.py). The step's equations are planner/stepcost.py's, priced exactly; the
MILP prices the same equations linearly (its surrogate, reported beside the prediction).
Used by the planner (planner/search) and by the runtime (`kvplan execute` re-predicts a plan).
"""

from __future__ import annotations

from typing import Any

from planner.costmodel import CostModel
from planner.costmodel.layer_time import recompute_kv_s
from planner.disk_classes import KV_READ, WEIGHTS_READ
from planner.errors import KvplanError
from planner.layer_costs import (
    decode_flops,
    kv_bytes_per_token,
    layer_weight_bytes,
    recompute_kv_flops,
    x_bytes_per_token,
)
from planner.memory import tier_bytes
from planner.models import ModelConfig
from planner.placement import RESOURCES, TIER_INITIAL, TIERS, layer_counts, token_layout
from planner.plan import Decisions
from planner.profile import Profile
from planner.stepcost import (
    Amounts,
    BytePricer,
    Combo,
    DecodeTerms,
    ExactPricer,
    Setting,
    cpu_attention_s,
    decode_terms,
    linear_terms,
    op_times,
    pipeline_s,
    prefill_terms,
)

_COST_MODELS: dict[str, CostModel] = {}


def cost_model_for(profile: Profile) -> CostModel:
    """One CostModel per profile content (its cached tables are reused across solves)."""
    key = profile.profile_hash
    cm = _COST_MODELS.get(key)
    if cm is None:
        if len(_COST_MODELS) > 64:
            _COST_MODELS.clear()
        cm = _COST_MODELS[key] = CostModel(profile)
    return cm


def _round(x: float) -> float:
    return float(f"{x:.9g}")


def _check(inputs: dict[str, Any], decisions: Decisions, profile: Profile) -> None:
    if decisions.split_tokens > inputs["seq"]:
        raise KvplanError(f"split_tokens {decisions.split_tokens} exceeds seq {inputs['seq']}")
    if profile.host_is_device and decisions.attention_where == "cpu":
        raise KvplanError("on a CPU-only profile attention runs on the device (the CPU); attention_where must be "
                          "'device'")
    if profile.host_is_device and decisions.activation_placement != "device":
        raise KvplanError("on a CPU-only profile the host is the device; decisions.activation_placement must be "
                          "'device'")


def setting_for(model: ModelConfig, inputs: dict[str, Any], dtype: str, profile: Profile,
                caps: dict[str, int] | None = None) -> Setting:
    caps = caps or {}
    return Setting(
        model=model, dtype=dtype, seq=int(inputs["seq"]), prompt=int(inputs["prompt"]), gen=int(inputs["gen"]),
        host_is_device=profile.host_is_device,
        device_cap_bytes=caps.get("device", 0), host_cap_bytes=caps.get("host", 0),
        disk_cap_bytes=caps.get("disk", 0), objective=str(inputs.get("objective", "throughput")),
    )


def exact_amounts(st: Setting, decisions: Decisions) -> Amounts:
    lay = token_layout(decisions.split_tokens, decisions.x_placement, decisions.kv_placement, st.seq,
                       st.prompt, st.gen, st.context)
    return Amounts(stored=lay.stored, present=lay.present, new_per_step=lay.new_per_step, prefill=lay.prefill,
                   layers=layer_counts(decisions.weight_placement, st.model.num_layers))


def decode_candidates(st: Setting, terms: DecodeTerms, layers: dict[str, int], pr: ExactPricer) -> dict[str, float]:
    """The step is the longest of the overlapped resources (design.md §2), the KVPR chain, and, when
    weights stream, the per-layer pipeline."""
    out = {"compute": terms.compute, "cpu": terms.cpu, "h2d": terms.h2d, "d2h": terms.d2h, "disk": terms.disk,
           "chain": terms.chain}
    if layers["host"] + layers["disk"]:
        out["pipeline"] = pipeline_s(st, terms, layers, pr)
    return out


def evaluate(model: ModelConfig, inputs: dict[str, Any], decisions: Decisions, profile: Profile,
             disk_time_scale: float = 1.0) -> dict[str, Any]:
    """The "prediction" object of `decisions` under `profile`'s full cost models. `disk_time_scale`
    multiplies every disk transfer's time (the planner's what-if for a disk that runs faster or slower
    than profiled: planner/search/refine.py)."""
    _check(inputs, decisions, profile)
    cost = cost_model_for(profile)
    st = setting_for(model, inputs, decisions.dtype, profile)
    L, gen = model.num_layers, st.gen
    combo = Combo(decisions.batch, decisions.gpu_batch, decisions.num_gpu_batches, decisions.attention_where,
                  decisions.activation_placement)
    a = exact_amounts(st, decisions)
    pr = ExactPricer(cost, model, decisions.dtype, disk_time_scale)
    terms = decode_terms(st, combo, cost, a, pr)
    nbytes = decode_terms(st, combo, cost, a, BytePricer())
    candidates = decode_candidates(st, terms, a.layers, pr)
    bound_by = max(candidates, key=lambda r: (candidates[r], r))
    decode_step_s = candidates[bound_by]
    pf = prefill_terms(st, combo, cost, a, pr)
    prefill_s = max(pf.compute, pf.h2d, pf.d2h, pf.disk)
    total_s = prefill_s + gen * decode_step_s
    off = 1 if any(a.stored[p] > 0 for p in ("xh", "xk", "kh", "kk")) else 0
    memory = tier_bytes(st, combo, a.stored, a.layers, off, 1 if a.layers["host"] + a.layers["disk"] else 0)
    busy = {r: getattr(terms, r) for r in RESOURCES}
    link_bytes = {r: getattr(nbytes, r) for r in ("h2d", "disk_read", "d2h", "disk_write")}
    x_present = round(sum(a.present["x" + TIER_INITIAL[t]] for t in TIERS))
    flops, lower = step_flops_and_bound(st, combo, profile, cost, link_bytes, x_present)
    sur_dec, sur_pf = surrogate_times(st, combo, cost, a)
    serial = [["disk_read", "disk_write"]] if busy["disk_read"] > 0 and busy["disk_write"] > 0 else []
    if terms.chain > 0:
        serial.insert(0, ["h2d" if not st.host_is_device else "disk_read", "compute"])
    return {
        "per_layer_busy_s": {r: _round(busy[r] / L) for r in RESOURCES},
        "per_layer_step_s": _round(decode_step_s / L),
        "timeline": {"overlapped": [r for r in RESOURCES if busy[r] > 0], "serial": serial,
                     "chain_s": _round(terms.chain / L), "bound_by": bound_by},
        "decode_step_s": _round(decode_step_s),
        "prefill_s": _round(prefill_s),
        "total_s": _round(total_s),
        "throughput_tokens_per_s": _round(decisions.batch * gen / total_s),
        "decode_throughput_tokens_per_s": _round(decisions.batch / decode_step_s),
        "memory_bytes": {t: int(round(memory[t])) for t in TIERS},
        "link_bytes_per_step": {k: int(round(v)) for k, v in link_bytes.items()},
        "flops_per_step": flops,
        "surrogate_decode_step_s": _round(sur_dec),
        "surrogate_total_s": _round(sur_pf + gen * sur_dec),
        "average_context": _round(st.avg_context),
        "lower_bound": {"step_s": _round(lower[1]), "distance": _round(decode_step_s / lower[1]) if lower[1] > 0
                        else None, "bound_by": lower[0]},
    }


def surrogate_times(st: Setting, combo: Combo, cost: CostModel, a: Amounts) -> tuple[float, float]:
    """The MILP's linear model at these decisions: (decode step, prefill) seconds."""
    values = {p: a.stored[p] / st.seq for p in a.stored}
    values.update({"nd": a.layers["device"], "nh": a.layers["host"], "nk": a.layers["disk"]})
    decode, prefill = linear_terms(st, combo, cost)
    return max(f.at(values) for f in decode.values()), max(f.at(values) for f in prefill.values())


def step_flops_and_bound(st: Setting, combo: Combo, profile: Profile, cost: CostModel,
                         link_bytes: dict[str, float], x_present: int) -> tuple[int, tuple[str, float]]:
    """FLOPs per decode step and the lower bound (bound_by, seconds): the step's own FLOPs over the
    peak, and its own bytes over each memory's and link's best rate (design.md §3); the largest binds."""
    m, dtype = st.model, st.dtype
    L, nb = m.num_layers, combo.num_gpu_batches
    dev_att = combo.attention_where == "device"
    cuda = not st.host_is_device
    fl = decode_flops(m, combo.batch, st.context)
    dev_flops = L * (sum(v for k, v in fl.items() if k != "attention") + (fl["attention"] if dev_att else 0))
    dev_flops += L * recompute_kv_flops(m, combo.batch, x_present)
    cpu_flops = L * fl["attention"] if not dev_att else 0
    peak = profile.device_peak_tflops
    dev_peak = peak.get(dtype, peak.get("float32", min(peak.values()))) * 1e12
    hpeak = profile.host_peak_tflops
    cpu_peak = hpeak.get(dtype, hpeak.get("float32", min(hpeak.values()))) * 1e12

    def link_bound_s(name: str, nbytes: float, *classes: str) -> float:
        """The step's bytes over the link's best rate under the same cost models the prediction uses
        (`name`'s and those of the other disk `classes` it carries), taken at the plan's own transfer
        sizes (one layer's share, or the whole step at once), so the bound never exceeds the plan's
        predicted busy time on that link."""
        if nbytes <= 0:
            return 0.0
        sizes = (nbytes, nbytes / (L * nb))
        best_rate = max(size / cost.transfer_s(n, size) for n in (name, *classes) for size in sizes)
        return nbytes / best_rate

    # Memory bandwidth (design.md §3, the roofline's memory side): every layer's weights are read from
    # device memory once per step (streamed ones after their copy), attention on the device reads the
    # K,V of the context (recomputed ones after they are written), the recompute reads X[0:l]; CPU
    # attention reads the K,V from host memory. The LM head is left out (not in the step's model).
    # Each amount goes at the best rate the profile evidences: its memory bandwidth, or the rate its
    # own cost model gives the ops that move those bytes (a measured profile's fitted GEMMs can beat
    # a loaded machine's measured bandwidth), so the bound never exceeds the prediction.
    def memory_bound_s(nbytes: float, gb_per_s: float, ops_s: float) -> float:
        return min(nbytes / (gb_per_s * 1e9), ops_s) if nbytes > 0 else 0.0

    b, gb, ctx = combo.batch, combo.gpu_batch, st.context
    kv_ctx = L * b * ctx * kv_bytes_per_token(m, dtype)
    proj_s, _ = op_times(cost, m, b, 1, ctx, dtype)
    _, att_s = op_times(cost, m, gb, 1, ctx, dtype)
    bw = profile.device_memory_gb_per_s
    device_s = memory_bound_s(L * layer_weight_bytes(m, dtype), bw, L * proj_s)
    device_s += memory_bound_s(L * b * x_present * x_bytes_per_token(m, dtype), bw,
                               L * nb * recompute_kv_s(cost, m, gb, x_present, dtype))
    device_s += memory_bound_s(kv_ctx, bw, L * nb * att_s) if dev_att else 0.0
    host_s = 0.0
    if cuda and not dev_att:
        host_s = memory_bound_s(kv_ctx, profile.host_memory_gb_per_s, L * cpu_attention_s(cost, m, b, ctx, dtype))
    terms = {
        "compute": dev_flops / dev_peak,
        "device_memory": device_s,
        "host_memory": host_s,
        "cpu": cpu_flops / cpu_peak,
        "h2d": link_bound_s("h2d", link_bytes["h2d"]) if cuda else 0.0,
        "d2h": link_bound_s("d2h", link_bytes["d2h"]) if cuda else 0.0,
        "disk": link_bound_s(KV_READ.name, link_bytes["disk_read"], WEIGHTS_READ.name)
        + link_bound_s("disk_write", link_bytes["disk_write"]),
    }
    by = max(terms, key=lambda r: (terms[r], r))
    return int(dev_flops + cpu_flops), (by, terms[by])
