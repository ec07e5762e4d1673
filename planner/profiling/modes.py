"""How thorough each `kvplan profile` mode is: which catalog models lend their shapes, which token
counts and contexts, which dtypes, the size caps and the time budget of each probe family."""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.errors import KvplanError
from planner.profiling.timing import Repeats

MODE_NAMES = ("smoke", "quick", "full")


@dataclass(frozen=True)
class Mode:
    name: str
    gemm_models: tuple[str, ...]
    gemm_tokens: tuple[int, ...]
    dtypes: tuple[str, ...]
    attention_models: tuple[str, ...]
    attention_contexts: tuple[int, ...]
    attention_batches: tuple[int, ...]
    attention_max_kv_bytes: int  # skip attention samples whose K+V (fp32) exceed this
    gemm_max_weight_bytes: int  # skip GEMMs whose weight matrix (fp32) exceeds this
    link_max_bytes: int
    disk_max_bytes: int
    link_sizes: int  # how many transfer sizes per link
    budget_s: dict[str, float] = field(default_factory=dict)  # per probe family; the rest is skipped
    repeats: Repeats = Repeats()
    # cold operands: weights and K,V come from an arena of 1.5x the last-level cache, at most this
    # many bytes (compute.ColdArena); smoke keeps it small to stay fast
    cold_max_bytes: int = 1 << 30
    # KV recompute rows beyond the decode token counts: recompute runs gpu_batch x split rows at once
    # (thousands); fitted from decode-sized rows alone it came out 10% fast at 1456 rows
    recompute_rows: tuple[int, ...] = ()
    # the host DRAM bandwidth probe: a copy of 4x the last-level cache, at most this many bytes, timed
    # this many times (links.host_bandwidth)
    host_stream_max_bytes: int = 1 << 30
    host_stream_rounds: int = 5


MODES: dict[str, Mode] = {
    # `--smoke`: a few seconds; enough samples to fit every family (tests and CI use it).
    "smoke": Mode(
        name="smoke",
        gemm_models=("opt-125m", "tinyllama-1.1b"),
        gemm_tokens=(1, 4, 16, 64),
        dtypes=("float32",),
        attention_models=("opt-125m", "tinyllama-1.1b"),
        attention_contexts=(64, 256, 1024),
        attention_batches=(1, 4),
        attention_max_kv_bytes=8 << 20,
        gemm_max_weight_bytes=48 << 20,
        link_max_bytes=64 << 20,
        disk_max_bytes=16 << 20,
        link_sizes=10,
        budget_s={"gemm": 3.0, "attention": 1.5, "elementwise": 0.5, "link": 1.0, "disk": 2.5, "cpu": 1.0},
        repeats=Repeats(warmup=1, min_reps=3, max_reps=5, target_s=0.01),
        cold_max_bytes=64 << 20,
        host_stream_max_bytes=64 << 20,
        host_stream_rounds=3,
    ),
    # `--quick`: under 2 minutes on 2 cores.
    "quick": Mode(
        name="quick",
        gemm_models=("opt-125m", "opt-1.3b", "tinyllama-1.1b", "llama-2-7b", "llama-3-8b"),
        # every power of two a decode batch takes up to 64: on this CPU a cold GEMM's time jumps
        # between 4 and 8 rows (oneDNN switches kernels) and a fit through 4 and 16 missed 8 by 15%
        gemm_tokens=(1, 2, 4, 8, 16, 32, 64, 256),
        dtypes=("float32", "bfloat16"),
        attention_models=("opt-1.3b", "tinyllama-1.1b", "llama-2-7b", "llama-3-8b"),
        attention_contexts=(128, 512, 2048, 8192),
        attention_batches=(1, 4, 16),
        attention_max_kv_bytes=128 << 20,
        gemm_max_weight_bytes=400 << 20,
        link_max_bytes=256 << 20,
        disk_max_bytes=256 << 20,
        link_sizes=16,
        budget_s={"gemm": 70.0, "attention": 20.0, "elementwise": 4.0, "link": 6.0, "disk": 18.0, "cpu": 10.0},
        recompute_rows=(1024, 4096),
        repeats=Repeats(warmup=1, min_reps=3, max_reps=7, target_s=0.03, passes=2),
    ),
    # the default: thorough.
    "full": Mode(
        name="full",
        gemm_models=("opt-125m", "opt-1.3b", "opt-6.7b", "opt-13b", "tinyllama-1.1b", "llama-2-7b",
                     "llama-2-13b", "llama-3-8b", "mistral-7b", "qwen2.5-7b"),
        gemm_tokens=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
        dtypes=("float32", "bfloat16", "float16"),
        attention_models=("opt-1.3b", "opt-6.7b", "tinyllama-1.1b", "llama-2-7b", "llama-2-13b",
                          "llama-3-8b", "qwen2.5-7b"),
        attention_contexts=(128, 256, 512, 1024, 2048, 4096, 8192, 16384),
        attention_batches=(1, 2, 4, 8, 16, 32),
        attention_max_kv_bytes=1 << 30,
        gemm_max_weight_bytes=1536 << 20,
        link_max_bytes=1 << 30,
        disk_max_bytes=1 << 30,
        link_sizes=24,
        budget_s={"gemm": 600.0, "attention": 240.0, "elementwise": 30.0, "link": 60.0, "disk": 120.0,
                  "cpu": 120.0},
        repeats=Repeats(warmup=2, min_reps=5, max_reps=25, target_s=0.2, passes=3),
        recompute_rows=(2048, 4096, 8192, 16384),
        host_stream_rounds=9,
    ),
}


def get_mode(name: str) -> Mode:
    if name not in MODES:
        raise KvplanError(f"unknown profile mode '{name}' (known: {', '.join(MODE_NAMES)})")
    return MODES[name]
