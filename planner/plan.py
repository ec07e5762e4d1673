"""The execution plan: what `kvplan solve` writes and `kvplan execute` runs.

A plan is one JSON object (docs/plan-schema.md). This module owns its decision record, the
validation every reader goes through, and the load/save functions. The planner fills in
"prediction" and "solver"; the runtime only needs "model", "inputs" and "decisions".

Placement semantics (the runtime relies on these):
(planner/placement.py implements them for the planner and the runtime alike.)
- KV cache, per layer: tokens [0, split_tokens) are *not* stored as K,V but as their layer inputs X
  (the X-cache) and recomputed every step (KVPR); tokens [split_tokens, seq) are stored as K,V.
  The stored K,V token range is cut into consecutive pieces on device, host and disk in the
  proportions of `kv_placement`; X[0:split_tokens] likewise by `x_placement`.
- Weights: the first round(weight_placement.device * layers) layers stay on the device, the next
  host share of layers is streamed from host memory each step, the rest from disk.
- Batching (FlexGen's block): `num_gpu_batches` GPU batches of `gpu_batch` sequences share one
  load of each layer's weights; batch = gpu_batch * num_gpu_batches.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from planner.errors import KvplanError
from planner.jsonio import read_json, write_json_atomic
from planner.models import DTYPE_BYTES, ModelConfig, model_from_record
from planner.placement import ATTENTION_PLACES, STRATEGIES, TIERS
from planner.schemas import check_plan

PLAN_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Decisions:
    strategy: str  # label of what was chosen: one of STRATEGIES
    dtype: str
    batch: int
    gpu_batch: int
    num_gpu_batches: int
    split_tokens: int  # KVPR's l: tokens per sequence whose K,V are recomputed from X
    kv_placement: dict[str, float]  # fractions of the stored K,V (tokens split_tokens..seq)
    x_placement: dict[str, float]  # fractions of X[0:split_tokens]
    weight_placement: dict[str, float]  # fractions of the layers
    attention_where: str  # "device" | "cpu"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fractions(obj: Any, what: str) -> dict[str, float]:
    if not isinstance(obj, dict) or set(obj) != set(TIERS):
        raise KvplanError(f"plan decisions.{what} must have exactly the keys {', '.join(TIERS)}")
    out = {}
    for tier in TIERS:
        v = obj[tier]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            raise KvplanError(f"plan decisions.{what}.{tier} must be a fraction in [0, 1], got {v!r}")
        out[tier] = float(v)
    if abs(sum(out.values()) - 1.0) > 1e-6:
        raise KvplanError(f"plan decisions.{what} fractions sum to {sum(out.values()):.6f}, not 1")
    return out


def _int(obj: dict[str, Any], key: str, where: str, lo: int, hi: int) -> int:
    if key not in obj:
        raise KvplanError(f"plan {where} is missing '{key}'")
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise KvplanError(f"plan {where}.{key} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def decisions_from_dict(obj: Any, seq: int) -> Decisions:
    if not isinstance(obj, dict):
        raise KvplanError("plan 'decisions' must be an object")
    for key in ("strategy", "dtype", "attention_where", "kv_placement", "x_placement", "weight_placement"):
        if key not in obj:
            raise KvplanError(f"plan decisions is missing '{key}'")
    if obj["strategy"] not in STRATEGIES:
        raise KvplanError(f"plan decisions.strategy must be one of {', '.join(STRATEGIES)}, got {obj['strategy']!r}")
    if obj["dtype"] not in DTYPE_BYTES:
        raise KvplanError(f"plan decisions.dtype {obj['dtype']!r} is not one of {', '.join(DTYPE_BYTES)}")
    if obj["attention_where"] not in ATTENTION_PLACES:
        raise KvplanError(f"plan decisions.attention_where must be 'device' or 'cpu', got {obj['attention_where']!r}")
    batch = _int(obj, "batch", "decisions", 1, 1 << 20)
    gpu_batch = _int(obj, "gpu_batch", "decisions", 1, 1 << 20)
    num_gpu_batches = _int(obj, "num_gpu_batches", "decisions", 1, 1 << 20)
    if gpu_batch * num_gpu_batches != batch:
        raise KvplanError(
            f"plan decisions: gpu_batch {gpu_batch} x num_gpu_batches {num_gpu_batches} != batch {batch}"
        )
    split = _int(obj, "split_tokens", "decisions", 0, seq)
    return Decisions(
        strategy=obj["strategy"], dtype=obj["dtype"], batch=batch, gpu_batch=gpu_batch,
        num_gpu_batches=num_gpu_batches, split_tokens=split,
        kv_placement=_fractions(obj["kv_placement"], "kv_placement"),
        x_placement=_fractions(obj["x_placement"], "x_placement"),
        weight_placement=_fractions(obj["weight_placement"], "weight_placement"),
        attention_where=obj["attention_where"],
    )


@dataclass(frozen=True)
class Plan:
    model: ModelConfig
    seq: int  # context length in tokens (prompt + generated) the plan is sized for
    prompt: int  # prompt tokens
    gen: int  # tokens to generate
    decisions: Decisions
    data: dict[str, Any]  # the whole plan object, predictions included


def plan_from_dict(data: Any, origin: str = "<plan>") -> Plan:
    """Validate a plan object; every problem is one KvplanError naming the field."""
    check_plan(data, origin)  # types, ranges, cross-field rules (planner/schemas.py)
    if not isinstance(data, dict):
        raise KvplanError(f"plan {origin}: expected a JSON object")
    version = data.get("schema_version")
    if version != PLAN_SCHEMA_VERSION:
        raise KvplanError(
            f"plan {origin}: schema_version {version!r} is not supported (expected {PLAN_SCHEMA_VERSION})"
        )
    for key in ("model", "inputs", "decisions"):
        if key not in data:
            raise KvplanError(f"plan {origin} is missing '{key}'")
    model = model_from_record(data["model"], f"plan {origin}")
    inputs = data["inputs"]
    if not isinstance(inputs, dict):
        raise KvplanError(f"plan {origin}: 'inputs' must be an object")
    seq = _int(inputs, "seq", "inputs", 1, 10_000_000)
    gen = _int(inputs, "gen", "inputs", 0, seq)
    prompt = _int(inputs, "prompt", "inputs", 1, seq)
    if prompt + gen > seq:
        raise KvplanError(f"plan {origin}: prompt {prompt} + gen {gen} exceeds seq {seq}")
    decisions = decisions_from_dict(data["decisions"], seq)
    _check_predicted_sections(data, origin)
    return Plan(model=model, seq=seq, prompt=prompt, gen=gen, decisions=decisions, data=data)


# Sections `kvplan solve` writes (docs/plan-schema.md). A hand-written plan may leave them out (the
# runtime needs only model, inputs and decisions); a plan that has a "solver" section was written by
# the planner and must have them all.
PREDICTION_NUMBERS = (
    "decode_step_s", "prefill_s", "total_s", "throughput_tokens_per_s", "decode_throughput_tokens_per_s",
    "per_layer_step_s", "surrogate_decode_step_s",
)
PREDICTION_MAPS = ("per_layer_busy_s", "memory_bytes", "link_bytes_per_step")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0 \
            or value == float("inf"):
        raise KvplanError(f"plan {where} must be a non-negative number, got {value!r}")
    return float(value)


def _check_predicted_sections(data: dict[str, Any], origin: str) -> None:
    written_by_planner = "solver" in data
    pred = data.get("prediction")
    if pred is None and not written_by_planner:
        return
    if not isinstance(pred, dict):
        raise KvplanError(f"plan {origin}: 'prediction' must be an object")
    for key in PREDICTION_NUMBERS:
        if key in pred:
            _number(pred[key], f"{origin} prediction.{key}")
        elif written_by_planner:
            raise KvplanError(f"plan {origin}: prediction is missing '{key}'")
    for key in PREDICTION_MAPS:
        if key in pred:
            if not isinstance(pred[key], dict):
                raise KvplanError(f"plan {origin}: prediction.{key} must be an object")
            for name, value in pred[key].items():
                _number(value, f"{origin} prediction.{key}.{name}")
        elif written_by_planner:
            raise KvplanError(f"plan {origin}: prediction is missing '{key}'")
    if written_by_planner:
        for key in ("hardware", "baselines", "lower_bound", "warnings"):
            if key not in data:
                raise KvplanError(f"plan {origin} is missing '{key}'")
        if not isinstance(data["warnings"], list) or not all(isinstance(w, str) for w in data["warnings"]):
            raise KvplanError(f"plan {origin}: 'warnings' must be a list of strings")


def load_plan(path: str | Path) -> Plan:
    return plan_from_dict(read_json(path, "plan"), origin=str(path))


def save_plan(path: str | Path, data: dict[str, Any]) -> Path:
    plan_from_dict(data, origin=str(path))  # never write a plan we could not read back
    return write_json_atomic(path, data)


__all__ = [
    "PLAN_SCHEMA_VERSION", "TIERS", "STRATEGIES", "Decisions", "Plan", "decisions_from_dict",
    "plan_from_dict", "load_plan", "save_plan",
]
