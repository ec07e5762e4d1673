"""One `kvplan execute` run: checks, setup, prefill, decode steps, summary — as plain data.

The CLI (planner/cli/execute_cmd.py) only parses options and prints; benchmarks call `execute_plan`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from planner.errors import KvplanError
from planner.layer_costs import layer_weight_params
from planner.plan import Plan
from runtime import check as C
from runtime import predict as P
from runtime.executor import Executor, Setup, check_fits
from runtime.measure import RESOURCES, Recorder, summarize
from runtime.model import check_runnable

PREFILL_FLOPS_LIMIT = 2e12  # --fill auto: above this a real prefill would take longer than the run on a CPU


@dataclass(frozen=True)
class RunOptions:
    steps: int | None = None  # decode steps to run (default min(gen, 16))
    # decoder layers to store (default all): every step still runs all L, cycling through the K stored
    # ones; only a prefill (K layers) is scaled by L / K
    layers: int | None = None
    disk_dir: Path | None = None  # where the disk tier's files go (default: the system temp folder)
    weights_dir: Path | None = None
    profile_path: Path | None = None
    fill: str = "auto"  # "prefill" | "random" | "auto"
    device: str = "auto"  # "cpu" | "cuda" | "auto"
    seed: int = 0
    threads: int | None = None  # torch intra-op threads (default: the profile's, else torch's default)
    progress: Callable[[str], None] | None = None  # one line per phase and per decode step (the CLI: stderr)
    check: bool = True  # time a few of the plan's ops against the profile first (runtime/check.py)


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


@dataclass(frozen=True)
class Shape:
    """What a run does: K stored layers cycled through all L, N decode steps from context `start`,
    the caches filled by a real prefill or with random values."""
    layers: int
    steps: int
    start: int
    fill: str


def _shape(plan: Plan, opts: RunOptions) -> Shape:
    """The run's shape from the options, each refused with a one-line error before anything is allocated."""
    L = plan.model.num_layers
    K = L if opts.layers is None else opts.layers
    if not 1 <= K <= L:
        raise KvplanError(f"--layers must be in [1, {L}], got {K}")
    gen = max(plan.gen, 1)
    N = min(gen, 16) if opts.steps is None else opts.steps
    if N < 1 or N > gen:
        raise KvplanError(f"--steps must be in [1, {gen}] (the plan generates {gen} tokens), got {N}")
    if opts.threads is not None and opts.threads < 1:
        raise KvplanError(f"--threads must be at least 1, got {opts.threads}")
    # run the N steps centred on the plan's average context prompt + (gen-1)/2 (docs/plan-schema.md)
    start = plan.prompt + (gen - N) // 2
    fill = opts.fill
    if fill == "auto":
        prefill_flops = 2.0 * plan.decisions.batch * start * layer_weight_params(plan.model) * K
        fill = "prefill" if prefill_flops <= PREFILL_FLOPS_LIMIT else "random"
    return Shape(K, N, start, fill)


def _shape_notes(plan: Plan, sh: Shape) -> list[str]:
    L, K = plan.model.num_layers, sh.layers
    notes = []
    if K < L:
        prefill = f"; prefill ran {K} layers and is scaled by {L}/{K}" if sh.fill == "prefill" else ""
        notes.append(f"--layers {K}: each decode step runs all {L} layers, cycling through {K} stored layers' "
                     f"weights and caches (real I/O and compute per layer, memory of {K} layers, logits not "
                     f"meaningful){prefill}")
    if sh.fill == "prefill" and sh.start > plan.prompt:
        notes.append(f"prefill of the {plan.prompt}-token prompt is timed; {sh.start - plan.prompt} untimed decode "
                     f"steps then bring the context to {sh.start}")
    if sh.fill == "random":
        notes.append(f"caches filled with random values for positions [0, {sh.start}) instead of a real prefill "
                     "(timing only; use --fill prefill for real tokens)")
    return notes


def _set_threads(opts: RunOptions, device: str, pred: P.Prediction) -> str:
    """torch's thread count for the run, and the note that says where it comes from."""
    measured_with = (pred.profile.data.get("measurement") or {}).get("torch_threads") if pred.profile else None
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
        return f"{opts.threads} torch threads (--threads)"
    if device == "cpu" and isinstance(measured_with, int) and measured_with >= 1:
        torch.set_num_threads(measured_with)
        return f"{measured_with} torch threads, as the profile {pred.profile.name} was measured with"
    return f"{torch.get_num_threads()} torch threads (torch's default here; --threads to change)"


PREDICTION_WITH_RATIOS = ("decode_step_s", "per_layer_step_s", "per_layer_busy_s", "prefill_s", "total_s",
                          "decode_throughput_tokens_per_s")


def _machine_check(plan: Plan, sh: Shape, device: str, pred: P.Prediction, base: Path, opts: RunOptions,
                   notes: list[str]) -> dict[str, Any] | None:
    """The machine check (runtime/check.py) against the prediction's profile, before the run, and the
    prediction re-made with the profile's models scaled by its ratios; a note says why when it is skipped."""
    if not opts.check:
        notes.append("machine check skipped (--no-check)")
        return None
    if pred.profile is None:
        notes.append("machine check skipped: no profile to check this machine against")
        return None
    (opts.progress or (lambda _line: None))("machine check: timing a few of the plan's ops against the profile ...")
    d = P.as_run_on(plan.decisions, pred.profile)
    where = C.Where(device, device if d.attention_where == "device" else "cpu", d.attention_where)
    path = Path(opts.profile_path) if opts.profile_path is not None else P.find_local_profile()
    check = C.machine_check(plan, d, pred.profile, where, round(sh.start + (sh.steps - 1) / 2), base, path)
    scaled = C.scaled_profile(pred.profile, check, d, where) if pred.data else None
    if scaled is not None:
        try:
            again = P.repredict(plan, scaled[0])
        except KvplanError:
            again = None
        if again is not None:
            check["predicted_with_ratios"] = {k: again[k] for k in PREDICTION_WITH_RATIOS if k in again}
            check["ratios_applied_to"] = scaled[1]
    return check


@dataclass
class Ran:
    rec: Recorder
    prefill_s: float | None
    direct_io: bool


def _run(plan: Plan, opts: RunOptions, sh: Shape, setup: Setup) -> Ran:
    """Load, fill the caches (prefill or random), run the measured decode steps."""
    m, d, say = plan.model, plan.decisions, opts.progress or (lambda _line: None)
    ex = None
    try:
        say(f"loading {sh.layers} layers' weights and caches ({m.name}, batch {d.batch}, seq {plan.seq}) ...")
        ex = Executor(setup)
        tokens = torch.randint(0, m.vocab_size, (d.batch, sh.start), generator=torch.Generator().manual_seed(
            opts.seed + 7))
        prefill_s = None
        if sh.fill == "prefill":
            # the plan's prompt through a real (timed) prefill, then untimed greedy decode steps up to
            # the first measured position
            say(f"prefill: {plan.prompt}-token prompt through {sh.layers} layers ...")
            t0 = time.perf_counter()
            first = ex.prefill(tokens[:, :plan.prompt]).argmax(-1)
            if setup.device == "cuda":
                torch.cuda.current_stream().synchronize()
            prefill_s = time.perf_counter() - t0
            say(f"prefill: {prefill_s:.2f} s")
            if sh.start > plan.prompt:
                say(f"{sh.start - plan.prompt} untimed decode steps to context {sh.start} ...")
                ex.decode(plan.prompt, first, sh.start - plan.prompt)
                first = ex.next_tokens
                ex.reset_timings()  # forget the catch-up steps
        else:
            say(f"filling the caches with random values for positions [0, {sh.start}) ...")
            ex.fill_random(sh.start, seed=opts.seed)
            first = tokens[:, -1]
        ex.decode(sh.start, first, sh.steps, on_step=lambda step, wall_s: say(
            f"decode step {step + 1}/{sh.steps} (context {sh.start + step}): {wall_s * 1e3:.1f} ms"
            + (" (warm-up, left out)" if step == 0 and sh.steps >= 2 else "")))
        return Ran(ex.rec, prefill_s, ex.direct_io())
    finally:
        if ex is not None:
            ex.close()


def _execute(plan: Plan, opts: RunOptions) -> dict[str, Any]:
    check_plan_against_model(plan)
    m, d = plan.model, plan.decisions
    sh = _shape(plan, opts)
    device = pick_device(opts.device)
    notes = _shape_notes(plan, sh)
    pred = P.choose_prediction(plan, device, opts.profile_path)
    notes.append(pred.source)
    notes.append(_set_threads(opts, device, pred))
    load_before = os.getloadavg()[0]
    base = Path(tempfile.gettempdir()) if opts.disk_dir is None else Path(opts.disk_dir)
    if not base.is_dir():
        raise KvplanError(f"--disk-dir {base} is not a folder")
    setup = Setup(model=m, decisions=d, seq=plan.seq, layers=sh.layers, device=device, disk_dir=base,
                  seed=opts.seed, weights_dir=opts.weights_dir, virtual_layers=m.num_layers)
    need = check_fits(setup)
    check = _machine_check(plan, sh, device, pred, base, opts, notes)
    work = Path(tempfile.mkdtemp(prefix="kvplan-run-", dir=base))
    try:
        ran = _run(plan, opts, sh, dataclasses.replace(setup, disk_dir=work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not ran.direct_io:
        notes.append("O_DIRECT was refused by the file system: buffered I/O with fdatasync + POSIX_FADV_DONTNEED")
    steps_used = list(range(1, sh.steps)) if sh.steps >= 2 else [0]
    if sh.steps >= 2:
        notes.append("step 0 (warm-up) is left out of the means")
    meas = summarize(ran.rec, steps_used, m.num_layers)
    measured = _measured(plan, sh, ran, meas, pred)
    run_info = {"device": device, "layers_run": sh.layers, "layers_total": m.num_layers, "steps": sh.steps,
                "start_context": sh.start, "average_context": sh.start + (sh.steps - 1) / 2, "fill": sh.fill,
                "direct_io": ran.direct_io, "memory_needed_bytes": need, "torch_threads": torch.get_num_threads(),
                "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                "cpu_count": os.cpu_count()}
    run_info["warnings"] = contention_warnings(run_info, measured, steps_used) + (check or {}).get("warnings", [])
    return {
        "plan": {"model": m.name, "seq": plan.seq, "prompt": plan.prompt, "gen": plan.gen,
                 "hardware": plan.data.get("hardware"), "decisions": d.to_dict()},
        "run": run_info,
        "prediction_source": pred.source,
        "profile": pred.profile.name if pred.profile else None,
        "predicted": pred.data,
        "lower_bound": pred.lower_bound,
        "measured": measured,
        "comparison": comparison_rows(pred, measured, meas, m.num_layers),
        "notes": notes,
        "machine_check": check,
    }


def _measured(plan: Plan, sh: Shape, ran: Ran, meas: dict[str, Any], pred: P.Prediction) -> dict[str, Any]:
    """The run record's "measured" object: means over the measured steps (runtime/measure.py)."""
    L, gen, batch = plan.model.num_layers, max(plan.gen, 1), plan.decisions.batch
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
        "decode_throughput_tokens_per_s": batch / step_s,
        # a prefill ran the K stored layers once: scaled to all L (it is not pipelined)
        "prefill_s": ran.prefill_s * L / sh.layers if ran.prefill_s is not None else None,
        "link_bytes_per_step": {r: meas["bytes_per_step"][r] for r in ("h2d", "disk_read", "d2h", "disk_write")},
        "step_wall_s": [ran.rec.step_span_s[s][1] - ran.rec.step_span_s[s][0] for s in range(sh.steps)],
    }
    if measured["prefill_s"] is not None:
        measured["total_s"] = measured["prefill_s"] + gen * measured["decode_step_s"]
        measured["throughput_tokens_per_s"] = batch * gen / measured["total_s"]
    busiest = max(meas["per_layer_busy_s"][r] for r in RESOURCES)
    measured["overlap"] = {
        "step_over_busiest_resource": step_s / L / busiest if busiest > 0 else None,
        "step_over_plan_lower_bound": (measured["decode_step_s"] / pred.lower_bound["step_s"]
                                       if pred.lower_bound else None),
    }
    measured["achieved_gb_per_s"] = {
        r: meas["bytes_per_step"][r] / L / meas["per_layer_busy_s"][r] / 1e9
        for r in ("disk_read", "disk_write", "h2d", "d2h") if meas["per_layer_busy_s"][r] > 0}
    return measured


CPU_SHARE_MIN = 0.8  # below this share of its busy time on a CPU, the compute thread was crowded out
STEP_SPREAD_MAX = 1.5  # slowest / fastest measured step above this: the run was disturbed


def contention_warnings(run: dict[str, Any], measured: dict[str, Any], steps_used: list[int]) -> list[str]:
    """Why this run's timings may not be evidence: a load average above the CPU count (before or after
    the run), the compute thread descheduled for part of its busy time (with one torch thread, where
    its CPU time is the whole compute), or measured steps far apart."""
    out = []
    cpus = run["cpu_count"] or 1
    load = max(run["load_average_1min"])
    if load > cpus:
        out.append(f"load average {load:.2f} on {cpus} CPUs: other processes competed for the CPUs")
    busy = measured["per_layer_busy_s"]["compute"]
    if run["torch_threads"] == 1 and busy > 0:
        share = measured["per_layer_compute_thread_cpu_s"] / busy
        if share < CPU_SHARE_MIN:
            out.append(f"the compute thread ran only {100 * share:.0f}% of its busy time (it waited for a CPU "
                       "the rest)")
    walls = [measured["step_wall_s"][s] for s in steps_used]
    if len(walls) >= 2 and min(walls) > 0 and max(walls) / min(walls) > STEP_SPREAD_MAX:
        out.append(f"measured steps ranged from {1e3 * min(walls):.1f} to {1e3 * max(walls):.1f} ms")
    return out


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
