"""Timing one operation over repeated runs, with CUDA events on a GPU and perf_counter on the CPU
(torch CPU ops are synchronous).

The statistic is the median of the runs: the runtime reports mean busy times, and on this VM a cold,
memory-bound op's mean sits 3-5% above its lower quartile and within 1% of its median (docs/profiling.md,
"Timing statistic"). The lower quartile, used before, made every compute prediction a few percent
fast. `kvplan profile` warns when the machine is busy: on a shared machine the median follows the
load, as the runtime's own times do.

Clock on the CPU: wall time (`time.perf_counter`) of the op on the calling thread, the clock the
runtime uses for its busy time (runtime/measure.py), so a profile predicts what `kvplan execute`
measures. (Until the validation round of docs/validation.md the single-thread probes used the
thread's CPU time, which leaves out time spent descheduled or stalled behind other work and made
the profile optimistic against the runtime's wall clock.)"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Repeats:
    """How hard to try for each sample: at least `min_reps` timed runs after `warmup`, more while
    the sample has used less than `target_s`, never more than `max_reps`; all of that `passes` times."""

    warmup: int = 1
    min_reps: int = 3
    max_reps: int = 20
    target_s: float = 0.05
    passes: int = 1  # round-robin passes over a probe's sizes; each size keeps the median of its passes


def cpu_clock() -> str:
    """The clock of CPU probes: "wall", like the runtime's busy time (see the module docstring)."""
    return "wall"


class Timer:
    """Times a zero-argument callable on the compute device."""

    def __init__(self, device: str = "cpu", clock: str | None = None):
        self.device = device
        self._torch = None
        if device == "cuda":
            import torch

            self._torch = torch
        self.clock = "cuda_events" if device == "cuda" else clock or cpu_clock()
        self._now = time.thread_time if self.clock == "thread_cpu" else time.perf_counter

    def once_s(self, fn: Callable[[], object]) -> float:
        if self._torch is None:
            start = self._now()
            fn()
            return self._now() - start
        torch = self._torch
        begin = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1e3  # elapsed_time is in milliseconds

    def sample_s(self, fn: Callable[[], object], reps: Repeats) -> float:
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


def lower_quartile(times: list[float]) -> float:
    ordered = sorted(times)
    return ordered[(len(ordered) - 1) // 4]
