"""Memory-link probes: host memcpy, and on CUDA host->device / device->host copies from pinned and
from pageable host memory (design.md §7: pinned source, non_blocking copy between CUDA events)."""

from __future__ import annotations

from collections.abc import Sequence

from planner.profiling.compute import Progress, SampleSet, _budgeted
from planner.profiling.timing import Repeats, Timer


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
    """Device memory bandwidth as read + write traffic of a device-to-device copy."""
    import torch

    src = torch.ones(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = Timer("cuda").sample_s(lambda: dst.copy_(src), reps)
    return 2 * nbytes / t / 1e9
