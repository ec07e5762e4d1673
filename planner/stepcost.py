"""One decode step and one prefill, each resource's busy time written once (docs/planner.md, "Time").

The equations below are the only statement of what a step costs. They are written over *amounts*
(tokens per sequence in each piece, layers per tier) and a *pricer* that turns a transfer or a
recompute into seconds:

- `ExactPricer` (the evaluator, planner/prediction.py): the profile's full cost models at the
  real sizes (a link's latency per transfer, the recompute GEMM at its real shape), whole tokens and
  whole layers laid out by position (planner/placement.py).
- `LinearPricer` (the MILP, planner/search/formulation.py): every transfer at one sampled rate and
  the recompute at one sampled per-token rate, the amounts `LinForm`s in the MILP's variables; the
  same equations then give the linear surrogate's coefficients.
- `BytePricer`: a transfer is its bytes; gives the bytes each link moves per step.

Sources: the resources and their overlap are design.md §2 (FlexGen's overlapped schedule, Sheng et
al., ICML 2023, arXiv:2303.06865); the recompute of K,V[0:l] from X[0:l] and the chain "X arrives,
then recompute" are KVPR's T(l) (Jiang et al., arXiv:2411.17089; seed 000); the per-layer pipeline
term is FlexGen's cost model (sum over layers of max(compute, load)).

Compute beside the disk worker: on a CPU-only machine the compute and the thread reading the disk
share the cores and the memory, and the compute runs r times slower while the disk reads (r is
measured by `kvplan profile`, planner/profiling/measure.py; 1 on GPUs and on profiles that did not
measure it). A layer's compute C next to D seconds of reads then takes min(r*C, C + D*(1 - 1/r)) (at
pace 1/r while the reads last, then alone), so the layer's max(D, compute) is exactly
max(D, C + (1 - 1/r)*D): linear in C and D. `Pricer.while_reading` gives the added term.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from planner.costmodel import CostModel
from planner.costmodel.layer_time import layer_op_times_s, recompute_kv_s
from planner.disk_classes import WEIGHTS_READ
from planner.layer_costs import kv_bytes_per_token, layer_weight_bytes, x_bytes_per_token
from planner.models import DTYPE_BYTES, ModelConfig
from planner.placement import TIERS


@dataclass(frozen=True)
class LinForm:
    """const + sum(coefficient * variable): an amount or a time that is linear in the MILP's variables."""

    const: float
    coefs: tuple[tuple[str, float], ...]

    def at(self, values: dict[str, float]) -> float:
        return self.const + sum(c * values.get(v, 0.0) for v, c in self.coefs)

    def __add__(self, other: Amount) -> LinForm:
        if not isinstance(other, LinForm):
            return lin(self.const + other, **dict(self.coefs))
        merged: dict[str, float] = dict(self.coefs)
        for k, v in other.coefs:
            merged[k] = merged.get(k, 0.0) + v
        return lin(self.const + other.const, **merged)

    __radd__ = __add__

    def __mul__(self, s: float) -> LinForm:
        return lin(self.const * s, **{k: v * s for k, v in self.coefs})

    __rmul__ = __mul__


Amount = float | LinForm


def lin(const: float = 0.0, **coefs: float) -> LinForm:
    return LinForm(float(const), tuple(sorted((k, float(v)) for k, v in coefs.items() if v != 0.0)))


@dataclass(frozen=True)
class Combo:
    """The discrete part of a plan: batch = gpu_batch * num_gpu_batches, where attention runs and where
    the hidden states of the GPU batches not being computed live."""

    batch: int
    gpu_batch: int
    num_gpu_batches: int
    attention_where: str  # "device" | "cpu"
    activation_placement: str = "device"  # "device" | "host": the hidden states between layers (placement.py)


@dataclass(frozen=True)
class Setting:
    """Everything about a request that a step's cost depends on, besides the combo and the placement."""

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
    def context(self) -> int:
        """The whole-token context every per-step cost is sampled at."""
        return max(1, round(self.avg_context))

    @property
    def share(self) -> float:
        """Fraction of each stored piece present at the average context (docs/planner.md, "Time")."""
        return self.avg_context / self.seq


@dataclass(frozen=True)
class Amounts:
    """Tokens per sequence in each piece (placement.PIECES) and layers per tier, exact or linear."""

    stored: dict[str, Amount]  # at seq: what the tiers hold at peak
    present: dict[str, Amount]  # at the average context: what a decode step reads
    new_per_step: dict[str, Amount]  # where a decode step's new token is written
    prefill: dict[str, Amount]  # where the prompt's tokens are written
    layers: dict[str, Amount]  # whole layers' weights per tier


class Pricer(Protocol):
    def xfer(self, link: str, nbytes: Amount, count: Amount = 1) -> Amount:
        """`count` transfers of `nbytes` each over `link` (one of them is a plain number)."""

    def recompute(self, gpu_batch: int, tokens: Amount) -> Amount:
        """One GPU batch's recompute of K,V for `tokens` positions per sequence, one layer."""

    def while_reading(self, read_s: Amount) -> Amount:
        """Compute seconds added by `read_s` seconds of disk reads beside it ((1 - 1/r) * read_s)."""


def slowdown_term(cost: CostModel) -> float:
    """1 - 1/r for the profile's measured compute slowdown r while the disk reads (module docstring)."""
    return 1.0 - 1.0 / cost.profile.compute_slowdown_while_reading


class ExactPricer:
    """The full cost models: each transfer pays the link's latency, the recompute GEMM its real shape."""

    def __init__(self, cost: CostModel, model: ModelConfig, dtype: str, disk_time_scale: float = 1.0):
        self.cost, self.model, self.dtype, self.disk_time_scale = cost, model, dtype, disk_time_scale
        self.slowdown = slowdown_term(cost)

    def xfer(self, link: str, nbytes: float, count: float = 1) -> float:
        if nbytes <= 0 or count <= 0:
            return 0.0
        scale = self.disk_time_scale if link.startswith("disk") else 1.0
        return count * scale * self.cost.transfer_s(link, nbytes)

    def recompute(self, gpu_batch: int, tokens: float) -> float:
        return recompute_kv_s(self.cost, self.model, gpu_batch, round(tokens), self.dtype)

    def while_reading(self, read_s: float) -> float:
        return self.slowdown * read_s


class BytePricer:
    """A transfer's cost is its bytes; compute is free: the bytes each link moves."""

    def xfer(self, link: str, nbytes: Amount, count: Amount = 1) -> Amount:
        return count * nbytes

    def recompute(self, gpu_batch: int, tokens: Amount) -> Amount:
        return 0.0

    def while_reading(self, read_s: Amount) -> Amount:
        return 0.0


class LinearPricer:
    """The MILP's surrogate: bytes over one rate per link, tokens times one recompute rate."""

    def __init__(self, inverse_rate: dict[str, float], recompute_s_per_token: float, slowdown: float = 0.0):
        self.inverse_rate, self.recompute_s_per_token, self.slowdown = inverse_rate, recompute_s_per_token, slowdown

    def xfer(self, link: str, nbytes: Amount, count: Amount = 1) -> Amount:
        return count * nbytes * self.inverse_rate[link]

    def recompute(self, gpu_batch: int, tokens: Amount) -> Amount:
        return tokens * self.recompute_s_per_token

    def while_reading(self, read_s: Amount) -> Amount:
        return read_s * self.slowdown


@lru_cache(maxsize=4096)
def op_times(cost: CostModel, model: ModelConfig, rows_batch: int, query: int, context: int, dtype: str
             ) -> tuple[float, float]:
    """(projections + activation, attention on the device) seconds for one layer; cached per shape."""
    ops = layer_op_times_s(cost, model, rows_batch, query, context, dtype, attention_where="device")
    return sum(v for k, v in ops.items() if k != "attention"), ops["attention"]


@lru_cache(maxsize=4096)
def cpu_attention_s(cost: CostModel, model: ModelConfig, batch: int, context: int, dtype: str) -> float:
    return cost.attention_s(model, batch, 1, context, dtype, where="cpu")


@lru_cache(maxsize=4096)
def _link_rate(cost: CostModel, link: str, nbytes: int) -> float:
    return nbytes / cost.transfer_s(link, nbytes)


@lru_cache(maxsize=4096)
def _recompute_rate(cost: CostModel, model: ModelConfig, gpu_batch: int, context: int, dtype: str) -> float:
    """Seconds per recomputed token per sequence, sampled at the full-context shape."""
    return recompute_kv_s(cost, model, gpu_batch, context, dtype) / context


def linear_pricer(st: Setting, combo: Combo, cost: CostModel) -> LinearPricer:
    """The surrogate's rates: each link at one layer's K,V for one GPU batch at the average context (a
    measured profile answers from its fitted link models), a layer's weights from disk at one layer's
    weights (their own size class, planner/disk_classes.py), recompute at the full-context shape."""
    ctx = st.context
    piece = max(1 << 20, combo.gpu_batch * ctx * kv_bytes_per_token(st.model, st.dtype))
    inverse = {name: 1.0 / _link_rate(cost, name, piece) for name in ("h2d", "d2h", "disk_read", "disk_write")}
    weights = layer_weight_bytes(st.model, st.dtype)
    inverse[WEIGHTS_READ.name] = 1.0 / _link_rate(cost, WEIGHTS_READ.name, weights)
    return LinearPricer(inverse, _recompute_rate(cost, st.model, combo.gpu_batch, ctx, st.dtype), slowdown_term(cost))


def activation_io_bytes(st: Setting, combo: Combo, tokens: int) -> int:
    """Bytes of one GPU batch's hidden states that cross the host link each way per layer when the
    activations live on the host: gpu_batch * tokens * hidden * p (tokens = 1 in a decode step, the
    prompt in the prefill). FlexGen's activation placement (Sheng et al., ICML 2023, arXiv:2303.06865,
    §4: the activations of a GPU batch are loaded before its layer and stored after it); 0 when they
    stay on the device or when the host is the device."""
    if combo.activation_placement != "host" or st.host_is_device:
        return 0
    return combo.gpu_batch * tokens * st.model.hidden_size * DTYPE_BYTES[st.dtype]


@dataclass(frozen=True)
class DecodeTerms:
    """Busy seconds of each resource over one decode step, all layers (or bytes, with BytePricer)."""

    compute: Amount
    cpu: Amount
    h2d: Amount
    d2h: Amount
    disk_read: Amount
    disk_write: Amount
    chain: Amount  # KVPR: X of a GPU batch arrives, then its K,V[0:l] are recomputed (serial)
    compute_while_reading: Amount  # the part of compute that is its slowdown beside the disk reads
    weights_h2d: Amount  # the part of h2d that is streamed weights
    weights_disk: Amount  # the part of disk_read that is weights read from disk

    @property
    def disk(self) -> Amount:
        return self.disk_read + self.disk_write  # one drive: reads and writes share it


def decode_terms(st: Setting, combo: Combo, cost: CostModel, a: Amounts, pr: Pricer) -> DecodeTerms:
    """One decode step of the whole batch through all layers. Per layer the projections and MLP run
    once over all b rows (the layer's weights are read once per step), attention and recompute once
    per GPU batch; everything off the device crosses the host link (disk data via host memory); with
    CPU attention only q and the attention output cross it, and the new K,V go down (design.md §2.4);
    activations on the host add each GPU batch's hidden state in and out (`activation_io_bytes`)."""
    m, dt = st.model, st.dtype
    L, ctx = m.num_layers, st.context
    kvpt, xpt, W = kv_bytes_per_token(m, dt), x_bytes_per_token(m, dt), layer_weight_bytes(m, dt)
    gb, nb = combo.gpu_batch, combo.num_gpu_batches
    dev_att = combo.attention_where == "device"
    cuda = not st.host_is_device
    now, new = a.present, a.new_per_step
    proj_s, _ = op_times(cost, m, combo.batch, 1, ctx, dt)
    _, att_s = op_times(cost, m, gb, 1, ctx, dt)
    rc = pr.recompute(gb, now["xd"] + now["xh"] + now["xk"])
    compute = L * (proj_s + nb * ((att_s if dev_att else 0.0) + rc))
    cpu = 0.0 if dev_att else L * cpu_attention_s(cost, m, combo.batch, ctx, dt)
    # per GPU batch and layer: bytes of each piece present at the average context, and of the new token
    kv_h, kv_k = gb * kvpt * now["kh"], gb * kvpt * now["kk"]
    x_h, x_k = gb * xpt * now["xh"], gb * xpt * now["xk"]
    new_kv_h, new_kv_k = gb * kvpt * new["kh"], gb * kvpt * new["kk"]
    new_x_h, new_x_k = gb * xpt * new["xh"], gb * xpt * new["xk"]
    streamed = a.layers["host"] + a.layers["disk"]
    weights_disk = pr.xfer(WEIGHTS_READ.name, W, a.layers["disk"])
    disk_read = L * nb * (pr.xfer("disk_read", kv_k) + pr.xfer("disk_read", x_k)) + weights_disk
    disk_write = L * nb * (pr.xfer("disk_write", new_kv_k) + pr.xfer("disk_write", new_x_k))
    beside = pr.while_reading(disk_read)
    compute = compute + beside
    weights_h2d = pr.xfer("h2d", W, streamed) if cuda else 0.0
    h2d = d2h = 0.0
    x_arrive = pr.xfer("disk_read", x_k)
    if cuda and dev_att:
        h2d = L * nb * (pr.xfer("h2d", kv_h + kv_k) + pr.xfer("h2d", x_h + x_k)) + weights_h2d
        d2h = L * nb * (pr.xfer("d2h", new_kv_h + new_kv_k) + pr.xfer("d2h", new_x_h + new_x_k))
        x_arrive = pr.xfer("h2d", x_h + x_k) + x_arrive
    elif cuda:
        att_io = gb * m.q_dim * DTYPE_BYTES[dt]
        h2d = L * nb * pr.xfer("h2d", att_io) + weights_h2d
        d2h = L * nb * pr.xfer("d2h", att_io + gb * kvpt)
    if cuda:  # host activations: per layer and GPU batch, its hidden state in (h2d) and out (d2h)
        act = activation_io_bytes(st, combo, 1)
        h2d, d2h = h2d + L * nb * pr.xfer("h2d", act), d2h + L * nb * pr.xfer("d2h", act)
    chain = L * (x_arrive + nb * rc) if dev_att else 0.0
    return DecodeTerms(compute=compute, cpu=cpu, h2d=h2d, d2h=d2h, disk_read=disk_read, disk_write=disk_write,
                       chain=chain, compute_while_reading=beside, weights_h2d=weights_h2d, weights_disk=weights_disk)


def pipeline_s(st: Setting, terms: DecodeTerms, layers: dict[str, int], pr: ExactPricer) -> float:
    """Streamed weights make layers unequal: the runtime reads a layer's data while the layer before
    it computes (one layer of read-ahead), so each layer takes max(its compute, its own reads) and a
    layer whose weights cross a link cannot hide them behind layers further back. The step is the sum
    over layers of that max (FlexGen's cost model); with no streamed weights every layer is alike and
    this equals the max of the totals. Not linear in the placement: the evaluator's term only."""
    L = st.model.num_layers
    W = layer_weight_bytes(st.model, st.dtype)
    cuda = not st.host_is_device
    disk_kv = (terms.disk - terms.weights_disk) / L  # per layer, without weights
    read_kv = (terms.disk_read - terms.weights_disk) / L
    h2d_kv = (terms.h2d - terms.weights_h2d) / L
    compute_alone = (terms.compute - terms.compute_while_reading) / L

    def layer_s(tier: str) -> float:
        weights = pr.xfer(WEIGHTS_READ.name, W) if tier == "disk" else 0.0
        compute = compute_alone + pr.while_reading(read_kv + weights)  # this layer's reads beside it
        h2d_io = h2d_kv + (pr.xfer("h2d", W) if cuda and tier != "device" else 0.0)
        return max(compute, terms.cpu / L, disk_kv + weights, h2d_io)

    return sum(count * layer_s(tier) for tier, count in layers.items() if count)


@dataclass(frozen=True)
class PrefillTerms:
    """Busy seconds of each resource for the prompt of the whole batch through all layers."""

    compute: Amount
    h2d: Amount
    d2h: Amount
    disk: Amount


def prefill_terms(st: Setting, combo: Combo, cost: CostModel, a: Amounts, pr: Pricer) -> PrefillTerms:
    """The prompt through all layers on the device: `gpu_batch * prompt` rows per GPU batch, weights
    streamed once, the prompt's K,V and X written to their tiers over d2h and the drive, and with
    activations on the host each GPU batch's hidden states in and out of every layer."""
    m, dt = st.model, st.dtype
    L = m.num_layers
    kvpt, xpt, W = kv_bytes_per_token(m, dt), x_bytes_per_token(m, dt), layer_weight_bytes(m, dt)
    gb, nb = combo.gpu_batch, combo.num_gpu_batches
    pre = a.prefill
    proj_s, att_s = op_times(cost, m, gb, st.prompt, 0, dt)
    compute = L * nb * (proj_s + att_s)
    h2d = d2h = 0.0
    if not st.host_is_device:
        h2d = pr.xfer("h2d", W, a.layers["host"] + a.layers["disk"])
        d2h = L * nb * pr.xfer("d2h", gb * (kvpt * (pre["kh"] + pre["kk"]) + xpt * (pre["xh"] + pre["xk"])))
        act = activation_io_bytes(st, combo, st.prompt)  # host activations: the prompt's hidden states in and out
        h2d, d2h = h2d + L * nb * pr.xfer("h2d", act), d2h + L * nb * pr.xfer("d2h", act)
    disk = pr.xfer(WEIGHTS_READ.name, W, a.layers["disk"]) + L * nb * pr.xfer(
        "disk_write", gb * (kvpt * pre["kk"] + xpt * pre["xk"]))
    return PrefillTerms(compute=compute, h2d=h2d, d2h=d2h, disk=disk)


def linear_amounts(st: Setting) -> Amounts:
    """The MILP's amounts in its variables: X pieces (fractions xd, xh, xk of seq) hold positions
    [0, l), all present once the context passes l; each K,V piece is taken to hold its share
    avg_context/seq of its tokens (the linear stand-in for the position cut); the new tokens and the
    prompt spread over the pieces in proportion."""
    seq = st.seq
    present = {}
    for piece in ("xd", "xh", "xk"):
        present[piece] = lin(**{piece: float(seq)})
    for piece in ("kd", "kh", "kk"):
        present[piece] = lin(**{piece: seq * st.share})
    pieces = tuple(present)
    return Amounts(stored={p: lin(**{p: float(seq)}) for p in pieces}, present=present,
                   new_per_step={p: lin(**{p: 1.0}) for p in pieces},
                   prefill={p: lin(**{p: float(st.prompt)}) for p in pieces},
                   layers={t: lin(**{"n" + "dhk"[i]: 1.0}) for i, t in enumerate(TIERS)})


def as_lin(x: Amount) -> LinForm:
    return x if isinstance(x, LinForm) else lin(x)


def linear_terms(st: Setting, combo: Combo, cost: CostModel) -> tuple[dict[str, LinForm], dict[str, LinForm]]:
    """The MILP's linear surrogate of one step: (decode, prefill) resource -> seconds as LinForms in
    the variables xd..kk (fractions of seq), nd, nh, nk (layers per tier)."""
    a, pr = linear_amounts(st), linear_pricer(st, combo, cost)
    d = decode_terms(st, combo, cost, a, pr)
    p = prefill_terms(st, combo, cost, a, pr)
    decode = {"compute": d.compute, "cpu": d.cpu, "h2d": d.h2d, "d2h": d.d2h, "disk": d.disk, "chain": d.chain}
    prefill = {"compute": p.compute, "h2d": p.h2d, "d2h": p.d2h, "disk": p.disk}
    return ({k: as_lin(v) for k, v in decode.items()}, {k: as_lin(v) for k, v in prefill.items()})
