"""Memory-link probes: the host's DRAM bandwidth, host memcpy, and on CUDA host->device /
device->host copies from pinned and from pageable host memory (design.md §7: pinned source,
non_blocking copy; timed like everything else, wall clock to completion, planner/profiling/timing.py)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from planner.profiling.compute import Progress, SampleSet, _budgeted
from planner.profiling.timing import Repeats, Timer


@dataclass(frozen=True)
class HostBandwidth:
    """The host's DRAM bandwidth from a STREAM-style copy: `gb_per_s` counts the bytes read and the
    bytes written (2 x `nbytes` per copy, as STREAM's Copy does), median over `rounds_s`."""

    gb_per_s: float
    nbytes: int
    threads: int
    rounds_s: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"bytes": self.nbytes, "threads": self.threads, "rounds_s": [round(t, 9) for t in self.rounds_s],
                "statistic": "median", "counted": "2 x bytes per copy (read + write)"}


def host_bandwidth(nbytes: int, rounds: int) -> HostBandwidth:
    """Copy `nbytes` of float32 between two host tensors, `rounds` times (after one untimed copy that
    faults the pages in). torch splits a large copy over its intra-op threads, so this measures what
    the profile's thread count can pull from DRAM; `nbytes` should be several times the last-level
    cache (measure.py sizes it) so the copy streams from DRAM, not from the cache."""
    import torch

    numel = max(nbytes // 4, 1)
    src = torch.ones(numel, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(max(rounds, 1)):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return HostBandwidth(round(2 * numel * 4 / statistics.median(times) / 1e9, 4), numel * 4,
                         torch.get_num_threads(), tuple(times))


def host_memcpy_samples(sizes: Sequence[int], reps: Repeats, budget_s: float,
                        progress: Progress | None = None) -> SampleSet:
    """Copy `bytes` between two host buffers (torch copy_, which uses the available cores)."""
    import torch

    timer = Timer("cpu")

    def measure(nbytes: int) -> list[float]:
        src = torch.ones(nbytes, dtype=torch.uint8)
        dst = torch.empty(nbytes, dtype=torch.uint8)
        return [nbytes, timer.sample_s(lambda: dst.copy_(src), reps)]

    rows, skipped = _budgeted(sizes, budget_s, measure, progress, reps.passes)
    return SampleSet(["bytes", "time_s"], rows, skipped)


def cuda_copy_samples(direction: str, pinned: bool, sizes: Sequence[int], reps: Repeats, budget_s: float,
                      progress: Progress | None = None) -> SampleSet:
    """`direction` "h2d" or "d2h"; the host side pinned (page-locked) or pageable."""
    import torch

    timer = Timer("cuda")

    def measure(nbytes: int) -> list[float]:
        host = torch.ones(nbytes, dtype=torch.uint8, pin_memory=pinned)
        dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        if direction == "h2d":
            t = timer.sample_s(lambda: dev.copy_(host, non_blocking=pinned), reps)
        else:
            t = timer.sample_s(lambda: host.copy_(dev, non_blocking=pinned), reps)
        return [nbytes, t]

    rows, skipped = _budgeted(sizes, budget_s, measure, progress, reps.passes)
    return SampleSet(["bytes", "time_s"], rows, skipped)


def cuda_device_copy_gb_per_s(nbytes: int, reps: Repeats) -> float:
    """Device memory bandwidth as read + write traffic of a device-to-device copy (wall clock to
    completion, as every probe)."""
    import torch

    src = torch.ones(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = Timer("cuda").sample_s(lambda: dst.copy_(src), reps)
    return 2 * nbytes / t / 1e9
