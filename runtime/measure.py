"""Per-resource busy-time accounting for the runtime.

Every timed piece of work is an interval on one resource ("compute", "cpu", "h2d", "disk_read",
"d2h", "disk_write") attributed to the (step, layer) it serves, even when it ran earlier (a prefetch)
or on another thread. A layer's wall time is the gap between the end of the previous layer and the
end of this one on the thread that computes, so work hidden under another layer's compute costs the
layer nothing: the per-layer wall time is what the pipeline really achieved.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field

from planner.placement import RESOURCES


@dataclass
class Interval:
    step: int
    layer: int  # -1: outside the decoder layers (embedding, LM head)
    resource: str
    start_s: float
    end_s: float
    nbytes: int = 0
    cpu_s: float = 0.0  # CPU time of the thread that did the work (time.thread_time) during the interval


@dataclass
class Recorder:
    intervals: list[Interval] = field(default_factory=list)
    layer_end_s: dict[tuple[int, int], float] = field(default_factory=dict)
    step_span_s: dict[int, tuple[float, float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    sync: object = None  # called before a compute interval closes (on CUDA: the compute stream's synchronize)

    @contextmanager
    def busy(self, step: int, layer: int, resource: str, nbytes: int = 0):
        start, cpu0 = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            if resource in ("compute", "cpu") and self.sync is not None:
                self.sync()
            end, cpu1 = time.perf_counter(), time.thread_time()
            with self.lock:
                self.intervals.append(Interval(step, layer, resource, start, end, nbytes, cpu1 - cpu0))

    def mark_layer_end(self, step: int, layer: int) -> None:
        self.layer_end_s[(step, layer)] = time.perf_counter()

    def mark_step(self, step: int, start_s: float, end_s: float) -> None:
        self.step_span_s[step] = (start_s, end_s)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def summarize(rec: Recorder, steps: list[int], layers: int) -> dict:
    """Means over the given steps: busy seconds per resource per layer and per step, layer wall time,
    step wall time, bytes per resource per step."""
    busy: dict[tuple[int, int, str], float] = defaultdict(float)
    cpu: dict[tuple[int, int, str], float] = defaultdict(float)
    nbytes: dict[tuple[int, str], int] = defaultdict(int)
    for iv in rec.intervals:
        if iv.step in steps:
            busy[(iv.step, iv.layer, iv.resource)] += iv.end_s - iv.start_s
            cpu[(iv.step, iv.layer, iv.resource)] += iv.cpu_s
            nbytes[(iv.step, iv.resource)] += iv.nbytes
    per_layer = {r: _mean([busy[(s, i, r)] for s in steps for i in range(layers)]) for r in RESOURCES}
    outside = {r: _mean([busy[(s, -1, r)] for s in steps]) for r in RESOURCES}
    # CPU time of the compute thread: with one torch thread, the part of the compute busy time the
    # thread really ran (the rest it was descheduled, e.g. by other processes on a shared machine)
    compute_cpu = _mean([cpu[(s, i, "compute")] for s in steps for i in range(layers)])
    layer_wall = []
    for s in steps:
        prev = rec.step_span_s[s][0]
        for i in range(layers):
            end = rec.layer_end_s[(s, i)]
            layer_wall.append(end - prev)
            prev = end
    step_wall = [rec.step_span_s[s][1] - rec.step_span_s[s][0] for s in steps]
    layers_wall = [rec.layer_end_s[(s, layers - 1)] - rec.step_span_s[s][0] for s in steps]
    return {
        "per_layer_busy_s": per_layer,
        "outside_layers_busy_s": outside,
        "per_layer_wall_s": _mean(layer_wall),
        "per_layer_compute_thread_cpu_s": compute_cpu,
        "layers_wall_s": _mean(layers_wall),
        "step_wall_s": _mean(step_wall),
        "step_wall_min_s": min(step_wall) if step_wall else 0.0,
        "bytes_per_step": {r: _mean([nbytes[(s, r)] for s in steps]) for r in RESOURCES},
    }
