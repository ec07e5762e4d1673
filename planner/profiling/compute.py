"""Compute probes: GEMM time vs (m, n, k, dtype), decode attention time vs (batch, context, heads,
KV heads, head dim), and the MLP activation vs bytes, on a torch device ("cuda" or "cpu")."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from planner.profiling.timing import Repeats, Timer

Progress = Callable[[int], None]  # called with how many samples were just finished
MIN_SAMPLES = 3  # a fit needs at least this many


@dataclass
class SampleSet:
    """Raw samples of one op family on one processor: `columns` name the dims, then time_s."""

    columns: list[str]
    rows: list[list[float]]
    skipped: int = 0  # samples left out when the family's time budget ran out

    def to_dict(self) -> dict:
        return {"columns": self.columns, "rows": self.rows, "skipped": self.skipped}


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _budgeted(
    items: Sequence, budget_s: float, measure: Callable, progress: Progress | None, passes: int = 1
) -> tuple[list[list[float]], int]:
    """Measure every item `passes` times in round-robin passes and keep each item's fastest pass: a
    burst of other work on a shared machine lasts seconds, so it rarely hits the same item twice.
    Items not reached in the first pass when `budget_s` runs out are skipped (and counted); the
    first MIN_SAMPLES items are always measured so that every family can be fitted."""
    best: dict[int, list[float]] = {}
    start = time.perf_counter()
    if items:
        measure(items[0])  # first-call costs (kernel selection, page faults) stay out of the samples
    for _ in range(max(passes, 1)):
        for i, item in enumerate(items):
            if time.perf_counter() - start <= budget_s or (i < MIN_SAMPLES and i not in best):
                row = measure(item)
                if i not in best or row[-1] < best[i][-1]:
                    best[i] = row
            if progress:
                progress(1)
    return [best[i] for i in sorted(best)], len(items) - len(best)


def gemm_samples(
    shapes: Sequence[tuple[int, int, int]], dtype: str, device: str, reps: Repeats, budget_s: float,
    progress: Progress | None = None,
) -> SampleSet:
    """C = A @ B with A (m x k) activations and B (k x n) weights, as a projection runs."""
    import torch

    timer = Timer(device)
    tdtype = _torch_dtype(dtype)
    gen = torch.Generator(device="cpu").manual_seed(0)

    def measure(shape: tuple[int, int, int]) -> list[float]:
        m, n, k = shape
        a = torch.randn(m, k, generator=gen).to(device=device, dtype=tdtype)
        b = torch.randn(k, n, generator=gen).to(device=device, dtype=tdtype)
        out = torch.empty(m, n, device=device, dtype=tdtype)
        t = timer.sample_s(lambda: torch.matmul(a, b, out=out), reps)
        return [m, n, k, t]

    with torch.inference_mode():
        rows, skipped = _budgeted(shapes, budget_s, measure, progress, reps.passes)
    return SampleSet(["m", "n", "k", "time_s"], rows, skipped)


def decode_attention(q, k, v):
    """softmax(q K^T / sqrt(d)) V for one new token per sequence with grouped KV heads (GQA):
    q (b, kv_heads, group, d), k and v (b, kv_heads, context, d). K and V are read once each."""
    import torch

    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def attention_samples(
    shapes: Sequence[tuple[int, int, int, int, int]], dtype: str, device: str, reps: Repeats, budget_s: float,
    progress: Progress | None = None,
) -> SampleSet:
    import torch

    timer = Timer(device)
    tdtype = _torch_dtype(dtype)

    def measure(shape: tuple[int, int, int, int, int]) -> list[float]:
        batch, context, heads, kv_heads, head_dim = shape
        group = heads // kv_heads
        q = torch.randn(batch, kv_heads, group, head_dim, device=device, dtype=tdtype)
        k = torch.randn(batch, kv_heads, context, head_dim, device=device, dtype=tdtype)
        v = torch.randn(batch, kv_heads, context, head_dim, device=device, dtype=tdtype)
        t = timer.sample_s(lambda: decode_attention(q, k, v), reps)
        return [batch, context, heads, kv_heads, head_dim, t]

    with torch.inference_mode():
        rows, skipped = _budgeted(shapes, budget_s, measure, progress, reps.passes)
    return SampleSet(["batch", "context", "heads", "kv_heads", "head_dim", "time_s"], rows, skipped)


def elementwise_samples(
    shapes: Sequence[tuple[int, bool]], device: str, reps: Repeats, budget_s: float, progress: Progress | None = None
) -> SampleSet:
    """The MLP activation: silu(gate) * up for a gated MLP (reads 2, writes 1 tensor), relu for a
    plain one (reads 1, writes 1); fp32, timed against the bytes it touches."""
    import torch

    timer = Timer(device)

    def measure(shape: tuple[int, bool]) -> list[float]:
        numel, gated = shape
        a = torch.randn(numel, device=device)
        out = torch.empty(numel, device=device)
        if gated:
            b = torch.randn(numel, device=device)
            t = timer.sample_s(lambda: torch.mul(torch.nn.functional.silu(a), b, out=out), reps)
            return [3 * numel * 4, t]
        t = timer.sample_s(lambda: torch.clamp_min(a, 0.0, out=out), reps)
        return [2 * numel * 4, t]

    with torch.inference_mode():
        rows, skipped = _budgeted(shapes, budget_s, measure, progress, reps.passes)
    return SampleSet(["bytes", "time_s"], rows, skipped)
