"""The runtime's kernels as the probes call them (planner/profiling/kernels.py): decode attention
(runtime.model.attention), KV recompute (runtime.model.kv_from_x_into) and the disk reads' staging
pool (runtime.tiers.BufferPool). `kvplan profile` hands them to the probes (planner/profiling may not
import the runtime), and `kvplan execute`'s machine check (runtime/check.py) times the same ones."""

from __future__ import annotations

import dataclasses
import functools

from planner.models import CATALOG
from planner.profiling.kernels import Kernels


def runtime_kernels() -> Kernels:
    from runtime import model as M
    from runtime import tiers

    # an attention-only Arch of any head shape: a catalog model's (no RoPE) with the head counts replaced
    base = dataclasses.replace(M.Arch.of(CATALOG["opt-125m"]), rotary=False)

    @functools.cache
    def arch(heads: int, kv_heads: int, head_dim: int):
        return dataclasses.replace(base, hidden=heads * head_dim, heads=heads, kv_heads=kv_heads, head_dim=head_dim)

    def decode_attention(q, kv, kv_heads: int):
        return M.attention(arch(q.shape[1], kv_heads, q.shape[3]), q, kv, causal=False)

    def kv_recompute(wkv, x_tm, out) -> None:
        M.kv_from_x_into(base, {"wkv": wkv}, x_tm, None, out)

    return Kernels(decode_attention=decode_attention, kv_recompute=kv_recompute, staging_pool=tiers.BufferPool,
                   source="runtime.model.attention, runtime.model.kv_from_x_into, runtime.tiers.BufferPool")
