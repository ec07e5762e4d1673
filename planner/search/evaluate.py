"""Re-predict a fixed decision set with the full cost models (launch costs, link latencies, the
recompute GEMM at its real shape, whole tokens and whole layers): the plan's "prediction".

The structure mirrors planner/search/formulation.py term by term; the cost of each term is exact
instead of linear, and the tokens are laid out by position exactly as the runtime stores them
(planner/plan.py): X for positions [0, l), K,V for [l, seq), each cut into device, host, disk pieces
in that order; a decode step at the average context sees the positions before it, and the new token
of step t is written to the piece that holds position t. (The MILP instead takes every piece to hold
its share avg_context/seq of its tokens, which keeps it linear; docs/planner.md, "Time".)
The runtime (`kvplan execute`) calls `evaluate` to re-predict a plan with the local profile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from planner.costmodel import CostModel
from planner.costmodel.layer_time import layer_op_times_s, recompute_kv_s
from planner.errors import KvplanError
from planner.layer_costs import (
    decode_flops,
    embedding_params,
    kv_bytes_per_token,
    layer_weight_bytes,
    recompute_kv_flops,
    x_bytes_per_token,
)
from planner.models import DTYPE_BYTES, ModelConfig
from planner.plan import TIERS, Decisions
from planner.profile import Profile
from planner.search.formulation import (
    Combo,
    Setting,
    activation_bytes,
    coefficients,
    stream_buffer_bytes,
    surrogate_value,
)

RESOURCES = ("compute", "cpu", "h2d", "disk_read", "d2h", "disk_write")
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


def layer_split(decisions: Decisions, num_layers: int) -> dict[str, int]:
    """Whole layers per tier, as planner/plan.py's placement semantics round them."""
    w = decisions.weight_placement
    nd = round(w["device"] * num_layers)
    nh = round((w["device"] + w["host"]) * num_layers) - nd
    return {"device": nd, "host": nh, "disk": num_layers - nd - nh}


def position_spans(lo: int, hi: int, fractions: dict[str, float]) -> dict[str, tuple[int, int]]:
    """Positions [lo, hi) cut into consecutive device, host, disk pieces in the given proportions
    (planner/plan.py, placement semantics); the last tier takes the rounding remainder."""
    n = hi - lo
    out, acc, start = {}, 0.0, lo
    for tier in TIERS:
        acc += fractions[tier]
        stop = hi if tier == TIERS[-1] else lo + min(n, round(acc * n))
        stop = max(start, stop)
        out[tier] = (start, stop)
        start = stop
    return out


_SHORT = {"device": "d", "host": "h", "disk": "k"}  # the MILP's variable suffixes (formulation.py)


def _overlap(span: tuple[int, int], lo: float, hi: float) -> float:
    return max(0.0, min(span[1], hi) - max(span[0], lo))


@dataclass(frozen=True)
class Layout:
    """Tokens per sequence of each piece ("x"/"k" + tier initial d/h/k), by position."""

    stored: dict[str, int]  # at seq (memory at peak)
    present: dict[str, float]  # at the average context (decode step)
    new_per_step: dict[str, float]  # where the decode steps' new tokens go, averaged over the steps
    prefill: dict[str, int]  # where the prompt's tokens go


def token_layout(decisions: Decisions, seq: int, prompt: int, gen: int, context: int) -> Layout:
    """The runtime's layout (planner/plan.py): X for positions [0, l), K,V for [l, seq), each cut in
    tier order; a decode step at `context` sees positions [0, context); step t writes position t."""
    l_tok = decisions.split_tokens
    spans = {}
    for tier, span in position_spans(0, l_tok, decisions.x_placement).items():
        spans["x" + _SHORT[tier]] = span
    for tier, span in position_spans(l_tok, seq, decisions.kv_placement).items():
        spans["k" + _SHORT[tier]] = span
    return Layout(
        stored={k: v[1] - v[0] for k, v in spans.items()},
        present={k: _overlap(v, 0, context) for k, v in spans.items()},
        new_per_step={k: _overlap(v, prompt, prompt + gen) / gen for k, v in spans.items()},
        prefill={k: int(_overlap(v, 0, prompt)) for k, v in spans.items()},
    )


def _round(x: float) -> float:
    return float(f"{x:.9g}")


def _check(model: ModelConfig, inputs: dict[str, Any], decisions: Decisions, profile: Profile) -> None:
    if decisions.split_tokens > inputs["seq"]:
        raise KvplanError(f"split_tokens {decisions.split_tokens} exceeds seq {inputs['seq']}")
    if profile.host_is_device and decisions.attention_where == "cpu":
        raise KvplanError("on a CPU-only profile attention runs on the device (the CPU); attention_where must be "
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


def evaluate(model: ModelConfig, inputs: dict[str, Any], decisions: Decisions, profile: Profile,
             disk_time_scale: float = 1.0) -> dict[str, Any]:
    """The "prediction" object (docs/plan-schema.md) of `decisions` under `profile`'s full cost models.
    `disk_time_scale` multiplies every disk transfer's time (the planner's what-if for a disk that runs
    faster or slower than profiled: solve.polish_split)."""
    _check(model, inputs, decisions, profile)
    cost = cost_model_for(profile)
    dtype = decisions.dtype
    st = setting_for(model, inputs, dtype, profile)
    L = model.num_layers
    p = DTYPE_BYTES[dtype]
    kvpt = kv_bytes_per_token(model, dtype)
    xpt = x_bytes_per_token(model, dtype)
    W = layer_weight_bytes(model, dtype)
    b, gb, nb = decisions.batch, decisions.gpu_batch, decisions.num_gpu_batches
    seq, prompt, gen = st.seq, st.prompt, st.gen
    ctx = max(1, round(st.avg_context))
    dev_att = decisions.attention_where == "device"
    cuda = not profile.host_is_device
    layers = layer_split(decisions, L)
    lay = token_layout(decisions, seq, prompt, gen, ctx)
    tok, now, new, pre = lay.stored, lay.present, lay.new_per_step, lay.prefill
    x_present = round(now["xd"] + now["xh"] + now["xk"])  # recomputed tokens per sequence

    def xfer(name: str, nbytes: float, count: int = 1) -> float:
        """`count` transfers of `nbytes` each over a link (each pays the link's latency)."""
        if nbytes <= 0 or count <= 0:
            return 0.0
        scale = disk_time_scale if name.startswith("disk") else 1.0
        return count * scale * cost.transfer_s(name, nbytes)

    # ---- decode step (all layers) ---------------------------------------------------------------
    # per layer the projections and the MLP run once over all b rows (the runtime's decode loop: the
    # layer's weights are read once per step), recompute and attention once per GPU batch
    ops = layer_op_times_s(cost, model, b, 1, ctx, dtype, attention_where="device")
    proj_s = sum(v for k, v in ops.items() if k != "attention")
    att_s = cost.attention_s(model, gb, 1, ctx, dtype, where="device")
    rc_s = recompute_kv_s(cost, model, gb, x_present, dtype)
    busy = dict.fromkeys(RESOURCES, 0.0)
    busy["compute"] = L * (proj_s + nb * ((att_s if dev_att else 0.0) + rc_s))
    if not dev_att:
        busy["cpu"] = L * cost.attention_s(model, b, 1, ctx, dtype, where="cpu")
    bytes_step = dict.fromkeys(("h2d", "disk_read", "d2h", "disk_write"), 0.0)
    # per GPU batch and layer, the pieces present at the average context
    kv_h = gb * kvpt * now["kh"]
    kv_k = gb * kvpt * now["kk"]
    x_h = gb * xpt * now["xh"]
    x_k = gb * xpt * now["xk"]
    streamed_layers = layers["host"] + layers["disk"]
    # disk pieces: read from the drive (into host memory on a GPU machine, into RAM on a CPU one)
    busy["disk_read"] = L * nb * (xfer("disk_read", kv_k) + xfer("disk_read", x_k)) + xfer(
        "disk_read", W, layers["disk"])
    bytes_step["disk_read"] = L * nb * (kv_k + x_k) + W * layers["disk"]
    new_kv_h = gb * kvpt * new["kh"]
    new_kv_k = gb * kvpt * new["kk"]
    new_x_h = gb * xpt * new["xh"]
    new_x_k = gb * xpt * new["xk"]
    busy["disk_write"] = L * nb * (xfer("disk_write", new_kv_k) + xfer("disk_write", new_x_k))
    bytes_step["disk_write"] = L * nb * (new_kv_k + new_x_k)
    chain_s = 0.0
    if cuda:
        if dev_att:
            per_gb = [kv_h + kv_k, x_h + x_k]
            busy["h2d"] = L * nb * sum(xfer("h2d", v) for v in per_gb) + xfer("h2d", W, streamed_layers)
            bytes_step["h2d"] = L * nb * sum(per_gb) + W * streamed_layers
            down = [new_kv_h + new_kv_k, new_x_h + new_x_k]
            busy["d2h"] = L * nb * sum(xfer("d2h", v) for v in down)
            bytes_step["d2h"] = L * nb * sum(down)
            x_arrive = xfer("h2d", x_h + x_k) + (xfer("disk_read", x_k) if x_k else 0.0)
        else:
            att_io = gb * model.q_dim * p
            busy["h2d"] = L * nb * xfer("h2d", att_io) + xfer("h2d", W, streamed_layers)
            bytes_step["h2d"] = L * nb * att_io + W * streamed_layers
            busy["d2h"] = L * nb * xfer("d2h", att_io + gb * kvpt)
            bytes_step["d2h"] = L * nb * (att_io + gb * kvpt)
            x_arrive = 0.0
    else:
        x_arrive = xfer("disk_read", x_k) if x_k else 0.0
    if dev_att and x_present > 0:
        chain_s = L * (x_arrive + nb * rc_s)  # KVPR: X arrives, then K,V[0:l] are recomputed
    disk_s = busy["disk_read"] + busy["disk_write"]
    candidates = {r: busy[r] for r in ("compute", "cpu", "h2d", "d2h")}
    candidates["disk"] = disk_s
    candidates["chain"] = chain_s
    if streamed_layers:
        # Streamed weights make layers unequal: the runtime reads a layer's data while the layer
        # before it computes (one layer of read-ahead, FlexGen's per-layer overlap), so each layer
        # takes max(its compute, its own reads) and a layer whose weights cross a link cannot hide
        # them behind the compute of layers further back. The step is the sum over layers of that max
        # (FlexGen's cost model, T = sum over layers of max(compute, load)); with no streamed weights
        # every layer is alike and this equals the max of the totals above.
        disk_kv = (disk_s - xfer("disk_read", W, layers["disk"])) / L  # per layer, without weights
        h2d_kv = (busy["h2d"] - xfer("h2d", W, streamed_layers)) / L
        own = max(busy["compute"], busy["cpu"]) / L

        def layer_s(tier: str) -> float:
            disk_io = disk_kv + (xfer("disk_read", W) if tier == "disk" else 0.0)
            h2d_io = h2d_kv + (xfer("h2d", W) if cuda and tier != "device" else 0.0)
            return max(own, disk_io, h2d_io)

        candidates["pipeline"] = sum(count * layer_s(tier) for tier, count in layers.items() if count)
    bound_by = max(candidates, key=lambda r: (candidates[r], r))
    decode_step_s = candidates[bound_by]

    # ---- prefill --------------------------------------------------------------------------------
    pops = layer_op_times_s(cost, model, gb, prompt, 0, dtype, attention_where="device")
    pf = {"compute": L * nb * sum(pops.values()), "h2d": 0.0, "d2h": 0.0}
    if cuda:
        pf["h2d"] = xfer("h2d", W, streamed_layers)
        pf_down = gb * (kvpt * (pre["kh"] + pre["kk"]) + xpt * (pre["xh"] + pre["xk"]))
        pf["d2h"] = L * nb * xfer("d2h", pf_down)
    pf_disk_w = gb * (kvpt * pre["kk"] + xpt * pre["xk"])
    pf["disk"] = xfer("disk_read", W, layers["disk"]) + L * nb * xfer("disk_write", pf_disk_w)
    prefill_s = max(pf.values())
    total_s = prefill_s + gen * decode_step_s

    # ---- memory at peak -------------------------------------------------------------------------
    combo = Combo(b, gb, nb, decisions.attention_where)
    dev = embedding_params(model) * p + activation_bytes(model, dtype, combo, prompt) + W * layers["device"]
    dev += L * b * (kvpt * tok["kd"] + xpt * tok["xd"])
    if any(tok[t] > 0 for t in ("xh", "xk", "kh", "kk")):
        dev += stream_buffer_bytes(model, dtype, combo, seq)
    if streamed_layers:
        dev += 2 * W
    host = W * layers["host"] + L * b * (kvpt * tok["kh"] + xpt * tok["xh"])
    if cuda and not dev_att:
        host += b * model.num_heads * seq * 4
    disk = W * layers["disk"] + L * b * (kvpt * tok["kk"] + xpt * tok["xk"])
    if not cuda:
        dev += host
        host = 0.0

    # ---- FLOPs, lower bound -----------------------------------------------------------------------
    fl = decode_flops(model, b, ctx)
    dev_flops = L * (sum(v for k, v in fl.items() if k != "attention") + (fl["attention"] if dev_att else 0))
    dev_flops += L * recompute_kv_flops(model, b, x_present)
    cpu_flops = L * fl["attention"] if not dev_att else 0
    peak = profile.device_peak_tflops
    dev_peak = peak.get(dtype, peak.get("float32", min(peak.values()))) * 1e12
    hpeak = profile.host_peak_tflops
    cpu_peak = hpeak.get(dtype, hpeak.get("float32", min(hpeak.values()))) * 1e12
    def link_bound_s(name: str, nbytes: float) -> float:
        """The step's bytes over the link's best rate under the same cost model the prediction uses,
        taken at the plan's own transfer sizes (one layer's share, or the whole step at once), so the
        bound never exceeds the plan's predicted busy time on that link."""
        if nbytes <= 0:
            return 0.0
        sizes = (nbytes, nbytes / (L * nb))
        best_rate = max(size / cost.transfer_s(name, size) for size in sizes)
        return nbytes / best_rate

    bound_terms = {
        "compute": dev_flops / dev_peak,
        "cpu": cpu_flops / cpu_peak,
        "h2d": link_bound_s("h2d", bytes_step["h2d"]) if cuda else 0.0,
        "d2h": link_bound_s("d2h", bytes_step["d2h"]) if cuda else 0.0,
        "disk": link_bound_s("disk_read", bytes_step["disk_read"])
        + link_bound_s("disk_write", bytes_step["disk_write"]),
    }
    lb_by = max(bound_terms, key=lambda r: (bound_terms[r], r))
    lb_s = bound_terms[lb_by]

    # ---- surrogate (the MILP's linear model) at the same decisions --------------------------------
    co = coefficients(st, combo, cost, profile)
    values = {t: tok[t] / seq for t in tok}
    values.update({"nd": layers["device"], "nh": layers["host"], "nk": layers["disk"]})
    sur = surrogate_value(co, values)

    overlapped = [r for r in RESOURCES if busy[r] > 0]
    serial = [["disk_read", "disk_write"]] if busy["disk_read"] > 0 and busy["disk_write"] > 0 else []
    if chain_s > 0:
        serial.insert(0, ["h2d" if cuda else "disk_read", "compute"])
    return {
        "per_layer_busy_s": {r: _round(busy[r] / L) for r in RESOURCES},
        "per_layer_step_s": _round(decode_step_s / L),
        "timeline": {
            "overlapped": overlapped,
            "serial": serial,
            "chain_s": _round(chain_s / L),
            "bound_by": bound_by,
        },
        "decode_step_s": _round(decode_step_s),
        "prefill_s": _round(prefill_s),
        "total_s": _round(total_s),
        "throughput_tokens_per_s": _round(b * gen / total_s),
        "decode_throughput_tokens_per_s": _round(b / decode_step_s),
        "memory_bytes": {"device": int(round(dev)), "host": int(round(host)), "disk": int(round(disk))},
        "link_bytes_per_step": {k: int(round(v)) for k, v in bytes_step.items()},
        "flops_per_step": int(dev_flops + cpu_flops),
        "surrogate_decode_step_s": _round(sur["T_dec"]),
        "surrogate_total_s": _round(sur["T_pf"] + gen * sur["T_dec"]),
        "average_context": _round(st.avg_context),
        "lower_bound": {"step_s": _round(lb_s), "distance": _round(decode_step_s / lb_s) if lb_s > 0 else None,
                        "bound_by": lb_by},
    }
