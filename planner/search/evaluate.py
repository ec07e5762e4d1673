"""Re-predict a fixed decision set with the full cost models (launch costs, link latencies, the
recompute GEMM at its real shape, whole tokens and whole layers): the plan's "prediction".

The structure mirrors planner/search/formulation.py term by term; only the cost of each term is
exact instead of linear. The runtime (`kvplan execute`) calls `evaluate` to re-predict a plan with
the local profile.
"""

from __future__ import annotations

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
from planner.plan import Decisions
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


def token_split(decisions: Decisions, seq: int) -> dict[str, float]:
    """Tokens per sequence (at seq) of X and K,V on each tier, as the fraction variables of the MILP."""
    l_tok = decisions.split_tokens
    kv_tok = seq - l_tok
    out = {}
    for tier, short in (("device", "d"), ("host", "h"), ("disk", "k")):
        out["x" + short] = l_tok * decisions.x_placement[tier]
        out["k" + short] = kv_tok * decisions.kv_placement[tier]
    return out


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


def evaluate(model: ModelConfig, inputs: dict[str, Any], decisions: Decisions, profile: Profile) -> dict[str, Any]:
    """The "prediction" object (docs/plan-schema.md) of `decisions` under `profile`'s full cost models."""
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
    share = st.share
    ctx = max(1, round(st.avg_context))
    dev_att = decisions.attention_where == "device"
    cuda = not profile.host_is_device
    layers = layer_split(decisions, L)
    tok = token_split(decisions, seq)
    x_present = round((tok["xd"] + tok["xh"] + tok["xk"]) * share)  # recomputed tokens per sequence
    link = profile.links

    def xfer(name: str, nbytes: float, count: int = 1) -> float:
        """`count` transfers of `nbytes` each over a link (each pays the link's latency)."""
        if nbytes <= 0 or count <= 0:
            return 0.0
        return count * cost.transfer_s(name, nbytes)

    # ---- decode step (all layers) ---------------------------------------------------------------
    ops = layer_op_times_s(cost, model, gb, 1, ctx, dtype, attention_where="device")
    proj_s = sum(v for k, v in ops.items() if k != "attention")
    rc_s = recompute_kv_s(cost, model, gb, x_present, dtype)
    busy = dict.fromkeys(RESOURCES, 0.0)
    busy["compute"] = L * nb * (proj_s + (ops["attention"] if dev_att else 0.0) + rc_s)
    if not dev_att:
        busy["cpu"] = L * cost.attention_s(model, b, 1, ctx, dtype, where="cpu")
    bytes_step = dict.fromkeys(("h2d", "disk_read", "d2h", "disk_write"), 0.0)
    # per GPU batch and layer, the pieces present at the average context
    kv_h = gb * kvpt * tok["kh"] * share
    kv_k = gb * kvpt * tok["kk"] * share
    x_h = gb * xpt * tok["xh"] * share
    x_k = gb * xpt * tok["xk"] * share
    streamed_layers = layers["host"] + layers["disk"]
    # disk pieces: read from the drive (into host memory on a GPU machine, into RAM on a CPU one)
    busy["disk_read"] = L * nb * (xfer("disk_read", kv_k) + xfer("disk_read", x_k)) + xfer(
        "disk_read", W, layers["disk"])
    bytes_step["disk_read"] = L * nb * (kv_k + x_k) + W * layers["disk"]
    frac_new = {t: tok[t] / seq for t in tok}  # share of each step's new tokens stored on each piece
    new_kv_h = gb * kvpt * frac_new["kh"]
    new_kv_k = gb * kvpt * frac_new["kk"]
    new_x_h = gb * xpt * frac_new["xh"]
    new_x_k = gb * xpt * frac_new["xk"]
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
    bound_by = max(candidates, key=lambda r: (candidates[r], r))
    decode_step_s = candidates[bound_by]

    # ---- prefill --------------------------------------------------------------------------------
    pops = layer_op_times_s(cost, model, gb, prompt, 0, dtype, attention_where="device")
    pf = {"compute": L * nb * sum(pops.values()), "h2d": 0.0, "d2h": 0.0}
    if cuda:
        pf["h2d"] = xfer("h2d", W, streamed_layers)
        pf_down = gb * prompt * (kvpt * (frac_new["kh"] + frac_new["kk"]) + xpt * (frac_new["xh"] + frac_new["xk"]))
        pf["d2h"] = L * nb * xfer("d2h", pf_down)
    pf_disk_w = gb * prompt * (kvpt * frac_new["kk"] + xpt * frac_new["xk"])
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
    bound_terms = {
        "compute": dev_flops / dev_peak,
        "cpu": cpu_flops / cpu_peak,
        "h2d": bytes_step["h2d"] / (link["h2d"].gb_per_s * 1e9) if cuda else 0.0,
        "d2h": bytes_step["d2h"] / (link["d2h"].gb_per_s * 1e9) if cuda else 0.0,
        "disk": bytes_step["disk_read"] / (link["disk_read"].gb_per_s * 1e9)
        + bytes_step["disk_write"] / (link["disk_write"].gb_per_s * 1e9),
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
