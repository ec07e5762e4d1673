"""The model record: `ModelConfig` (every field that changes a layer's math or size) and its schema
(`ModelRecord`, for plan files). The built-in catalog is planner/models.py; Hugging Face
`config.json` files are read by planner/hf_config.py onto the same record."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from planner.validation import Strict, validate

DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
# families decide the checkpoint's tensor names and which biases exist; the math is in the fields
FAMILIES = ("opt", "llama", "mistral", "qwen2", "qwen3", "phi3")
# MLP activations the runtime implements (runtime/model.py: _ACTIVATIONS)
ACTIVATIONS = ("relu", "silu", "gelu", "gelu_tanh")
# RoPE scalings the runtime implements (runtime/model.py: rope_inv_freq)
ROPE_SCALINGS = ("linear", "llama3")
MAX_SIZE = 10_000_000  # any size above this is a typo


@dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. "linear": every frequency divided by `factor` (positions interpolated).
    "llama3": Llama 3.1's per-frequency rule (low frequencies divided by `factor`, high ones kept, a
    smooth blend between), parameters as in the model's config.json `rope_scaling`."""

    rope_type: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    name: str
    family: str  # one of FAMILIES
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    gated_mlp: bool  # gated (gate, up, down) or plain (fc1, fc2)
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
    # fields below may be absent from a record: absent means the default (see default_of)
    norm_eps: float | None = None  # epsilon of every norm; None: 1e-5 LayerNorm, 1e-6 RMSNorm
    activation: str | None = None  # MLP activation, one of ACTIVATIONS; None: silu gated, relu plain
    rope_scaling: RopeScaling | None = None
    qk_norm: bool = False  # RMSNorm of each query and key head before RoPE (Qwen3)
    sliding_window: int | None = None  # attention sees only the last `sliding_window` positions

    def __post_init__(self) -> None:
        for key in ("norm_eps", "activation"):
            if getattr(self, key) is None:
                object.__setattr__(self, key, self.default_of(key))
        if isinstance(self.rope_scaling, dict):  # a record read back from JSON
            object.__setattr__(self, "rope_scaling", RopeScaling(**self.rope_scaling))

    def default_of(self, key: str) -> Any:
        """The value an absent optional field takes (transformers' defaults for the family's norm
        and MLP: nn.LayerNorm eps 1e-5, LlamaConfig rms_norm_eps 1e-6, SiLU gating, OPT's ReLU)."""
        if key == "norm_eps":
            return 1e-5 if self.norm == "layernorm" else 1e-6
        if key == "activation":
            return "silu" if self.gated_mlp else "relu"
        return {"rope_scaling": None, "qk_norm": False, "sliding_window": None}[key]

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
        """The record written into plans: optional fields only where they differ from their default,
        so a record means the same model to every reader, old or new."""
        out = asdict(self)
        for key in OPTIONAL_FIELDS:
            if out[key] == self.default_of(key):
                del out[key]
        return out


OPTIONAL_FIELDS = ("norm_eps", "activation", "rope_scaling", "qk_norm", "sliding_window")

# --- the schema of a model record (plan files, hand-written records) --------------------------
Size = Annotated[int, Field(gt=0, le=MAX_SIZE)]
Number = Annotated[float, Field(ge=0)]


class RopeScalingRecord(Strict):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)
    rope_type: Literal[ROPE_SCALINGS]
    factor: Annotated[float, Field(ge=1)]
    low_freq_factor: Annotated[float, Field(gt=0)] = 1.0
    high_freq_factor: Annotated[float, Field(gt=0)] = 4.0
    original_max_position_embeddings: Size = 8192

    @model_validator(mode="after")
    def _llama3(self) -> RopeScalingRecord:
        if self.rope_type == "llama3" and self.high_freq_factor <= self.low_freq_factor:
            raise ValueError("llama3 rope scaling needs high_freq_factor > low_freq_factor")
        return self


class ModelRecord(Strict):
    """A model record as plans store it: exact types (no "768" for 768, no 12.5 layers), sizes in
    (0, 10^7], known families and encodings, no unknown fields (a field this version does not know
    could change the math), and the cross-field rules a layer needs."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)
    name: Annotated[str, Field(min_length=1, max_length=300)]
    family: Literal[FAMILIES]
    hidden_size: Size
    num_layers: Size
    num_heads: Size
    num_kv_heads: Size
    head_dim: Size
    intermediate_size: Size
    gated_mlp: bool
    vocab_size: Size
    position_encoding: Literal["learned", "rotary"]
    dtype: Literal[tuple(DTYPE_BYTES)]
    max_position_embeddings: Size
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    norm: Literal["layernorm", "rmsnorm"]
    tie_word_embeddings: bool
    rope_theta: Number
    source: str
    norm_eps: Annotated[float, Field(gt=0, le=1)] | None = None
    activation: Literal[ACTIVATIONS] | None = None
    rope_scaling: RopeScalingRecord | None = None
    qk_norm: bool = False
    sliding_window: Size | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ModelRecord:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.position_encoding == "rotary":
            if self.head_dim % 2:
                raise ValueError(f"rotary embeddings need an even head_dim, got {self.head_dim}")
            if not self.rope_theta > 1:
                raise ValueError(f"rotary embeddings need rope_theta > 1, got {self.rope_theta}")
        elif self.rope_scaling is not None or self.qk_norm:
            raise ValueError("rope_scaling and qk_norm need rotary positions")
        if self.family == "opt" and self.head_dim * self.num_heads != self.hidden_size:
            raise ValueError(f"hidden_size {self.hidden_size} is not {self.num_heads} heads x head_dim {self.head_dim}")
        return self

    def to_config(self) -> ModelConfig:
        data = self.model_dump()
        if self.rope_scaling is not None:
            data["rope_scaling"] = RopeScaling(**self.rope_scaling.model_dump())
        return ModelConfig(**data)


def model_from_record(data: Any, origin: str) -> ModelConfig:
    """A model record (a plan's "model") checked against ModelRecord; one-line error naming the field."""
    return validate(ModelRecord, data, origin, "model").to_config()


def validate_model(m: ModelConfig, origin: str | None = None) -> None:
    """`m` obeys the record schema (sizes, types, cross-field rules); a KvplanError if not."""
    validate(ModelRecord, m.to_dict(), origin or f"model {m.name}", "model")


def record_fields() -> set[str]:
    """Field names of ModelConfig (the schema must name the same ones; tests/test_models.py checks)."""
    return {f.name for f in fields(ModelConfig)}
