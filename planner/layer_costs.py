"""Exact per-layer bytes and FLOPs of a decoder layer (pure functions, no hardware).

Conventions (docs/models.md): a GEMM of (m x k) by (k x n) is 2*m*n*k FLOPs; a bias add is m*n;
attention counts the two matrix products QK^T and PV (2*d FLOPs per query-key pair each) and not
the softmax; element-wise activations count one FLOP per output element (plus one for the gating
multiply of a gated MLP). Sizes are per layer unless a name says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.models import DTYPE_BYTES, ModelConfig

OP_NAMES = ("qkv_proj", "o_proj", "mlp_up", "mlp_act", "mlp_down", "attention")


def _bytes(model: ModelConfig, dtype: str | None) -> int:
    return DTYPE_BYTES[dtype or model.dtype]


def layer_weight_params(model: ModelConfig) -> int:
    """Parameters of one decoder layer: projections, their biases, and the two norms."""
    h, q, kv, i = model.hidden_size, model.q_dim, model.kv_dim, model.intermediate_size
    params = h * (q + 2 * kv) + q * h  # W_q, W_k, W_v, W_o
    params += (3 if model.gated_mlp else 2) * h * i  # gate+up+down, or fc1+fc2
    if model.qkv_bias:
        params += q + 2 * kv
    if model.o_bias:
        params += h
    if model.mlp_bias:
        params += (2 * i if model.gated_mlp else i) + h
    params += 2 * h * (2 if model.norm == "layernorm" else 1)  # input and post-attention norms
    if model.qk_norm:
        params += 2 * model.head_dim  # Qwen3's q and k RMSNorm gains, one per head dimension
    return params


def layer_weight_bytes(model: ModelConfig, dtype: str | None = None) -> int:
    return layer_weight_params(model) * _bytes(model, dtype)


def embedding_params(model: ModelConfig) -> int:
    """Parameters outside the layers: token embedding, LM head (unless tied), positions, final norm."""
    h = model.hidden_size
    params = model.vocab_size * h
    if not model.tie_word_embeddings:
        params += model.vocab_size * h
    if model.position_encoding == "learned":
        params += (model.max_position_embeddings + 2) * h  # OPT offsets its positions by 2
    params += h * (2 if model.norm == "layernorm" else 1)
    return params


def total_params(model: ModelConfig) -> int:
    return model.num_layers * layer_weight_params(model) + embedding_params(model)


def kv_bytes_per_token(model: ModelConfig, dtype: str | None = None) -> int:
    """K and V of one token in one layer: 2 * h_kv * p."""
    return 2 * model.kv_dim * _bytes(model, dtype)


def x_bytes_per_token(model: ModelConfig, dtype: str | None = None) -> int:
    """The layer input X of one token in one layer (KVPR's activation cache): h * p."""
    return model.hidden_size * _bytes(model, dtype)


def recompute_saves_bytes(model: ModelConfig) -> bool:
    """Sending X instead of K,V shrinks the link traffic only when h < 2*h_kv (KVPR, design.md §1)."""
    return model.hidden_size < 2 * model.kv_dim


@dataclass(frozen=True)
class Gemm:
    m: int
    n: int
    k: int

    @property
    def flops(self) -> int:
        return 2 * self.m * self.n * self.k


@dataclass(frozen=True)
class Projection:
    """One GEMM the runtime runs in a layer (runtime/model.py): `weight` names the weight it multiplies
    by, as the runtime's layer dict does, and `op` the layer op it is priced under (OP_NAMES)."""

    op: str
    weight: str
    gemm: Gemm


def layer_projections(model: ModelConfig, tokens: int) -> tuple[Projection, ...]:
    """The projection GEMMs of one layer for `tokens` rows (batch x new tokens), one per GEMM the
    runtime runs. A gated MLP's up projection is two GEMMs of `i` columns, gate and up (runtime/model.py
    `finish_layer`, as Hugging Face's LlamaMLP), not one of 2*i: both are priced under `mlp_up`."""
    h, q, kv, i = model.hidden_size, model.q_dim, model.kv_dim, model.intermediate_size
    up = (("gate", "up") if model.gated_mlp else ("fc1",))
    return (
        Projection("qkv_proj", "wqkv", Gemm(tokens, q + 2 * kv, h)),
        Projection("o_proj", "wo", Gemm(tokens, h, q)),
        *(Projection("mlp_up", name, Gemm(tokens, i, h)) for name in up),
        Projection("mlp_down", "down" if model.gated_mlp else "fc2", Gemm(tokens, h, i)),
    )


def layer_gemm_shapes(model: ModelConfig, tokens: int) -> list[Gemm]:
    """Every GEMM shape a layer runs for `tokens` rows (gate and up once: the same shape)."""
    return list(dict.fromkeys(p.gemm for p in layer_projections(model, tokens)))


def recompute_gemm(model: ModelConfig, tokens: int) -> Gemm:
    """K,V for `tokens` cached rows from their X: X (tokens x h) times [W_k W_v] (h x 2*h_kv)."""
    return Gemm(tokens, 2 * model.kv_dim, model.hidden_size)


def attention_flops(model: ModelConfig, batch: int, query_tokens: int, context: int, causal: bool) -> int:
    """QK^T and PV for `query_tokens` new tokens that attend to `context` earlier tokens plus
    themselves (causally) or to all `context + query_tokens` keys (non-causal)."""
    d = model.q_dim
    if causal:
        # query j (1-based) sees context + j keys: sum_j (context + j) = n*context + n(n+1)/2
        pairs = query_tokens * context + query_tokens * (query_tokens + 1) // 2
    else:
        pairs = query_tokens * (context + query_tokens)
    return 4 * batch * d * pairs


def op_flops(model: ModelConfig, batch: int, query_tokens: int, context: int) -> dict[str, int]:
    """FLOPs of each op of one layer when `batch` sequences each add `query_tokens` tokens after
    `context` cached ones. Decode is query_tokens=1; prefill is context=0, query_tokens=prompt."""
    rows = batch * query_tokens
    flops: dict[str, int] = {}
    for p in layer_projections(model, rows):
        flops[p.op] = flops.get(p.op, 0) + p.gemm.flops
    if model.qkv_bias:
        flops["qkv_proj"] += rows * (model.q_dim + 2 * model.kv_dim)
    if model.o_bias:
        flops["o_proj"] += rows * model.hidden_size
    if model.mlp_bias:
        flops["mlp_up"] += rows * (2 if model.gated_mlp else 1) * model.intermediate_size
        flops["mlp_down"] += rows * model.hidden_size
    flops["mlp_act"] = rows * model.intermediate_size * (2 if model.gated_mlp else 1)
    flops["attention"] = attention_flops(model, batch, query_tokens, context, causal=True)
    return flops


def decode_flops(model: ModelConfig, batch: int, context: int) -> dict[str, int]:
    """One decode step: one new token per sequence after `context` cached tokens."""
    return op_flops(model, batch, 1, context)


def prefill_flops(model: ModelConfig, batch: int, prompt: int) -> dict[str, int]:
    return op_flops(model, batch, prompt, 0)


def recompute_kv_flops(model: ModelConfig, batch: int, tokens: int) -> int:
    """K,V[0:l] = X[0:l] W_k, X[0:l] W_v: 4*b*l*h*h_kv (design.md §1), plus the K/V biases if any."""
    flops = recompute_gemm(model, batch * tokens).flops
    if model.qkv_bias:
        flops += batch * tokens * 2 * model.kv_dim
    return flops


def layer_summary(model: ModelConfig, batch: int = 1, context: int = 0, dtype: str | None = None) -> dict:
    """Every derived per-layer number, as plain data for tables and JSON."""
    return {
        "weight_params": layer_weight_params(model),
        "weight_bytes": layer_weight_bytes(model, dtype),
        "kv_bytes_per_token": kv_bytes_per_token(model, dtype),
        "x_bytes_per_token": x_bytes_per_token(model, dtype),
        "recompute_saves_bytes": recompute_saves_bytes(model),
        "decode_flops": decode_flops(model, batch, context),
        "recompute_kv_flops_per_token": recompute_kv_flops(model, 1, 1),
    }
