"""Predicted time of each op of one decoder layer, built from the CostModel's primitive queries."""

from __future__ import annotations

from planner.costmodel.cost_model import CostModel
from planner.layer_costs import layer_gemms, recompute_gemm
from planner.models import DTYPE_BYTES, ModelConfig


def layer_op_times_s(
    cost: CostModel, model: ModelConfig, batch: int, query_tokens: int, context: int, dtype: str,
    attention_where: str = "device", reuse: int = 1,
) -> dict[str, float]:
    """Seconds per op for `batch` sequences adding `query_tokens` tokens after `context` cached ones.
    `reuse`: how many GPU batches in a row run this layer; its weights are cold for the first and
    warm (in cache) for the others, so a projection costs the mean (cold + (reuse-1) * warm) / reuse."""
    rows = batch * query_tokens
    times = {name: _reused_gemm_s(cost, g, dtype, reuse) for name, g in layer_gemms(model, rows).items()}
    width = model.intermediate_size
    # activation reads the up (and gate) output and writes one tensor of rows x i
    act_bytes = rows * width * ((2 if model.gated_mlp else 1) + 1) * DTYPE_BYTES[dtype]
    times["mlp_act"] = cost.elementwise_s(act_bytes)
    times["attention"] = cost.attention_s(model, batch, query_tokens, context, dtype, where=attention_where)
    order = ("qkv_proj", "o_proj", "mlp_up", "mlp_act", "mlp_down", "attention")
    return {name: times[name] for name in order}


def recompute_kv_s(cost: CostModel, model: ModelConfig, batch: int, tokens: int, dtype: str, reuse: int = 1) -> float:
    """Time to rebuild K,V of `tokens` cached tokens per sequence from their layer inputs X
    (`reuse` as in layer_op_times_s: W_k,W_v are warm after the layer's first GPU batch)."""
    if tokens <= 0 or batch <= 0:
        return 0.0
    return _reused_gemm_s(cost, recompute_gemm(model, batch * tokens), dtype, reuse)


def _reused_gemm_s(cost: CostModel, gemm, dtype: str, reuse: int) -> float:
    cold = cost.gemm_s(gemm, dtype)
    if reuse <= 1:
        return cold
    return (cold + (reuse - 1) * cost.gemm_s(gemm, dtype, warm=True)) / reuse
