"""The planner's cost formulation: the linear surrogate the MILP optimises, and its variables.

One decode step of the whole batch, all layers (docs/planner.md has the derivation and sources).
The continuous decisions are fractions of the `seq` tokens of every sequence, per tier:

    xd, xh, xk   X-cache (tokens [0, l) stored as layer inputs, K,V recomputed: KVPR) on device/host/disk
    kd, kh, kk   K,V of tokens [l, seq) on device/host/disk
    (xd + xh + xk + kd + kh + kk = 1, l = (xd + xh + xk) * seq)

the integer ones are the number of layers whose weights live on each tier (nd + nh + nk = L) and two
binaries that pay for staging buffers on the device (zoff: some X/K,V is off the device; zw: some
weights stream). The discrete choices (batch, GPU batch x number of GPU batches, where attention
runs) are "combos": each has its own constants and the MILP picks one of them.

Every time term is (constant + sum of coefficient * variable) seconds, sampled from the profile's
CostModel at the combo's shapes: this is the linear surrogate. `planner.search.evaluate` re-predicts
the chosen plan with the full (non-linear) cost models.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from planner.costmodel import CostModel
from planner.costmodel.layer_time import layer_op_times_s, recompute_kv_s
from planner.layer_costs import (
    embedding_params,
    kv_bytes_per_token,
    layer_weight_bytes,
    x_bytes_per_token,
)
from planner.models import DTYPE_BYTES, ModelConfig
from planner.profile import Profile

FRACTION_VARS = ("xd", "xh", "xk", "kd", "kh", "kk")
LAYER_VARS = ("nd", "nh", "nk")
BINARY_VARS = ("zoff", "zw")
ALL_VARS = FRACTION_VARS + LAYER_VARS + BINARY_VARS
OFF_DEVICE_FRACTIONS = ("xh", "xk", "kh", "kk")
DECODE_RESOURCES = ("compute", "cpu", "h2d", "d2h", "disk", "chain")
PREFILL_RESOURCES = ("compute", "h2d", "d2h", "disk")
MEMORY_TIERS = ("device", "host", "disk")
# Tie-break: among equally fast plans prefer less data off the device and fewer buffers (seconds
# per unit of fraction; far below any real time difference, the same in the MILP and exhaustive).
TIE_BREAK_S = 1e-9


@dataclass(frozen=True)
class Combo:
    batch: int
    gpu_batch: int
    num_gpu_batches: int
    attention_where: str  # "device" | "cpu"


@dataclass(frozen=True)
class LinForm:
    const: float
    coefs: tuple[tuple[str, float], ...]

    def at(self, values: dict[str, float]) -> float:
        return self.const + sum(c * values.get(v, 0.0) for v, c in self.coefs)


@dataclass(frozen=True)
class Setting:
    """Everything about a request that the coefficients depend on, besides the combo."""

    model: ModelConfig
    dtype: str
    seq: int
    prompt: int
    gen: int
    host_is_device: bool
    device_cap_bytes: int  # usable device memory (host+device pool on CPU-only profiles)
    host_cap_bytes: int  # 0 on CPU-only profiles: the host tier does not exist there
    disk_cap_bytes: int
    objective: str

    @property
    def avg_context(self) -> float:
        # decode step t (0-based) attends to prompt + t cached tokens; the mean over gen steps
        return self.prompt + (self.gen - 1) / 2.0

    @property
    def share(self) -> float:
        """Fraction of each stored piece present at the average context (docs/planner.md, "Time")."""
        return self.avg_context / self.seq


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
        to a few tokens per piece (solve.decisions_from_values), so device and host keep that much
        free (unless the tier is so small that the margin would dominate it)."""
        margin = self.round_margin_bytes
        if tier in ("device", "host") and capacity > 10 * margin:
            return capacity - margin
        return capacity


def _lin(const: float = 0.0, **coefs: float) -> LinForm:
    return LinForm(float(const), tuple(sorted((k, float(v)) for k, v in coefs.items() if v != 0.0)))


def _add(a: LinForm, b: LinForm) -> LinForm:
    merged: dict[str, float] = dict(a.coefs)
    for k, v in b.coefs:
        merged[k] = merged.get(k, 0.0) + v
    return _lin(a.const + b.const, **merged)


def _scale(a: LinForm, s: float) -> LinForm:
    return _lin(a.const * s, **{k: v * s for k, v in a.coefs})


def activation_bytes(model: ModelConfig, dtype: str, combo: Combo, prompt: int) -> int:
    """Device working memory: the prefill of one GPU batch dominates (QKV, MLP intermediate, output
    of `gpu_batch * prompt` rows; memory-efficient attention, no score matrix), plus the hidden
    states of the whole block and the fp32 logits of one GPU batch."""
    p = DTYPE_BYTES[dtype]
    rows = combo.gpu_batch * prompt
    widths = model.q_dim + 2 * model.kv_dim + (2 if model.gated_mlp else 1) * model.intermediate_size
    widths += model.hidden_size
    return rows * widths * p + 2 * combo.batch * prompt * model.hidden_size * p + combo.gpu_batch * model.vocab_size * 4


def stream_buffer_bytes(model: ModelConfig, dtype: str, combo: Combo, seq: int) -> int:
    """Device staging when X or K,V live off the device and attention runs there: double-buffered
    K,V of one layer for one GPU batch (design.md §2, FlexGen's overlap) plus the X staging."""
    if combo.attention_where != "device":
        return 0
    return combo.gpu_batch * seq * (2 * kv_bytes_per_token(model, dtype) + x_bytes_per_token(model, dtype))


@lru_cache(maxsize=4096)
def _op_times(cost: CostModel, model: ModelConfig, rows_batch: int, query: int, context: int, dtype: str,
              where: str) -> tuple[float, float]:
    """(projections + activation, attention) seconds for one layer; cached per shape."""
    ops = layer_op_times_s(cost, model, rows_batch, query, context, dtype, attention_where=where)
    return sum(v for k, v in ops.items() if k != "attention"), ops["attention"]


@lru_cache(maxsize=4096)
def _recompute_rate(cost: CostModel, model: ModelConfig, gpu_batch: int, context: int, dtype: str) -> float:
    """Seconds per recomputed token per sequence, sampled at the full-context shape."""
    return recompute_kv_s(cost, model, gpu_batch, context, dtype) / context


@lru_cache(maxsize=4096)
def _cpu_attention(cost: CostModel, model: ModelConfig, batch: int, context: int, dtype: str) -> float:
    return cost.attention_s(model, batch, 1, context, dtype, where="cpu")


@lru_cache(maxsize=4096)
def _link_rate(cost: CostModel, link: str, nbytes: int) -> float:
    return nbytes / cost.transfer_s(link, nbytes)


def coefficients(st: Setting, combo: Combo, cost: CostModel, profile: Profile) -> Coeffs:
    m = st.model
    L = m.num_layers
    p = DTYPE_BYTES[st.dtype]
    kvpt = kv_bytes_per_token(m, st.dtype)
    xpt = x_bytes_per_token(m, st.dtype)
    W = layer_weight_bytes(m, st.dtype)
    b, gb, nb = combo.batch, combo.gpu_batch, combo.num_gpu_batches
    seq, prompt = st.seq, st.prompt
    ctx = max(1, round(st.avg_context))
    # Tokens per sequence present at the average context, per unit fraction of seq: X holds the first
    # positions [0, l), all present once the context passes l (runtime layout, planner/plan.py); K,V
    # pieces are taken to hold their share avg_context/seq (linear stand-in for the positional cut).
    present = st.seq * st.share
    present_x = float(st.seq)
    # Effective link rates (bytes/s) from the cost model at this combo's transfer size: one layer's
    # K,V for one GPU batch (a measured profile answers from its fitted link models).
    piece = max(1 << 20, gb * ctx * kvpt)
    bw = {name: _link_rate(cost, name, piece) for name in ("h2d", "d2h", "disk_read", "disk_write")}
    dev_att = combo.attention_where == "device"
    cuda = not st.host_is_device

    # ---- decode step, all layers -------------------------------------------------------------
    # projections and MLP once over all b rows per layer, attention per GPU batch (as evaluate.py)
    proj_s, _ = _op_times(cost, m, b, 1, ctx, st.dtype, "device")
    _, att_s = _op_times(cost, m, gb, 1, ctx, st.dtype, "device")
    rc_per_frac = L * nb * _recompute_rate(cost, m, gb, ctx, st.dtype) * present_x  # KVPR recompute
    compute = _lin(L * (proj_s + nb * (att_s if dev_att else 0.0)), xd=rc_per_frac, xh=rc_per_frac,
                   xk=rc_per_frac)
    cpu = _lin(L * _cpu_attention(cost, m, b, ctx, st.dtype) if not dev_att else 0.0)

    kv_read = L * b * kvpt * present  # bytes per step per unit fraction of K,V read
    x_read = L * b * xpt * present_x
    kv_new = L * b * kvpt  # bytes written back per step per unit fraction (one new token per sequence)
    x_new = L * b * xpt
    if cuda:
        if dev_att:  # everything off the device crosses the host link (disk data via host memory)
            h2d = _lin(0.0, xh=x_read, xk=x_read, kh=kv_read, kk=kv_read, nh=W, nk=W)
            d2h = _lin(0.0, xh=x_new, xk=x_new, kh=kv_new, kk=kv_new)
        else:  # CPU attention: only q down and the attention output up (design.md §2.4); new K,V go down
            att_io = L * b * m.q_dim * p
            h2d = _lin(att_io, nh=W, nk=W)
            d2h = _lin(att_io + kv_new)
        h2d = _scale(h2d, 1.0 / bw["h2d"])
        d2h = _scale(d2h, 1.0 / bw["d2h"])
    else:  # CPU-only: the device is the CPU, the slow link is the disk
        h2d = _lin()
        d2h = _lin()
    disk_read = _scale(_lin(0.0, xk=x_read, kk=kv_read, nk=W), 1.0 / bw["disk_read"])
    disk_write = _scale(_lin(0.0, xk=x_new, kk=kv_new), 1.0 / bw["disk_write"])
    disk = _add(disk_read, disk_write)  # one drive: reads and writes share it
    # KVPR chain: X of the first GPU batch must arrive before recompute starts (seed 000, T(l)).
    x_link = 0.0
    if cuda:
        x_link = x_read / bw["h2d"] / nb
    chain = _lin(0.0, xd=rc_per_frac, xh=rc_per_frac + x_link,
                 xk=rc_per_frac + x_link + x_read / bw["disk_read"] / nb) if dev_att else _lin()
    decode = {"compute": compute, "cpu": cpu, "h2d": h2d, "d2h": d2h, "disk": disk, "chain": chain}

    # ---- prefill: the prompt through all layers on the device -------------------------------
    pproj_s, patt_s = _op_times(cost, m, gb, prompt, 0, st.dtype, "device")
    p_compute = _lin(L * nb * (pproj_s + patt_s))
    kv_pf = L * b * prompt * kvpt
    x_pf = L * b * prompt * xpt
    if cuda:
        p_h2d = _scale(_lin(0.0, nh=W, nk=W), 1.0 / bw["h2d"])
        p_d2h = _scale(_lin(0.0, xh=x_pf, xk=x_pf, kh=kv_pf, kk=kv_pf), 1.0 / bw["d2h"])
    else:
        p_h2d = _lin()
        p_d2h = _lin()
    p_disk = _add(_scale(_lin(0.0, nk=W), 1.0 / bw["disk_read"]),
                  _scale(_lin(0.0, xk=x_pf, kk=kv_pf), 1.0 / bw["disk_write"]))
    prefill = {"compute": p_compute, "h2d": p_h2d, "d2h": p_d2h, "disk": p_disk}

    # ---- memory at peak (seq tokens) ----------------------------------------------------------
    kv_all = L * b * kvpt * seq
    x_all = L * b * xpt * seq
    emb = embedding_params(m) * p
    dev_const = emb + activation_bytes(m, st.dtype, combo, prompt)
    host_const = 0.0 if dev_att or not cuda else b * m.num_heads * seq * 4  # CPU attention scores (fp32)
    device = _lin(dev_const, nd=W, kd=kv_all, xd=x_all, zoff=stream_buffer_bytes(m, st.dtype, combo, seq),
                  zw=2 * W)
    host = _lin(host_const, nh=W, kh=kv_all, xh=x_all)
    disk_mem = _lin(0.0, nk=W, kk=kv_all, xk=x_all)
    if not cuda:  # one pool: the host tier's bytes count against the device pool (and are pinned to 0)
        device = _add(device, host)
        host = _lin()
    memory = {"device": device, "host": host, "disk": disk_mem}

    objective = _objective(st, combo, decode, prefill)
    margin = 3 * L * b * max(kvpt, xpt)
    return Coeffs(combo=combo, decode=decode, prefill=prefill, memory=memory, objective=objective,
                  round_margin_bytes=float(margin))


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
    return _lin(0.0, T_dec=w_dec, T_pf=w_pf, **tie)


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


def strategy_allows(strategy: str, combo: Combo) -> bool:
    if strategy == "cpu-attention":
        return combo.attention_where == "cpu"
    if strategy == "auto":
        return True
    return combo.attention_where == "device"


def batch_candidates(batch: int | None) -> list[int]:
    if batch is not None:
        return [batch]
    return [1 << k for k in range(0, 9)]  # 1 .. 256


def combos_for(batch: int | None, host_is_device: bool, strategy: str) -> list[Combo]:
    wheres = ("device",) if host_is_device else ("device", "cpu")
    out = []
    for b in batch_candidates(batch):
        nbs = [nb for nb in (1, 2, 4, 8) if b % nb == 0]
        if batch is not None:  # a batch the user fixed: every split into at most 16 equal GPU batches
            nbs = [nb for nb in range(1, 17) if b % nb == 0]
        for nb in nbs:
            for where in wheres:
                combo = Combo(batch=b, gpu_batch=b // nb, num_gpu_batches=nb, attention_where=where)
                if strategy_allows(strategy, combo):
                    out.append(combo)
    return out
