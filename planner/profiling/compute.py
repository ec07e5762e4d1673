"""Compute probes: GEMM time vs (m, n, k, dtype), decode attention time vs (batch, context, heads,
KV heads, head dim), and the MLP activation vs bytes, on a torch device ("cuda" or "cpu").

The probes measure what the runtime runs (docs/profiling.md, "what the probes run"):

- projections are `F.linear(x, W)` with W stored [out, in] like runtime/model.py, and W is *cold*:
  every call takes its weights from a different place of an arena larger than the last-level cache
  (ColdArena), as a decode step streams each layer's weights once between long K,V reads;
- the KV-recompute shapes run through the runtime's recompute kernel (`Kernels.kv_recompute`,
  runtime.model.kv_from_x_into): token-major X in, K,V written straight into the rows of a
  token-major attention buffer, as the executor recomputes them;
- decode attention is the runtime's kernel (`Kernels.decode_attention`, runtime.model.attention: the
  fused SDPA call, GQA folded into the query length) over a token-major [context, batch, 2*kv_dim]
  buffer, also taken cold from the arena.

The kernels come in a `Kernels` record from the caller (planner/profiling/kernels.py): planner code
does not import the runtime.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from planner.profiling.kernels import Kernels
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
    """Measure every item `passes` times in round-robin passes and keep, per item, the pass with the
    median time (the mean of two): the runtime meets an op's typical time, not its best. Items not
    reached in the first pass when `budget_s` runs out are skipped (and counted); the first
    MIN_SAMPLES items are always measured so that every family can be fitted."""
    runs: dict[int, list[list[float]]] = {}
    start = time.perf_counter()
    if items:
        measure(items[0])  # first-call costs (kernel selection, page faults) stay out of the samples
    for _ in range(max(passes, 1)):
        for i, item in enumerate(items):
            if time.perf_counter() - start <= budget_s or (i < MIN_SAMPLES and i not in runs):
                runs.setdefault(i, []).append(measure(item))
            if progress:
                progress(1)
    return [_median_row(runs[i]) for i in sorted(runs)], len(items) - len(runs)


def _median_row(rows: list[list[float]]) -> list[float]:
    """The shape columns of the first row with the median of the last (time) column."""
    return [*rows[0][:-1], statistics.median(r[-1] for r in rows)]


class ColdArena:
    """A block of `nbytes` (filled once with small random values) handed out as tensor views at
    rotating offsets: consecutive calls never reuse bytes touched within the last `nbytes`, so when
    the arena is larger than the last-level cache every probe call reads its operand from DRAM, as a
    decode step does (it touches a layer's weights once per step, with ~100 MB of K,V in between)."""

    def __init__(self, nbytes: int, dtype: str, device: str):
        import torch

        tdtype = _torch_dtype(dtype)
        self.elem = torch.empty(0, dtype=tdtype).element_size()
        self.data = torch.empty(max(nbytes // self.elem, 1), dtype=tdtype, device=device).uniform_(-0.1, 0.1)
        self.offset = 0

    def take(self, shape: tuple[int, ...]):
        numel = _prod(shape)
        if numel > self.data.numel():
            raise ValueError(f"cold arena of {self.data.numel()} elements cannot hold {shape}")
        if self.offset + numel > self.data.numel():
            self.offset = 0
        view = self.data[self.offset:self.offset + numel].view(shape)
        self.offset += numel
        return view


def _prod(shape: Sequence[int]) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def arena_bytes(llc_bytes: int, largest_bytes: int, cap_bytes: int) -> int:
    """1.5x the last-level cache (so the rotation distance exceeds it) and at least 2 of the largest
    operands, never more than `cap_bytes` (a mode's memory cap)."""
    return int(min(max(1.5 * llc_bytes, 2 * largest_bytes), max(cap_bytes, 2 * largest_bytes)))


def gemm_samples(
    shapes: Sequence[tuple[int, int, int]], dtype: str, device: str, reps: Repeats, budget_s: float,
    progress: Progress | None = None, cold_bytes: int = 0, recompute: frozenset = frozenset(),
    kernels: Kernels | None = None,
) -> SampleSet:
    """y = x W^T with x (m x k) activations and W (n x k) weights, as runtime/model.py projects
    (F.linear), W cold from a ColdArena of `cold_bytes` (0: one warm W). Shapes in `recompute` run
    the runtime's KV recompute instead (`kernels.kv_recompute`) with token-major X, K,V written
    into rows of a token-major buffer (no RoPE: the planner's recompute cost is the GEMM)."""
    import torch
    import torch.nn.functional as F

    if recompute and kernels is None:
        raise ValueError("recompute shapes need the runtime's kernels (planner.profiling.kernels.Kernels)")
    timer = Timer(device)
    tdtype = _torch_dtype(dtype)
    gen = torch.Generator(device="cpu").manual_seed(0)
    elem = torch.empty(0, dtype=tdtype).element_size()
    largest = max((n * k * elem for _, n, k in shapes), default=elem)
    arena = ColdArena(max(cold_bytes, 2 * largest), dtype, device) if cold_bytes else None

    def measure(shape: tuple[int, int, int]) -> list[float]:
        m, n, k = shape
        warm = torch.randn(n, k, generator=gen).to(device=device, dtype=tdtype)

        def weight():
            return arena.take((n, k)) if arena is not None else warm

        if shape in recompute:  # one GPU batch of m tokens: X [1, m, k] seen token-major as [m, 1, k]
            x_tm = torch.randn(1, m, k, generator=gen).to(device=device, dtype=tdtype).transpose(0, 1)
            fixed_out = torch.empty(m, 1, n, device=device, dtype=tdtype)

            def out():
                # the runtime writes recomputed K,V into rows of a gather buffer last touched a layer
                # or more ago: cold, like the weights (a reused warm buffer measured 10% fast)
                if arena is not None and 4 * m * n <= arena.data.numel():
                    return arena.take((m, 1, n))
                return fixed_out

            t = timer.sample_s(lambda: kernels.kv_recompute(weight(), x_tm, out()), reps)
        else:
            a = torch.randn(m, k, generator=gen).to(device=device, dtype=tdtype)
            t = timer.sample_s(lambda: F.linear(a, weight()), reps)
        return [m, n, k, t]

    with torch.inference_mode():
        rows, skipped = _budgeted(shapes, budget_s, measure, progress, reps.passes)
    return SampleSet(["m", "n", "k", "time_s"], rows, skipped)


def attention_samples(
    shapes: Sequence[tuple[int, int, int, int, int]], dtype: str, device: str, reps: Repeats, budget_s: float,
    kernels: Kernels, progress: Progress | None = None, cold_bytes: int = 0,
) -> SampleSet:
    """One new token per sequence attending over `context` keys: the runtime's decode attention
    (`kernels.decode_attention`) on its token-major K,V buffer [context, batch, 2*kv_dim] (K heads
    then V heads per row), seen as [batch, context, 2*kv_dim] like GatherBuffer.rows_view; the buffer
    is cold (ColdArena)."""
    import torch

    timer = Timer(device)
    tdtype = _torch_dtype(dtype)
    elem = torch.empty(0, dtype=tdtype).element_size()
    largest = max((b * s * 2 * kvh * hd * elem for b, s, _, kvh, hd in shapes), default=elem)
    arena = ColdArena(max(cold_bytes, 2 * largest), dtype, device) if cold_bytes else None

    def measure(shape: tuple[int, int, int, int, int]) -> list[float]:
        batch, context, heads, kv_heads, head_dim = shape
        q = torch.randn(batch, heads, 1, head_dim, device=device, dtype=tdtype)
        rows = (context, batch, 2 * kv_heads * head_dim)
        warm = None if arena is not None else torch.randn(*rows, device=device, dtype=tdtype)

        def run():
            buf = arena.take(rows) if arena is not None else warm
            return kernels.decode_attention(q, buf.transpose(0, 1), kv_heads)

        t = timer.sample_s(run, reps)
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
