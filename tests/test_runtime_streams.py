"""The executor's CUDA stream discipline, checked on a CPU: the executor runs its separate-memory path
(pinned host tier, disk -> staging -> device, copy streams, events) against a fake whose copies on a
copy stream are deferred until an event after them is waited for, as on a GPU. The fake records every
stream's accesses to memory and flags an access that is not ordered after a conflicting access of
another stream (no event synchronised or waited for in between); afterwards each link's busy
interval must contain the completion of the copies it issued. The logits must still be those of a
plain forward pass: a read used before its copy ran, or a staging buffer refilled under a pending
copy, would change them."""

from __future__ import annotations

import dataclasses
import threading
import time
from contextlib import contextmanager

import pytest
import torch
from _helpers import reference_logits, teacher_forced, tiny_decisions

from planner.directio import DiskFile
from planner.models import CATALOG
from planner.plan import Decisions
from runtime.executor import Executor, Setup
from runtime.links import Links, Tag
from runtime.measure import Recorder
from runtime.streams import Streams

TINY_OPT = dataclasses.replace(
    CATALOG["opt-125m"], name="tiny-opt", hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=4, head_dim=16,
    intermediate_size=128, vocab_size=101, max_position_embeddings=64)
TINY_LLAMA = dataclasses.replace(
    CATALOG["llama-3-8b"], name="tiny-llama", hidden_size=64, num_layers=2, num_heads=8, num_kv_heads=2, head_dim=8,
    intermediate_size=96, vocab_size=97, max_position_embeddings=64, rope_theta=10000.0)
DEVICE = {"device": 1.0, "host": 0.0, "disk": 0.0}
HOST = {"device": 0.0, "host": 1.0, "disk": 0.0}
DISK = {"device": 0.0, "host": 0.0, "disk": 1.0}
MIXED = {"device": 0.3, "host": 0.3, "disk": 0.4}
PROMPT, STEPS = 7, 5
SEQ = PROMPT + STEPS
ATOL = 2e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _extent(t: torch.Tensor) -> tuple[int, int]:
    if t.numel() == 0:
        return 0, 0
    last = sum((n - 1) * s for n, s in zip(t.shape, t.stride(), strict=True))
    return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()


@dataclasses.dataclass
class FakeEvent:
    stream: str
    upto: int  # ops issued on the stream when recorded


@dataclasses.dataclass
class Copy:
    stream: str
    index: int  # 1-based position on its stream
    dst: torch.Tensor
    src: torch.Tensor
    issued_s: float
    done_s: float | None = None


class FakeStreams(Streams):
    """GPU-like ordering on CPU tensors: copies issued on "h2d"/"d2h" run only when an event after
    them is synchronised or waited for; compute runs at once but its accesses count as pending until
    a compute event after them is waited for."""

    separate_host = True

    def __init__(self):
        super().__init__(torch.device("cpu"))
        self.lock = threading.RLock()
        self.local = threading.local()
        self.issued = {"compute": 0, "h2d": 0, "d2h": 0}
        self.done = {"compute": 0, "h2d": 0, "d2h": 0}  # ops completed (host-synchronised) per stream
        self.waited: dict[str, dict[str, int]] = {s: {} for s in self.issued}  # stream -> other -> up to
        self.queue: dict[str, list[Copy]] = {"h2d": [], "d2h": []}
        self.copies: list[Copy] = []
        self.accesses: list[tuple[str, int, int, int]] = []  # (stream, position, lo, hi)
        self.violations: list[str] = []
        self.keep: list[torch.Tensor] = []  # device allocations are never reused (the allocator's record_stream)

    def _current(self) -> str:
        return getattr(self.local, "stream", "compute")

    @contextmanager
    def on(self, name: str):
        before = self._current()
        self.local.stream = name
        try:
            yield
        finally:
            self.local.stream = before

    def copy(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        name = self._current()
        if name == "compute":
            dst.copy_(src)
            return
        with self.lock:
            self.issued[name] += 1
            op = Copy(name, self.issued[name], dst, src, time.perf_counter())
            self.queue[name].append(op)
            self.copies.append(op)

    def _execute(self, name: str, upto: int) -> None:
        """Run the deferred copies of stream `name` up to op `upto` (the data must be there before
        anything ordered after them runs, and the fake runs everything else at once)."""
        if name == "compute":
            return
        while self.queue[name] and self.queue[name][0].index <= upto:
            op = self.queue[name].pop(0)
            op.dst.copy_(op.src)
            op.done_s = time.perf_counter()

    def _complete(self, name: str, upto: int) -> None:
        """The host waited: ops up to `upto` of stream `name` are done for everyone."""
        self._execute(name, upto)
        self.done[name] = max(self.done[name], upto)

    def record(self, name: str) -> FakeEvent:
        with self.lock:
            return FakeEvent(name, self.issued[name])

    def wait(self, name: str, event) -> None:
        if event is None:
            return
        with self.lock:
            # the waiting stream's later ops run after the event's (ordered for that stream only)
            self._execute(event.stream, event.upto)
            w = self.waited[name]
            w[event.stream] = max(w.get(event.stream, 0), event.upto)

    def sync(self, event) -> None:
        if event is not None:
            with self.lock:
                self._complete(event.stream, event.upto)

    def sync_stream(self, name: str) -> None:
        with self.lock:
            self._complete(name, self.issued[name])

    def _ordered(self, stream: str, position: int, later: str) -> bool:
        if stream == later or stream == "host":
            return True
        return self.done[stream] >= position or self.waited.get(later, {}).get(stream, 0) >= position

    def accessed(self, name: str, *tensors: torch.Tensor) -> None:
        with self.lock:
            if name == "compute":
                self.issued[name] += 1
            position = self.issued.get(name, 0)
            for t in tensors:
                lo, hi = _extent(t)
                if hi == lo:
                    continue
                for stream, pos, a, b in self.accesses:
                    if a < hi and lo < b and not self._ordered(stream, pos, name):
                        self.violations.append(f"{name} touches [{lo:#x}, {hi:#x}) while op {pos} of {stream} "
                                               "on it is not ordered before")
                self.accesses.append((name, position, lo, hi))
            # forget accesses every stream is now ordered after
            self.accesses = [acc for acc in self.accesses if acc[0] != "host" and self.done[acc[0]] < acc[1]]

    def device_empty(self, shape, dtype) -> torch.Tensor:
        t = torch.empty(shape, dtype=dtype)
        with self.lock:
            self.keep.append(t)
        return t


def _run(m, dec: Decisions, disk_dir, fake: FakeStreams) -> tuple[torch.Tensor, Executor]:
    tok = torch.randint(0, m.vocab_size, (4, SEQ), generator=torch.Generator().manual_seed(3))
    ex = Executor(Setup(m, dec, SEQ, m.num_layers, disk_dir=disk_dir), streams=fake)
    # no compute-stream sync at the end of compute intervals: the streams must be ordered by the
    # executor's events alone (a GPU's compute stream may lag the host)
    ex.rec = Recorder(sync=None)
    got = teacher_forced(ex, tok, PROMPT)
    ref = reference_logits(m, tok)[:, PROMPT - 1:]
    assert torch.allclose(got, ref, atol=ATOL, rtol=0), (got - ref).abs().max()
    return got, ex


def _check_link_intervals(fake: FakeStreams, ex: Executor) -> None:
    """Every copy completed, inside a busy interval of its link that started before it was issued."""
    assert fake.copies, "the run made no copies: the separate-memory path was not exercised"
    for op in fake.copies:
        assert op.done_s is not None, f"a {op.stream} copy never completed"
        spans = [iv for iv in ex.rec.intervals if iv.resource == op.stream and iv.start_s <= op.issued_s <= iv.end_s]
        assert spans, f"a {op.stream} copy was issued outside any {op.stream} busy interval"
        assert any(op.done_s <= iv.end_s for iv in spans), (
            f"a {op.stream} busy interval closed {1e3 * (op.done_s - max(iv.end_s for iv in spans)):.2f} ms "
            "before its copy completed")


CASES = {
    "kv and x on host, recompute": (TINY_LLAMA, tiny_decisions(4, HOST, HOST, DEVICE)),
    "kv and x on disk, weights on host": (TINY_OPT, tiny_decisions(3, DISK, DISK, HOST)),
    "mixed tiers, weights on disk, one gpu batch": (TINY_LLAMA, tiny_decisions(5, MIXED, MIXED, DISK, ngb=1)),
    "mixed tiers, four gpu batches": (TINY_OPT, tiny_decisions(2, MIXED, MIXED, MIXED, ngb=4)),
    "transfer from host": (TINY_OPT, tiny_decisions(0, HOST, HOST, DEVICE)),
    "attention on the cpu next to host k,v": (TINY_LLAMA, tiny_decisions(3, MIXED, HOST, DEVICE, attention="cpu")),
    "resident on host, attention on the cpu": (TINY_OPT, tiny_decisions(0, HOST, HOST, DEVICE, attention="cpu")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_copies_are_ordered_by_events_and_timed_to_completion(name, tmp_path):
    m, dec = CASES[name]
    fake = FakeStreams()
    _, ex = _run(m, dec, tmp_path, fake)
    assert fake.violations == [], fake.violations[:3]
    _check_link_intervals(fake, ex)
    busy = {iv.resource for iv in ex.rec.intervals}
    if dec.weight_placement["host"] or (dec.x_placement["host"] and dec.split_tokens) or (
            dec.kv_placement["host"] and dec.attention_where == "device"):
        assert "h2d" in busy
    if dec.kv_placement["disk"] or dec.x_placement["disk"]:
        assert {"disk_read", "disk_write"} <= busy
        if dec.attention_where == "device":  # disk -> pinned staging -> device: charged to h2d too
            assert "h2d" in busy


def test_a_staging_slot_is_refilled_only_after_its_copy(tmp_path):
    """A one-slot ring and an h2d worker held up: the second disk read must wait for the first one's
    copy out of the slot, else the first read would bring the second's bytes."""
    fake = FakeStreams()
    links = Links(fake, Recorder())
    f = DiskFile(tmp_path / "two-pages.bin", 8192)
    try:
        f.write(0, torch.full((4096,), 1, dtype=torch.uint8), 0)
        f.write(4096, torch.full((4096,), 2, dtype=torch.uint8), 1)
        gate = threading.Event()
        links.workers["h2d"].submit(gate.wait, 5)
        ring = links.ring("test", 1)

        def fill_from(raw):
            def fill():
                dst = fake.device_empty((raw.numel(),), raw.dtype)
                return [(dst, raw)], dst
            return fill

        reads = [links.disk_to_device(Tag(0, 0), ring, f, off, 4096, fill_from) for off in (0, 4096)]
        time.sleep(0.05)  # the disk worker would refill the slot now if it did not wait
        gate.set()
        values = []
        for r in reads:
            x = r.result().result()
            fake.sync(x.event)
            values.append(int(x.value.float().mean()))
        assert values == [1, 2]
    finally:
        links.close()
        f.close()
