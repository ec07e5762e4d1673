"""Predicted time of each op of one decoder layer, built from the CostModel's primitive queries.

The ops are what the runtime runs per layer (runtime/executor.py `_compute_layer`, the functions of
runtime/model.py it calls): the projections over all rows once, attention per GPU batch, and the
small element-wise ops between them (`other_ops_bytes`). Each element-wise op is priced as one
`elementwise_s` query over the bytes it reads and writes: the profile's per-byte cost of the MLP
activation probe, with its fixed cost per op (an assumption for ops that were not probed themselves:
norms, adds and copies stream their bytes once like the activation does).

They are charged where the profile can price an element-wise kernel from measured or calibrated data
(`charges_other_ops`): a measured profile (its fitted element-wise model, measured on this machine's
runtime), and a GPU without one (datasheet profiles: the roofline's element-wise floor and rate, fitted
on an A100's eager torch add kernels, planner/costmodel/calibration.py; on another GPU an assumption).
A CPU without a fitted model does not charge them: no CPU data calibrates an element-wise op's cost
(docs/cost-models.md, "Layer ops").
"""

from __future__ import annotations

from planner.costmodel.cost_model import CostModel
from planner.layer_costs import layer_projections, recompute_gemm
from planner.models import DTYPE_BYTES, ModelConfig

# RMSNorm as runtime/model.py `_rms` writes it: pow, mean, times rsqrt, times the gain (4 torch ops);
# LayerNorm is one fused op (F.layer_norm)
RMS_NORM_OPS = 4
# RoPE as runtime/model.py `rope` writes it, per tensor: the negated half, the cat, x*cos, rotated*sin
# and their sum (5 ops over the tensor; cos/sin of one position are negligible)
ROPE_OPS = 5


def _position_ops(model: ModelConfig, rows: int, width: int, e: int, written_back: bool) -> list[int]:
    """Bytes of each op that positions a q or k tensor of `rows` x `width` (runtime/model.py
    `_position_q_or_k`): the per-head norm (Qwen3) and RoPE (rotary models); K is then written back
    into the fused K,V rows (`_rope_k` / `kv_from_x_into`), one more op."""
    ops = [2 * rows * width * e] * RMS_NORM_OPS if model.qk_norm else []
    if model.position_encoding == "rotary":
        ops += [2 * rows * width * e] * (ROPE_OPS + (1 if written_back else 0))
    return ops


def charges_other_ops(cost: CostModel) -> bool:
    """Whether the layer's small element-wise ops are priced: on a profile with a fitted element-wise
    model, and on a GPU, whose roofline prices them at the A100-calibrated floor and rate (see the
    module docstring)."""
    return cost.fitted_model("elementwise", "device") is not None or cost.profile.device_type == "cuda"


def other_ops_bytes(model: ModelConfig, rows: int, dtype: str) -> list[int]:
    """Bytes read + written by each small op of one layer for `rows` new tokens (one entry per torch
    op; each pays the element-wise fixed cost), where runtime/model.py and runtime/executor.py run them:
    - input norm and post-attention norm (`input_norm`, `finish_layer` -> `_norm`): read and write rows x h;
    - the q/k head norms of Qwen3 (`_position_q_or_k`) and RoPE on q and k (`rope`, rotary models);
    - the K,V half of the fused QKV output made contiguous (`query_and_kv`: `.contiguous()`);
    - the new token's K,V written into the store or the gather buffer (`Executor._store_new` /
      `_attend_gathered`: `buf.tensor[pos].copy_`);
    - the attention outputs of the GPU batches concatenated (`_compute_layer`: `torch.cat(outs)`);
    - the two residual adds (`finish_layer`: `h + ...`): read 2, write 1 tensor of rows x h;
    - each projection's bias (`F.linear(..., bias)`: the output starts as the bias, the GEMM adds to
      it), which the GEMM probes do not include (planner/profiling/compute.py times F.linear(x, W))."""
    e = DTYPE_BYTES[dtype]
    h, q, kv, i = model.hidden_size, model.q_dim, model.kv_dim, model.intermediate_size
    norm = [2 * rows * h * e] * (1 if model.norm == "layernorm" else RMS_NORM_OPS)
    ops = norm + norm
    ops += _position_ops(model, rows, q, e, written_back=False) + _position_ops(model, rows, kv, e, written_back=True)
    ops += [2 * rows * 2 * kv * e, 2 * rows * 2 * kv * e, 2 * rows * q * e]
    ops += [3 * rows * h * e] * 2
    biased = []
    if model.qkv_bias:
        biased.append(q + 2 * kv)
    if model.o_bias:
        biased.append(h)
    if model.mlp_bias:
        biased += [i] * (2 if model.gated_mlp else 1) + [h]
    ops += [2 * rows * n * e for n in biased]
    return ops


def layer_op_times_s(
    cost: CostModel, model: ModelConfig, batch: int, query_tokens: int, context: int, dtype: str,
    attention_where: str = "device",
) -> dict[str, float]:
    """Seconds per op for `batch` sequences adding `query_tokens` tokens after `context` cached ones,
    the layer's weights cold (read from memory, as the runtime meets them once per layer and step)."""
    rows = batch * query_tokens
    times: dict[str, float] = {}
    for p in layer_projections(model, rows):  # a gated MLP's mlp_up: the gate and the up GEMM
        times[p.op] = times.get(p.op, 0.0) + cost.gemm_s(p.gemm, dtype)
    width = model.intermediate_size
    # activation reads the up (and gate) output and writes one tensor of rows x i
    act_bytes = rows * width * ((2 if model.gated_mlp else 1) + 1) * DTYPE_BYTES[dtype]
    times["mlp_act"] = cost.elementwise_s(act_bytes)
    other = other_ops_bytes(model, rows, dtype) if charges_other_ops(cost) else []
    times["other_ops"] = sum(cost.elementwise_s(n) for n in other)
    times["attention"] = cost.attention_s(model, batch, query_tokens, context, dtype, where=attention_where)
    order = ("qkv_proj", "o_proj", "mlp_up", "mlp_act", "mlp_down", "other_ops", "attention")
    return {name: times[name] for name in order}


def recompute_extra_bytes(model: ModelConfig, batch: int, tokens: int, dtype: str) -> list[int]:
    """Bytes of each op the runtime's recompute runs besides the GEMM the probe times (runtime/executor.py
    `_recompute`, runtime/model.py `kv_from_x_into`): the X parts concatenated token-major
    (`torch.cat(x_parts)`), the K,V bias added (`out.add_(bkv)`), and RoPE on K (rotary models; the probe
    runs the recompute without it)."""
    e = DTYPE_BYTES[dtype]
    rows, kv = batch * tokens, model.kv_dim
    ops = [2 * rows * model.hidden_size * e]
    if model.qkv_bias:
        ops.append(2 * rows * 2 * kv * e)
    return ops + _position_ops(model, rows, kv, e, written_back=True)


def recompute_kv_s(cost: CostModel, model: ModelConfig, batch: int, tokens: int, dtype: str) -> float:
    """Time to rebuild K,V of `tokens` cached tokens per sequence from their layer inputs X (one GPU
    batch's recompute GEMM; W_k,W_v cold: attention over other GPU batches' K,V runs in between), with
    the element-wise ops around it (`recompute_extra_bytes`)."""
    if tokens <= 0 or batch <= 0:
        return 0.0
    other = recompute_extra_bytes(model, batch, tokens, dtype) if charges_other_ops(cost) else []
    extra = sum(cost.elementwise_s(n) for n in other)
    return cost.gemm_s(recompute_gemm(model, batch * tokens), dtype) + extra
