"""`kvplan explain plan.json`: the plan for a human — what goes where, why, and the timeline."""

from __future__ import annotations

from typing import Any

import click

from planner.cli.plan_text import batch_text, batch_word, gain_lines
from planner.errors import KvplanError
from planner.hardware import parts_line, provenance_line
from planner.layer_costs import kv_bytes_per_token, layer_weight_bytes, recompute_saves_bytes, x_bytes_per_token
from planner.placement import layer_counts
from planner.plan import load_plan
from planner.units import escape_name, format_bytes, format_seconds

BAR_WIDTH = 40
RESOURCE_WORDS = {
    "compute": "device compute (projections, attention on device, K,V recompute)",
    "cpu": "host CPU (attention next to the K,V)",
    "h2d": "host -> device link (streamed weights, K,V, X)",
    "disk_read": "disk reads",
    "d2h": "device -> host link (new token's K,V / X written back)",
    "disk_write": "disk writes",
    "chain": "KVPR chain: X arrives, then K,V[0:l] are recomputed",
    "disk": "the drive (reads + writes share it)",
    "pipeline": "layer by layer: streamed weights cannot hide behind other layers' compute",
    "device_memory": "device memory bandwidth (weights, K,V and X read each step)",
    "host_memory": "host memory bandwidth (CPU attention reads the K,V)",
}


def _bar(value: float, longest: float) -> str:
    n = 0 if longest <= 0 else round(BAR_WIDTH * value / longest)
    return "#" * n + "." * (BAR_WIDTH - n)


def _need(data: dict[str, Any], *path: str) -> Any:
    obj: Any = data
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            raise KvplanError(f"plan has no '{'.'.join(path)}': was it written by 'kvplan solve'?")
        obj = obj[key]
    return obj


def explain_lines(plan_data: dict[str, Any], model, seq: int, prompt: int, gen: int, decisions) -> list[str]:
    d = decisions
    pred = _need(plan_data, "prediction")
    hw = _need(plan_data, "hardware")
    inputs = _need(plan_data, "inputs")
    L = model.num_layers
    out: list[str] = []
    out.append(f"Plan: {model.name} on {hw['profile_name']} ({hw['device_name']}, {hw['profile_kind']} profile "
               f"{hw['profile_hash']})")
    if hw.get("parts"):  # plans written before profiles had parts have none
        out.append(f"  hardware parts: {parts_line(hw)}")
        if provenance_line(hw):
            out.append(f"  {provenance_line(hw)}")
    out.append(f"  context {seq} tokens = prompt {prompt} + gen {gen}; objective {inputs['objective']}; strategy "
               f"asked {inputs['strategy']}, chosen {d.strategy}; dtype {d.dtype}")
    out.append("")
    out.append("What goes where")
    layers = layer_counts(d.weight_placement, L)
    W = layer_weight_bytes(model, d.dtype)
    cpu_only = hw.get("device_type") == "cpu"
    out.append(f"  {batch_text(d.batch, d.gpu_batch, d.num_gpu_batches, cpu_only)}; each layer's weights are "
               f"loaded once per block of {d.num_gpu_batches} {batch_word(cpu_only)}(es)")
    out.append("  weights: " + ", ".join(f"{layers[t]} layers on {t} ({format_bytes(layers[t] * W)})"
                                        for t in ("device", "host", "disk") if layers[t]))
    kvpt = kv_bytes_per_token(model, d.dtype)
    xpt = x_bytes_per_token(model, d.dtype)
    l_tok = d.split_tokens
    if l_tok:
        out.append(f"  tokens [0, {l_tok}) of every sequence are kept as their layer inputs X and their K,V are "
                   f"recomputed each step (KVPR): X " + _tier_text(d.x_placement, L * d.batch * l_tok * xpt))
    kv_tokens = seq - l_tok
    if kv_tokens:
        out.append(f"  tokens [{l_tok}, {seq}) are kept as K,V: " + _tier_text(d.kv_placement,
                                                                           L * d.batch * kv_tokens * kvpt))
    out.append(f"  attention runs on the {'device' if d.attention_where == 'device' else 'host CPU'}")
    if d.activation_placement == "host":
        out.append(f"  the hidden states between layers live in host memory: each {batch_word(cpu_only)}'s cross the "
                   "link into every layer and back out (FlexGen's activation placement)")
    else:
        out.append("  the hidden states between layers stay on the device")
    ratio = 2 * model.kv_dim / model.hidden_size
    if recompute_saves_bytes(model):
        out.append(f"  X is {1 / ratio:.2f}x the size of K,V for this model (h={model.hidden_size}, "
                   f"h_kv={model.kv_dim}): recomputing saves link bytes")
    else:
        out.append(f"  X is {1 / ratio:.2f}x the size of K,V for this model (GQA, h={model.hidden_size}, "
                   f"h_kv={model.kv_dim}): recomputing cannot save link bytes, so the planner does not")
    out.append("")
    tl = pred.get("timeline", {})
    busy = pred.get("per_layer_busy_s", {})
    bound_by = tl.get("bound_by", "?")
    out.append(f"Why: one decode step at the average context ({pred.get('average_context', '?')} tokens) takes "
               f"{format_seconds(pred['decode_step_s'])}, bound by {RESOURCE_WORDS.get(bound_by, bound_by)}")
    out.extend("  " + r for r in _reasons(d, layers, busy, pred["per_layer_step_s"], cpu_only))
    out.append("Per-layer timeline (one layer of one decode step; layer time "
               f"{format_seconds(pred['per_layer_step_s'])})")
    rows = dict(busy)
    if tl.get("chain_s"):
        rows["chain"] = tl["chain_s"]
    longest = max([pred["per_layer_step_s"], *rows.values()])
    for name, value in rows.items():
        if value <= 0:
            continue
        mark = "  <- sets the step" if name == bound_by or (bound_by == "disk" and name.startswith("disk")) else ""
        busy_pct = 100 * value / pred["per_layer_step_s"] if pred["per_layer_step_s"] > 0 else 0.0
        out.append(f"  {name:<10} {_bar(value, longest)} {format_seconds(value):>14} {busy_pct:5.0f}% busy{mark}")
    overl = tl.get("overlapped", [])
    if len(overl) > 1:
        out.append(f"  overlapped (run at the same time): {', '.join(overl)}")
    for a, b in tl.get("serial", []):
        out.append(f"  serial: {a} then {b}" if (a, b) != ("disk_read", "disk_write")
                   else "  serial: disk reads and writes share one drive")
    out.append(f"  prefill {format_seconds(pred['prefill_s'])}; total {format_seconds(pred['total_s'])} for {gen} "
               "tokens; "
               f"throughput {pred['throughput_tokens_per_s']:.2f} tok/s "
               f"(decode only {pred['decode_throughput_tokens_per_s']:.2f})")
    if "surrogate_decode_step_s" in pred:
        out.append(f"  the MILP's linear model said {format_seconds(pred['surrogate_decode_step_s'])} per step; "
                   f"the full cost models say {format_seconds(pred['decode_step_s'])}")
    hedge = plan_data.get("solver", {}).get("split_hedge")
    if hedge:
        fast, _, slow = hedge["disk_time_scales"]
        out.append(f"  the split {l_tok} is hedged: the profile's disk ran at x{fast:g} .. x{slow:g} of its fitted "
                   f"time between rounds; over those rates this split is at most {hedge['worst_regret_pct']:.1f}% "
                   f"slower than the best split for each, where the best split at the profiled rate "
                   f"({hedge['nominal_split_tokens']}) could be {hedge['nominal_worst_regret_pct']:.1f}% slower")
    out.append("")
    out.append("Memory at peak")
    usable = plan_data.get("solver", {}).get("usable_bytes", {})
    for tier, value in pred.get("memory_bytes", {}).items():
        cap = usable.get(tier)
        extra = f" of {format_bytes(cap)} usable" if cap else ""
        out.append(f"  {tier:<7} {format_bytes(value):>12}{extra}")
    links = pred.get("link_bytes_per_step", {})
    moved = ", ".join(f"{k} {format_bytes(v)}" for k, v in links.items() if v)
    out.append(f"  bytes moved per decode step: {moved or 'none'}")
    lb = plan_data.get("lower_bound", {})
    if lb.get("step_s"):
        out.append(f"Lower bound: {format_seconds(lb['step_s'])} per step, bound by "
                   f"{RESOURCE_WORDS.get(lb['bound_by'], lb['bound_by'])} (the plan's own bytes over each memory's "
                   f"and link's bandwidth, or FLOPs over the peak); the plan is at {lb['distance']:.2f}x of it")
    base = plan_data.get("baselines", {})
    if base:
        out.append("")
        out.append("Pinned strategies (the same MILP with one strategy forced)")
        for name, b in base.items():
            if b.get("feasible"):
                out.append(f"  {name:<14} step {format_seconds(b['decode_step_s']):>14}  throughput "
                           f"{b['throughput_tokens_per_s']:10.2f} tok/s  batch {b['batch']}")
            else:
                out.append(f"  {name:<14} infeasible: {b.get('reason', '?')}")
        out += [line.replace("  gain vs ", "  this plan's gain vs ", 1) for line in gain_lines(pred, "  ")]
    for w in plan_data.get("warnings", []):
        out.append(f"Warning: {w}")
    return out


def _reasons(d, layers: dict[str, int], busy: dict[str, float], layer_s: float, cpu_only: bool) -> list[str]:
    """Plain sentences for the choices the plan made, from its decisions and its busy times."""
    out = []
    streamed = layers["host"] + layers["disk"]
    if streamed:
        out.append(f"the weights do not all fit next to the rest: {streamed} layers stream in every step, "
                   f"loaded once per block of {d.num_gpu_batches} {batch_word(cpu_only)}(es)")
    if d.attention_where == "cpu":
        out.append("attention runs next to the K,V in host memory: only q and the attention output cross the link, "
                   "the host CPU does the attention")
    elif d.split_tokens and busy.get("compute", 0) > 0:
        link = max(busy.get("h2d", 0.0), busy.get("disk_read", 0.0))
        if link > 0 and d.x_placement["device"] < 0.5:
            out.append(f"recomputing the first {d.split_tokens} tokens moves work from the link to the device; at "
                       f"this split the device is {100 * busy['compute'] / layer_s:.0f}% busy and the link "
                       f"{100 * link / layer_s:.0f}%")
        else:
            out.append(f"the first {d.split_tokens} tokens are kept as X on the device (smaller than their K,V) and "
                       "recomputed, which leaves device memory for more of the K,V")
    elif d.kv_placement["device"] == 1.0 and d.split_tokens == 0:
        out.append("all K,V stays on the device: nothing crosses the link for attention")
    elif d.kv_placement["device"] == 0.0:
        out.append("all K,V lives off the device and crosses the link every step")
    return out


def _tier_text(frac: dict[str, float], total_bytes: float) -> str:
    parts = [f"{100 * frac[t]:.1f}% on {t} ({format_bytes(frac[t] * total_bytes)})"
             for t in ("device", "host", "disk") if frac[t] > 0]
    return ", ".join(parts)


@click.command("explain")
@click.argument("plan_file", type=click.Path(dir_okay=False))
def command(plan_file: str) -> None:
    """Explain PLAN_FILE for a human: what goes where, why, and the per-layer timeline."""
    plan = load_plan(plan_file)
    for line in explain_lines(plan.data, plan.model, plan.seq, plan.prompt, plan.gen, plan.decisions):
        click.echo(escape_name(line))  # names from the plan file: control characters shown escaped
