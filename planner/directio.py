"""Disk I/O past the page cache, shared by the runtime's disk tier (runtime/tiers.py) and the disk
probe (planner/profiling/disk.py), so the probe times the very reads and writes the runtime makes.

Reads and writes use O_DIRECT on page-aligned buffers (4 KiB aligned offset, length and address). A
write that starts or ends inside a page merges the page's other bytes first: the last page written
in each region is remembered in RAM, any other page is read back with O_DIRECT. If the file system
refuses O_DIRECT (tmpfs, some overlay mounts) the file falls back to buffered I/O with fdatasync +
posix_fadvise(POSIX_FADV_DONTNEED) after every write and before every read, which evicts the file's
pages so reads still come from the disk; `DiskFile.direct` says which (the run record reports it).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

from planner.errors import KvplanError

PAGE = 4096


def align_up(n: int, a: int = PAGE) -> int:
    return (n + a - 1) // a * a


def aligned_empty(nbytes: int, pinned: bool = False) -> torch.Tensor:
    """A CPU uint8 tensor of `nbytes` whose first byte sits on a page boundary; with `pinned`, in
    page-locked memory (CUDA's host allocator), allocated as such rather than copied into it."""
    raw = torch.empty(nbytes + PAGE, dtype=torch.uint8, pin_memory=pinned)
    skip = (-raw.data_ptr()) % PAGE
    return raw[skip:skip + nbytes]


class BufferPool:
    """Round-robin page-aligned staging buffers for disk reads on the CPU: a read's data stays valid
    until `slots` further reads of the same pool (the executor keeps at most slots-1 in flight)."""

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


def span_bytes(offset: int, nbytes: int) -> int:
    """Bytes of the page-aligned span a read of [offset, offset + nbytes) really transfers."""
    return align_up(offset + nbytes) - (offset - offset % PAGE)


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
        self.tail: dict[int, torch.Tensor] = {}  # region -> the last page written in it
        self.tail_off: dict[int, int] = {}  # region -> that page's offset
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

    def _read_span(self, start: int, dst: torch.Tensor, needed: int) -> None:
        self._drop_cache()
        got = os.preadv(self.fd, [dst.numpy()], start)
        if got < needed:
            raise KvplanError(f"short read from {self.path}: {got} of {dst.numel()} bytes")
        self.bytes_read += dst.numel()

    def read_staged(self, offset: int, nbytes: int, staging: torch.Tensor) -> torch.Tensor:
        """Bytes [offset, offset+nbytes) read through `staging` (page-aligned uint8, at least
        span_bytes(offset, nbytes) long); returns the view of the asked bytes inside it."""
        start = offset - offset % PAGE
        span = span_bytes(offset, nbytes)
        if staging.numel() < span or staging.data_ptr() % PAGE:
            raise AssertionError("read_staged: staging buffer is too small or not page-aligned")
        self._read_span(start, staging[:span], offset + nbytes - start)
        return staging[offset - start:offset - start + nbytes]

    def read_into(self, offset: int, nbytes: int, pool: BufferPool) -> torch.Tensor:
        """Bytes [offset, offset+nbytes) as a uint8 view into a pool buffer."""
        return self.read_staged(offset, nbytes, pool.take(span_bytes(offset, nbytes)))

    def read_at(self, offset: int, nbytes: int, raw: torch.Tensor, index: int) -> None:
        """Read bytes [offset, offset+nbytes) straight into raw[index:index+nbytes] (no staging copy).
        The page-aligned span around them is read, so up to a page before `index` and after the end
        is overwritten too: raw[index] must sit at the same offset within its page as `offset`, and
        the caller fills the neighbouring bytes only after the read (runtime.tiers.GatherBuffer)."""
        start = offset - offset % PAGE
        end = align_up(offset + nbytes)
        lo = index - (offset - start)
        dst = raw[lo:lo + end - start]
        if lo < 0 or dst.numel() != end - start or dst.data_ptr() % PAGE:
            raise AssertionError("read_at: destination is not page-aligned like the file offset")
        self._read_span(start, dst, offset + nbytes - start)

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
