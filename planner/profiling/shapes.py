"""Probe sizes taken from the catalog models' real shapes: the projection GEMMs of a decode step as
the runtime runs them (planner.layer_costs: a gated MLP's gate and up are two GEMMs of i columns) and
of KV recompute, attention of one new token over long contexts, the
activation of the MLP, and one layer's KV, X and weights as transfer sizes; on the disk one size list
per disk class (planner/disk_classes.py): K,V/X pieces, weight records, write-backs."""

from __future__ import annotations

from dataclasses import dataclass

from planner.disk_classes import KV_READ, WEIGHTS_READ, WRITE, DiskClass
from planner.layer_costs import (
    kv_bytes_per_token,
    layer_gemm_shapes,
    layer_weight_bytes,
    recompute_gemm,
    x_bytes_per_token,
)
from planner.models import CATALOG, ModelConfig
from planner.profiling.modes import Mode

F32 = 4
PAGE = 4096


def _models(names: tuple[str, ...]) -> list[ModelConfig]:
    return [CATALOG[n] for n in names]


def _staggered(values: tuple[int, ...], index: int, count: int) -> list[int]:
    """The i-th of `count` models probes its values times 2^(i/count): together the models cover
    the row counts (or contexts) between the mode's powers densely at no extra cost, so the fitted
    models learn how time varies between them instead of only at them."""
    factor = 2.0 ** (index / max(count, 1))
    return sorted({max(1, round(v * factor)) for v in values})


def _gemm_rows(mode: Mode, index: int) -> list[int]:
    """Row counts the index-th GEMM model probes: every one of the mode's token counts (the planner's
    automatic batches are powers of two, and a CPU GEMM's rate changes in steps with the rows, so each
    model's weight shapes are timed at exactly those), and for the first two (smallest) models also
    the counts half-way between them in log scale (x1.5), for batches a user fixes."""
    rows = set(mode.gemm_tokens)
    if index < 2:
        rows |= {round(t * 1.5) for t in mode.gemm_tokens if t > 1}
    return sorted(rows)


def gemm_shapes(mode: Mode) -> list[tuple[int, int, int]]:
    """(m, n, k) of every projection and of the KV recompute, for each model at its row counts
    (`_gemm_rows`), plus the recompute at the mode's `recompute_rows`; cheapest first so a time
    budget cuts the biggest ones."""
    shapes: set[tuple[int, int, int]] = set()
    models = _models(mode.gemm_models)
    for i, model in enumerate(models):
        for tokens in _gemm_rows(mode, i):
            gemms = [*layer_gemm_shapes(model, tokens), recompute_gemm(model, tokens)]
            for g in gemms:
                if g.n * g.k * F32 <= mode.gemm_max_weight_bytes:
                    shapes.add((g.m, g.n, g.k))
        for rows in mode.recompute_rows:
            g = recompute_gemm(model, rows)
            if g.n * g.k * F32 <= mode.gemm_max_weight_bytes:
                shapes.add((g.m, g.n, g.k))
    return sorted(shapes, key=lambda s: (s[0] * s[1] * s[2], s))


def recompute_shapes(mode: Mode) -> frozenset[tuple[int, int, int]]:
    """The (m, n, k) among gemm_shapes that are KV recomputes (X times the fused [W_k W_v]); the probe
    runs these through the runtime's recompute kernel. A shape that is also a projection of another
    model is timed as a recompute: the same GEMM, in the layout the recompute needs."""
    out: set[tuple[int, int, int]] = set()
    models = _models(mode.gemm_models)
    for i, model in enumerate(models):
        for tokens in [*_gemm_rows(mode, i), *mode.recompute_rows]:
            g = recompute_gemm(model, tokens)
            out.add((g.m, g.n, g.k))
    return frozenset(out)


def attention_shapes(mode: Mode) -> list[tuple[int, int, int, int, int]]:
    """(batch, context, heads, kv_heads, head_dim) of one decode step's attention."""
    shapes: set[tuple[int, int, int, int, int]] = set()
    models = _models(mode.attention_models)
    for i, model in enumerate(models):
        for context in _staggered(mode.attention_contexts, i, len(models)):
            for batch in mode.attention_batches:
                kv = 2 * batch * context * model.kv_dim * F32
                if kv <= mode.attention_max_kv_bytes:
                    shapes.add((batch, context, model.num_heads, model.num_kv_heads, model.head_dim))
    return sorted(shapes, key=lambda s: (s[0] * s[1] * s[2] * s[4], s))


def elementwise_shapes(mode: Mode) -> list[tuple[int, bool]]:
    """(elements, gated) of the MLP activation for `rows` tokens of each GEMM model. Always probed in
    its gated form, silu(gate) * up: the planner asks by bytes only (elementwise_s), so one per-byte
    cost serves both MLP kinds; for a plain (ReLU) MLP it overestimates a cheap op by about 3x
    (measured here), a negligible share of a layer's time."""
    shapes: set[tuple[int, bool]] = set()
    for model in _models(mode.gemm_models):
        for tokens in mode.gemm_tokens:
            numel = tokens * model.intermediate_size
            if numel * 3 * F32 <= mode.link_max_bytes:
                shapes.add((numel, True))
    return sorted(shapes)


def _page_up(n: int) -> int:
    return -(-n // PAGE) * PAGE


def _spread(sizes: set[int], count: int) -> list[int]:
    """At most `count` of `sizes`, spread evenly in log space, the smallest and the largest kept."""
    ordered = sorted(sizes)
    if len(ordered) <= count:
        return ordered
    step = (len(ordered) - 1) / (count - 1)
    return sorted({ordered[round(i * step)] for i in range(count)})


def _piece_sizes(mode: Mode, max_bytes: int) -> set[int]:
    """One layer's K,V and X of `batch` sequences at `context` tokens, in float32 (the runtime reads a
    GPU batch's piece of one layer as one contiguous region, runtime/tiers.py), whole pages."""
    sizes: set[int] = set()
    for model in _models(mode.attention_models + mode.gemm_models):
        for context in mode.attention_contexts + mode.gemm_tokens:
            for batch in mode.attention_batches:
                for per_token in (kv_bytes_per_token(model, "float32"), x_bytes_per_token(model, "float32")):
                    n = batch * context * per_token
                    if PAGE <= n <= max_bytes:
                        sizes.add(_page_up(n))
    return sizes


def weight_record_bytes(model: ModelConfig, dtype: str) -> int:
    """The bytes of one layer's weights as the weight probes read them: whole pages."""
    return _page_up(layer_weight_bytes(model, dtype))


def _weight_sizes(mode: Mode, max_bytes: int) -> set[int]:
    """One layer's weights in float32 and float16 (the record a streamed layer reads), whole pages."""
    sizes: set[int] = set()
    for model in _models(mode.attention_models + mode.gemm_models):
        for dtype in ("float32", "float16"):
            n = weight_record_bytes(model, dtype)
            if PAGE <= n <= max_bytes:
                sizes.add(n)
    return sizes


def transfer_sizes(mode: Mode, max_bytes: int) -> list[int]:
    """Bytes of one layer's K,V and X for the attention models at several contexts and batches, and
    of one layer's weights in float32 and float16 (the record a streamed layer reads from the host or
    the disk), spread over the range and rounded up to whole pages: the memory links' sizes."""
    return _spread(_piece_sizes(mode, max_bytes) | _weight_sizes(mode, max_bytes), mode.link_sizes)


# weight records per profile: a handful spans the catalog's layers (tens of MB to a GB); each is a
# long read, timed in every round
MAX_WEIGHT_SIZES = 6


def writeback_sizes(mode: Mode) -> set[int]:
    """Bytes of one decode step's write-back per layer and GPU batch: one new token's K,V, or its X,
    for each attention model, GPU batch and dtype of the mode. Exact bytes, not whole pages: the
    runtime appends them at unaligned offsets (planner/directio.py DiskFile.write), and so does the probe."""
    sizes: set[int] = set()
    for model in _models(mode.attention_models + mode.gemm_models):
        for dtype in mode.dtypes:
            for batch in mode.attention_batches:
                sizes.add(batch * kv_bytes_per_token(model, dtype))
                sizes.add(batch * x_bytes_per_token(model, dtype))
    return sizes


@dataclass(frozen=True)
class DiskSizes:
    """The disk probe's sizes, one list per disk class (planner/disk_classes.py). Reads are whole
    pages (the probe reads with O_DIRECT); writes are the runtime's exact bytes."""

    kv_read: tuple[int, ...]
    weights_read: tuple[int, ...]
    write: tuple[int, ...]

    def of(self, cls: DiskClass) -> tuple[int, ...]:
        return {KV_READ.name: self.kv_read, WEIGHTS_READ.name: self.weights_read, WRITE.name: self.write}[cls.name]

    @property
    def reads(self) -> list[int]:
        """Every read size of either class, timed together in each round (the same disk, the same moment)."""
        return sorted(set(self.kv_read) | set(self.weights_read))


def disk_sizes(mode: Mode) -> DiskSizes:
    """K,V/X pieces (as `transfer_sizes`, without weights) up to the mode's disk cap; weight records up
    to the same cap; writes: the write-back sizes (a few KB to hundreds of KB) and, for prefill's
    writes of the prompt's K,V and X, half as many piece sizes. Weight records are never written by a plan's
    step (the runtime writes them once, before the first step), so the write model does not see them."""
    cap = mode.disk_max_bytes
    pieces = _spread(_piece_sizes(mode, cap), mode.link_sizes)
    weights = _spread(_weight_sizes(mode, cap), MAX_WEIGHT_SIZES)
    writes = _spread(writeback_sizes(mode), mode.link_sizes) + _spread(set(pieces), max(3, mode.link_sizes // 2))
    return DiskSizes(tuple(pieces), tuple(weights), tuple(sorted(set(writes))))
