"""One readable decoder for the two families kvplan plans for, built from a planner ModelConfig.

- OPT family: learned positions (index = position + 2, OPT's offset), LayerNorm with bias before
  attention and before the MLP, ReLU fc1/fc2, biases everywhere, LM head tied to the embedding.
- Llama family (llama, mistral, qwen2): RMSNorm, rotary embeddings (rope_theta, the "rotate half"
  layout Hugging Face checkpoints use), grouped-query attention, SwiGLU MLP, QKV bias for qwen2.

The layer is split into the pieces the runtime schedules separately (input norm -> X, QKV, K,V
recomputed from X, attention, the rest), so the executor can put each piece where the plan says.

"X" (the X-cache of KVPR) is the input of the QKV projection *after* the input norm: K = X W_k^T
(+ b_k, then RoPE at the token's position), V = X W_v^T (+ b_v). It has h values per token per
layer, which is exactly what the planner counts (planner/layer_costs.py: x_bytes_per_token = h*p).

Weights are random (seeded, deterministic) by default or read from a local Hugging Face
safetensors checkpoint (`load_safetensors_dir`); linear weights are kept as [out, in] like HF.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from planner.errors import KvplanError
from planner.models import ModelConfig

TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def layer_weight_shapes(m: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of one decoder layer's tensors, in a fixed order (the on-disk layout)."""
    h, q, kv, i = m.hidden_size, m.q_dim, m.kv_dim, m.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {"ln1.w": (h,)}
    if m.norm == "layernorm":
        shapes["ln1.b"] = (h,)
    # W_q, W_k and W_v are kept as one [q + 2*kv, h] matrix ("wqkv"): one GEMM projects the new token
    # (the planner's qkv_proj), and its last 2*kv rows alone make K,V in the stored layout (recompute)
    shapes.update({"wqkv": (q + 2 * kv, h), "wo": (h, q)})
    if m.qkv_bias:
        shapes["bqkv"] = (q + 2 * kv,)
    if m.o_bias:
        shapes["bo"] = (h,)
    shapes["ln2.w"] = (h,)
    if m.norm == "layernorm":
        shapes["ln2.b"] = (h,)
    if m.gated_mlp:
        shapes.update({"gate": (i, h), "up": (i, h), "down": (h, i)})
        if m.mlp_bias:
            shapes.update({"b_gate": (i,), "b_up": (i,), "b_down": (h,)})
    else:
        shapes.update({"fc1": (i, h), "fc2": (h, i)})
        if m.mlp_bias:
            shapes.update({"b1": (i,), "b2": (h,)})
    return shapes


def outer_weight_shapes(m: ModelConfig) -> dict[str, tuple[int, ...]]:
    h = m.hidden_size
    shapes: dict[str, tuple[int, ...]] = {"embed": (m.vocab_size, h)}
    if m.position_encoding == "learned":
        shapes["pos_embed"] = (m.max_position_embeddings + 2, h)
    shapes["norm.w"] = (h,)
    if m.norm == "layernorm":
        shapes["norm.b"] = (h,)
    if not m.tie_word_embeddings:
        shapes["lm_head"] = (m.vocab_size, h)
    return shapes


def _random_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    base = name.split(".")[0]
    if name.endswith(".w") and base.startswith(("ln", "norm")):  # norm gains near 1
        t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
    elif name.endswith(".b") or base.startswith("b"):  # biases small
        t = 0.1 * torch.randn(shape, generator=gen)
    else:  # matrices: unit-variance outputs (std 1/sqrt(fan_in)) so attention is far from uniform
        t = torch.randn(shape, generator=gen) / math.sqrt(shape[-1])
    return t.to(dtype)


def random_layer_weights(m: ModelConfig, layer: int, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + layer + 1)
    return {n: _random_tensor(n, s, gen, dtype) for n, s in layer_weight_shapes(m).items()}


def random_outer_weights(m: ModelConfig, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed * 1_000_003)
    w = {n: _random_tensor(n, s, gen, dtype) for n, s in outer_weight_shapes(m).items()}
    w["embed"] = w["embed"] * math.sqrt(m.hidden_size) * 0.5  # embeddings of order 1 per element
    return w


# --- Hugging Face safetensors checkpoints -------------------------------------------------------
_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read one .safetensors file (8-byte little-endian header length, JSON header, raw data)."""
    data = path.read_bytes()
    if len(data) < 8:
        raise KvplanError(f"{path} is not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8:8 + n])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KvplanError(f"{path} is not a safetensors file (bad header)") from exc
    base = 8 + n
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] not in _ST_DTYPES:
            raise KvplanError(f"{path}: tensor {name} has unsupported dtype {meta['dtype']}")
        b, e = meta["data_offsets"]
        t = torch.frombuffer(bytearray(data[base + b:base + e]), dtype=_ST_DTYPES[meta["dtype"]])
        out[name] = t.reshape(meta["shape"])
    return out


def _hf_layer_names(m: ModelConfig, i: int) -> dict[str, str]:
    if m.family == "opt":
        p = f"decoder.layers.{i}."
        names = {"ln1.w": "self_attn_layer_norm.weight", "ln1.b": "self_attn_layer_norm.bias",
                 "wq": "self_attn.q_proj.weight", "bq": "self_attn.q_proj.bias",
                 "wk": "self_attn.k_proj.weight", "bk": "self_attn.k_proj.bias",
                 "wv": "self_attn.v_proj.weight", "bv": "self_attn.v_proj.bias",
                 "wo": "self_attn.out_proj.weight", "bo": "self_attn.out_proj.bias",
                 "ln2.w": "final_layer_norm.weight", "ln2.b": "final_layer_norm.bias",
                 "fc1": "fc1.weight", "b1": "fc1.bias", "fc2": "fc2.weight", "b2": "fc2.bias"}
    else:
        p = f"layers.{i}."
        names = {"ln1.w": "input_layernorm.weight", "ln2.w": "post_attention_layernorm.weight",
                 "wq": "self_attn.q_proj.weight", "bq": "self_attn.q_proj.bias",
                 "wk": "self_attn.k_proj.weight", "bk": "self_attn.k_proj.bias",
                 "wv": "self_attn.v_proj.weight", "bv": "self_attn.v_proj.bias",
                 "wo": "self_attn.o_proj.weight", "bo": "self_attn.o_proj.bias",
                 "gate": "mlp.gate_proj.weight", "up": "mlp.up_proj.weight", "down": "mlp.down_proj.weight",
                 "b_gate": "mlp.gate_proj.bias", "b_up": "mlp.up_proj.bias", "b_down": "mlp.down_proj.bias"}
    return {k: p + v for k, v in names.items()}


def _hf_outer_names(m: ModelConfig) -> dict[str, str]:
    if m.family == "opt":
        return {"embed": "decoder.embed_tokens.weight", "pos_embed": "decoder.embed_positions.weight",
                "norm.w": "decoder.final_layer_norm.weight", "norm.b": "decoder.final_layer_norm.bias",
                "lm_head": "lm_head.weight"}
    return {"embed": "embed_tokens.weight", "norm.w": "norm.weight", "lm_head": "lm_head.weight"}


class Checkpoint:
    """A local Hugging Face checkpoint folder (*.safetensors), mapped onto the names used here."""

    def __init__(self, folder: str | Path, model: ModelConfig):
        folder = Path(folder)
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise KvplanError(f"no *.safetensors files in {folder}")
        self.model = model
        self.tensors: dict[str, torch.Tensor] = {}
        for f in files:
            for name, t in read_safetensors(f).items():
                key = name[len("model."):] if name.startswith("model.") else name
                self.tensors[key] = t

    def _tensor(self, hf: str) -> torch.Tensor:
        if hf not in self.tensors:
            raise KvplanError(f"checkpoint has no tensor '{hf}' needed for {self.model.name}")
        return self.tensors[hf]

    def _take(self, mapping: dict[str, str], shapes: dict[str, tuple[int, ...]], dtype: torch.dtype):
        out = {}
        for name, shape in shapes.items():
            if name in ("wqkv", "bqkv"):  # q_proj, k_proj and v_proj stacked
                parts = [mapping[name[0] + x] for x in "qkv"]
                t = torch.cat([self._tensor(hf) for hf in parts])
                hf = " + ".join(parts)
            else:
                hf = mapping[name]
                t = self._tensor(hf)
            if tuple(t.shape) != shape:
                raise KvplanError(f"checkpoint tensor '{hf}' has shape {tuple(t.shape)}, the model needs {shape}")
            out[name] = t.to(dtype)
        return out

    def layer(self, i: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return self._take(_hf_layer_names(self.model, i), layer_weight_shapes(self.model), dtype)

    def outer(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        shapes = outer_weight_shapes(self.model)
        if "lm_head" in shapes and "lm_head.weight" not in self.tensors:
            raise KvplanError("checkpoint has no lm_head.weight but the model does not tie embeddings")
        return self._take(_hf_outer_names(self.model), shapes, dtype)


# --- the layer, piece by piece -------------------------------------------------------------------
@dataclass(frozen=True)
class Arch:
    """What the layer functions need to know about the model (kept small and hashable)."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    layernorm: bool
    rotary: bool
    rope_theta: float
    gated: bool
    eps: float

    @classmethod
    def of(cls, m: ModelConfig) -> Arch:
        return cls(m.hidden_size, m.num_heads, m.num_kv_heads, m.head_dim, m.norm == "layernorm",
                   m.position_encoding == "rotary", m.rope_theta, m.gated_mlp,
                   1e-5 if m.norm == "layernorm" else 1e-6)


def _norm(a: Arch, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    if a.layernorm:
        return F.layer_norm(x, (x.shape[-1],), w, b, a.eps)
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + a.eps)
    return w * xf.to(x.dtype)


def input_norm(a: Arch, w: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    """X: the layer input after the input norm, [batch, tokens, hidden]."""
    return _norm(a, h, w["ln1.w"], w.get("ln1.b"))


def rope(a: Arch, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, "rotate half" layout; x is [batch, heads, tokens, head_dim]."""
    d = a.head_dim
    inv_freq = 1.0 / (a.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=x.device) / d))
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    emb = torch.cat([angles, angles], dim=-1)
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    half = d // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def _heads(t: torch.Tensor, n: int, d: int) -> torch.Tensor:
    b, s, _ = t.shape
    return t.view(b, s, n, d).transpose(1, 2)


def _kv_weight(a: Arch, w: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[W_k; W_v] and its bias: the last 2*kv rows of the fused QKV weight (a view, no copy)."""
    if "wkv" in w:  # a bare K,V weight (the profiler's recompute probe)
        return w["wkv"], w.get("bkv")
    q = a.heads * a.head_dim
    return w["wqkv"][q:], (w["bqkv"][q:] if "bqkv" in w else None)


def _rope_k(a: Arch, kv: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """RoPE on the K half of [batch, tokens, 2*kv_dim], in place."""
    if a.rotary:
        kvd = a.kv_heads * a.head_dim
        k = kv[..., :kvd]
        kv[..., :kvd] = rope(a, _heads(k, a.kv_heads, a.head_dim), positions).transpose(1, 2).reshape(k.shape)
    return kv


def kv_from_x(a: Arch, w: dict[str, torch.Tensor], x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """K,V of tokens from their X, as one [batch, tokens, 2*kv_dim] tensor (K after RoPE, then V):
    the layout in which the runtime stores and streams the KV cache."""
    return _rope_k(a, F.linear(x, *_kv_weight(a, w)), positions)


def query_and_kv(a: Arch, w: dict[str, torch.Tensor], x: torch.Tensor,
                 positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(query, kv_from_x) from one GEMM with the fused QKV weight: Q heads [batch, heads, tokens,
    head_dim] and K,V [batch, tokens, 2*kv_dim], RoPE applied to both."""
    q_dim = a.heads * a.head_dim
    qkv = F.linear(x, w["wqkv"], w.get("bqkv"))
    q = _heads(qkv[..., :q_dim], a.heads, a.head_dim)
    kv = _rope_k(a, qkv[..., q_dim:].contiguous(), positions)
    return (rope(a, q, positions) if a.rotary else q), kv


def kv_from_x_into(a: Arch, w: dict[str, torch.Tensor], x_tm: torch.Tensor, positions: torch.Tensor,
                   out: torch.Tensor) -> None:
    """kv_from_x for token-major X [tokens, batch, hidden], written straight into `out`
    [tokens, batch, 2*kv_dim] (rows of the attention buffer). One 2-D GEMM over all tokens x batch
    rows: a strided token-major view of X is gathered first (reshape copies X, which is small), since
    torch.matmul of a non-contiguous 3-D X with `out` fell back to one small GEMM per token, 5-12x
    slower on the CPU (measured: opt-125m, 1024 tokens x 4 sequences, 335 ms vs 59 ms)."""
    n = out.shape[-1]
    wkv, bkv = _kv_weight(a, w)
    torch.mm(x_tm.reshape(-1, x_tm.shape[-1]), wkv.t(), out=out.view(-1, n))
    if bkv is not None:
        out.add_(bkv)
    if a.rotary:
        kvd = a.kv_heads * a.head_dim
        n, b = out.shape[0], out.shape[1]
        k = out[..., :kvd].view(n, b, a.kv_heads, a.head_dim).permute(1, 2, 0, 3)  # [b, heads, tokens, d]
        out[..., :kvd] = rope(a, k, positions).permute(2, 0, 1, 3).reshape(n, b, kvd)


def query(a: Arch, w: dict[str, torch.Tensor], x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Q heads [batch, heads, tokens, head_dim], RoPE applied."""
    q_dim = a.heads * a.head_dim
    q = _heads(F.linear(x, w["wqkv"][:q_dim], w["bqkv"][:q_dim] if "bqkv" in w else None), a.heads, a.head_dim)
    return rope(a, q, positions) if a.rotary else q


def _kv_heads(a: Arch, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    kvd = a.kv_heads * a.head_dim
    return _heads(kv[..., :kvd], a.kv_heads, a.head_dim), _heads(kv[..., kvd:], a.kv_heads, a.head_dim)


def attention(a: Arch, q: torch.Tensor, kv: torch.Tensor, causal: bool) -> torch.Tensor:
    """q [b, heads, t, d] over kv [b, keys, 2*kv_dim] (any strides); returns [b, t, heads*d]. With
    `causal`, query i sees keys 0..i (prefill from an empty cache, t == keys); without, every query sees
    every key (decode). torch's fused scaled_dot_product_attention, grouped-query heads included."""
    k, v = _kv_heads(a, kv)
    if causal and q.shape[2] != k.shape[2]:
        raise ValueError("causal attention here is for a prefill from an empty cache")
    b, _, t, d = q.shape
    g = a.heads // a.kv_heads
    if g > 1 and not causal:
        # decode with GQA: the g query heads of one K,V head become g*t queries of that head, so K,V
        # are read once instead of being expanded g times (3x faster on the CPU for g = 8)
        out = F.scaled_dot_product_attention(q.reshape(b, a.kv_heads, g * t, d), k, v)
        out = out.view(b, a.heads, t, d)
    else:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=g > 1)
    return out.transpose(1, 2).reshape(b, t, a.heads * a.head_dim)


def attention_naive(a: Arch, q: torch.Tensor, kv: torch.Tensor, causal: bool) -> torch.Tensor:
    """The same attention written out (softmax(q k^T / sqrt(d)) v, K,V heads repeated for GQA): the
    reference forward uses it, so the tests also check the fused kernel."""
    k, v = _kv_heads(a, kv)
    if a.heads != a.kv_heads:  # GQA: each KV head serves heads/kv_heads query heads
        g = a.heads // a.kv_heads
        k = k.repeat_interleave(g, dim=1)
        v = v.repeat_interleave(g, dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(a.head_dim)
    if causal:
        t, n = q.shape[2], k.shape[2]
        mask = torch.ones(t, n, dtype=torch.bool, device=q.device).tril(diagonal=n - t)
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    out = torch.matmul(probs, v)
    b, _, t, _ = out.shape
    return out.transpose(1, 2).reshape(b, t, a.heads * a.head_dim)


def finish_layer(a: Arch, w: dict[str, torch.Tensor], h: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """Output projection and residual, then the MLP block and residual."""
    h = h + F.linear(attn, w["wo"], w.get("bo"))
    y = _norm(a, h, w["ln2.w"], w.get("ln2.b"))
    if a.gated:
        y = F.silu(F.linear(y, w["gate"], w.get("b_gate"))) * F.linear(y, w["up"], w.get("b_up"))
        y = F.linear(y, w["down"], w.get("b_down"))
    else:
        y = F.linear(F.relu(F.linear(y, w["fc1"], w.get("b1"))), w["fc2"], w.get("b2"))
    return h + y


def embed(a: Arch, w: dict[str, torch.Tensor], tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    h = F.embedding(tokens, w["embed"])
    if "pos_embed" in w:
        h = h + F.embedding(positions + 2, w["pos_embed"])[None]  # OPT: positions are offset by 2
    return h


def head(a: Arch, w: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    y = _norm(a, h, w["norm.w"], w.get("norm.b"))
    return F.linear(y, w.get("lm_head", w["embed"]))


def reference_logits(m: ModelConfig, outer: dict[str, torch.Tensor], layers: list[dict[str, torch.Tensor]],
                     tokens: torch.Tensor) -> torch.Tensor:
    """Plain full forward pass with no cache at all: logits [batch, tokens, vocab]."""
    a = Arch.of(m)
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    h = embed(a, outer, tokens, positions)
    for w in layers:
        x = input_norm(a, w, h)
        kv = kv_from_x(a, w, x, positions)
        h = finish_layer(a, w, h, attention_naive(a, query(a, w, x, positions), kv, causal=True))
    return head(a, outer, h)
