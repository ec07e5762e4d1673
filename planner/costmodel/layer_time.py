"""Predicted time of each op of one decoder layer, built from the CostModel's primitive queries."""

from __future__ import annotations

from planner.costmodel.cost_model import CostModel
from planner.layer_costs import layer_gemms, recompute_gemm
from planner.models import DTYPE_BYTES, ModelConfig


def layer_op_times_s(
    cost: CostModel, model: ModelConfig, batch: int, query_tokens: int, context: int, dtype: str,
    attention_where: str = "device",
) -> dict[str, float]:
    """Seconds per op for `batch` sequences adding `query_tokens` tokens after `context` cached ones,
    the layer's weights cold (read from memory, as the runtime meets them once per layer and step)."""
    rows = batch * query_tokens
    times = {name: cost.gemm_s(g, dtype) for name, g in layer_gemms(model, rows).items()}
    width = model.intermediate_size
    # activation reads the up (and gate) output and writes one tensor of rows x i
    act_bytes = rows * width * ((2 if model.gated_mlp else 1) + 1) * DTYPE_BYTES[dtype]
    times["mlp_act"] = cost.elementwise_s(act_bytes)
    times["attention"] = cost.attention_s(model, batch, query_tokens, context, dtype, where=attention_where)
    order = ("qkv_proj", "o_proj", "mlp_up", "mlp_act", "mlp_down", "attention")
    return {name: times[name] for name in order}


def recompute_kv_s(cost: CostModel, model: ModelConfig, batch: int, tokens: int, dtype: str) -> float:
    """Time to rebuild K,V of `tokens` cached tokens per sequence from their layer inputs X (one GPU
    batch's recompute GEMM; W_k,W_v cold: attention over other GPU batches' K,V runs in between)."""
    if tokens <= 0 or batch <= 0:
        return 0.0
    return cost.gemm_s(recompute_gemm(model, batch * tokens), dtype)
