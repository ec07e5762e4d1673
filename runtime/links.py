"""How bytes cross the links during decode: one worker thread per link ("disk", "h2d", "d2h"), so the
reads and writes of one link are serialised like the real link, and every transfer is a busy interval
of its resource (runtime/measure.py) that closes only after the transfer completed: a file read when
`preadv` returns, a copy when the event recorded after it on the link's stream has been reached
(runtime/streams.py). Resources as the planner charges them (planner/search/evaluate.py): a disk
piece bound for device memory is `disk_read` (file -> pinned staging buffer) and then `h2d`
(staging -> device, queued on the h2d worker behind the host-memory reads); a write-back from device
memory is `d2h`, and `disk_write` when it then goes to the file.

On a CPU-only machine (`streams.separate_host` False) there is no h2d or d2h: host memory is the
device's memory, disk pieces are read straight to where they are used and write-backs to RAM are
plain copies on the compute thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from planner.directio import DiskFile, span_bytes
from runtime.measure import Recorder
from runtime.streams import Streams

LINKS = ("disk", "h2d", "d2h")
# called on a copy stream: the (destination, source) pairs to copy and the value the read brings
Fill = Callable[[], tuple[list[tuple[torch.Tensor, torch.Tensor]], Any]]


@dataclass(frozen=True)
class Landed:
    """What a read brought: a tensor, a layer's weights, or None (rows written into a gather buffer);
    usable on the compute stream once `event` is reached (None: already)."""
    value: Any
    event: Any = None


@dataclass(frozen=True)
class Tag:
    """The (step, run layer) a transfer serves: its busy interval is charged there."""
    step: int
    layer: int


class StagingRing:
    """Pinned page-aligned buffers that disk reads bound for device memory land in. A slot is refilled
    only after the copy that emptied it completed: its h2d task recorded the copy's event and waited
    for it before finishing, and `take` waits for that task."""

    def __init__(self, streams: Streams, slots: int):
        self.streams = streams
        self.bufs = [torch.empty(0, dtype=torch.uint8) for _ in range(max(1, slots))]
        self.emptied_by: list[Future | None] = [None] * len(self.bufs)
        self.next = 0
        self.lock = threading.Lock()

    def take(self, nbytes: int) -> tuple[int, torch.Tensor]:
        with self.lock:
            i = self.next
            self.next = (i + 1) % len(self.bufs)
        pending = self.emptied_by[i]
        if pending is not None:
            pending.result()
        if self.bufs[i].numel() < nbytes:
            self.bufs[i] = self.streams.staging(nbytes)
        self.streams.accessed("host", self.bufs[i][:nbytes])  # the host is about to refill it
        return i, self.bufs[i][:nbytes]

    def emptied(self, i: int, by: Future) -> None:
        self.emptied_by[i] = by


class Links:
    """The I/O workers and the transfers they run."""

    def __init__(self, streams: Streams, rec: Recorder):
        self.io, self.rec = streams, rec
        self.workers = {link: ThreadPoolExecutor(1, thread_name_prefix=f"kvplan-{link}") for link in LINKS}
        self.rings: dict[str, StagingRing] = {}
        # (store, stored layer, GPU batch) -> the last write-back into that host region: a read of the
        # region waits for it (the write runs on the d2h worker, the read on the h2d worker)
        self.host_writes: dict[tuple[str, int, int], Future] = {}
        self.writes: list[Future] = []

    def close(self) -> None:
        for w in self.workers.values():
            w.shutdown(wait=True)

    def ring(self, name: str, slots: int) -> StagingRing:
        if name not in self.rings:
            self.rings[name] = StagingRing(self.io, slots)
        return self.rings[name]

    def finish_writes(self) -> None:
        for f in self.writes:
            f.result()
        self.writes.clear()

    # -- reads -----------------------------------------------------------------------------------
    def copy(self, tag: Tag, link: str, nbytes: int, fill: Fill, after: Future | None = None,
             dst_free: Any = None) -> Future:
        """A copy between host and device memory on `link`'s worker and stream ("h2d" or "d2h"):
        `fill()`, called on the copy stream (so fresh destinations are allocated there), gives the
        (dst, src) pairs and the value the read brings; the result is Landed(value, event). `after`:
        a write-back into the source region that must land first; `dst_free`: the compute event after
        which the destination may be rewritten (a gather buffer's last attention)."""
        return self.workers[link].submit(self._copy, tag, link, nbytes, fill, after, dst_free)

    def _copy(self, tag: Tag, link: str, nbytes: int, fill: Fill, after, dst_free) -> Landed:
        if after is not None:
            after.result()
        with self.rec.busy(tag.step, tag.layer, link, nbytes):
            with self.io.on(link):
                self.io.wait(link, dst_free)
                pairs, value = fill()
                for dst, src in pairs:
                    self.io.copy(dst, src)
                    self.io.accessed(link, dst, src)
                event = self.io.record(link)
            self.io.sync(event)  # inside the interval: the link is busy until the copy is done
        return Landed(value, event)

    def disk_read(self, tag: Tag, nbytes: int, read: Callable[[], Any]) -> Future:
        """A file read into host memory that is used there (a CPU run, or attention on the CPU):
        Landed(read()) on the disk worker."""
        return self.workers["disk"].submit(self._disk_read, tag, nbytes, read)

    def _disk_read(self, tag: Tag, nbytes: int, read: Callable[[], Any]) -> Landed:
        with self.rec.busy(tag.step, tag.layer, "disk_read", nbytes):
            return Landed(read())

    def disk_to_device(self, tag: Tag, ring: StagingRing, file: DiskFile, offset: int, nbytes: int,
                       fill_from: Callable[[torch.Tensor], Fill], dst_free: Any = None) -> Future:
        """File -> pinned staging slot (disk worker, disk_read) -> device (h2d worker, h2d). The
        future resolves to the h2d copy's future, which resolves to Landed(value, event);
        `fill_from(staged bytes)` is the copy's fill."""
        return self.workers["disk"].submit(self._disk_to_device, tag, ring, file, offset, nbytes, fill_from,
                                           dst_free)

    def _disk_to_device(self, tag: Tag, ring: StagingRing, file: DiskFile, offset: int, nbytes: int, fill_from,
                        dst_free) -> Future:
        slot, staging = ring.take(span_bytes(offset, nbytes))
        with self.rec.busy(tag.step, tag.layer, "disk_read", nbytes):
            raw = file.read_staged(offset, nbytes, staging)
        copied = self.copy(tag, "h2d", nbytes, fill_from(raw), dst_free=dst_free)
        ring.emptied(slot, copied)
        return copied

    # -- write-backs -----------------------------------------------------------------------------
    def copy_out(self, tag: Tag, dst: torch.Tensor, src: torch.Tensor, made: Any, key: tuple[str, int, int]) -> Future:
        """A write-back from device memory into host memory on the d2h worker, after the compute event
        `made` (the new token's X or K,V exists); reads of the host region `key` wait for it."""
        self.io.keep_alive(src, "d2h")
        fut = self.workers["d2h"].submit(self._copy_out, tag, dst, src, made)
        self.host_writes[key] = fut
        self.writes.append(fut)
        return fut

    def _copy_out(self, tag: Tag, dst: torch.Tensor, src: torch.Tensor, made: Any) -> None:
        with self.rec.busy(tag.step, tag.layer, "d2h", src.numel() * src.element_size()):
            with self.io.on("d2h"):
                self.io.wait("d2h", made)
                self.io.copy(dst, src)
                self.io.accessed("d2h", dst, src)
                event = self.io.record("d2h")
            self.io.sync(event)

    def to_disk(self, tag: Tag, nbytes: int, write: Callable[[torch.Tensor], None], src: torch.Tensor,
                made: Any = None) -> Future:
        """A write-back to the file on the disk worker (after the reads already queued there, as on a
        real drive). From separate device memory the bytes first cross d2h into pinned memory (timed
        as d2h, on the d2h stream, after the compute event `made`)."""
        if self.io.separate_host:
            self.io.keep_alive(src, "d2h")
        fut = self.workers["disk"].submit(self._to_disk, tag, nbytes, write, src, made)
        self.writes.append(fut)
        return fut

    def _to_disk(self, tag: Tag, nbytes: int, write, src: torch.Tensor, made) -> None:
        if self.io.separate_host:
            host = self.io.host_zeros(tuple(src.shape), src.dtype)
            self._copy_out(tag, host, src, made)
            src = host
        with self.rec.busy(tag.step, tag.layer, "disk_write", nbytes):
            write(src)


def landed(x: Any, streams: Streams) -> Any:
    """The value of a read for the compute thread: waits for its worker (a disk read bound for the
    device resolves to its h2d copy's future), makes the compute stream wait for the copy's event and
    marks the tensors it brought as used on the compute stream. Values that are not futures are
    returned as they are (a piece read in place)."""
    while isinstance(x, Future):
        x = x.result()
    if not isinstance(x, Landed):
        return x
    streams.wait("compute", x.event)
    tensors = x.value.values() if isinstance(x.value, dict) else [x.value]
    for t in tensors:
        if isinstance(t, torch.Tensor):
            streams.keep_alive(t, "compute")
            streams.accessed("compute", t)
    return x.value
