"""Timing one operation: the median of repeated runs, with CUDA events on a GPU and
perf_counter on the CPU (torch CPU ops are synchronous)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Repeats:
    """How hard to try for each sample: at least `min_reps` timed runs after `warmup`, more while
    the sample has used less than `target_s`, never more than `max_reps`."""

    warmup: int = 1
    min_reps: int = 3
    max_reps: int = 20
    target_s: float = 0.05


class Timer:
    """Times a zero-argument callable on the compute device."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._torch = None
        if device == "cuda":
            import torch

            self._torch = torch

    def once_s(self, fn: Callable[[], object]) -> float:
        if self._torch is None:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        torch = self._torch
        begin = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1e3  # elapsed_time is in milliseconds

    def median_s(self, fn: Callable[[], object], reps: Repeats) -> float:
        for _ in range(reps.warmup):
            fn()
        if self._torch is not None:
            self._torch.cuda.synchronize()
        times: list[float] = []
        spent = 0.0
        while len(times) < reps.max_reps and (len(times) < reps.min_reps or spent < reps.target_s):
            t = self.once_s(fn)
            times.append(t)
            spent += t
        return statistics.median(times)


def wall_median_s(fn: Callable[[], object], reps: Repeats) -> float:
    """Host wall-clock median (for host-side work such as file I/O and host memcpy)."""
    return Timer("cpu").median_s(fn, reps)
