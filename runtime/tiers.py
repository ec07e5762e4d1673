"""Where the runtime keeps the KV cache, the X-cache and the weights: device memory, host memory
(pinned on CUDA) or a file on disk read past the page cache.

Storage layout (planner/plan.py gives the placement semantics): for every run layer and every GPU
batch j, a token store keeps the token positions [t0, t1) assigned to a tier as one contiguous
region of shape [tokens, gpu_batch, width] (token-major), so the tokens [a, b) of one layer and
one GPU batch are one contiguous read, and the new token of a decode step is one small append.
`width` is 2*kv_dim for K,V (K after RoPE, then V) and hidden for X.

Disk I/O bypasses the page cache: reads and writes use O_DIRECT on page-aligned buffers (4 KiB
aligned offset, length and address). A write that starts or ends inside a page merges the page's
other bytes first: the last page written in each region is remembered in RAM, any other page is
read back with O_DIRECT. If the file system refuses O_DIRECT (tmpfs, some overlay mounts) the store
falls back to buffered I/O with fdatasync + posix_fadvise(POSIX_FADV_DONTNEED) after every write and
before every read, which evicts the file's pages so reads still come from the disk; the fallback is
reported (`DiskFile.direct` is False) in the run record.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from planner.errors import KvplanError
from planner.placement import TIERS, position_spans

PAGE = 4096


def align_up(n: int, a: int = PAGE) -> int:
    return (n + a - 1) // a * a


def aligned_empty(nbytes: int) -> torch.Tensor:
    """A CPU uint8 tensor of `nbytes` whose first byte sits on a page boundary."""
    raw = torch.empty(nbytes + PAGE, dtype=torch.uint8)
    skip = (-raw.data_ptr()) % PAGE
    return raw[skip:skip + nbytes]


class BufferPool:
    """Round-robin page-aligned staging buffers for disk reads: a read's data stays valid until
    `slots` further reads of the same pool (the executor keeps at most slots-1 in flight)."""

    def __init__(self, slots: int):
        self.slots = [torch.empty(0, dtype=torch.uint8) for _ in range(max(1, slots))]
        self.next = 0
        self.lock = threading.Lock()

    def take(self, nbytes: int) -> torch.Tensor:
        with self.lock:
            i = self.next
            self.next = (i + 1) % len(self.slots)
            if self.slots[i].numel() < nbytes:
                self.slots[i] = aligned_empty(align_up(nbytes))
            return self.slots[i][:nbytes]


class DiskFile:
    """One file on disk, read and written past the page cache."""

    def __init__(self, path: Path, size_bytes: int):
        self.path = path
        self.size_bytes = align_up(max(size_bytes, PAGE))
        self.direct = True
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_DIRECT", 0), 0o600)
            if not hasattr(os, "O_DIRECT"):
                raise OSError("no O_DIRECT on this platform")
        except OSError:
            self.direct = False
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(self.fd, 0, self.size_bytes)
        except OSError as exc:
            os.close(self.fd)
            raise KvplanError(f"cannot reserve {self.size_bytes} bytes in {path}: {exc.strerror}") from exc
        self.tail: dict[int, torch.Tensor] = {}  # region start -> (page offset, page) of the last write
        self.tail_off: dict[int, int] = {}
        self.bytes_read = 0
        self.bytes_written = 0

    def close(self, remove: bool = True) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if remove:
            try:
                self.path.unlink()
            except OSError:
                pass

    def _drop_cache(self) -> None:
        if not self.direct:
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def read_into(self, offset: int, nbytes: int, pool: BufferPool) -> torch.Tensor:
        """Bytes [offset, offset+nbytes) as a uint8 view into a pool buffer."""
        start = offset - offset % PAGE
        end = align_up(offset + nbytes)
        buf = pool.take(end - start)
        self._drop_cache()
        got = os.preadv(self.fd, [buf.numpy()], start)
        if got < offset + nbytes - start:
            raise KvplanError(f"short read from {self.path}: {got} of {end - start} bytes")
        self.bytes_read += end - start
        return buf[offset - start:offset - start + nbytes]

    def read_at(self, offset: int, nbytes: int, raw: torch.Tensor, index: int) -> None:
        """Read bytes [offset, offset+nbytes) straight into raw[index:index+nbytes] (no staging copy).
        The page-aligned span around them is read, so up to a page before `index` and after the end
        is overwritten too: raw[index] must sit at the same offset within its page as `offset`, and
        the caller fills the neighbouring bytes only after the read (GatherBuffer)."""
        start = offset - offset % PAGE
        end = align_up(offset + nbytes)
        lo = index - (offset - start)
        dst = raw[lo:lo + end - start]
        if lo < 0 or dst.numel() != end - start or dst.data_ptr() % PAGE:
            raise AssertionError("read_at: destination is not page-aligned like the file offset")
        self._drop_cache()
        got = os.preadv(self.fd, [dst.numpy()], start)
        if got < offset + nbytes - start:
            raise KvplanError(f"short read from {self.path}: {got} of {end - start} bytes")
        self.bytes_read += end - start

    def _page(self, page_off: int, region: int) -> torch.Tensor:
        if self.tail_off.get(region) == page_off:
            return self.tail[region]
        page = aligned_empty(PAGE)
        os.preadv(self.fd, [page.numpy()], page_off)
        return page

    def write(self, offset: int, data: torch.Tensor, region: int) -> None:
        """Write the bytes of `data` at `offset`; `region` names the append stream it belongs to."""
        raw = data.contiguous().view(-1).view(torch.uint8)
        n = raw.numel()
        start = offset - offset % PAGE
        end = align_up(offset + n)
        buf = aligned_empty(end - start)
        if offset > start:
            buf[:PAGE].copy_(self._page(start, region))
        if offset + n < end and (end - PAGE > start or offset == start):
            buf[end - start - PAGE:].copy_(self._page(end - PAGE, region))
        buf[offset - start:offset - start + n].copy_(raw)
        os.pwritev(self.fd, [buf.numpy()], start)
        self.bytes_written += end - start
        last = end - PAGE
        self.tail_off[region] = last
        self.tail[region] = buf[last - start:].clone()
        if not self.direct:
            os.fdatasync(self.fd)
            self._drop_cache()


@dataclass(frozen=True)
class Span:
    tier: str
    t0: int  # first token position held by this tier
    t1: int  # one past the last


def split_range(lo: int, hi: int, fractions: dict[str, float]) -> list[Span]:
    """Cut positions [lo, hi) into consecutive device, host, disk pieces in the given proportions
    (planner/placement.position_spans, the cut the planner predicts with). Empty pieces are left out."""
    return [Span(tier, a, b) for tier, (a, b) in position_spans(lo, hi, fractions).items() if b > a]


class GatherBuffer:
    """Where one GPU batch's K,V for one layer are assembled for attention, token-major
    [positions, gpu_batch, width], row p = position p: recomputed rows, streamed rows, the new token.
    On the CPU, disk pieces are read straight into their rows (O_DIRECT needs the row's address to
    sit at the same offset within a page as the file offset, so the base is placed accordingly and a
    page of slack is kept on both sides)."""

    def __init__(self, rows: int, gpu_batch: int, width: int, dtype: torch.dtype, device: torch.device,
                 disk_t0: int | None):
        self.rows, self.gb, self.width, self.dtype = rows, gpu_batch, width, dtype
        elem = torch.empty(0, dtype=dtype).element_size()
        self.row_bytes = gpu_batch * width * elem
        n = rows * self.row_bytes
        if device.type == "cpu":
            self.raw = aligned_empty(n + 3 * PAGE)
            shift = (-(disk_t0 or 0) * self.row_bytes) % PAGE  # base + t0*row is page-aligned
            self.base = PAGE + shift
            self.tensor = self.raw[self.base:self.base + n].view(dtype).view(rows, gpu_batch, width)
        else:
            self.raw = torch.empty(0, dtype=torch.uint8)
            self.base = 0
            self.tensor = torch.empty(rows, gpu_batch, width, dtype=dtype, device=device)

    def rows_view(self, a: int, b: int) -> torch.Tensor:
        """Rows [a, b) as [gpu_batch, tokens, width] (a strided view, no copy)."""
        return self.tensor[a:b].transpose(0, 1)


class TokenStore:
    """K,V (or X) of the run layers, for positions [lo, hi), cut across tiers.

    `compute` is the torch device that computes. On a CPU-only machine host memory *is* device
    memory, so the host tier is read in place; on CUDA the host tier is pinned memory copied in."""

    def __init__(self, name: str, width: int, lo: int, hi: int, fractions: dict[str, float], layers: int,
                 num_gpu_batches: int, gpu_batch: int, dtype: torch.dtype, compute: torch.device,
                 disk_dir: Path | None):
        self.name, self.width, self.lo, self.hi = name, width, lo, hi
        self.layers, self.ngb, self.gb, self.dtype, self.compute = layers, num_gpu_batches, gpu_batch, dtype, compute
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
                self.mem["device"] = torch.zeros(shape, dtype=dtype, device=compute)
            elif sp.tier == "host":
                t = torch.zeros(shape, dtype=dtype)
                self.mem["host"] = t.pin_memory() if compute.type == "cuda" else t
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

    def span_of(self, pos: int) -> Span:
        for sp in self.spans:
            if sp.t0 <= pos < sp.t1:
                return sp
        raise KvplanError(f"{self.name}: position {pos} is outside [{self.lo}, {self.hi})")

    def pieces(self, a: int, b: int) -> list[tuple[Span, int, int]]:
        """The parts of [a, b) held by each tier, in position order."""
        out = []
        for sp in self.spans:
            lo, hi = max(a, sp.t0), min(b, sp.t1)
            if hi > lo:
                out.append((sp, lo, hi))
        return out

    def _offset(self, layer: int, j: int, sp: Span, pos: int) -> int:
        return (layer * self.ngb + j) * self.region_bytes + (pos - sp.t0) * self.token_bytes

    def read(self, sp: Span, layer: int, j: int, a: int, b: int, target: torch.device | None = None) -> torch.Tensor:
        """Positions [a, b) of GPU batch j from tier `sp`, as [gpu_batch, tokens, width] on `target`
        (default: the compute device). Pieces already on the target are views; disk pieces are views
        into a staging buffer (valid until the pool wraps); other pieces are copies on the current
        stream."""
        target = target or self.compute
        if sp.tier == "disk":
            assert self.disk is not None
            raw = self.disk.read_into(self._offset(layer, j, sp, a), (b - a) * self.token_bytes, self.pool)
            t = raw.view(self.dtype).view(b - a, self.gb, self.width)
        else:
            t = self.mem[sp.tier][layer, j, a - sp.t0:b - sp.t0]
        if t.device.type != target.type:
            t = t.to(target, non_blocking=t.is_pinned())
        return t.transpose(0, 1)

    def read_into(self, sp: Span, layer: int, j: int, a: int, b: int, buf: GatherBuffer) -> None:
        """Positions [a, b) of GPU batch j from tier `sp` into rows [a, b) of `buf`."""
        if sp.tier == "disk" and buf.raw.numel():
            assert self.disk is not None
            self.disk.read_at(self._offset(layer, j, sp, a), (b - a) * self.token_bytes, buf.raw,
                              buf.base + a * buf.row_bytes)
            return
        src = self.read(sp, layer, j, a, b, buf.tensor.device)  # [gb, n, width]
        buf.tensor[a:b].copy_(src.transpose(0, 1), non_blocking=True)

    def is_local(self, sp: Span, target: torch.device | None = None) -> bool:
        """True when reading `sp` onto `target` is a view: no link is crossed."""
        return sp.tier != "disk" and self.mem[sp.tier].device.type == (target or self.compute).type

    def write(self, layer: int, j: int, a: int, data: torch.Tensor) -> dict[str, int]:
        """Store positions [a, a + tokens) of GPU batch j; data is [gpu_batch, tokens, width].
        Returns the bytes that went to each tier."""
        moved = dict.fromkeys(TIERS, 0)
        for sp, lo, hi in self.pieces(a, a + data.shape[1]):
            part = data[:, lo - a:hi - a].transpose(0, 1)
            if sp.tier == "disk":
                assert self.disk is not None
                region = layer * self.ngb + j
                self.disk.write(self._offset(layer, j, sp, lo), part.to("cpu", self.dtype), region)
            else:
                self.mem[sp.tier][layer, j, lo - sp.t0:hi - sp.t0].copy_(part, non_blocking=True)
            moved[sp.tier] += (hi - lo) * self.token_bytes
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
    (planner/plan.py: weight_placement). `get(v)` gives layer v's tensors on the compute device.

    With `virtual` > len(layers) (a `--layers K` run), the placement is that of the `virtual` layers
    of the whole model and layer v uses the stored layer v % K, kept on every tier some v maps to."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], layers: list[dict[str, torch.Tensor]],
                 fractions: dict[str, float], dtype: torch.dtype, compute: torch.device, disk_dir: Path | None,
                 virtual: int | None = None):
        self.shapes, self.dtype, self.compute = shapes, dtype, compute
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
                assert self.disk is not None
                self.disk_index[i] = len(self.disk_index)
                self.disk.write(self.disk_index[i] * self.record_bytes, self._pack(w), -1 - i)
            elif tier == "device" or compute.type != "cuda":
                self.mem[(tier, i)] = {k: v.to(compute, dtype) for k, v in w.items()}
            else:
                self.mem[(tier, i)] = {k: v.to(dtype).pin_memory() for k, v in w.items()}

    def _pack(self, w: dict[str, torch.Tensor]) -> torch.Tensor:
        flat = torch.zeros(self.record_bytes, dtype=torch.uint8)
        for name, (off, n) in self.layout.items():
            flat[off:off + n * self.elem].copy_(w[name].to(self.dtype).contiguous().view(-1).view(torch.uint8))
        return flat

    def close(self) -> None:
        if self.disk is not None:
            self.disk.close()

    def streamed(self, layer: int) -> str | None:
        """The link layer `layer`'s weights cross each step: None (resident), "h2d" or "disk_read"."""
        tier = self.tier_of[layer]
        if tier == "disk":
            return "disk_read"
        if tier == "host" and self.compute.type == "cuda":
            return "h2d"
        return None

    def get(self, layer: int) -> dict[str, torch.Tensor]:
        tier, i = self.tier_of[layer], layer % self.n
        if tier == "disk":
            assert self.disk is not None
            raw = self.disk.read_into(self.disk_index[i] * self.record_bytes, self.record_bytes, self.pool)
            out = {}
            for name, (off, n) in self.layout.items():
                t = raw[off:off + n * self.elem].view(self.dtype).view(self.shapes[name])
                out[name] = t.to(self.compute) if self.compute.type == "cuda" else t
            return out
        w = self.mem[(tier, i)]
        if tier == "host" and self.compute.type == "cuda":
            return {k: v.to(self.compute, non_blocking=True) for k, v in w.items()}
        return w
