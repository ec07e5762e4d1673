"""The runtime's kernels, handed to the probes by the caller.

The probes time what the runtime runs (docs/profiling.md, "What the probes run"), but planner code
never imports the runtime (dependencies point CLI -> planner <- runtime). So whoever starts a profile
(planner/cli/profile_cmd.py: `runtime_kernels()`, or a script) passes the runtime's functions in this
record, and the probes call them without knowing where they live."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# decode_attention(q, kv, kv_heads) -> out: q [batch, heads, 1, head_dim] attends, without a causal
# mask, over kv [batch, keys, 2 * kv_heads * head_dim] (K heads then V heads per row, any strides)
DecodeAttention = Callable[[Any, Any, int], Any]
# kv_recompute(wkv, x_tm, out): K,V of token-major X [tokens, batch, hidden] with the fused [W_k; W_v]
# weight [2 * kv_dim, hidden], written into out [tokens, batch, 2 * kv_dim] (no RoPE)
KvRecompute = Callable[[Any, Any, Any], None]
# staging_pool(slots) -> a pool whose take(nbytes) hands out the page-aligned buffers that the
# runtime's disk reads land in before they are copied to the device
StagingPool = Callable[[int], Any]


@dataclass(frozen=True)
class Kernels:
    """The runtime functions the compute and disk->device probes time."""

    decode_attention: DecodeAttention
    kv_recompute: KvRecompute
    staging_pool: StagingPool | None = None  # only the disk->device probe (CUDA) needs it
    source: str = "runtime"  # recorded as measurement.kernels: which implementation was timed
