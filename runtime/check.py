"""`kvplan execute`'s machine check: is this machine still the one its profile measured?

A profile is a snapshot: on a shared or virtual machine the CPU's speed drifts between hours and the
disk's between minutes (docs/validation.md), so a run compared with a day-old profile can show a gap
that is the machine's drift, not the plan's model. Before the decode steps the check times a few of
the plan's own op shapes through the profile's probe code (planner/profiling: the same cold-weight
GEMM, the runtime's decode attention over a cold K,V buffer, the O_DIRECT read beside a compute loop)
and divides each time by the profile's cost model for the same shape:

- "gemm": the plan's largest projection GEMM (batch rows) whose weight fits CHECK_OPERAND_MAX_BYTES
  (a larger one keeps its rows and input width, with fewer output columns), among the GEMMs the
  runtime runs: a gated MLP's gate and up are two GEMMs (planner.layer_costs.layer_projections);
- "attention": one GPU batch's decode attention at the run's average context, where the plan runs it
  (the context cut so the K,V buffer fits CHECK_OPERAND_MAX_BYTES);
- "disk_read": one read of the largest piece a decode step reads from disk (a GPU batch's K,V, its X,
  or a layer's weights), at most CHECK_OPERAND_MAX_BYTES, priced by its own disk class's model, only
  when the plan reads the disk.

A ratio of 1.3 means the op took 1.3x the profile's time. Compute ratios beyond COMPUTE_TOLERANCE and
disk ratios beyond the profile's own read_time_spread are warnings (docs/runtime.md, "Machine check").
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from planner.costmodel import CostModel
from planner.directio import PAGE, align_up
from planner.disk_classes import KV_READ, WEIGHTS_READ, DiskClass
from planner.layer_costs import Gemm, kv_bytes_per_token, layer_gemm_shapes, layer_weight_bytes, x_bytes_per_token
from planner.models import DTYPE_BYTES
from planner.placement import layer_counts, token_layout
from planner.plan import Decisions, Plan
from planner.prediction import cost_model_for
from planner.profile import Profile, profile_from_dict
from planner.profiling import compute, disk, measure, system
from planner.profiling.timing import Repeats
from planner.schemas import MACHINE_CHECK_WARNING

# A compute op within +-25% of its profiled time is taken as the same machine. Measured, on this
# 2-core VM with a profile taken minutes before (docs/validation.md, fifth session): 60 checks each
# of GEMM and attention had median ratio 1.02 / 1.03, and 90% of them fell within +-23% / +-27% of 1,
# so a narrower band warns on an unchanged machine. Drift smaller than the band is not detected.
COMPUTE_TOLERANCE = 0.25
CHECK_OPERAND_MAX_BYTES = 64 << 20  # the largest weight, K,V buffer or disk read the check touches
# per op: one untimed call, then a warm-up and 3-7 timed calls (the median), like a quick profile's sample
CHECK_REPEATS = Repeats(warmup=1, min_reps=3, max_reps=7, target_s=0.03)
CHECK_BUDGET_S = 0.0  # one shape per probe: _budgeted always measures it


@dataclass(frozen=True)
class Probe:
    """One op timed by the check against the profile's cost model for the same shape."""

    op: str  # "gemm" | "attention" | "disk_read"
    shape: dict[str, int]
    measured_s: float
    predicted_s: float
    band: tuple[float, float]  # ratios taken as "the machine the profile measured"
    band_source: str

    @property
    def ratio(self) -> float:
        return self.measured_s / self.predicted_s

    @property
    def within(self) -> bool:
        return self.band[0] <= self.ratio <= self.band[1]

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "shape": self.shape, "measured_s": self.measured_s, "predicted_s": self.predicted_s,
                "ratio": round(self.ratio, 4), "band": list(self.band), "band_source": self.band_source,
                "within": self.within}


def _compute_band() -> tuple[tuple[float, float], str]:
    return (1 - COMPUTE_TOLERANCE, 1 + COMPUTE_TOLERANCE), f"+-{COMPUTE_TOLERANCE:.0%}: the checks' own spread"


def check_gemm(model, rows: int, dtype: str) -> Gemm:
    """The plan's largest projection GEMM, as the runtime runs it, whose weight fits
    CHECK_OPERAND_MAX_BYTES, else the smallest with its output columns cut to fit (a multiple of 64)."""
    elem = DTYPE_BYTES[dtype]
    gemms = sorted(layer_gemm_shapes(model, rows), key=lambda g: (g.n * g.k, g.n, g.k))
    fitting = [g for g in gemms if g.n * g.k * elem <= CHECK_OPERAND_MAX_BYTES]
    if fitting:
        return fitting[-1]
    g = gemms[0]
    return Gemm(g.m, max(64, CHECK_OPERAND_MAX_BYTES // (g.k * elem) // 64 * 64), g.k)


def check_context(model, gpu_batch: int, context: int, dtype: str) -> int:
    """The run's context, cut so one GPU batch's token-major K,V buffer fits CHECK_OPERAND_MAX_BYTES."""
    per_token = gpu_batch * kv_bytes_per_token(model, dtype)
    return max(16, min(context, CHECK_OPERAND_MAX_BYTES // per_token - 1))


def disk_piece(plan: Plan, d: Decisions, context: int) -> tuple[int, DiskClass]:
    """The largest single read a decode step makes from disk at `context` and its disk class (the model
    that prices it, planner/disk_classes.py): one GPU batch's K,V or X piece, or one layer's weights
    (0 bytes when nothing is read from disk)."""
    m, dt = plan.model, d.dtype
    lay = token_layout(d.split_tokens, d.x_placement, d.kv_placement, plan.seq, plan.prompt, max(plan.gen, 1),
                       context)
    pieces = [(int(d.gpu_batch * kv_bytes_per_token(m, dt) * lay.present["kk"]), KV_READ),
              (int(d.gpu_batch * x_bytes_per_token(m, dt) * lay.present["xk"]), KV_READ)]
    if layer_counts(d.weight_placement, m.num_layers)["disk"]:
        pieces.append((layer_weight_bytes(m, dt), WEIGHTS_READ))
    return max(pieces, key=lambda p: p[0])


@dataclass(frozen=True)
class Where:
    """Where the run computes: torch devices of the projections and of attention, and the cost
    model's processor for attention ("device" or "cpu")."""

    device: str
    attention_device: str
    attention_where: str


def _cold_bytes(profile: Profile, device: str) -> int:
    """The profile's own cold-arena size for `device` (measurement.*cold_arena_bytes), else 1.5x this
    CPU's last-level cache (compute.arena_bytes)."""
    meas = profile.data.get("measurement") or {}
    key = "cpu_cold_arena_bytes" if device == "cpu" else "cold_arena_bytes"
    value = meas.get(key) or meas.get("cold_arena_bytes")
    if isinstance(value, int) and value > 0:
        return value
    return compute.arena_bytes(system.last_level_cache_bytes(), 0, 1 << 30)


def _gemm_probe(cost: CostModel, plan: Plan, d: Decisions, where: Where) -> Probe:
    g = check_gemm(plan.model, d.batch, d.dtype)
    s = compute.gemm_samples([(g.m, g.n, g.k)], d.dtype, where.device, CHECK_REPEATS, CHECK_BUDGET_S,
                             cold_bytes=_cold_bytes(cost.profile, where.device))
    band, source = _compute_band()
    return Probe("gemm", {"m": g.m, "n": g.n, "k": g.k}, s.rows[0][-1], cost.gemm_s(g, d.dtype), band, source)


def _attention_probe(cost: CostModel, plan: Plan, d: Decisions, where: Where, context: int, kernels) -> Probe:
    m = plan.model
    ctx = check_context(m, d.gpu_batch, context, d.dtype)
    # the cost model's context counts the cached tokens; the kernel attends over them and the new one
    shape = (d.gpu_batch, ctx + 1, m.num_heads, m.num_kv_heads, m.head_dim)
    s = compute.attention_samples([shape], d.dtype, where.attention_device, CHECK_REPEATS, CHECK_BUDGET_S,
                                  kernels, cold_bytes=_cold_bytes(cost.profile, where.attention_device))
    band, source = _compute_band()
    predicted = cost.attention_s(m, d.gpu_batch, 1, ctx, d.dtype, where=where.attention_where)
    return Probe("attention", {"batch": d.gpu_batch, "context": ctx, "heads": m.num_heads,
                               "kv_heads": m.num_kv_heads, "head_dim": m.head_dim}, s.rows[0][-1], predicted,
                 band, source)


def _disk_probe(cost: CostModel, piece: int, cls: DiskClass, disk_dir: Path, where: Where, kernels) -> Probe:
    size = max(PAGE, align_up(min(piece, CHECK_OPERAND_MAX_BYTES)))
    # the profile timed link.disk_read beside a compute loop on a CPU-only machine (the runtime's
    # situation): the same loop here, or the ratio would compare a quiet disk with a busy one
    busy = None
    if where.device == "cpu":
        busy = measure._busy_work(min(measure.BUSY_ARENA_BYTES, _cold_bytes(cost.profile, "cpu")), kernels)
    reads, _, _ = disk.disk_samples(disk_dir, [size], CHECK_REPEATS, CHECK_BUDGET_S, busy=busy, passes=1,
                                    writes=False)
    spread = cost.profile.disk_time_spread
    if spread is not None:
        band, source = spread, "the profile's disk.read_time_spread"
    else:
        band, source = _compute_band()
        source += " (the profile records no disk.read_time_spread)"
    # priced by the piece's own class: a layer's weights by link.disk_read_weights, K,V and X pieces by
    # link.disk_read (a weight read capped at CHECK_OPERAND_MAX_BYTES stays a weight read)
    return Probe("disk_read", {"bytes": size}, reads.rows[0][-1], cost.transfer_s(cls.name, size), band, source)


def profile_age(profile: Profile, path: Path | None, now: datetime | None = None) -> dict[str, Any]:
    """When the profile was measured (measurement.measured_at, else its file's modification time,
    labelled so) and how many seconds ago."""
    now = now or datetime.now(timezone.utc)
    stamp = (profile.data.get("measurement") or {}).get("measured_at")
    when, source = None, None
    if isinstance(stamp, str):
        try:
            when = datetime.fromisoformat(stamp)
            when = when.astimezone(timezone.utc) if when.tzinfo else when.replace(tzinfo=timezone.utc)
            source = "measurement.measured_at"
        except ValueError:
            when = None
    if when is None and path is not None and path.is_file():
        when = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
        source = "the profile file's modification time (the profile has no measurement.measured_at)"
    if when is None:
        return {"measured_at": None, "age_s": None, "age_source": None}
    return {"measured_at": when.isoformat(timespec="seconds"), "age_s": round((now - when).total_seconds(), 1),
            "age_source": source}


def machine_check(plan: Plan, d: Decisions, profile: Profile, where: Where, context: int, disk_dir: Path,
                  profile_path: Path | None = None) -> dict[str, Any]:
    """Time the plan's ops (see the module docstring) and compare them with `profile`'s cost models;
    `d`: the decisions as they run here (runtime.predict.as_run_on). The run record's machine_check."""
    import torch

    from runtime.probe_kernels import runtime_kernels

    t0 = time.perf_counter()
    cost = cost_model_for(profile)
    kernels = runtime_kernels()
    with torch.inference_mode():
        probes = [_gemm_probe(cost, plan, d, where), _attention_probe(cost, plan, d, where, context, kernels)]
        piece, cls = disk_piece(plan, d, context)
        if piece > 0:
            probes.append(_disk_probe(cost, piece, cls, disk_dir, where, kernels))
    age = profile_age(profile, profile_path)
    out = {"profile": profile.name, **age, "probes": [p.to_dict() for p in probes],
           "seconds": round(time.perf_counter() - t0, 3)}
    out["warnings"] = check_warnings(out)
    return out


OP_NAMES = {"gemm": "GEMM", "attention": "attention", "disk_read": "disk read"}


def _age_text(check: dict[str, Any]) -> str:
    if check.get("age_s") is None:
        return "age unknown"
    hours = check["age_s"] / 3600
    ago = f"{hours:.0f} h ago" if hours >= 2 else f"{check['age_s'] / 60:.0f} min ago"
    stamp = check["measured_at"].replace("T", " ")[:16] + " UTC"
    file_time = "" if check.get("age_source") == "measurement.measured_at" else ", file time"
    return f"taken {stamp}, {ago}{file_time}"


def check_line(check: dict[str, Any]) -> str:
    """One line for the table's notes: each op's ratio, the profile and its age."""
    ratios = ", ".join(f"{OP_NAMES[p['op']]} x{p['ratio']:.2f}" for p in check["probes"])
    return (f"machine check ({check['seconds']:.1f} s): {ratios} of the profile's time (profile {check['profile']}, "
            f"{_age_text(check)}); x1.00 = as profiled")


def check_warnings(check: dict[str, Any]) -> list[str]:
    """A warning per op whose ratio is outside its band (run.warnings, prefixed MACHINE_CHECK_WARNING)."""
    out = []
    for p in check["probes"]:
        if not p["within"]:
            lo, hi = p["band"]
            out.append(f"{MACHINE_CHECK_WARNING}{OP_NAMES[p['op']]} took x{p['ratio']:.2f} the profile's time, "
                       f"outside x{lo:.2f}-x{hi:.2f} ({p['band_source']}): the machine is not as profiled "
                       f"({_age_text(check)}); re-run `kvplan profile` if this persists")
    return out


def scaled_profile(profile: Profile, check: dict[str, Any], d: Decisions,
                   where: Where) -> tuple[Profile, list[str]] | None:
    """`profile` with the fitted models the check's ops answer from scaled by the measured ratios (a
    fitted model's time is linear in its stored coefficients, planner/costmodel/fitted.py): the GEMM
    ratio to the plan's GEMM model (projections and KV recompute), the attention ratio to its
    attention model, the disk ratio to link.disk_read and link.disk_read_weights. Elementwise ops and
    other links keep the profile's times. None when no op answered from a fitted model (a roofline
    cannot be scaled so)."""
    cost = cost_model_for(profile)
    data = copy.deepcopy(profile.data)
    models = data.get("cost_models") or {}
    # the disk's ratio is the drive's drift: it scales both read classes' models (planner/disk_classes.py)
    keys = {"gemm": [cost.fitted_model_key("gemm", "device", d.dtype)],
            "attention": [cost.fitted_model_key("attention", where.attention_where, d.dtype)],
            "disk_read": [k for k in (KV_READ.model_key, WEIGHTS_READ.model_key) if k in models]}
    applied = []
    for p in check["probes"]:
        for key in keys[p["op"]]:
            if key is not None and math.isfinite(p["ratio"]) and p["ratio"] > 0:
                models[key]["linear"] = [c * p["ratio"] for c in models[key]["linear"]]
                applied.append(f"{key} x{p['ratio']:.2f}")
    if not applied:
        return None
    return profile_from_dict(data, origin=f"{profile.name} scaled by the machine check"), applied

