"""The planner's cost formulation: the linear surrogate the MILP optimises, and its variables.

One decode step of the whole batch, all layers (docs/planner.md has the derivation and sources).
The continuous decisions are fractions of the `seq` tokens of every sequence, per tier:

    xd, xh, xk   X-cache (tokens [0, l) stored as layer inputs, K,V recomputed: KVPR) on device/host/disk
    kd, kh, kk   K,V of tokens [l, seq) on device/host/disk
    (xd + xh + xk + kd + kh + kk = 1, l = (xd + xh + xk) * seq)

the integer ones are the number of layers whose weights live on each tier (nd + nh + nk = L) and two
binaries that pay for staging buffers on the device (zoff: some X/K,V is off the device; zw: some
weights stream). The discrete choices (batch, GPU batch x number of GPU batches, where attention
runs, where the activations between layers live) are "combos": each has its own constants and the
MILP picks one of them.

Every time term is (constant + sum of coefficient * variable) seconds: planner/stepcost.py's
equations with each transfer and the recompute priced at one rate sampled from the profile's
CostModel at the combo's shapes (the linear surrogate). `planner.prediction.evaluate` prices the same
equations exactly for the chosen plan.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.costmodel import CostModel
from planner.memory import rounding_margin_bytes, tier_bytes
from planner.placement import TIER_INITIAL, TIERS
from planner.profile import Profile
from planner.stepcost import Combo, LinForm, Setting, as_lin, lin, linear_amounts, linear_terms

FRACTION_VARS = ("xd", "xh", "xk", "kd", "kh", "kk")
LAYER_VARS = ("nd", "nh", "nk")
BINARY_VARS = ("zoff", "zw")
ALL_VARS = FRACTION_VARS + LAYER_VARS + BINARY_VARS
OFF_DEVICE_FRACTIONS = ("xh", "xk", "kh", "kk")
DECODE_RESOURCES = ("compute", "cpu", "h2d", "d2h", "disk", "chain")
PREFILL_RESOURCES = ("compute", "h2d", "d2h", "disk")
MEMORY_TIERS = TIERS
# Tie-break: among equally fast plans prefer less data off the device and fewer buffers (seconds
# per unit of fraction; far below any real time difference, the same in the MILP and exhaustive).
TIE_BREAK_S = 1e-9


@dataclass(frozen=True)
class Coeffs:
    combo: Combo
    decode: dict[str, LinForm]  # resource -> seconds per step (all layers)
    prefill: dict[str, LinForm]  # resource -> seconds for the prompt (all layers)
    memory: dict[str, LinForm]  # tier -> bytes at peak
    objective: LinForm  # what the MILP minimises for this combo (seconds per token or per step)
    round_margin_bytes: float = 0.0  # room left on device and host for rounding to whole tokens

    def cap(self, tier: str, capacity: float) -> float:
        """The capacity the MILP may fill on `tier`: whole-token rounding of the placement can add up
        to a few tokens per piece (placement.whole_tokens), so device and host keep that much
        free (unless the tier is so small that the margin would dominate it)."""
        margin = self.round_margin_bytes
        if tier in ("device", "host") and capacity > 10 * margin:
            return capacity - margin
        return capacity


def coefficients(st: Setting, combo: Combo, cost: CostModel, profile: Profile) -> Coeffs:
    """The combo's linear surrogate: planner/stepcost.py's equations priced linearly, and
    planner/memory.py's bytes per tier in the same variables (zoff, zw: the staging binaries)."""
    decode, prefill = linear_terms(st, combo, cost)
    a = linear_amounts(st)
    memory = tier_bytes(st, combo, a.stored, a.layers, lin(zoff=1.0), lin(zw=1.0))
    memory = {t: as_lin(memory[t]) for t in TIERS}
    return Coeffs(combo=combo, decode=decode, prefill=prefill, memory=memory,
                  objective=_objective(st, combo, decode, prefill),
                  round_margin_bytes=rounding_margin_bytes(st, combo))


def _objective(st: Setting, combo: Combo, decode: dict[str, LinForm], prefill: dict[str, LinForm]) -> LinForm:
    """Per-combo objective on the epigraph variables T_dec, T_pf (and a tie-break on placements).
    throughput: seconds per generated token = (T_pf + gen * T_dec) / (batch * gen);
    latency: seconds per decode step = T_dec."""
    if st.objective == "throughput":
        w_dec = 1.0 / combo.batch
        w_pf = 1.0 / (combo.batch * st.gen)
    else:
        w_dec, w_pf = 1.0, 0.0
    tie = {v: TIE_BREAK_S for v in OFF_DEVICE_FRACTIONS + ("xd",)}
    tie.update({"nh": TIE_BREAK_S / 8, "nk": TIE_BREAK_S / 4, "zoff": TIE_BREAK_S, "zw": TIE_BREAK_S})
    tie.update({"xk": 2 * TIE_BREAK_S, "kk": 2 * TIE_BREAK_S})
    return lin(0.0, T_dec=w_dec, T_pf=w_pf, **tie)


def surrogate_value(co: Coeffs, values: dict[str, float]) -> dict[str, float]:
    """The linear model at a point: T_dec and T_pf as the max over their resources, and the objective."""
    t_dec = max(form.at(values) for form in co.decode.values())
    t_pf = max(form.at(values) for form in co.prefill.values())
    point = dict(values, T_dec=t_dec, T_pf=t_pf)
    return {"T_dec": t_dec, "T_pf": t_pf, "objective": co.objective.at(point)}


def pinned_zero(strategy: str, combo: Combo, host_is_device: bool) -> frozenset[str]:
    """Variables a strategy (and the hardware) forces to 0 for this combo."""
    zero: set[str] = set()
    if host_is_device:
        zero |= {"xh", "kh", "nh"}  # no separate host tier on a CPU-only machine
    if combo.attention_where == "cpu":
        zero |= {"xd", "xh", "xk", "kd"}  # CPU attention reads K,V where they are: host (or disk via host)
    if strategy == "resident":
        zero |= {"xd", "xh", "xk", "kh", "kk"}
    elif strategy == "transfer":
        zero |= {"xd", "xh", "xk", "kd"}
    elif strategy == "recompute":
        zero |= {"xd", "kd"}
    elif strategy == "cpu-attention":
        zero |= {"xd", "xh", "xk", "kd"}
    return frozenset(zero)


def min_split_fraction(strategy: str, seq: int) -> float:
    """A pinned recompute recomputes at least one token (l >= 1), else it would be a transfer plan."""
    return 1.0 / seq if strategy == "recompute" else 0.0


def empty_range_tier(kind: str, zero: frozenset[str]) -> str:
    """Where an empty X ("x") or K,V ("k") range is placed: the first tier the strategy allows it on,
    so that moving l later (planner/search/refine.py) never puts tokens where the strategy forbids."""
    return next((t for t in TIERS if kind + TIER_INITIAL[t] not in zero), "device")


def strategy_allows(strategy: str, combo: Combo) -> bool:
    if strategy == "cpu-attention":
        return combo.attention_where == "cpu"
    if strategy == "auto":
        return True
    return combo.attention_where == "device"


def batch_candidates(batch: int | None, max_batch: int = 256) -> list[int]:
    """A fixed batch, or for `--batch auto` the powers of two up to `max_batch` (and `max_batch`)."""
    if batch is not None:
        return [batch]
    out = [1 << k for k in range(0, max_batch.bit_length()) if 1 << k <= max_batch]
    return out if out[-1] == max_batch else out + [max_batch]


def activation_places(activations: str, host_is_device: bool, num_gpu_batches: int) -> tuple[str, ...]:
    """Where the hidden states may live for a block of `num_gpu_batches` GPU batches. On a CPU-only
    profile there is no separate host: "device". `auto` offers the host only where it saves device
    memory: with at most 2 GPU batches the device holds the same two GPU batches' hidden states either
    way (planner/memory.hidden_state_bytes) and the host only adds link traffic, so it cannot win."""
    if host_is_device:
        return ("device",)
    if activations == "auto":
        return ("device", "host") if num_gpu_batches > 2 else ("device",)
    return (activations,)


def combos_for(batch: int | None, host_is_device: bool, strategy: str, max_batch: int = 256,
               activations: str = "auto") -> list[Combo]:
    wheres = ("device",) if host_is_device else ("device", "cpu")
    out = []
    for b in batch_candidates(batch, max_batch):
        nbs = [nb for nb in (1, 2, 4, 8) if b % nb == 0]
        if batch is not None:  # a batch the user fixed: every split into at most 16 equal GPU batches
            nbs = [nb for nb in range(1, 17) if b % nb == 0]
        for nb in nbs:
            for where in wheres:
                for act in activation_places(activations, host_is_device, nb):
                    combo = Combo(batch=b, gpu_batch=b // nb, num_gpu_batches=nb, attention_where=where,
                                  activation_placement=act)
                    if strategy_allows(strategy, combo):
                        out.append(combo)
    return out
