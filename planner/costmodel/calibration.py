"""The calibrated constants of the GPU roofline (planner/costmodel/roofline.py), in one place.

Each is a dimensionless fraction of a datasheet number or a fixed time, the same for every GPU:
a GPU's own peak FLOP/s and memory bandwidth come from its profile, so another GPU gets the same
formulas from its datasheet numbers, with no per-GPU factor.

Source: per-operator A100 timings measured with microsoft/vidur (MIT licence), read from
../shared/data/gpu-op-timings/a100/ against the A100-SXM4-80GB datasheet (312 TFLOP/s fp16,
2,039 GB/s). `python benchmarks/validate_a100.py --calibrate` re-derives every value below
(least squares on log(predicted / measured)) and prints the held-out table of docs/cost-models.md:

- GEMM and element-wise constants: fitted on the training models' rows only (Llama-2-7b,
  Llama-2-70b, Meta-Llama-3-70B, Qwen-72B, phi-2; all tensor-parallel degrees and token counts);
  held-out median error on Meta-Llama-3-8B, CodeLlama-34b-Instruct, internlm-20b: GEMMs 5.2%
  (4.5% below 64 tokens).
- Element-wise (f_e and its floor): fitted on the residual add rows (`time_stats.add`: torch's own
  element-wise kernel, launched eagerly like every small op of kvplan's runtime: norms, adds, RoPE,
  copies), the rows under 64 tokens (decode's sizes; 170 of 5,217) weighted to count as much as the
  rest together; held-out median error 11.4% on all rows, 8.5% below 64 tokens (the constants fitted
  before on the fused activation kernel, `mlp_act`, missed these rows by 86% and 79%: that kernel is
  sarathi's SiluAndMul, one thread block per token: half the bandwidth, and 2-24 us at few tokens in
  proportion to its width per shard, not what an eager torch op does). Other GPUs use these A100
  constants with their own bandwidth: an assumption.
- Attention constants without an SM count (prefill, and decode on profiles that lack one): fitted
  on all 18 Llama-2-7b attention rows (10 decode batches 1-128 at 2,048 cached tokens, 8 prefill
  chunks of 544-576 tokens after 0-3,520 cached ones); held out by leaving one row out at a time
  (each row predicted from constants fitted without it): median error prefill 2.6%, decode 10.2%
  (one fraction plus a floor cannot follow the kernel's rate, 57-61% of the bandwidth for 1-8
  sequences and 77-98% for 16-128).
- Decode wave model (GPUs with an SM count, roofline.decode_wave_factor): f_w and the floor by least
  squares on the 10 decode rows with k = units per SM picked from 1-4, against the A100's 108 SMs;
  leave-one-out median error 3.1% (worst row 9.3%). k = 2 explains the step: 128 and 256 units
  (batches 4 and 8) fill one and two waves of 216 slots to 59%, 512 units three waves to 79%. The
  floor comes out at zero (its lower bound): every decode row has 2,048 cached tokens, so a fixed
  cost cannot be told apart from the wave term; short-context decode calls are predicted from
  their bytes alone, an assumption. docs/cost-models.md has the per-row table.
"""

from __future__ import annotations

from dataclasses import dataclass

# the GPU whose timings fitted CALIBRATED (its datasheet profiles' device names contain it); on any
# other GPU the constants are an assumption, listed with the plan's assumed numbers (planner/hardware.py)
CALIBRATED_GPU = "A100"


@dataclass(frozen=True)
class SustainedRates:
    """What a GPU sustains, as fractions of its datasheet peaks, and fixed per-call times."""

    gemm_compute_fraction: float  # f_c: of the datasheet FLOP/s, for GEMMs far above the ridge point
    gemm_memory_fraction: float  # f_m: of the datasheet bandwidth, for GEMMs far below it (weight streaming)
    overlap_exponent: float  # n in t = (T_c^n + T_m^n)^(1/n): how compute and memory time overlap
    launch_s: float  # fixed cost of one GEMM kernel
    elementwise_memory_fraction: float  # f_e: element-wise kernels (torch's eager ones: the residual add)
    elementwise_floor_s: float  # fixed cost of one element-wise kernel
    decode_attention_memory_fraction: float  # f_a: K,V bytes read per second / datasheet bandwidth (no SM count)
    decode_attention_floor_s: float  # fixed cost of one decode-attention call (no SM count)
    decode_attention_wave_memory_fraction: float  # f_w: K,V bytes per second / bandwidth with every slot busy
    decode_attention_wave_floor_s: float  # fixed cost of one decode-attention call (with an SM count)
    decode_attention_units_per_sm: int  # k: (sequence, KV head, key split) units one SM runs at once
    prefill_attention_compute_fraction: float  # f_p: causal attention FLOPs per second / datasheet FLOP/s
    prefill_attention_floor_s: float  # fixed cost of one prefill-attention call (measured at 544-576 tokens)


CALIBRATED = SustainedRates(
    gemm_compute_fraction=0.7384,
    gemm_memory_fraction=0.8507,
    overlap_exponent=1.357,
    launch_s=5.582e-06,
    elementwise_memory_fraction=0.9983,
    elementwise_floor_s=1.8e-06,
    decode_attention_memory_fraction=0.8418,
    decode_attention_floor_s=1.371e-05,
    decode_attention_wave_memory_fraction=0.967,
    decode_attention_wave_floor_s=0.0,  # fitted: 2e-18 s, at its bound (see above)
    decode_attention_units_per_sm=2,
    prefill_attention_compute_fraction=0.3962,
    prefill_attention_floor_s=9.732e-05,
)
