"""Reading a Hugging Face `config.json` onto ModelConfig.

Every field that changes a layer's math is read (norm epsilon, RoPE theta and scaling, head_dim,
tied embeddings, biases, activation, q/k norms, sliding window); a feature the runtime does not
implement is refused with a one-line error naming it, never ignored. Defaults for absent fields are
those of the transformers configuration class of the model type (e.g. MistralConfig: sliding_window
4096, rms_norm_eps 1e-6; Phi3Config: rms_norm_eps 1e-5; Qwen3Config: head_dim 128).

Both spellings of RoPE settings are read: transformers 4.x (`rope_theta`, `rope_scaling`) and 5.x
(`rope_parameters` with `rope_theta` and `rope_type` inside).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import ConfigDict, Field

from planner.errors import KvplanError
from planner.jsonio import read_json
from planner.model_config import DTYPE_BYTES, MAX_SIZE, ModelConfig, RopeScaling, validate_model
from planner.units import escape_name
from planner.validation import Strict, validate

Size = Annotated[int, Field(gt=0, le=MAX_SIZE)]
Positive = Annotated[float, Field(gt=0)]

# mixture-of-experts: refused before anything else is looked at
MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
MOE_TYPES = ("mixtral", "dbrx", "deepseek_v2", "deepseek_v3", "jamba", "arctic")

# model types with a known reason they cannot run here
NOT_IMPLEMENTED_TYPES = {
    "gemma2": "logit soft-capping (attn_logit_softcapping, final_logit_softcapping), alternating "
              "sliding-window layers, norms after attention and MLP and the (1 + weight) RMSNorm",
    "gemma": "the (1 + weight) RMSNorm and the sqrt(hidden_size) embedding scale",
    "gemma3": "q/k norms with (1 + weight), alternating local/global attention with two RoPE bases and soft-capping",
    "gemma3_text": "q/k norms with (1 + weight), alternating local/global attention with two RoPE bases",
    "phi": "partial rotary embeddings and the parallel attention/MLP block",
    "falcon": "alibi or parallel attention/MLP blocks",
    "bloom": "alibi position biases",
    "mpt": "alibi position biases",
}


@dataclass(frozen=True)
class Family:
    """What a supported rotary model type implies where its config.json is silent."""

    rms_norm_eps: float  # the config class's default
    qkv_bias: str  # "always" | "never" | "attention_bias" (the config flag decides)
    o_bias: bool  # o_proj biased when attention_bias is set
    mlp_bias: bool  # the config's mlp_bias flag is honoured
    head_dim: int | None  # default head_dim; None: hidden_size // heads
    window: str  # "none" | "always" (sliding_window) | "flag" (only with use_sliding_window)
    default_window: int | None = None
    qk_norm: bool = False


ROTARY = {
    "llama": Family(1e-6, "attention_bias", True, True, None, "none"),
    "mistral": Family(1e-6, "never", False, False, None, "always", 4096),
    "qwen2": Family(1e-6, "always", False, False, None, "flag"),
    "qwen3": Family(1e-6, "attention_bias", True, False, 128, "flag", qk_norm=True),
    "phi3": Family(1e-5, "never", False, False, None, "always"),
}
SUPPORTED_HF_TYPES = ("opt", *ROTARY)
_ACT = {"silu": "silu", "swish": "silu", "relu": "relu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
        "gelu_new": "gelu_tanh"}


class HFRope(Strict):
    """`rope_scaling` (transformers 4) or `rope_parameters` (transformers 5)."""

    rope_type: str | None = None
    type: str | None = None
    rope_theta: Positive | None = None
    factor: Annotated[float, Field(ge=1)] | None = None
    low_freq_factor: Positive | None = None
    high_freq_factor: Positive | None = None
    original_max_position_embeddings: Size | None = None
    partial_rotary_factor: Positive | None = None


class HFConfig(Strict):
    """The fields of a config.json kvplan reads, with their types; others are kept and not used."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True, allow_inf_nan=False, populate_by_name=True)
    model_type: str
    name_or_path: str | None = Field(None, alias="_name_or_path")
    hidden_size: Size
    num_hidden_layers: Size
    num_attention_heads: Size
    num_key_value_heads: Size | None = None  # absent or null: one K,V head per query head (MHA)
    head_dim: Size | None = None
    intermediate_size: Size | None = None
    ffn_dim: Size | None = None
    vocab_size: Size
    max_position_embeddings: Size | None = None
    rms_norm_eps: Annotated[float, Field(gt=0, le=1)] | None = None
    rope_theta: Positive | None = None
    rope_scaling: HFRope | None = None
    rope_parameters: HFRope | None = None
    partial_rotary_factor: Positive | None = None
    tie_word_embeddings: bool | None = None
    attention_bias: bool | None = None
    mlp_bias: bool | None = None
    hidden_act: str | None = None
    activation_function: str | None = None
    torch_dtype: str | None = None
    dtype: str | None = None
    sliding_window: Size | None = None
    use_sliding_window: bool | None = None
    layer_types: list[str] | None = None
    do_layer_norm_before: bool | None = None
    word_embed_proj_dim: Size | None = None
    enable_bias: bool | None = None
    layer_norm_elementwise_affine: bool | None = None
    remove_final_layer_norm: bool | None = Field(None, alias="_remove_final_layer_norm")
    alibi: bool | None = None
    position_embedding_type: str | None = None
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    use_mrope: bool | None = None


def read_hf_config(path: Path) -> ModelConfig:
    """The model a config.json (or a folder holding one) describes, named as config_name says."""
    if path.is_dir():
        path = path / "config.json"
    return from_hf_config(read_json(path, "model config"), name=None, path=path)


def from_hf_config(raw: Any, name: str | None = "custom", path: Path | None = None) -> ModelConfig:
    """Map a Hugging Face config.json object (opt, llama, mistral, qwen2, qwen3, phi3) onto ModelConfig."""
    origin = escape_name(str(path)) if path is not None else "model config"
    if not isinstance(raw, dict):
        raise KvplanError(f"{origin}: model config must be a JSON object")
    _refuse_moe(raw, origin)
    model_type = raw.get("model_type")
    if model_type in NOT_IMPLEMENTED_TYPES:
        raise KvplanError(f"{origin}: model_type '{model_type}' is not supported: the runtime does not implement "
                          f"{NOT_IMPLEMENTED_TYPES[model_type]}")
    if model_type not in SUPPORTED_HF_TYPES:
        raise KvplanError(f"{origin}: model_type '{escape_name(model_type)}' is not supported "
                          f"(supported: {', '.join(SUPPORTED_HF_TYPES)})")
    cfg = validate(HFConfig, raw, origin, "model config")
    _refuse_unimplemented(cfg, origin)
    name = name or config_name(path, cfg.name_or_path)
    source = f"config.json ({name})"
    model = _opt(cfg, name, source, origin) if model_type == "opt" else _rotary(cfg, name, source, origin)
    validate_model(model, origin)
    return model


def _refuse_moe(raw: dict[str, Any], origin: str) -> None:
    experts = next((k for k in MOE_KEYS if raw.get(k) not in (None, 0, 1, False)), None)
    model_type = raw.get("model_type")
    if experts or (isinstance(model_type, str) and (model_type in MOE_TYPES or "moe" in model_type)):
        what = f"{experts} = {escape_name(repr(raw[experts]))}" if experts else f"model_type '{model_type}'"
        raise KvplanError(f"{origin}: mixture-of-experts models are not supported yet ({what})")


def _refuse_unimplemented(cfg: HFConfig, origin: str) -> None:
    if cfg.alibi or (cfg.position_embedding_type not in (None, "rope", "rotary", "absolute")):
        raise KvplanError(f"{origin}: alibi / '{cfg.position_embedding_type or 'alibi'}' position encoding is not "
                          "implemented by the runtime")
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(cfg, key) is not None:
            raise KvplanError(f"{origin}: {key} (logit soft-capping) is not implemented by the runtime")
    if cfg.use_mrope:
        raise KvplanError(f"{origin}: use_mrope (multimodal RoPE) is not implemented by the runtime")


def _dtype(cfg: HFConfig, origin: str, default: str) -> str:
    dtype = cfg.torch_dtype or cfg.dtype or default
    if dtype not in DTYPE_BYTES:
        raise KvplanError(f"{origin}: model config has unsupported torch_dtype '{escape_name(dtype)}' "
                          "(supported: float16, bfloat16, float32)")
    return dtype


def _activation(act: str | None, default: str, origin: str) -> str:
    act = act or default
    if act not in _ACT:
        raise KvplanError(f"{origin}: activation '{escape_name(act)}' is not implemented by the runtime "
                          f"(implemented: {', '.join(_ACT)})")
    return _ACT[act]


def _opt(cfg: HFConfig, name: str, source: str, origin: str) -> ModelConfig:
    hidden, heads = cfg.hidden_size, cfg.num_attention_heads
    if (cfg.word_embed_proj_dim or hidden) != hidden:
        raise KvplanError(f"{origin}: OPT configs with word_embed_proj_dim != hidden_size (projected embeddings) "
                          "are not supported")
    if cfg.do_layer_norm_before is False:
        raise KvplanError(f"{origin}: OPT configs with post-layer-norm (do_layer_norm_before=false) are not supported")
    if cfg.layer_norm_elementwise_affine is False or cfg.remove_final_layer_norm:
        raise KvplanError(f"{origin}: OPT configs without LayerNorm weights or final LayerNorm are not supported")
    if cfg.ffn_dim is None:
        raise KvplanError(f"{origin}: model config is missing the field 'ffn_dim'")
    bias = cfg.enable_bias is not False
    return ModelConfig(
        name=name, family="opt", hidden_size=hidden, num_layers=cfg.num_hidden_layers,
        num_heads=heads, num_kv_heads=heads, head_dim=hidden // heads, intermediate_size=cfg.ffn_dim,
        gated_mlp=False, vocab_size=cfg.vocab_size, position_encoding="learned", dtype=_dtype(cfg, origin, "float16"),
        max_position_embeddings=cfg.max_position_embeddings or 2048, qkv_bias=bias, o_bias=bias, mlp_bias=bias,
        norm="layernorm", tie_word_embeddings=cfg.tie_word_embeddings is not False, rope_theta=0.0, source=source,
        norm_eps=1e-5, activation=_activation(cfg.activation_function, "relu", origin),
    )


def _rope(cfg: HFConfig, origin: str) -> tuple[float, RopeScaling | None]:
    """(rope_theta, scaling) from either spelling; unknown scaling types are refused."""
    params = cfg.rope_scaling or cfg.rope_parameters
    theta = cfg.rope_theta or (cfg.rope_parameters.rope_theta if cfg.rope_parameters else None) or 10000.0
    partial = cfg.partial_rotary_factor or (params.partial_rotary_factor if params else None) or 1.0
    if partial != 1.0:
        raise KvplanError(f"{origin}: partial_rotary_factor {partial} (RoPE on part of each head) is not implemented")
    kind = (params.rope_type or params.type or "default") if params else "default"
    if kind == "default":
        return theta, None
    if kind not in ("linear", "llama3"):
        raise KvplanError(f"{origin}: rope_scaling type '{escape_name(kind)}' is not implemented by the runtime "
                          "(implemented: linear, llama3)")
    if params.factor is None:
        raise KvplanError(f"{origin}: rope_scaling type '{kind}' needs 'factor'")
    if kind == "linear":
        return theta, RopeScaling("linear", params.factor)
    missing = [k for k in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
               if getattr(params, k) is None]
    if missing:
        raise KvplanError(f"{origin}: rope_scaling type 'llama3' needs {', '.join(missing)}")
    return theta, RopeScaling("llama3", params.factor, params.low_freq_factor, params.high_freq_factor,
                              params.original_max_position_embeddings)


def _window(cfg: HFConfig, fam: Family, raw_has_window: bool) -> int | None:
    if fam.window == "none":
        return None
    if fam.window == "flag" and not cfg.use_sliding_window:
        return None
    return cfg.sliding_window if raw_has_window else fam.default_window


def _rotary(cfg: HFConfig, name: str, source: str, origin: str) -> ModelConfig:
    fam = ROTARY[cfg.model_type]
    heads = cfg.num_attention_heads
    if cfg.intermediate_size is None:
        raise KvplanError(f"{origin}: model config is missing the field 'intermediate_size'")
    head_dim = cfg.head_dim or fam.head_dim or cfg.hidden_size // heads
    theta, scaling = _rope(cfg, origin)
    attention_bias = bool(cfg.attention_bias)
    window = _window(cfg, fam, "sliding_window" in cfg.model_fields_set)
    if cfg.layer_types and any(t != "full_attention" for t in cfg.layer_types):
        window = window or cfg.sliding_window
        if window is None:
            raise KvplanError(f"{origin}: layer_types other than full_attention without a sliding_window")
    return ModelConfig(
        name=name, family=cfg.model_type, hidden_size=cfg.hidden_size, num_layers=cfg.num_hidden_layers,
        num_heads=heads, num_kv_heads=cfg.num_key_value_heads or heads, head_dim=head_dim,
        intermediate_size=cfg.intermediate_size, gated_mlp=True, vocab_size=cfg.vocab_size,
        position_encoding="rotary", dtype=_dtype(cfg, origin, "bfloat16"),
        max_position_embeddings=cfg.max_position_embeddings or 4096,
        qkv_bias={"always": True, "never": False}.get(fam.qkv_bias, attention_bias),
        o_bias=fam.o_bias and attention_bias, mlp_bias=fam.mlp_bias and bool(cfg.mlp_bias),
        norm="rmsnorm", tie_word_embeddings=bool(cfg.tie_word_embeddings), rope_theta=float(theta), source=source,
        norm_eps=cfg.rms_norm_eps or fam.rms_norm_eps, activation=_activation(cfg.hidden_act, "silu", origin),
        rope_scaling=scaling, qk_norm=fam.qk_norm, sliding_window=window,
    )


_SNAPSHOT = re.compile(r"^models--(?P<org>[^/]+?)--(?P<name>[^/]+)$")
_HASH = re.compile(r"^[0-9a-f]{7,64}$")


def config_name(path: Path | None, name_or_path: str | None) -> str:
    """The name of the model a config.json describes: its `_name_or_path` when that is a hub id
    ("org/name"), else the Hugging Face cache folder (.../models--org--name/snapshots/<hash>/ ->
    "org/name"), else the last part of a local `_name_or_path`, else the folder of a config.json or
    the stem of another .json file. Never a commit hash."""
    nop = (name_or_path or "").strip().rstrip("/")
    if nop and not nop.startswith(("/", ".", "~")) and nop.count("/") <= 1 and not _HASH.match(nop):
        return escape_name(nop)
    if path is not None:
        parts = path.absolute().parent.parts  # not resolved: cache files are links into blobs/
        if len(parts) >= 3 and parts[-2] == "snapshots" and (m := _SNAPSHOT.match(parts[-3])):
            return escape_name(f"{m['org']}/{m['name']}")
    last = Path(nop).name if nop else ""
    if last and not _HASH.match(last):
        return escape_name(last)
    if path is not None:
        folder = path.absolute().parent.name
        if path.name != "config.json":
            return escape_name(path.stem)
        if folder and not _HASH.match(folder):
            return escape_name(folder)
    return "custom"
