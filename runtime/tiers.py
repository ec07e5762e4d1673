"""Where the runtime keeps the KV cache, the X-cache and the weights: device memory, host memory
(pinned where copies are asynchronous, i.e. on CUDA) or a file on disk read past the page cache
(planner/directio.py: O_DIRECT, or the fadvise fallback where the file system refuses it).

Storage layout (planner/plan.py gives the placement semantics): for every run layer and every GPU
batch j, a token store keeps the token positions [t0, t1) assigned to a tier as one contiguous
region of shape [tokens, gpu_batch, width] (token-major), so the tokens [a, b) of one layer and
one GPU batch are one contiguous read, and the new token of a decode step is one small append.
`width` is 2*kv_dim for K,V (K after RoPE, then V) and hidden for X.

The stores only hold bytes; how they cross a link (which worker, which stream, which staging
buffer) is runtime/links.py's business.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from planner.directio import PAGE, BufferPool, DiskFile, align_up, aligned_empty
from planner.errors import KvplanError
from planner.placement import TIERS, position_spans
from runtime.streams import Streams

__all__ = ["PAGE", "TIERS", "BufferPool", "DiskFile", "GatherBuffer", "Piece", "Span", "TokenStore",
           "WeightStore", "align_up", "aligned_empty", "flat_layout", "split_range"]


@dataclass(frozen=True)
class Span:
    tier: str
    t0: int  # first token position held by this tier
    t1: int  # one past the last


def split_range(lo: int, hi: int, fractions: dict[str, float]) -> list[Span]:
    """Cut positions [lo, hi) into consecutive device, host, disk pieces in the given proportions
    (planner/placement.position_spans, the cut the planner predicts with). Empty pieces are left out."""
    return [Span(tier, a, b) for tier, (a, b) in position_spans(lo, hi, fractions).items() if b > a]

@dataclass(frozen=True)
class Piece:
    """Positions [lo, hi) of one tier's span."""
    span: Span
    lo: int
    hi: int

    @property
    def tier(self) -> str:
        return self.span.tier

    @property
    def tokens(self) -> int:
        return self.hi - self.lo


class GatherBuffer:
    """Where one GPU batch's K,V for one layer are assembled for attention, token-major
    [positions, gpu_batch, width], row p = position p: recomputed rows, streamed rows, the new token.

    With `disk_direct` (the buffer is in the host memory a disk read lands in: a CPU run, or
    attention on the CPU), disk pieces are read straight into their rows: O_DIRECT needs the row's
    address to sit at the same offset within a page as the file offset, so the base is placed
    accordingly and a page of slack is kept on both sides. Otherwise the buffer is device memory that
    a copy stream fills; `free` is the compute event after its last attention (None: free now)."""

    def __init__(self, rows: int, gpu_batch: int, width: int, dtype: torch.dtype, streams: Streams,
                 disk_direct: bool, disk_t0: int | None):
        self.rows, self.gb, self.width, self.dtype = rows, gpu_batch, width, dtype
        elem = torch.empty(0, dtype=dtype).element_size()
        self.row_bytes = gpu_batch * width * elem
        self.free = None
        n = rows * self.row_bytes
        if disk_direct:
            self.raw = aligned_empty(n + 3 * PAGE)
            shift = (-(disk_t0 or 0) * self.row_bytes) % PAGE  # base + t0*row is page-aligned
            self.base = PAGE + shift
            self.tensor = self.raw[self.base:self.base + n].view(dtype).view(rows, gpu_batch, width)
        else:
            self.raw = torch.empty(0, dtype=torch.uint8)
            self.base = 0
            self.tensor = streams.device_empty((rows, gpu_batch, width), dtype)

    @property
    def disk_direct(self) -> bool:
        return self.raw.numel() > 0

    def rows_view(self, a: int, b: int) -> torch.Tensor:
        """Rows [a, b) as [gpu_batch, tokens, width] (a strided view, no copy)."""
        return self.tensor[a:b].transpose(0, 1)


class TokenStore:
    """K,V (or X) of the stored layers, for positions [lo, hi), cut across tiers.

    Memory spaces: the device tier lives in the compute device's memory; the host tier in host
    memory, which on a CPU-only machine *is* the device's memory (`streams.separate_host` False: the
    host piece is read in place); the disk tier in one file."""

    def __init__(self, name: str, width: int, lo: int, hi: int, fractions: dict[str, float], layers: int,
                 num_gpu_batches: int, gpu_batch: int, dtype: torch.dtype, streams: Streams,
                 disk_dir: Path | None):
        self.name, self.width, self.lo, self.hi = name, width, lo, hi
        self.layers, self.ngb, self.gb, self.dtype = layers, num_gpu_batches, gpu_batch, dtype
        self.separate_host = streams.separate_host
        self.elem = torch.empty(0, dtype=dtype).element_size()
        self.token_bytes = gpu_batch * width * self.elem  # one position of one GPU batch
        self.spans = split_range(lo, hi, fractions) if hi > lo else []
        self.mem: dict[str, torch.Tensor] = {}
        self.disk: DiskFile | None = None
        self.region_bytes = 0
        self.pool = BufferPool(2 * num_gpu_batches + 1)
        for sp in self.spans:
            shape = (layers, num_gpu_batches, sp.t1 - sp.t0, gpu_batch, width)
            if sp.tier == "device":
                self.mem["device"] = torch.zeros(shape, dtype=dtype, device=streams.device)
            elif sp.tier == "host":
                self.mem["host"] = streams.host_zeros(shape, dtype)
            else:
                if disk_dir is None:
                    raise KvplanError(f"the plan puts {name} on disk; give --disk-dir")
                self.region_bytes = align_up((sp.t1 - sp.t0) * self.token_bytes)
                self.disk = DiskFile(disk_dir / f"kvplan-{name}-{os.getpid()}.bin",
                                     self.region_bytes * layers * num_gpu_batches)

    @staticmethod
    def bytes_needed(width: int, lo: int, hi: int, fractions: dict[str, float], layers: int, batch: int,
                     elem: int) -> dict[str, int]:
        out = dict.fromkeys(TIERS, 0)
        for sp in split_range(lo, hi, fractions) if hi > lo else []:
            out[sp.tier] += (sp.t1 - sp.t0) * batch * width * elem * layers
        return out

    def close(self) -> None:
        if self.disk is not None:
            self.disk.close()

    def space(self, sp: Span) -> str:
        """The memory a tier's bytes are in: "device", "host" or "disk"."""
        if sp.tier == "host" and not self.separate_host:
            return "device"
        return sp.tier

    def span_of(self, pos: int) -> Span:
        for sp in self.spans:
            if sp.t0 <= pos < sp.t1:
                return sp
        raise KvplanError(f"{self.name}: position {pos} is outside [{self.lo}, {self.hi})")

    def pieces(self, a: int, b: int) -> list[Piece]:
        """The parts of [a, b) held by each tier, in position order."""
        out = []
        for sp in self.spans:
            lo, hi = max(a, sp.t0), min(b, sp.t1)
            if hi > lo:
                out.append(Piece(sp, lo, hi))
        return out

    def _offset(self, layer: int, j: int, sp: Span, pos: int) -> int:
        return (layer * self.ngb + j) * self.region_bytes + (pos - sp.t0) * self.token_bytes

    def view(self, p: Piece, layer: int, j: int) -> torch.Tensor:
        """A memory piece in place, token-major [tokens, gpu_batch, width]."""
        return self.mem[p.tier][layer, j, p.lo - p.span.t0:p.hi - p.span.t0]

    def disk_extent(self, p: Piece, layer: int, j: int) -> tuple[int, int]:
        """(file offset, bytes) of a disk piece."""
        return self._offset(layer, j, p.span, p.lo), p.tokens * self.token_bytes

    def tokens_of(self, raw: torch.Tensor, p: Piece) -> torch.Tensor:
        """Bytes read from disk as token-major [tokens, gpu_batch, width]."""
        return raw.view(self.dtype).view(p.tokens, self.gb, self.width)

    def read_disk(self, p: Piece, layer: int, j: int) -> torch.Tensor:
        """A disk piece as token-major [tokens, gpu_batch, width], a view into a staging buffer of
        the store's pool (valid until the pool wraps)."""
        assert self.disk is not None
        return self.tokens_of(self.disk.read_into(*self.disk_extent(p, layer, j), self.pool), p)

    def read_disk_into(self, p: Piece, layer: int, j: int, buf: GatherBuffer) -> None:
        """A disk piece straight into rows [lo, hi) of a host gather buffer (no staging copy)."""
        assert self.disk is not None
        offset, nbytes = self.disk_extent(p, layer, j)
        self.disk.read_at(offset, nbytes, buf.raw, buf.base + p.lo * buf.row_bytes)

    def write(self, layer: int, j: int, a: int, data: torch.Tensor) -> dict[str, int]:
        """Store positions [a, a + tokens) of GPU batch j; data is [gpu_batch, tokens, width]. Memory
        tiers are written with copy_ on the current stream, disk synchronously from host memory.
        Returns the bytes that went to each tier."""
        moved = dict.fromkeys(TIERS, 0)
        for p in self.pieces(a, a + data.shape[1]):
            part = data[:, p.lo - a:p.hi - a].transpose(0, 1)
            if p.tier == "disk":
                assert self.disk is not None
                region = layer * self.ngb + j
                self.disk.write(self._offset(layer, j, p.span, p.lo), part.to("cpu", self.dtype), region)
            else:
                self.view(p, layer, j).copy_(part, non_blocking=True)
            moved[p.tier] += p.tokens * self.token_bytes
        return moved


def flat_layout(shapes: dict[str, tuple[int, ...]], elem: int) -> tuple[dict[str, tuple[int, int]], int]:
    """Byte offset and element count of each named tensor in one flat, 64-byte aligned record."""
    out, off = {}, 0
    for name, shape in shapes.items():
        n = 1
        for d in shape:
            n *= d
        out[name] = (off, n)
        off = align_up(off + n * elem, 64)
    return out, off


class WeightStore:
    """Decoder-layer weights on their tiers: the first layers on the device, then host, then disk
    (planner/plan.py: weight_placement).

    With `virtual` > len(layers) (a `--layers K` run), the placement is that of the `virtual` layers
    of the whole model and run layer v uses the stored layer v % K, kept on every tier some v maps to."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], layers: list[dict[str, torch.Tensor]],
                 fractions: dict[str, float], dtype: torch.dtype, streams: Streams, disk_dir: Path | None,
                 virtual: int | None = None):
        self.shapes, self.dtype, self.separate_host = shapes, dtype, streams.separate_host
        self.elem = torch.empty(0, dtype=dtype).element_size()
        self.layout, self.record_bytes = flat_layout(shapes, self.elem)
        self.record_bytes = align_up(self.record_bytes)
        self.n = len(layers)
        v_total = max(virtual or self.n, self.n)
        self.tier_of = [sp.tier for sp in split_range(0, v_total, fractions) for _ in range(sp.t0, sp.t1)]
        needed = sorted({(self.tier_of[v], v % self.n) for v in range(v_total)})
        self.mem: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
        self.disk: DiskFile | None = None
        self.disk_index: dict[int, int] = {}
        self.pool = BufferPool(3)
        disk_layers = [i for tier, i in needed if tier == "disk"]
        if disk_layers:
            if disk_dir is None:
                raise KvplanError("the plan puts weights on disk; give --disk-dir")
            self.disk = DiskFile(disk_dir / f"kvplan-weights-{os.getpid()}.bin", self.record_bytes * len(disk_layers))
        for tier, i in needed:
            w = layers[i]
            if tier == "disk":
                self.disk_index[i] = len(self.disk_index)
                self.disk.write(self.disk_index[i] * self.record_bytes, self._pack(w), -1 - i)
            elif tier == "device" or not streams.separate_host:
                self.mem[(tier, i)] = {k: v.to(streams.device, dtype) for k, v in w.items()}
            else:
                self.mem[(tier, i)] = {k: streams.host_copy(v, dtype) for k, v in w.items()}

    def _pack(self, w: dict[str, torch.Tensor]) -> torch.Tensor:
        flat = torch.zeros(self.record_bytes, dtype=torch.uint8)
        for name, (off, n) in self.layout.items():
            flat[off:off + n * self.elem].copy_(w[name].to(self.dtype).contiguous().view(-1).view(torch.uint8))
        return flat

    def close(self) -> None:
        if self.disk is not None:
            self.disk.close()

    def tier(self, layer: int) -> str:
        return self.tier_of[layer]

    def streamed(self, layer: int) -> str | None:
        """The link run layer `layer`'s weights cross each step: None (resident), "h2d" or "disk_read"."""
        tier = self.tier_of[layer]
        if tier == "disk":
            return "disk_read"
        if tier == "host" and self.separate_host:
            return "h2d"
        return None

    def in_memory(self, layer: int) -> dict[str, torch.Tensor]:
        """Run layer `layer`'s tensors where they are kept (device, or host memory)."""
        return self.mem[(self.tier_of[layer], layer % self.n)]

    def disk_extent(self, layer: int) -> tuple[int, int]:
        """(file offset, bytes) of run layer `layer`'s record on disk."""
        return self.disk_index[layer % self.n] * self.record_bytes, self.record_bytes

    def unpack(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of each tensor inside one layer's record."""
        return {name: raw[off:off + n * self.elem].view(self.dtype).view(self.shapes[name])
                for name, (off, n) in self.layout.items()}

    def read_disk(self, layer: int) -> dict[str, torch.Tensor]:
        """Run layer `layer`'s tensors read from disk, views into a pool buffer (valid until it wraps)."""
        assert self.disk is not None
        return self.unpack(self.disk.read_into(*self.disk_extent(layer), self.pool))
