"""The execution plan: what `kvplan solve` writes and `kvplan execute` runs.

A plan is one JSON object (docs/plan-schema.md). This module owns its decision record and the
load/save functions; planner/schemas.py is the one place a plan is validated. The planner fills in
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
- Activations: `activation_placement` "device" keeps the hidden states of the whole block on the
  device; "host" keeps them in host memory and moves each GPU batch's in and out of every layer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from planner import schemas
from planner.jsonio import read_json, write_json_atomic
from planner.models import ModelConfig, model_from_record
from planner.placement import STRATEGIES, TIERS
from planner.schemas import PLAN_SCHEMA_VERSION, check_plan


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
    # where the hidden states between layers of the GPU batches not being computed live: "device" |
    # "host" (FlexGen's activation placement; plans written before it have none: "device")
    activation_placement: str = "device"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decisions_from_schema(checked: schemas.Decisions) -> Decisions:
    """The record of a decisions section the plan schema has checked: each placement as {tier: fraction}."""
    values = {}
    for f in fields(Decisions):
        value = getattr(checked, f.name)
        values[f.name] = {t: float(getattr(value, t)) for t in TIERS} if isinstance(value, schemas.Fractions) \
            else value
    return Decisions(**values)


@dataclass(frozen=True)
class Plan:
    model: ModelConfig
    seq: int  # context length in tokens (prompt + generated) the plan is sized for
    prompt: int  # prompt tokens
    gen: int  # tokens to generate
    decisions: Decisions
    data: dict[str, Any]  # the whole plan object, predictions included


def plan_from_dict(data: Any, origin: str = "<plan>") -> Plan:
    """Validate a plan object against the plan schema (planner/schemas.py: types, ranges, the rules
    across fields, the sections a solved plan must have); every problem is one KvplanError naming the field."""
    checked = check_plan(data, origin)
    model = model_from_record(data["model"], f"plan {origin}")
    inputs = checked.inputs
    return Plan(model=model, seq=inputs.seq, prompt=inputs.prompt, gen=inputs.gen,
                decisions=decisions_from_schema(checked.decisions), data=data)


def load_plan(path: str | Path) -> Plan:
    return plan_from_dict(read_json(path, "plan"), origin=str(path))


def save_plan(path: str | Path, data: dict[str, Any]) -> Path:
    plan_from_dict(data, origin=str(path))  # never write a plan we could not read back
    return write_json_atomic(path, data)


__all__ = [
    "PLAN_SCHEMA_VERSION", "TIERS", "STRATEGIES", "Decisions", "Plan", "decisions_from_schema",
    "plan_from_dict", "load_plan", "save_plan",
]
