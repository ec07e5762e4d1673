"""Model architectures: the built-in name -> config table and `load_model` (a catalog name, an alias,
or a Hugging Face config.json read by planner/hf_config.py). The record itself and its schema live in
planner/model_config.py and are re-exported here."""

from __future__ import annotations

import difflib
from pathlib import Path

from planner.errors import KvplanError
from planner.hf_config import read_hf_config
from planner.model_config import (  # noqa: F401  (re-exported: the record's public home stays planner.models)
    ACTIVATIONS,
    DTYPE_BYTES,
    FAMILIES,
    MAX_SIZE,
    OPTIONAL_FIELDS,
    ROPE_SCALINGS,
    ModelConfig,
    ModelRecord,
    RopeScaling,
    RopeScalingRecord,
    model_from_record,
    record_fields,
    validate_model,
)
from planner.units import escape_name


# --- the catalog ---------------------------------------------------------------------------------
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
    vocab: int, dtype: str, max_pos: int, theta: float, eps: float, source: str, *, qkv_bias: bool = False,
    tied: bool = False, window: int | None = None,
) -> ModelConfig:
    return ModelConfig(
        name=name, family=family, hidden_size=hidden, num_layers=layers, num_heads=heads,
        num_kv_heads=kv_heads, head_dim=hidden // heads, intermediate_size=inter, gated_mlp=True,
        vocab_size=vocab, position_encoding="rotary", dtype=dtype, max_position_embeddings=max_pos,
        qkv_bias=qkv_bias, o_bias=False, mlp_bias=False, norm="rmsnorm", tie_word_embeddings=tied,
        rope_theta=theta, source=source, norm_eps=eps, sliding_window=window,
    )


_HF = "https://huggingface.co/{}/blob/main/config.json"

# Every value below is read off the model's published config.json (URL in `source`), rms_norm_eps
# and sliding_window included; OPT-175B has no public config.json, so its shape comes from the OPT
# paper, Table 1 (its LayerNorm epsilon is OPT's 1e-5 like every other OPT).
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
        _rotary("tinyllama-1.1b", "llama", 2048, 22, 32, 4, 5632, 32000, "bfloat16", 2048, 10000.0, 1e-5,
                _HF.format("TinyLlama/TinyLlama-1.1B-Chat-v1.0")),
        _rotary("llama-2-7b", "llama", 4096, 32, 32, 32, 11008, 32000, "float16", 4096, 10000.0, 1e-5,
                _HF.format("meta-llama/Llama-2-7b-hf")),
        _rotary("llama-2-13b", "llama", 5120, 40, 40, 40, 13824, 32000, "float16", 4096, 10000.0, 1e-5,
                _HF.format("meta-llama/Llama-2-13b-hf")),
        _rotary("llama-2-70b", "llama", 8192, 80, 64, 8, 28672, 32000, "float16", 4096, 10000.0, 1e-5,
                _HF.format("meta-llama/Llama-2-70b-hf")),
        _rotary("llama-3-8b", "llama", 4096, 32, 32, 8, 14336, 128256, "bfloat16", 8192, 500000.0, 1e-5,
                _HF.format("meta-llama/Meta-Llama-3-8B")),
        _rotary("llama-3-70b", "llama", 8192, 80, 64, 8, 28672, 128256, "bfloat16", 8192, 500000.0, 1e-5,
                _HF.format("meta-llama/Meta-Llama-3-70B")),
        _rotary("mistral-7b", "mistral", 4096, 32, 32, 8, 14336, 32000, "bfloat16", 32768, 10000.0, 1e-5,
                _HF.format("mistralai/Mistral-7B-v0.1"), window=4096),
        _rotary("qwen2.5-7b", "qwen2", 3584, 28, 28, 4, 18944, 152064, "bfloat16", 131072, 1000000.0, 1e-6,
                _HF.format("Qwen/Qwen2.5-7B"), qkv_bias=True),
        _rotary("qwen2.5-14b", "qwen2", 5120, 48, 40, 8, 13824, 152064, "bfloat16", 131072, 1000000.0, 1e-5,
                _HF.format("Qwen/Qwen2.5-14B"), qkv_bias=True),
        _rotary("qwen2.5-32b", "qwen2", 5120, 64, 40, 8, 27648, 152064, "bfloat16", 131072, 1000000.0, 1e-5,
                _HF.format("Qwen/Qwen2.5-32B"), qkv_bias=True),
        _rotary("qwen2.5-72b", "qwen2", 8192, 80, 64, 8, 29568, 152064, "bfloat16", 131072, 1000000.0, 1e-6,
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
    """A built-in model by name or alias, or a Hugging Face config.json (or its folder) by path."""
    key = str(name_or_path).strip().lower()
    if key in CATALOG:
        return CATALOG[key]
    if key in ALIASES:
        return CATALOG[ALIASES[key]]
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        return read_hf_config(path)
    close = difflib.get_close_matches(key, known_names(), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; run 'kvplan models' for the list"
    raise KvplanError(f"unknown model '{escape_name(name_or_path)}'{hint}")
