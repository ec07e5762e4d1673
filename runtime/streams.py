"""Where the runtime's copies run and how the compute waits for them: the stream discipline PyTorch
documents for CUDA (https://pytorch.org/docs/stable/notes/cuda.html#cuda-streams), behind one small
interface so the executor's ordering can be checked on a CPU with a fake (tests/test_runtime_streams.py).

Streams are named: "compute" (the compute thread's, CUDA's current stream), "h2d" and "d2h" (one
copy stream per link direction). The executor's rules, each a call here:
- a copy is issued on its link's stream (`on`, `copy`), an event is recorded after it (`record`) and
  the issuing worker waits for that event (`sync`) before its busy interval closes, so a link's
  measured time includes the copy's completion;
- the compute stream waits for a read's event (`wait("compute", ev)`) before using what it brought,
  and a tensor allocated on a copy stream and used on another is marked for that stream
  (`keep_alive`, torch's record_stream) so the caching allocator does not hand its memory out early;
- a write-back waits for the compute event recorded after the new token was made
  (`wait("d2h", ev)`); a gather buffer is written by a copy stream only after that stream waited for
  the compute event recorded after the buffer's last attention; a pinned staging buffer is refilled
  by the host only after its copy's event (the ring in runtime/links.py);
- `accessed` declares that the ops issued so far on a stream use these tensors (a no-op on CUDA:
  the fake checks the rules above against it).

On a CPU-only machine host memory is the device's memory: `Streams` does every copy at once, its
events are None and nothing waits.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from planner.directio import aligned_empty

STREAMS = ("compute", "h2d", "d2h")


class Streams:
    """A CPU run: one memory, nothing asynchronous."""

    separate_host = False  # True when host memory is not the compute device's memory

    def __init__(self, device: torch.device):
        self.device = device

    def on(self, name: str):
        """Context in which copies are issued on stream `name`."""
        return nullcontext()

    def copy(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        dst.copy_(src)

    def record(self, name: str):
        """An event marking everything issued on stream `name` so far (None: already done)."""
        return None

    def wait(self, name: str, event) -> None:
        """Stream `name` runs what it is given next only after `event` (device side; host goes on)."""

    def sync(self, event) -> None:
        """The host waits for `event`."""

    def sync_stream(self, name: str) -> None:
        """The host waits for everything issued on stream `name`."""

    def keep_alive(self, t: torch.Tensor, name: str) -> None:
        """`t` (allocated on another stream) is used on stream `name` (torch's record_stream)."""

    def accessed(self, name: str, *tensors: torch.Tensor) -> None:
        """The ops issued so far on stream `name` read or write these tensors."""

    def host_zeros(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """Zeroed host memory for a host tier (pinned where copies are asynchronous), allocated in
        place: never a pageable tensor copied into pinned memory (that holds both for a moment)."""
        return torch.zeros(shape, dtype=dtype)

    def host_copy(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        out = self.host_zeros(tuple(t.shape), dtype)
        out.copy_(t)
        return out

    def staging(self, nbytes: int) -> torch.Tensor:
        """A page-aligned host buffer for disk reads that a copy then takes to the device."""
        return aligned_empty(nbytes)

    def device_empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device=self.device)


class CudaStreams(Streams):
    """A GPU: the compute thread's stream plus one copy stream per direction; pinned host memory."""

    separate_host = True

    def __init__(self, device: torch.device):
        super().__init__(device)
        self.streams = {"compute": torch.cuda.current_stream(device),
                        "h2d": torch.cuda.Stream(device), "d2h": torch.cuda.Stream(device)}

    def on(self, name: str):
        return torch.cuda.stream(self.streams[name])

    def copy(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        dst.copy_(src, non_blocking=True)

    def record(self, name: str):
        ev = torch.cuda.Event()
        ev.record(self.streams[name])
        return ev

    def wait(self, name: str, event) -> None:
        if event is not None:
            self.streams[name].wait_event(event)

    def sync(self, event) -> None:
        if event is not None:
            event.synchronize()

    def sync_stream(self, name: str) -> None:
        self.streams[name].synchronize()

    def keep_alive(self, t: torch.Tensor, name: str) -> None:
        if t.is_cuda:
            t.record_stream(self.streams[name])

    def host_zeros(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros(shape, dtype=dtype, pin_memory=True)

    def staging(self, nbytes: int) -> torch.Tensor:
        return aligned_empty(nbytes, pinned=True)


def streams_for(device: torch.device) -> Streams:
    return CudaStreams(device) if device.type == "cuda" else Streams(device)

