"""One readable decoder for the families kvplan plans for, built from a planner ModelConfig.

- OPT: learned positions (index = position + 2, OPT's offset), LayerNorm with bias before attention
  and before the MLP, ReLU fc1/fc2, biases everywhere, LM head tied to the embedding.
- Rotary families (llama, mistral, qwen2, qwen3, phi3): RMSNorm, rotary embeddings (rope_theta and
  the "linear" or "llama3" frequency scaling, the "rotate half" layout Hugging Face checkpoints
  use), grouped-query attention, gated MLP; QKV bias for qwen2, per-head q/k RMSNorm for qwen3.
Every number that changes the math comes from the ModelConfig (norm epsilon, activation, RoPE
theta and scaling, head_dim, tied embeddings); what this decoder does not implement is refused by
`check_runnable` (and by the model schema, planner/models.py) before anything is allocated.

The layer is split into the pieces the runtime schedules separately (input norm -> X, QKV, K,V
recomputed from X, attention, the rest), so the executor can put each piece where the plan says.

"X" (the X-cache of KVPR) is the input of the QKV projection *after* the input norm: K = X W_k^T
(+ b_k, then the k norm and RoPE at the token's position), V = X W_v^T (+ b_v). It has h values per
token per layer, which is exactly what the planner counts (planner/layer_costs.py: x_bytes_per_token).

Weights are random (seeded, deterministic) by default or read from a local Hugging Face
safetensors checkpoint (`Checkpoint`, one tensor at a time); linear weights are kept as [out, in]
like HF. tests/test_hf_oracle.py checks the logits against transformers' own implementation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open

from planner.errors import KvplanError
from planner.jsonio import read_json
from planner.models import ModelConfig, RopeScaling
from planner.units import escape_name

TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def check_runnable(m: ModelConfig, seq: int) -> None:
    """Refuse (one line) a model this decoder would run wrongly at `seq` positions: called before
    any allocation. Families, encodings and activations it lacks are already refused by the model
    schema; what depends on the context length is checked here."""
    if m.sliding_window is not None and seq > m.sliding_window:
        raise KvplanError(f"model {escape_name(m.name)}: sliding-window attention (window {m.sliding_window}) is not "
                          f"implemented and the plan's seq {seq} exceeds the window")
    if m.position_encoding == "learned" and seq > m.max_position_embeddings:
        raise KvplanError(f"model {escape_name(m.name)}: seq {seq} exceeds its {m.max_position_embeddings} "
                          "learned positions")
    if m.activation not in _ACTIVATIONS:
        raise KvplanError(f"model {escape_name(m.name)}: activation {m.activation!r} is not implemented")


def layer_weight_shapes(m: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of one decoder layer's tensors, in a fixed order (the on-disk layout)."""
    h, q, kv, i = m.hidden_size, m.q_dim, m.kv_dim, m.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {"ln1.w": (h,)}
    if m.norm == "layernorm":
        shapes["ln1.b"] = (h,)
    # W_q, W_k and W_v are kept as one [q + 2*kv, h] matrix ("wqkv"): one GEMM projects the new token
    # (the planner's qkv_proj), and its last 2*kv rows alone make K,V in the stored layout (recompute)
    shapes.update({"wqkv": (q + 2 * kv, h), "wo": (h, q)})
    if m.qk_norm:  # one RMSNorm gain per head dimension, shared by all heads (Qwen3)
        shapes.update({"norm_q.w": (m.head_dim,), "norm_k.w": (m.head_dim,)})
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
def _attention_names(out_proj: str) -> dict[str, str]:
    """The attention's q, k, v and output projections, weights (wq..wo) and biases (bq..bo); the output
    projection is OPT's out_proj, the others' o_proj."""
    return {f"{kind}{ours}": f"self_attn.{theirs}.{'weight' if kind == 'w' else 'bias'}"
            for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", out_proj))
            for kind in ("w", "b")}


def _hf_layer_names(m: ModelConfig, i: int) -> dict[str, str]:
    """Our tensor names -> the checkpoint's (without the "model." prefix). Phi-3 stores q, k, v as one
    qkv_proj and gate, up as one gate_up_proj: those map whole onto wqkv and gate+up."""
    if m.family == "opt":
        p = f"decoder.layers.{i}."
        names = {"ln1.w": "self_attn_layer_norm.weight", "ln1.b": "self_attn_layer_norm.bias",
                 **_attention_names("out_proj"),
                 "ln2.w": "final_layer_norm.weight", "ln2.b": "final_layer_norm.bias",
                 "fc1": "fc1.weight", "b1": "fc1.bias", "fc2": "fc2.weight", "b2": "fc2.bias"}
    else:
        p = f"layers.{i}."
        names = {"ln1.w": "input_layernorm.weight", "ln2.w": "post_attention_layernorm.weight",
                 **_attention_names("o_proj"),
                 "norm_q.w": "self_attn.q_norm.weight", "norm_k.w": "self_attn.k_norm.weight",
                 "gate": "mlp.gate_proj.weight", "up": "mlp.up_proj.weight", "down": "mlp.down_proj.weight",
                 "b_gate": "mlp.gate_proj.bias", "b_up": "mlp.up_proj.bias", "b_down": "mlp.down_proj.bias"}
        if m.family == "phi3":
            names.update({"wqkv": "self_attn.qkv_proj.weight", "gate_up": "mlp.gate_up_proj.weight"})
    return {k: p + v for k, v in names.items()}


def _hf_outer_names(m: ModelConfig) -> dict[str, str]:
    if m.family == "opt":
        return {"embed": "decoder.embed_tokens.weight", "pos_embed": "decoder.embed_positions.weight",
                "norm.w": "decoder.final_layer_norm.weight", "norm.b": "decoder.final_layer_norm.bias",
                "lm_head": "lm_head.weight"}
    return {"embed": "embed_tokens.weight", "norm.w": "norm.weight", "lm_head": "lm_head.weight"}


class Checkpoint:
    """A local Hugging Face checkpoint folder (*.safetensors, sharded or not), mapped onto the names
    used here. Only the tensor index is read up front; each tensor is read when asked for, through
    safetensors.safe_open (the file is memory-mapped, one tensor is copied out at a time), so a
    checkpoint larger than RAM can feed a run one layer at a time. A sharded checkpoint's
    model.safetensors.index.json names the file of each tensor; without one, every *.safetensors
    file's header is read."""

    def __init__(self, folder: str | Path, model: ModelConfig):
        folder = Path(folder)
        self.model = model
        self.where: dict[str, tuple[Path, str]] = {}  # our key (no "model." prefix) -> (file, stored name)
        index = folder / "model.safetensors.index.json"
        if index.exists():
            data = read_json(index, "checkpoint index")
            weight_map = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise KvplanError(f"{index}: no 'weight_map' of tensor name -> file")
            pairs = [(name, folder / file) for name, file in weight_map.items()]
        else:
            files = sorted(folder.glob("*.safetensors"))
            if not files:
                raise KvplanError(f"no *.safetensors files in {folder}")
            pairs = [(name, f) for f in files for name in self._keys(f)]
        for name, file in pairs:
            key = name[len("model."):] if name.startswith("model.") else name
            self.where[key] = (file, name)

    @staticmethod
    def _keys(file: Path) -> list[str]:
        try:
            with safe_open(file, framework="pt") as f:
                return list(f.keys())
        except (OSError, SafetensorError) as exc:
            raise KvplanError(f"{file} is not a readable safetensors file ({str(exc).splitlines()[0]})") from None

    def has(self, hf: str) -> bool:
        return hf in self.where

    def _tensor(self, hf: str, shape: tuple[int, ...]) -> torch.Tensor:
        """One tensor, its shape checked from the header before any data is read."""
        if hf not in self.where:
            raise KvplanError(f"checkpoint has no tensor '{hf}' needed for {escape_name(self.model.name)}")
        file, stored = self.where[hf]
        try:
            with safe_open(file, framework="pt") as f:
                got = tuple(f.get_slice(stored).get_shape())
                if got != shape:
                    raise KvplanError(f"checkpoint tensor '{stored}' has shape {got}, the model needs {shape}")
                return f.get_tensor(stored)
        except (OSError, SafetensorError) as exc:
            raise KvplanError(f"cannot read tensor '{stored}' from {file} ({str(exc).splitlines()[0]})") from None

    def _take(self, mapping: dict[str, str], shapes: dict[str, tuple[int, ...]], dtype: torch.dtype):
        out = {}
        for name, shape in shapes.items():
            if name in ("gate", "up") and "gate_up" in mapping:  # Phi-3: [gate; up] in one tensor
                i = shape[0]
                both = self._tensor(mapping["gate_up"], (2 * i, shape[1]))
                t = both[:i] if name == "gate" else both[i:]
            elif name in ("wqkv", "bqkv") and name not in mapping:  # q_proj, k_proj and v_proj stacked
                q, kv = self.model.q_dim, self.model.kv_dim
                parts = [mapping[name[0] + x] for x in "qkv"]
                t = torch.cat([self._tensor(hf, (n,) + shape[1:]) for hf, n in zip(parts, (q, kv, kv), strict=True)])
            else:
                t = self._tensor(mapping[name], shape)
            out[name] = t.to(dtype)
        return out

    def layer(self, i: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return self._take(_hf_layer_names(self.model, i), layer_weight_shapes(self.model), dtype)

    def outer(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        shapes = outer_weight_shapes(self.model)
        if "lm_head" in shapes and not self.has("lm_head.weight"):
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
    activation: str = "relu"
    rope_scaling: RopeScaling | None = None
    qk_norm: bool = False

    @classmethod
    def of(cls, m: ModelConfig) -> Arch:
        return cls(m.hidden_size, m.num_heads, m.num_kv_heads, m.head_dim, m.norm == "layernorm",
                   m.position_encoding == "rotary", m.rope_theta, m.gated_mlp, m.norm_eps, m.activation,
                   m.rope_scaling, m.qk_norm)


_ACTIVATIONS = {"relu": F.relu, "silu": F.silu, "gelu": F.gelu,
                "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}


def _rms(a: Arch, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """RMSNorm over the last dimension, computed in float32 (as Hugging Face's LlamaRMSNorm)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + a.eps)
    return w * xf.to(x.dtype)


def _norm(a: Arch, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    if a.layernorm:
        return F.layer_norm(x, (x.shape[-1],), w, b, a.eps)
    return _rms(a, x, w)


def input_norm(a: Arch, w: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    """X: the layer input after the input norm, [batch, tokens, hidden]."""
    return _norm(a, h, w["ln1.w"], w.get("ln1.b"))


def rope_inv_freq(a: Arch, device: torch.device) -> torch.Tensor:
    """RoPE's frequencies theta^(-2k/d), k < d/2 (Su et al., RoFormer, arXiv:2104.09864), with the
    model's scaling: "linear" divides all by `factor`; "llama3" (Llama 3.1's `apply_scaling`, the
    reference code in meta-llama/llama-models) divides those whose wavelength 2*pi/f exceeds
    original_max_position_embeddings / low_freq_factor, keeps those below
    original_max_position_embeddings / high_freq_factor, and blends linearly in between."""
    d = a.head_dim
    inv = 1.0 / (a.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=device) / d))
    sc = a.rope_scaling
    if sc is None:
        return inv
    if sc.rope_type == "linear":
        return inv / sc.factor
    old = sc.original_max_position_embeddings
    wavelen = 2 * math.pi / inv
    smooth = (old / wavelen - sc.low_freq_factor) / (sc.high_freq_factor - sc.low_freq_factor)
    blended = (1 - smooth) * inv / sc.factor + smooth * inv
    out = torch.where(wavelen < old / sc.high_freq_factor, inv, blended)
    return torch.where(wavelen > old / sc.low_freq_factor, inv / sc.factor, out)


def rope(a: Arch, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, "rotate half" layout; x is [batch, heads, tokens, head_dim]."""
    angles = positions.to(torch.float64)[:, None] * rope_inv_freq(a, x.device)[None, :]
    emb = torch.cat([angles, angles], dim=-1)
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    half = a.head_dim // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def _position_q_or_k(a: Arch, t: torch.Tensor, norm_w: torch.Tensor | None, positions: torch.Tensor) -> torch.Tensor:
    """Per-head q/k norm (when the model has one), then RoPE (when rotary); t is [b, heads, tokens, d]."""
    if a.qk_norm:
        t = _rms(a, t, norm_w)
    return rope(a, t, positions) if a.rotary else t


def _heads(t: torch.Tensor, n: int, d: int) -> torch.Tensor:
    b, s, _ = t.shape
    return t.view(b, s, n, d).transpose(1, 2)


def _kv_weight(a: Arch, w: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[W_k; W_v] and its bias: the last 2*kv rows of the fused QKV weight (a view, no copy)."""
    if "wkv" in w:  # a bare K,V weight (the profiler's recompute probe)
        return w["wkv"], w.get("bkv")
    q = a.heads * a.head_dim
    return w["wqkv"][q:], (w["bqkv"][q:] if "bqkv" in w else None)


def _rope_k(a: Arch, w: dict[str, torch.Tensor], kv: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """k norm and RoPE on the K half of [batch, tokens, 2*kv_dim], in place."""
    if a.rotary or a.qk_norm:
        kvd = a.kv_heads * a.head_dim
        k = _heads(kv[..., :kvd], a.kv_heads, a.head_dim)
        kv[..., :kvd] = _position_q_or_k(a, k, w.get("norm_k.w"), positions).transpose(1, 2).reshape(
            kv.shape[:-1] + (kvd,))
    return kv


def kv_from_x(a: Arch, w: dict[str, torch.Tensor], x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """K,V of tokens from their X, as one [batch, tokens, 2*kv_dim] tensor (K after RoPE, then V):
    the layout in which the runtime stores and streams the KV cache."""
    return _rope_k(a, w, F.linear(x, *_kv_weight(a, w)), positions)


def query_and_kv(a: Arch, w: dict[str, torch.Tensor], x: torch.Tensor,
                 positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(query, kv_from_x) from one GEMM with the fused QKV weight: Q heads [batch, heads, tokens,
    head_dim] and K,V [batch, tokens, 2*kv_dim], RoPE applied to both."""
    q_dim = a.heads * a.head_dim
    qkv = F.linear(x, w["wqkv"], w.get("bqkv"))
    q = _heads(qkv[..., :q_dim], a.heads, a.head_dim)
    kv = _rope_k(a, w, qkv[..., q_dim:].contiguous(), positions)
    return _position_q_or_k(a, q, w.get("norm_q.w"), positions), kv


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
    if a.rotary or a.qk_norm:
        kvd = a.kv_heads * a.head_dim
        n, b = out.shape[0], out.shape[1]
        k = out[..., :kvd].view(n, b, a.kv_heads, a.head_dim).permute(1, 2, 0, 3)  # [b, heads, tokens, d]
        k = _position_q_or_k(a, k, w.get("norm_k.w"), positions)
        out[..., :kvd] = k.permute(2, 0, 1, 3).reshape(n, b, kvd)


def query(a: Arch, w: dict[str, torch.Tensor], x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Q heads [batch, heads, tokens, head_dim], RoPE applied."""
    q_dim = a.heads * a.head_dim
    q = _heads(F.linear(x, w["wqkv"][:q_dim], w["bqkv"][:q_dim] if "bqkv" in w else None), a.heads, a.head_dim)
    return _position_q_or_k(a, q, w.get("norm_q.w"), positions)


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
    act = _ACTIVATIONS[a.activation]
    if a.gated:
        y = act(F.linear(y, w["gate"], w.get("b_gate"))) * F.linear(y, w["up"], w.get("b_up"))
        y = F.linear(y, w["down"], w.get("b_down"))
    else:
        y = F.linear(act(F.linear(y, w["fc1"], w.get("b1"))), w["fc2"], w.get("b2"))
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
