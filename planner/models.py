"""Model architectures: a small config dataclass, the built-in name -> config table,
and a reader for Hugging Face `config.json` files."""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from planner.errors import KvplanError
from planner.jsonio import read_json

DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}


@dataclass(frozen=True)
class ModelConfig:
    name: str
    family: str  # "opt" | "llama" | "mistral" | "qwen2": decides biases, norms, positions
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    gated_mlp: bool  # SwiGLU (gate, up, down) or plain (fc1, fc2)
    vocab_size: int
    position_encoding: str  # "learned" | "rotary"
    dtype: str  # default dtype of the published weights
    max_position_embeddings: int  # the trained context
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    norm: str  # "layernorm" (weight + bias) | "rmsnorm" (weight only)
    tie_word_embeddings: bool
    rope_theta: float
    source: str

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """h_kv = KV heads x head dim: the width of K (and of V) per token."""
        return self.num_kv_heads * self.head_dim

    @property
    def gqa_group(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _opt(name: str, hidden: int, layers: int, heads: int, ffn: int, source: str) -> ModelConfig:
    return ModelConfig(
        name=name, family="opt", hidden_size=hidden, num_layers=layers, num_heads=heads,
        num_kv_heads=heads, head_dim=hidden // heads, intermediate_size=ffn, gated_mlp=False,
        vocab_size=50272, position_encoding="learned", dtype="float16", max_position_embeddings=2048,
        qkv_bias=True, o_bias=True, mlp_bias=True, norm="layernorm", tie_word_embeddings=True,
        rope_theta=0.0, source=source,
    )


def _rotary(
    name: str, family: str, hidden: int, layers: int, heads: int, kv_heads: int, inter: int,
    vocab: int, dtype: str, max_pos: int, theta: float, source: str, *, qkv_bias: bool = False,
    tied: bool = False,
) -> ModelConfig:
    return ModelConfig(
        name=name, family=family, hidden_size=hidden, num_layers=layers, num_heads=heads,
        num_kv_heads=kv_heads, head_dim=hidden // heads, intermediate_size=inter, gated_mlp=True,
        vocab_size=vocab, position_encoding="rotary", dtype=dtype, max_position_embeddings=max_pos,
        qkv_bias=qkv_bias, o_bias=False, mlp_bias=False, norm="rmsnorm", tie_word_embeddings=tied,
        rope_theta=theta, source=source,
    )


_HF = "https://huggingface.co/{}/blob/main/config.json"

# Every value below is read off the model's published config.json (URL in `source`);
# OPT-175B has no public config.json, so its shape comes from the OPT paper, Table 1.
CATALOG: dict[str, ModelConfig] = {
    m.name: m
    for m in [
        _opt("opt-125m", 768, 12, 12, 3072, _HF.format("facebook/opt-125m")),
        _opt("opt-1.3b", 2048, 24, 32, 8192, _HF.format("facebook/opt-1.3b")),
        _opt("opt-6.7b", 4096, 32, 32, 16384, _HF.format("facebook/opt-6.7b")),
        _opt("opt-13b", 5120, 40, 40, 20480, _HF.format("facebook/opt-13b")),
        _opt("opt-30b", 7168, 48, 56, 28672, _HF.format("facebook/opt-30b")),
        _opt("opt-66b", 9216, 64, 72, 36864, _HF.format("facebook/opt-66b")),
        _opt("opt-175b", 12288, 96, 96, 49152,
             "Zhang et al., OPT: Open Pre-trained Transformer Language Models (arXiv:2205.01068), Table 1"),
        _rotary("tinyllama-1.1b", "llama", 2048, 22, 32, 4, 5632, 32000, "bfloat16", 2048, 10000.0,
                _HF.format("TinyLlama/TinyLlama-1.1B-Chat-v1.0")),
        _rotary("llama-2-7b", "llama", 4096, 32, 32, 32, 11008, 32000, "float16", 4096, 10000.0,
                _HF.format("meta-llama/Llama-2-7b-hf")),
        _rotary("llama-2-13b", "llama", 5120, 40, 40, 40, 13824, 32000, "float16", 4096, 10000.0,
                _HF.format("meta-llama/Llama-2-13b-hf")),
        _rotary("llama-2-70b", "llama", 8192, 80, 64, 8, 28672, 32000, "float16", 4096, 10000.0,
                _HF.format("meta-llama/Llama-2-70b-hf")),
        _rotary("llama-3-8b", "llama", 4096, 32, 32, 8, 14336, 128256, "bfloat16", 8192, 500000.0,
                _HF.format("meta-llama/Meta-Llama-3-8B")),
        _rotary("llama-3-70b", "llama", 8192, 80, 64, 8, 28672, 128256, "bfloat16", 8192, 500000.0,
                _HF.format("meta-llama/Meta-Llama-3-70B")),
        _rotary("mistral-7b", "mistral", 4096, 32, 32, 8, 14336, 32000, "bfloat16", 32768, 10000.0,
                _HF.format("mistralai/Mistral-7B-v0.1")),
        _rotary("qwen2.5-7b", "qwen2", 3584, 28, 28, 4, 18944, 152064, "bfloat16", 131072, 1000000.0,
                _HF.format("Qwen/Qwen2.5-7B"), qkv_bias=True),
        _rotary("qwen2.5-14b", "qwen2", 5120, 48, 40, 8, 13824, 152064, "bfloat16", 131072, 1000000.0,
                _HF.format("Qwen/Qwen2.5-14B"), qkv_bias=True),
        _rotary("qwen2.5-32b", "qwen2", 5120, 64, 40, 8, 27648, 152064, "bfloat16", 131072, 1000000.0,
                _HF.format("Qwen/Qwen2.5-32B"), qkv_bias=True),
        _rotary("qwen2.5-72b", "qwen2", 8192, 80, 64, 8, 29568, 152064, "bfloat16", 131072, 1000000.0,
                _HF.format("Qwen/Qwen2.5-72B"), qkv_bias=True),
    ]
}

ALIASES: dict[str, str] = {
    "llama-13b": "llama-2-13b",  # the user's own example
    "llama-7b": "llama-2-7b",
    "llama-70b": "llama-2-70b",
}


def known_names() -> list[str]:
    return sorted(CATALOG) + sorted(ALIASES)


def load_model(name_or_path: str) -> ModelConfig:
    """A built-in model by name or alias, or a Hugging Face config.json by path."""
    key = name_or_path.strip().lower()
    if key in CATALOG:
        return CATALOG[key]
    if key in ALIASES:
        return CATALOG[ALIASES[key]]
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        if path.is_dir():
            path = path / "config.json"
        return from_hf_config(read_json(path, "model config"), name=path.parent.name or path.stem)
    close = difflib.get_close_matches(key, known_names(), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; run 'kvplan models' for the list"
    raise KvplanError(f"unknown model '{name_or_path}'{hint}")


SUPPORTED_HF_TYPES = ("llama", "mistral", "qwen2", "opt")


def _field(cfg: dict[str, Any], key: str, default: Any = None, *, kind: type = int) -> Any:
    value = cfg.get(key, default)
    if value is None:
        raise KvplanError(f"model config is missing the field '{key}'")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise KvplanError(f"model config field '{key}' must be an integer, got {value!r}")
    if kind is float and not isinstance(value, (int, float)):
        raise KvplanError(f"model config field '{key}' must be a number, got {value!r}")
    return value


def _dtype(cfg: dict[str, Any], default: str) -> str:
    dtype = cfg.get("torch_dtype") or cfg.get("dtype") or default
    if dtype not in DTYPE_BYTES:
        raise KvplanError(f"model config has unsupported torch_dtype '{dtype}' (supported: float16, bfloat16, float32)")
    return dtype


def from_hf_config(cfg: Any, name: str = "custom") -> ModelConfig:
    """Map a Hugging Face config.json of the llama, mistral, qwen2 or opt families onto ModelConfig."""
    if not isinstance(cfg, dict):
        raise KvplanError("model config must be a JSON object")
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_HF_TYPES:
        raise KvplanError(
            f"model_type '{model_type}' is not supported (supported: {', '.join(SUPPORTED_HF_TYPES)})"
        )
    if cfg.get("num_local_experts") or cfg.get("num_experts"):
        raise KvplanError("mixture-of-experts models are not supported")
    source = f"config.json ({name})"
    if model_type == "opt":
        hidden = _field(cfg, "hidden_size")
        if cfg.get("word_embed_proj_dim", hidden) != hidden:
            raise KvplanError("OPT configs with word_embed_proj_dim != hidden_size are not supported")
        if cfg.get("do_layer_norm_before", True) is False:
            raise KvplanError("OPT configs with post-layer-norm (do_layer_norm_before=false) are not supported")
        heads = _field(cfg, "num_attention_heads")
        bias = bool(cfg.get("enable_bias", True))
        model = ModelConfig(
            name=name, family="opt", hidden_size=hidden, num_layers=_field(cfg, "num_hidden_layers"),
            num_heads=heads, num_kv_heads=heads, head_dim=hidden // heads if heads > 0 else 0,
            intermediate_size=_field(cfg, "ffn_dim"), gated_mlp=False, vocab_size=_field(cfg, "vocab_size"),
            position_encoding="learned", dtype=_dtype(cfg, "float16"),
            max_position_embeddings=_field(cfg, "max_position_embeddings", 2048),
            qkv_bias=bias, o_bias=bias, mlp_bias=bias, norm="layernorm",
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)), rope_theta=0.0, source=source,
        )
    else:
        hidden = _field(cfg, "hidden_size")
        heads = _field(cfg, "num_attention_heads")
        head_dim = cfg.get("head_dim") or (hidden // heads if heads > 0 else 0)
        model = ModelConfig(
            name=name, family=model_type, hidden_size=hidden, num_layers=_field(cfg, "num_hidden_layers"),
            num_heads=heads, num_kv_heads=_field(cfg, "num_key_value_heads", heads), head_dim=head_dim,
            intermediate_size=_field(cfg, "intermediate_size"), gated_mlp=True,
            vocab_size=_field(cfg, "vocab_size"), position_encoding="rotary",
            dtype=_dtype(cfg, "bfloat16"), max_position_embeddings=_field(cfg, "max_position_embeddings", 4096),
            qkv_bias=model_type == "qwen2" or bool(cfg.get("attention_bias", False)),
            o_bias=bool(cfg.get("attention_bias", False)), mlp_bias=bool(cfg.get("mlp_bias", False)),
            norm="rmsnorm", tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            rope_theta=float(_field(cfg, "rope_theta", 10000.0, kind=float)), source=source,
        )
    validate_model(model)
    return model


def validate_model(m: ModelConfig) -> None:
    for field in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "intermediate_size",
                  "vocab_size", "max_position_embeddings"):
        value = getattr(m, field)
        if value <= 0:
            raise KvplanError(f"model {m.name}: {field} must be positive, got {value}")
        if value > 10_000_000:
            raise KvplanError(f"model {m.name}: {field}={value} is absurdly large")
    if m.num_heads % m.num_kv_heads:
        raise KvplanError(f"model {m.name}: num_heads {m.num_heads} is not a multiple of KV heads {m.num_kv_heads}")
    if m.family == "opt" and m.hidden_size % m.num_heads:
        raise KvplanError(f"model {m.name}: hidden_size {m.hidden_size} is not divisible by {m.num_heads} heads")
    if m.position_encoding == "rotary" and m.head_dim % 2:
        raise KvplanError(f"model {m.name}: rotary embeddings need an even head_dim, got {m.head_dim}")
