"""Timing one operation over repeated runs with the wall clock, on the CPU and on a GPU alike.

The clock: `time.perf_counter` around the call, and on a GPU around the call *and* its completion
(`torch.cuda.synchronize()` before the clock stops). That is how the runtime times its busy
intervals (runtime/measure.py: wall clock, a compute interval closes after the device has finished),
so a profile predicts what `kvplan execute` measures. CUDA events, used before, time only the GPU's
side: they leave out the host's launch cost, a visible share of a decode-sized kernel (tens of
microseconds), which the runtime's wall clock includes. On the CPU torch ops are synchronous and
there is nothing to wait for. (Until the validation round of docs/validation.md the single-thread
CPU probes used the thread's CPU time, which leaves out time spent descheduled or stalled behind
other work and made the profile optimistic against the runtime's wall clock.)

The statistic is the median of the runs: the runtime reports mean busy times, and on this VM a cold,
memory-bound op's mean sits 3-5% above its lower quartile and within 1% of its median (docs/profiling.md,
"Timing statistic"). The lower quartile, used before, made every compute prediction a few percent
fast. `kvplan profile` warns when the machine is busy: on a shared machine the median follows the
load, as the runtime's own times do."""

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


CLOCK = "wall"  # recorded as measurement.clock: every probe, CPU and GPU, times with the wall clock


def cpu_clock() -> str:
    """The clock of CPU probes: "wall", like the runtime's busy time (see the module docstring)."""
    return CLOCK


class Timer:
    """Times a zero-argument callable: wall clock from the call to its completion. `sync` waits for
    the device to finish (default: torch.cuda.synchronize on "cuda", nothing on the CPU)."""

    def __init__(self, device: str = "cpu", sync: Callable[[], object] | None = None):
        self.device = device
        if sync is None and device == "cuda":
            import torch

            sync = torch.cuda.synchronize
        self.sync = sync
        self.clock = CLOCK

    def once_s(self, fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        fn()
        if self.sync is not None:
            self.sync()  # the runtime's interval closes after the device has finished
        return time.perf_counter() - start

    def sample_s(self, fn: Callable[[], object], reps: Repeats) -> float:
        for _ in range(reps.warmup):
            fn()
        if self.sync is not None:
            self.sync()  # nothing of the warmup runs is still queued when the first timed run starts
        times: list[float] = []
        spent = 0.0
        while len(times) < reps.max_reps and (len(times) < reps.min_reps or spent < reps.target_s):
            t = self.once_s(fn)
            times.append(t)
            spent += t
        return statistics.median(times)
