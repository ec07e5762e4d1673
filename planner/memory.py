"""Memory accounting, in one place: what each tier holds at peak (`seq` tokens, the whole batch) for
the planner's feasibility (the MILP's memory rows, the evaluator's `memory_bytes`, the infeasibility
message) and the cache bytes the runtime allocates before it refuses a run (runtime/executor.py).
docs/planner.md, "Memory", has the table and the sources.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.layer_costs import embedding_params, kv_bytes_per_token, layer_weight_bytes, x_bytes_per_token
from planner.models import DTYPE_BYTES, ModelConfig
from planner.placement import TIER_INITIAL, TIERS
from planner.profile import Profile
from planner.stepcost import Amount, Combo, Setting

# Headroom for what the planner does not model: the CUDA context and allocator fragmentation on a
# GPU; the operating system and the Python process on a CPU-only machine (docs/planner.md, "Memory").
DEVICE_HEADROOM = 0.95
CPU_POOL_HEADROOM = 0.85
# Whole-token rounding of the placement (planner/placement.whole_tokens) can add up to this many
# tokens per piece to a tier; the MILP keeps that much free on the device and in host memory.
ROUNDING_TOKENS = 3


def usable_bytes(profile: Profile, gpu_mem: int | None, cpu_mem: int | None, disk: int | None) -> dict[str, int]:
    """Usable bytes per tier: the profile's memory (less headroom), capped by the user's caps."""
    def capped(avail: float, cap: int | None) -> int:
        return int(avail if cap is None else min(avail, cap))

    disk_b = capped(profile.disk_free_bytes, disk)
    if profile.host_is_device:
        pool = min(profile.device_memory_bytes, profile.host_memory_bytes) * CPU_POOL_HEADROOM
        pool = capped(capped(pool, gpu_mem), cpu_mem)
        return {"device": pool, "host": 0, "disk": disk_b}
    return {"device": capped(profile.device_memory_bytes * DEVICE_HEADROOM, gpu_mem),
            "host": capped(profile.host_memory_bytes, cpu_mem), "disk": disk_b}


def hidden_state_bytes(model: ModelConfig, dtype: str, combo: Combo, prompt: int) -> dict[str, int]:
    """The hidden states between layers in the prefill (the peak; a decode step's are one token), per
    tier: a layer's input and output for every sequence of the block, 2 * batch * prompt * h * p. With
    the activations on the host (FlexGen's activation placement, Sheng et al., arXiv:2303.06865) the
    host holds those and the device only the working GPU batch's input and output and, double-buffered,
    the next one's arriving and the last one's leaving: 2 * 2 * gpu_batch * prompt * h * p."""
    per_seq = 2 * prompt * model.hidden_size * DTYPE_BYTES[dtype]
    if combo.activation_placement == "host":
        return {"device": 2 * combo.gpu_batch * per_seq, "host": combo.batch * per_seq}
    return {"device": combo.batch * per_seq, "host": 0}


def activation_bytes(model: ModelConfig, dtype: str, combo: Combo, prompt: int) -> int:
    """Device working memory: the prefill of one GPU batch dominates (QKV, MLP intermediate, output
    of `gpu_batch * prompt` rows; memory-efficient attention, no score matrix), plus the hidden
    states the device holds (`hidden_state_bytes`) and the fp32 logits of one GPU batch."""
    p = DTYPE_BYTES[dtype]
    rows = combo.gpu_batch * prompt
    widths = model.q_dim + 2 * model.kv_dim + (2 if model.gated_mlp else 1) * model.intermediate_size
    widths += model.hidden_size
    hidden = hidden_state_bytes(model, dtype, combo, prompt)["device"]
    return rows * widths * p + hidden + combo.gpu_batch * model.vocab_size * 4


def stream_buffer_bytes(model: ModelConfig, dtype: str, combo: Combo, seq: int) -> int:
    """Device staging when X or K,V live off the device and attention runs there: double-buffered
    K,V of one layer for one GPU batch (design.md §2, FlexGen's overlap) plus the X staging."""
    if combo.attention_where != "device":
        return 0
    return combo.gpu_batch * seq * (2 * kv_bytes_per_token(model, dtype) + x_bytes_per_token(model, dtype))


def cpu_attention_scores_bytes(model: ModelConfig, combo: Combo, seq: int) -> int:
    """Host memory for CPU attention's fp32 scores of the whole batch at the full context."""
    return combo.batch * model.num_heads * seq * 4


def cache_bytes(model: ModelConfig, dtype: str, stored: dict[str, Amount], batch: int, layers: int
                ) -> dict[str, Amount]:
    """Bytes of K,V and X per tier: `stored` tokens per sequence in each piece (placement.PIECES) of
    `layers` layers for `batch` sequences (K,V 2*h_kv*p, X h*p per token and layer)."""
    kvpt, xpt = kv_bytes_per_token(model, dtype), x_bytes_per_token(model, dtype)
    return {t: layers * batch * (kvpt * stored["k" + TIER_INITIAL[t]] + xpt * stored["x" + TIER_INITIAL[t]])
            for t in TIERS}


def tier_bytes(st: Setting, combo: Combo, stored: dict[str, Amount], layers: dict[str, Amount],
               off_device: Amount, streams: Amount) -> dict[str, Amount]:
    """Bytes per tier at peak. `off_device` is 1 when some X or K,V lives off the device (staging
    buffers on it), `streams` is 1 when some weights stream (two layers' buffers); exact numbers for
    the evaluator, the MILP's binaries zoff and zw for the MILP. On a CPU-only machine the host's
    bytes count against the one pool ("device")."""
    m, dt = st.model, st.dtype
    W = layer_weight_bytes(m, dt)
    cache = cache_bytes(m, dt, stored, combo.batch, m.num_layers)
    device = embedding_params(m) * DTYPE_BYTES[dt] + activation_bytes(m, dt, combo, st.prompt)
    device = device + W * layers["device"] + cache["device"] + off_device * stream_buffer_bytes(
        m, dt, combo, st.seq) + streams * (2 * W)
    host = W * layers["host"] + cache["host"] + hidden_state_bytes(m, dt, combo, st.prompt)["host"]
    if combo.attention_where != "device" and not st.host_is_device:
        host = host + cpu_attention_scores_bytes(m, combo, st.seq)
    disk = W * layers["disk"] + cache["disk"]
    if st.host_is_device:
        return {"device": device + host, "host": 0.0, "disk": disk}
    return {"device": device, "host": host, "disk": disk}


def rounding_margin_bytes(st: Setting, combo: Combo) -> float:
    m = st.model
    return float(ROUNDING_TOKENS * m.num_layers * combo.batch * max(kv_bytes_per_token(m, st.dtype),
                                                                    x_bytes_per_token(m, st.dtype)))


@dataclass(frozen=True)
class Footprint:
    """The least memory one combo needs at `seq` tokens (the infeasibility message's numbers), from the
    same pieces tier_bytes adds up."""

    cache_bytes: int  # the whole batch's cache: K,V, or X where that is smaller and X is allowed
    weight_bytes: int  # all layers
    layer_weight_bytes: int  # one layer
    embedding_bytes: int
    activation_bytes: int  # the device's prefill working memory (activation_bytes)
    hidden_bytes: int  # of which the hidden states the device holds in prefill (hidden_state_bytes)
    staging_bytes: int  # K,V and X staging when attention runs on the device (stream_buffer_bytes)

    @property
    def device_min_bytes(self) -> int:
        """On the device with everything else offloaded: two streamed layers and the staging."""
        return self.embedding_bytes + self.activation_bytes + 2 * self.layer_weight_bytes + self.staging_bytes

    @property
    def resident_bytes(self) -> int:
        """The whole cache on the device, weights streamed one layer at a time (double-buffered)."""
        return (self.embedding_bytes + self.activation_bytes + self.cache_bytes
                + min(self.weight_bytes, 2 * self.layer_weight_bytes))


def smallest_footprint(st: Setting, combo: Combo, x_allowed: bool) -> Footprint:
    """The footprint of `combo`; with `x_allowed`, each token is cached as the smaller of K,V and X."""
    m, dt = st.model, st.dtype
    per_token = kv_bytes_per_token(m, dt)
    if x_allowed:
        per_token = min(per_token, x_bytes_per_token(m, dt))
    W = layer_weight_bytes(m, dt)
    return Footprint(
        cache_bytes=m.num_layers * combo.batch * st.seq * per_token, weight_bytes=m.num_layers * W,
        layer_weight_bytes=W, embedding_bytes=embedding_params(m) * DTYPE_BYTES[dt],
        activation_bytes=activation_bytes(m, dt, combo, st.prompt),
        hidden_bytes=hidden_state_bytes(m, dt, combo, st.prompt)["device"],
        staging_bytes=stream_buffer_bytes(m, dt, combo, st.seq),
    )
