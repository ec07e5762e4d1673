"""Roofline predictions at sustained rates (datasheet profiles, and fallbacks of measured ones).

A kernel's compute time T_c = FLOPs / (f_c * peak FLOP/s) and memory time T_m = bytes / (f_m *
bandwidth) overlap imperfectly; the time is the power mean

    t = launch + (T_c^n + T_m^n)^(1/n)          (n = overlap_exponent; n -> inf is max(T_c, T_m))

so the achieved fraction of the compute rate depends on the arithmetic intensity I = FLOPs / bytes
relative to the sustained ridge point I_r = (f_c * peak) / (f_m * bandwidth) (Williams, Waterman &
Patterson, "Roofline", CACM 2009, for the ridge point):

    achieved FLOP/s / (f_c * peak) = (1 + (I_r / I)^n)^(-1/n)

It rises with the GEMM's rows (a skinny m x k by k x n GEMM has I ~ m FLOPs per weight element)
and saturates past the ridge point: one formula for every GPU, from its own peak and bandwidth.
Decode attention is bandwidth-bound (about one FLOP per K,V byte), at a rate that depends on how
many (sequence, KV head) units the launch has against the GPU's SMs; prefill attention is
compute-bound at a much lower fraction of the peak than a GEMM. The constants are in
planner/costmodel/calibration.py, with their source and held-out error (docs/cost-models.md).

The functions take floats or numpy arrays (the benchmark evaluates them on whole tables).

`Efficiency` and `attention_time_s` are the older parameters and formula that only the host CPU's
attention of an old profile (without a host attention rate) still uses, from its "efficiency" block.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.costmodel.calibration import SustainedRates


def overlap_s(compute_s, memory_s, exponent: float):
    """(T_c^n + T_m^n)^(1/n): the longer of the two, plus what the shorter fails to hide."""
    return (compute_s ** exponent + memory_s ** exponent) ** (1.0 / exponent)


def ridge_flops_per_byte(peak_tflops: float, memory_gb_per_s: float, rates: SustainedRates) -> float:
    """The sustained ridge point I_r: FLOPs per byte at which compute and memory time are equal."""
    return (rates.gemm_compute_fraction * peak_tflops * 1e12) / (rates.gemm_memory_fraction * memory_gb_per_s * 1e9)


def gemm_time_s(m, n, k, dtype_bytes: int, peak_tflops: float, memory_gb_per_s: float, rates: SustainedRates):
    """(m x k) @ (k x n): 2mnk FLOPs; reads both operands and writes the result once."""
    flops = 2.0 * m * n * k
    moved_bytes = dtype_bytes * (m * k + k * n + m * n)
    compute_s = flops / (peak_tflops * 1e12 * rates.gemm_compute_fraction)
    memory_s = moved_bytes / (memory_gb_per_s * 1e9 * rates.gemm_memory_fraction)
    return rates.launch_s + overlap_s(compute_s, memory_s, rates.overlap_exponent)


def decode_wave_factor(work_units, sm_count: int, units_per_sm: int):
    """How much longer than at full occupancy a decode-attention launch reads its K,V: q >= 1.

    The launch has one unit of work per (sequence, KV head), `work_units` = batch x KV heads; when
    there are fewer units than SMs the kernel splits each sequence's keys into s = ceil(SMs / units)
    parts (split-K,V "Flash-Decoding", Dao et al. 2023), so it launches U = units x s. Each SM runs
    k = `units_per_sm` units at once, each reading at 1 / (k x SMs) of the sustained bandwidth, so
    the launch runs in W = ceil(U / (k x SMs)) waves of the time one full wave takes (wave
    quantization: NVIDIA Deep Learning Performance Guide, "GPU Performance Background"):

        q = W x k x SMs / U

    The constants are the GPU's own SM count and a kernel constant k: no per-GPU factor."""
    slots = units_per_sm * sm_count
    launched = work_units * -(-sm_count // work_units)  # -(-a // b) = ceil(a / b), for ints and arrays alike
    return -(-launched // slots) * slots / launched


def device_attention_time_s(
    flops, kv_bytes, query_tokens: int, peak_tflops: float, memory_gb_per_s: float, rates: SustainedRates,
    work_units=None, sm_count: int | None = None,
):
    """Attention of `query_tokens` new tokens per sequence: reading K,V at the decode-attention
    bandwidth fraction, overlapped with the causal FLOPs at the prefill compute fraction, plus the
    fixed cost of a decode call (one new token) or a prefill call (several).

    A decode call on a GPU whose SM count is known (`sm_count`, with `work_units` = batch x KV
    heads) reads its K,V at f_w of the bandwidth divided by its wave factor (`decode_wave_factor`);
    without an SM count (old and measured profiles) at the single fraction f_a."""
    compute_s = flops / (peak_tflops * 1e12 * rates.prefill_attention_compute_fraction)
    if query_tokens == 1 and sm_count is not None and work_units is not None:
        wave = decode_wave_factor(work_units, sm_count, rates.decode_attention_units_per_sm)
        memory_s = kv_bytes * wave / (memory_gb_per_s * 1e9 * rates.decode_attention_wave_memory_fraction)
        return rates.decode_attention_wave_floor_s + overlap_s(compute_s, memory_s, rates.overlap_exponent)
    memory_s = kv_bytes / (memory_gb_per_s * 1e9 * rates.decode_attention_memory_fraction)
    floor_s = rates.decode_attention_floor_s if query_tokens == 1 else rates.prefill_attention_floor_s
    return floor_s + overlap_s(compute_s, memory_s, rates.overlap_exponent)


def elementwise_time_s(nbytes, memory_gb_per_s: float, rates: SustainedRates):
    return rates.elementwise_floor_s + nbytes / (memory_gb_per_s * 1e9 * rates.elementwise_memory_fraction)


# -- the host CPU's attention in old profiles without a host attention rate -----------------------
@dataclass(frozen=True)
class Efficiency:
    gemm_peak_fraction: float = 0.75  # best achieved fraction of the datasheet FLOP/s for large GEMMs
    gemm_half_rows: float = 64.0  # rows m at which half of that fraction is reached
    memory_fraction: float = 0.8  # achieved fraction of datasheet memory bandwidth
    attention_memory_fraction: float = 0.6  # decode attention reaches less than a streaming copy
    elementwise_memory_fraction: float = 0.8  # element-wise kernels (MLP activation)
    launch_s: float = 8e-6  # per-kernel fixed cost

    @classmethod
    def from_dict(cls, data: dict | None) -> Efficiency:
        if not data:
            return cls()
        known = {k: float(v) for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


DEFAULT_EFFICIENCY = Efficiency()


def attention_time_s(
    flops: float, kv_bytes: float, peak_tflops: float, memory_gb_per_s: float, eff: Efficiency
) -> float:
    compute_s = flops / (peak_tflops * 1e12 * eff.gemm_peak_fraction)
    memory_s = kv_bytes / (memory_gb_per_s * 1e9 * eff.attention_memory_fraction)
    return eff.launch_s + max(compute_s, memory_s)
