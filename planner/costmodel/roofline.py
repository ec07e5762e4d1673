"""Roofline predictions for datasheet profiles: time = max(FLOPs / achieved peak, bytes / achieved
bandwidth) + a fixed launch cost, where the achieved fraction of the compute peak grows with the
number of GEMM rows (skinny decode GEMMs cannot fill the tensor cores).

The efficiency parameters live in the profile ("efficiency"); DEFAULT_EFFICIENCY is used when a
profile has none. docs/cost-models.md says how they were chosen.
"""

from __future__ import annotations

from dataclasses import dataclass


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


def gemm_time_s(
    m: int, n: int, k: int, dtype_bytes: int, peak_tflops: float, memory_gb_per_s: float, eff: Efficiency
) -> float:
    flops = 2.0 * m * n * k
    moved_bytes = dtype_bytes * (m * k + k * n + m * n)
    compute_fraction = eff.gemm_peak_fraction * m / (m + eff.gemm_half_rows)
    compute_s = flops / (peak_tflops * 1e12 * compute_fraction)
    memory_s = moved_bytes / (memory_gb_per_s * 1e9 * eff.memory_fraction)
    return eff.launch_s + max(compute_s, memory_s)


def attention_time_s(
    flops: float, kv_bytes: float, peak_tflops: float, memory_gb_per_s: float, eff: Efficiency
) -> float:
    compute_s = flops / (peak_tflops * 1e12 * eff.gemm_peak_fraction)
    memory_s = kv_bytes / (memory_gb_per_s * 1e9 * eff.attention_memory_fraction)
    return eff.launch_s + max(compute_s, memory_s)


def elementwise_time_s(nbytes: float, memory_gb_per_s: float, eff: Efficiency) -> float:
    return eff.launch_s + nbytes / (memory_gb_per_s * 1e9 * eff.elementwise_memory_fraction)
