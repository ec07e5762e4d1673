"""One `kvplan execute` run: checks, setup, prefill, decode steps, summary — as plain data.

The CLI (planner/cli/execute_cmd.py) only parses options and prints; benchmarks call `execute_plan`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from planner.errors import KvplanError
from planner.layer_costs import layer_weight_params
from planner.plan import Plan
from runtime import predict as P
from runtime.executor import Executor, Setup, check_fits
from runtime.measure import RESOURCES, Recorder, summarize
from runtime.model import check_runnable

PREFILL_FLOPS_LIMIT = 2e12  # --fill auto: above this a real prefill would take longer than the run on a CPU


@dataclass(frozen=True)
class RunOptions:
    steps: int | None = None  # decode steps to run (default min(gen, 16))
    layers: int | None = None  # decoder layers to run (default all); times are scaled by L / K
    disk_dir: Path | None = None  # where the disk tier's files go (default: the system temp folder)
    weights_dir: Path | None = None
    profile_path: Path | None = None
    fill: str = "auto"  # "prefill" | "random" | "auto"
    device: str = "auto"  # "cpu" | "cuda" | "auto"
    seed: int = 0
    threads: int | None = None  # torch intra-op threads for the compute thread (default: torch's choice)


def check_plan_against_model(plan: Plan) -> None:
    """Values that contradict the model or each other: one-line errors (plan_from_dict did the schema)."""
    m, d, inputs = plan.model, plan.decisions, plan.data["inputs"]
    check_runnable(m, plan.seq)  # what the runtime's decoder cannot run, before anything is allocated
    if isinstance(inputs.get("dtype"), str) and inputs["dtype"] != d.dtype:
        raise KvplanError(f"plan inputs.dtype {inputs['dtype']!r} contradicts decisions.dtype {d.dtype!r}")
    if isinstance(inputs.get("batch"), int) and not isinstance(inputs["batch"], bool) and inputs["batch"] != d.batch:
        raise KvplanError(f"plan inputs.batch {inputs['batch']} contradicts decisions.batch {d.batch}")
    if m.num_heads * m.head_dim != m.q_dim or (m.family == "opt" and m.head_dim * m.num_heads != m.hidden_size):
        raise KvplanError(f"plan model {m.name}: heads x head_dim does not match hidden_size")
    name = inputs.get("model")
    if isinstance(name, str) and name.lower() != m.name.lower():
        from planner.models import load_model

        try:
            catalog = load_model(name)
        except KvplanError:
            catalog = None
        keys = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "family")
        if catalog is not None and any(getattr(catalog, k) != getattr(m, k) for k in keys):
            raise KvplanError(f"plan inputs.model {name!r} does not match the plan's model architecture ({m.name})")


def pick_device(opt: str) -> str:
    if opt == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if opt == "cuda" and not torch.cuda.is_available():
        raise KvplanError("--device cuda: torch sees no GPU on this machine")
    return opt


def execute_plan(plan: Plan, opts: RunOptions) -> dict[str, Any]:
    """Run the plan; return the full run record (plain data, JSON-ready). torch's thread count is
    restored afterwards (the run may change it)."""
    previous = torch.get_num_threads()
    try:
        return _execute(plan, opts)
    finally:
        torch.set_num_threads(previous)


def _execute(plan: Plan, opts: RunOptions) -> dict[str, Any]:
    check_plan_against_model(plan)
    m, d = plan.model, plan.decisions
    L = m.num_layers
    K = opts.layers or L
    if not 1 <= K <= L:
        raise KvplanError(f"--layers must be in [1, {L}], got {K}")
    gen = max(plan.gen, 1)
    N = opts.steps or min(gen, 16)
    if N < 1 or N > gen:
        raise KvplanError(f"--steps must be in [1, {gen}] (the plan generates {gen} tokens), got {N}")
    device = pick_device(opts.device)
    # run the N steps centred on the plan's average context prompt + (gen-1)/2 (docs/plan-schema.md)
    start = plan.prompt + (gen - N) // 2
    prefill_flops = 2.0 * d.batch * start * layer_weight_params(m) * K
    fill = opts.fill
    if fill == "auto":
        fill = "prefill" if prefill_flops <= PREFILL_FLOPS_LIMIT else "random"
    notes: list[str] = []
    if K < L:
        notes.append(f"--layers {K}: each decode step runs all {L} layers, cycling through {K} stored layers' "
                     f"weights and caches (real I/O and compute per layer, memory of {K} layers, logits not "
                     f"meaningful); prefill ran {K} layers and is scaled by {L}/{K}")
    if fill == "prefill" and start > plan.prompt:
        notes.append(f"prefill of the {plan.prompt}-token prompt is timed; {start - plan.prompt} untimed decode "
                     f"steps then bring the context to {start}")
    if fill == "random":
        notes.append(f"caches filled with random values for positions [0, {start}) instead of a real prefill "
                     "(timing only; use --fill prefill for real tokens)")
    pred = P.choose_prediction(plan, device, opts.profile_path)
    notes.append(pred.source)
    threads = opts.threads
    measured_with = (pred.profile.data.get("measurement") or {}).get("torch_threads") if pred.profile else None
    if threads is None and device == "cpu" and isinstance(measured_with, int) and measured_with >= 1:
        threads = measured_with
        notes.append(f"{threads} torch threads, as the profile {pred.profile.name} was measured with")
    if threads is not None:
        if threads < 1:
            raise KvplanError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    load_before = os.getloadavg()[0]
    own_dir = opts.disk_dir is None
    base = Path(tempfile.gettempdir()) if own_dir else Path(opts.disk_dir)
    if not base.is_dir():
        raise KvplanError(f"--disk-dir {base} is not a folder")
    setup = Setup(model=m, decisions=d, seq=plan.seq, layers=K, device=device, disk_dir=base, seed=opts.seed,
                  weights_dir=opts.weights_dir, virtual_layers=L)
    need = check_fits(setup)
    work = Path(tempfile.mkdtemp(prefix="kvplan-run-", dir=base))
    setup = Setup(model=m, decisions=d, seq=plan.seq, layers=K, device=device, disk_dir=work, seed=opts.seed,
                  weights_dir=opts.weights_dir, virtual_layers=L)
    ex = None
    try:
        ex = Executor(setup)
        gen_t = torch.Generator().manual_seed(opts.seed + 7)
        tokens = torch.randint(0, m.vocab_size, (d.batch, start), generator=gen_t)
        prefill_s = None
        if fill == "prefill":
            # the plan's prompt through a real (timed) prefill, then untimed greedy decode steps up to
            # the first measured position
            t0 = time.perf_counter()
            first = ex.prefill(tokens[:, :plan.prompt]).argmax(-1)
            if device == "cuda":
                torch.cuda.synchronize()
            prefill_s = time.perf_counter() - t0
            if start > plan.prompt:
                ex.decode(plan.prompt, first, start - plan.prompt)
                first = ex.next_tokens
                ex.rec = Recorder(sync=ex.rec.sync)  # forget the catch-up steps
        else:
            ex.fill_random(start, seed=opts.seed)
            first = tokens[:, -1]
        ex.decode(start, first, N)
        direct = ex.direct_io()
        rec = ex.rec
    finally:
        if ex is not None:
            ex.close()
        shutil.rmtree(work, ignore_errors=True)
    if not direct:
        notes.append("O_DIRECT was refused by the file system: buffered I/O with fdatasync + POSIX_FADV_DONTNEED")
    steps_used = list(range(1, N)) if N >= 2 else [0]
    if N >= 2:
        notes.append("step 0 (warm-up) is left out of the means")
    meas = summarize(rec, steps_used, L)
    scale = L / K  # prefill only: it ran K layers
    step_s = meas["layers_wall_s"]  # every step ran all L layers (cycling through K stored ones if K < L)
    measured = {
        "per_layer_busy_s": meas["per_layer_busy_s"],
        "per_step_busy_s": {r: v * L for r, v in meas["per_layer_busy_s"].items()},
        "per_layer_step_s": step_s / L,
        # with 1 torch thread: CPU time the compute thread got during its busy intervals (busy - this =
        # time it was descheduled); with more threads only the calling thread's share is counted
        "per_layer_compute_thread_cpu_s": meas["per_layer_compute_thread_cpu_s"],
        "decode_step_s": step_s,
        "head_s": meas["step_wall_s"] - meas["layers_wall_s"],
        "decode_throughput_tokens_per_s": d.batch / step_s,
        "prefill_s": prefill_s * scale if prefill_s is not None else None,
        "link_bytes_per_step": {r: meas["bytes_per_step"][r] for r in ("h2d", "disk_read", "d2h", "disk_write")},
        "step_wall_s": [rec.step_span_s[s][1] - rec.step_span_s[s][0] for s in range(N)],
    }
    if measured["prefill_s"] is not None:
        measured["total_s"] = measured["prefill_s"] + gen * measured["decode_step_s"]
        measured["throughput_tokens_per_s"] = d.batch * gen / measured["total_s"]
    busiest = max(meas["per_layer_busy_s"][r] for r in RESOURCES)
    measured["overlap"] = {
        "step_over_busiest_resource": step_s / L / busiest if busiest > 0 else None,
        "step_over_plan_lower_bound": (measured["decode_step_s"] / pred.lower_bound["step_s"]
                                       if pred.lower_bound else None),
    }
    bw = {}
    for r in ("disk_read", "disk_write", "h2d", "d2h"):
        busy = meas["per_layer_busy_s"][r]
        if busy > 0:
            bw[r] = meas["bytes_per_step"][r] / L / busy / 1e9
    measured["achieved_gb_per_s"] = bw
    return {
        "plan": {"model": m.name, "seq": plan.seq, "prompt": plan.prompt, "gen": plan.gen,
                 "hardware": plan.data.get("hardware"), "decisions": d.to_dict()},
        "run": {"device": device, "layers_run": K, "layers_total": L, "steps": N, "start_context": start,
                "average_context": start + (N - 1) / 2, "fill": fill, "direct_io": direct,
                "memory_needed_bytes": need, "torch_threads": torch.get_num_threads(),
                "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                "cpu_count": os.cpu_count()},
        "prediction_source": pred.source,
        "profile": pred.profile.name if pred.profile else None,
        "predicted": pred.data,
        "lower_bound": pred.lower_bound,
        "measured": measured,
        "comparison": comparison_rows(pred, measured, meas, L),
        "notes": notes,
    }


def comparison_rows(pred: P.Prediction, measured: dict[str, Any], meas: dict[str, Any],
                    layers: int) -> list[dict[str, Any]]:
    """Predicted vs measured, one row per quantity: {quantity, unit, predicted, measured, gap_pct}."""
    p = pred.data or {}
    rows = []

    def row(name: str, unit: str, predicted: Any, value: Any) -> None:
        if value is None and predicted is None:
            return
        rows.append({"quantity": name, "unit": unit, "predicted": predicted, "measured": value,
                     "gap_pct": P.gap_pct(value, predicted)})

    pb = p.get("per_layer_busy_s", {})
    for r in RESOURCES:
        if pb.get(r) or meas["per_layer_busy_s"][r] > 0:
            row(f"{r} busy per layer", "s", pb.get(r), meas["per_layer_busy_s"][r])
    for r in RESOURCES:
        if pb.get(r) or meas["per_layer_busy_s"][r] > 0:
            row(f"{r} busy per step", "s", pb[r] * layers if pb.get(r) is not None else None,
                measured["per_step_busy_s"][r])
    row("layer time", "s", p.get("per_layer_step_s"), measured["per_layer_step_s"])
    row("decode step (all layers)", "s", p.get("decode_step_s"), measured["decode_step_s"])
    row("decode throughput", "tok/s", p.get("decode_throughput_tokens_per_s"),
        measured["decode_throughput_tokens_per_s"])
    row("prefill", "s", p.get("prefill_s"), measured.get("prefill_s"))
    row("total (prefill + gen steps)", "s", p.get("total_s"), measured.get("total_s"))
    row("throughput", "tok/s", p.get("throughput_tokens_per_s"), measured.get("throughput_tokens_per_s"))
    lb = pred.lower_bound
    if lb:
        row("overlap efficiency (step / lower bound)", "x", lb.get("distance"),
            measured["overlap"]["step_over_plan_lower_bound"])
    # achieved rate = bytes moved per layer / busy time per layer, on both sides: the prediction's own
    # bytes and busy time (small write-backs never reach the link's large-transfer rate)
    for r, gbps in measured["achieved_gb_per_s"].items():
        busy = p.get("per_layer_busy_s", {}).get(r)
        moved = p.get("link_bytes_per_step", {}).get(r)
        predicted = moved / layers / busy / 1e9 if busy and moved and layers else None
        row(f"{r} achieved rate", "GB/s", predicted, gbps)
    return rows
