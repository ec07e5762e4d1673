"""`measure_profile`: run every probe of a mode on this machine, fit the cost models and return a
measured profile (the schema of planner/profile.py, kind "measured") as plain data."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from planner.costmodel import fitted
from planner.errors import KvplanError
from planner.models import DTYPE_BYTES
from planner.profile import PROFILE_SCHEMA_VERSION, PROFILES_DIR, profile_from_dict
from planner.profiling import compute, disk, links, shapes, system
from planner.profiling.compute import SampleSet
from planner.profiling.modes import Mode, get_mode
from planner.profiling.timing import cpu_clock

# progress(label, total) -> advance(n): how the CLI shows a bar per probe family
ProgressFactory = Callable[[str, int], Callable[[int], None]]

DEFAULT_DISK_DIR = Path(tempfile.gettempdir()) / "kvplan-kvcache"
OPTIONAL_FITS = ("link.disk_to_device",)
# samples kept for readers (and refits) but not fitted: the disk with nothing else running
NOT_FITTED = ("link.disk_read_idle", "link.disk_write_idle", "link.disk_read_rounds")
BUSY_ARENA_BYTES = 256 << 20  # the compute loop beside the disk probe streams this many bytes of weights


def default_output_path(device: system.DeviceInfo) -> Path:
    """profiles/local-<host>-<device>.json; <device> is "cpu" or the GPU's name as a slug."""
    dev = "cpu" if device.type == "cpu" else system.slug(device.name)
    return PROFILES_DIR / f"local-{system.slug(system.host_name())}-{dev}.json"


def _noop_progress(label: str, total: int) -> Callable[[int], None]:
    return lambda n: None


def _rate_tflops(samples: SampleSet) -> float:
    return max(2.0 * m * n * k / t for m, n, k, t in samples.rows) / 1e12


def _link_entry(samples: SampleSet) -> dict[str, float]:
    """The profile's summary of a link: the sustained rate of its largest transfers (median over the
    three largest sizes) and the fixed cost left over at the smallest one. The fitted model under
    "cost_models" is what CostModel uses; this entry is for readers without it."""
    rows = sorted(samples.rows)
    rate = float(np.median([b / t for b, t in rows[-3:]]))
    small_b, small_t = rows[0]
    latency = max(0.0, small_t - small_b / rate)
    return {"gb_per_s": round(rate / 1e9, 4), "latency_s": round(latency, 9)}


def _busy_work(arena_bytes: int) -> Callable[[], object]:
    """One round of a compute loop like a decode step's, run beside the disk probe so the disk is
    measured as the runtime meets it: decode attention over a cold 12 MB token-major K,V buffer
    (runtime.model.attention) and a skinny GEMM over cold weights. Measured here (docs/profiling.md):
    O_DIRECT reads of 12 MB ran at 2.9 GB/s alone, 2.5 GB/s beside this loop, 1.6 GB/s beside
    GEMMs only; the runtime achieved 2.4 GB/s."""
    import torch
    import torch.nn.functional as F

    from runtime import model as M

    arena = compute.ColdArena(arena_bytes, "float32", "cpu")
    x = arena.data[:16 * 2048].view(16, 2048).clone()
    arch = M.Arch(768, 12, 12, 64, True, False, 1e4, False, 1e-5)  # opt-125m's attention shape
    q = torch.randn(1, 12, 1, 64)

    def step() -> None:
        M.attention(arch, q, arena.take((2048, 1, 1536)).transpose(0, 1), causal=False)
        F.linear(x, arena.take((2048, 2048)))

    return step


def _fit(family: str, samples: SampleSet, dtype_bytes: int = 1) -> dict[str, Any]:
    if len(samples.rows) < 3:
        raise KvplanError(f"too few {family} samples to fit a model ({len(samples.rows)}); try a longer mode")
    return fitted.fit(family, samples.rows, dtype_bytes)


def measure_profile(
    mode: str | Mode = "quick",
    disk_dir: str | Path | None = None,
    force_cpu: bool = False,
    progress: ProgressFactory | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Probe this machine and return a validated measured profile (plain data, nothing written).
    `threads`: torch intra-op threads for the CPU probes (default: torch's choice, all cores)."""
    import torch

    if threads is not None and threads < 1:
        raise KvplanError(f"--threads must be at least 1, got {threads}")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _measure(mode, disk_dir, force_cpu, progress)
    finally:
        torch.set_num_threads(previous)


def _measure(mode: str | Mode, disk_dir: str | Path | None, force_cpu: bool,
             progress: ProgressFactory | None) -> dict[str, Any]:
    import torch

    m = get_mode(mode) if isinstance(mode, str) else mode
    progress = progress or _noop_progress
    if disk_dir is None:
        disk_path = DEFAULT_DISK_DIR
        try:
            disk_path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KvplanError(f"cannot create the default disk folder {disk_path}: {exc.strerror}") from exc
    else:
        disk_path = Path(disk_dir)
    disk_sizes = shapes.transfer_sizes(m, m.disk_max_bytes)
    disk_free = disk.check_disk_dir(disk_path, max(disk_sizes) + (16 << 20))

    device = system.detect_device(force_cpu=force_cpu)
    load_at_start = system.load_average()
    dev = device.type  # torch device string
    samples: dict[str, SampleSet] = {}
    reps = m.repeats
    llc_bytes = system.last_level_cache_bytes()
    cold_cap = min(m.cold_max_bytes, system.available_memory_bytes() // 8)
    cold_bytes = compute.arena_bytes(llc_bytes, 0, cold_cap)

    def bar(label: str, items: int) -> Callable[[int], None]:
        return progress(label, items * max(reps.passes, 1))

    # The disk beside a compute thread (the runtime's situation) in DISK_PASSES rounds spread over the
    # whole profile: one now, one after the GEMMs, the rest at the end. This virtual disk drifts
    # between regimes over tens of seconds (docs/profiling.md, "Disk statistic"); rounds a minute apart
    # sample more of them than back-to-back rounds would.
    disk_budget = m.budget_s["disk"]
    busy = _busy_work(min(BUSY_ARENA_BYTES, cold_cap)) if dev == "cpu" else None  # GPU: CPU is free
    disk_timed: dict[int, tuple[list[float], list[float]]] = {}
    rounds = disk.disk_passes(reps)
    round_budget = disk_budget * 7 / 12 / rounds

    # every write the runtime makes goes through its DiskFile (write-backs and prefill alike), which
    # copies into an aligned buffer first: 1-16 MiB went at 1.1-1.3 GB/s that way, 1.6-2.5 GB/s as
    # plain O_DIRECT writes (docs/profiling.md), so link.disk_write is timed through DiskFile at every
    # size, in the same spread rounds as the reads
    write_sizes = sorted(set(m.small_write_sizes) | set(disk_sizes))
    write_timed: dict[int, list[float]] = {}

    round_rows: list[list[float]] = []  # [bytes, round, median read time]: the disk's drift between rounds

    def disk_round(k: int, count: int = 1) -> tuple[SampleSet, SampleSet]:
        before = {size: len(times[1]) for size, times in disk_timed.items()}
        reads, _, _ = disk.disk_samples(disk_path, disk_sizes, reps, round_budget * count,
                                        progress(f"disk beside compute, round {k + 1}/{rounds} ({disk_path})",
                                                 count * len(disk_sizes)),
                                        busy=busy, passes=count, timed=disk_timed, first_round=k,
                                        writes=False)
        round_rows.extend(disk.round_medians(disk_timed, before, k))
        for j in range(k, k + count):
            writes = disk.writeback_samples(disk_path, write_sizes, reps, disk_budget / 4 / rounds, busy=busy,
                                            timed=write_timed, first_round=j)
        return reads, writes

    disk_round(0)

    # -- compute on the device ---------------------------------------------------------------
    gemm_shapes = shapes.gemm_shapes(m)
    recompute = shapes.recompute_shapes(m)
    for dtype in m.dtypes:
        budget = m.budget_s["gemm"] / len(m.dtypes)
        samples[f"gemm.device.{dtype}"] = compute.gemm_samples(
            gemm_shapes, dtype, dev, reps, budget, bar(f"GEMM {dtype} on {dev}", len(gemm_shapes)),
            cold_bytes=cold_bytes, recompute=recompute)
    disk_round(1)
    att_shapes = shapes.attention_shapes(m)
    for dtype in m.dtypes:
        budget = m.budget_s["attention"] / len(m.dtypes)
        samples[f"attention.device.{dtype}"] = compute.attention_samples(
            att_shapes, dtype, dev, reps, budget, bar(f"attention {dtype} on {dev}", len(att_shapes)),
            cold_bytes=cold_bytes)
    ew = shapes.elementwise_shapes(m)
    samples["elementwise.device"] = compute.elementwise_samples(
        ew, dev, reps, m.budget_s["elementwise"], bar(f"MLP activation on {dev}", len(ew)))

    # -- the CPU as a helper (only a separate processor when there is a GPU) -------------------
    if dev == "cuda":
        cpu_dtypes = m.dtypes[:2]
        for dtype in cpu_dtypes:
            budget = m.budget_s["cpu"] / (2 * len(cpu_dtypes))
            samples[f"gemm.cpu.{dtype}"] = compute.gemm_samples(
                gemm_shapes, dtype, "cpu", reps, budget, bar(f"GEMM {dtype} on cpu", len(gemm_shapes)),
                cold_bytes=cold_bytes)
            samples[f"attention.cpu.{dtype}"] = compute.attention_samples(
                att_shapes, dtype, "cpu", reps, budget, bar(f"attention {dtype} on cpu", len(att_shapes)),
                cold_bytes=cold_bytes)

    # -- links -------------------------------------------------------------------------------
    mem_sizes = shapes.transfer_sizes(m, m.link_max_bytes)
    samples["link.host_memcpy"] = links.host_memcpy_samples(
        mem_sizes, reps, m.budget_s["link"] / 3, bar("host memcpy", len(mem_sizes)))
    if dev == "cuda":
        for name, direction, pinned in (("h2d", "h2d", True), ("d2h", "d2h", True),
                                        ("h2d_pageable", "h2d", False), ("d2h_pageable", "d2h", False)):
            samples[f"link.{name}"] = links.cuda_copy_samples(
                direction, pinned, mem_sizes, reps, m.budget_s["link"] / 6, bar(name, len(mem_sizes)))
    # the disk alone (kept as samples), the last rounds beside compute (above), and small write-backs
    # appended through the runtime's DiskFile (disk.py docstring)
    idle_r, idle_w, method = disk.disk_samples(
        disk_path, disk_sizes, reps, disk_budget / 6, bar(f"disk alone ({disk_path})", len(disk_sizes)), passes=1)
    samples["link.disk_read_idle"], samples["link.disk_write_idle"] = idle_r, idle_w
    samples["link.disk_read"], samples["link.disk_write"] = disk_round(2, rounds - 2)  # rounds >= DISK_PASSES = 3
    samples["link.disk_read_rounds"] = SampleSet(["bytes", "round", "time_s"], round_rows, 0)
    if dev == "cuda":
        samples["link.disk_to_device"] = disk.disk_to_device_samples(disk_path, disk_sizes, reps,
                                                                     m.budget_s["disk"] / 3)

    # -- fits --------------------------------------------------------------------------------
    advance = progress("fitting cost models", len(samples))
    models: dict[str, dict[str, Any]] = {}
    for key, s in samples.items():
        family = key.split(".")[0]
        dtype_bytes = DTYPE_BYTES.get(key.split(".")[-1], 1)
        if key in NOT_FITTED or (key in OPTIONAL_FITS and len(s.rows) < 3):
            continue  # an extra the planner does not need; its samples stay in the profile
        models[key] = _fit(family, s, dtype_bytes)
        advance(1)

    return _assemble(m, device, disk_path, disk_free, method, samples, models, torch.__version__,
                     torch.get_num_threads(), load_at_start, llc_bytes, cold_bytes)


def _assemble(
    m: Mode, device: system.DeviceInfo, disk_path: Path, disk_free: int, disk_method: str,
    samples: dict[str, SampleSet], models: dict[str, dict[str, Any]], torch_version: str, threads: int,
    load_at_start: float | None = None, llc_bytes: int | None = None, cold_bytes: int | None = None,
) -> dict[str, Any]:
    cpu_only = device.type == "cpu"
    peak = {d: round(_rate_tflops(samples[f"gemm.device.{d}"]), 6) for d in m.dtypes}
    if cpu_only:
        host_peak = dict(peak)
    else:
        host_peak = {d: round(_rate_tflops(samples[f"gemm.cpu.{d}"]), 6)
                     for d in m.dtypes[:2] if f"gemm.cpu.{d}" in samples}
    link_entries = {name: _link_entry(samples[f"link.{name}"]) for name in ("host_memcpy", "disk_read", "disk_write")}
    host_mem_gb_per_s = round(2 * link_entries["host_memcpy"]["gb_per_s"], 4)  # memcpy reads + writes
    if cpu_only:
        # the host is the device: "h2d"/"d2h" are host memcpys (planner/profile.py)
        for name in ("h2d", "d2h"):
            link_entries[name] = dict(link_entries["host_memcpy"])
            models[f"link.{name}"] = dict(models["link.host_memcpy"])
        device_mem_gb_per_s = host_mem_gb_per_s
    else:
        for name in ("h2d", "d2h", "h2d_pageable", "d2h_pageable"):
            link_entries[name] = _link_entry(samples[f"link.{name}"])
        device_mem_gb_per_s = round(links.cuda_device_copy_gb_per_s(256 << 20, m.repeats), 4)
    host_name = system.host_name()
    dev_label = "cpu" if cpu_only else system.slug(device.name)
    host_memory = system.available_memory_bytes()
    data: dict[str, Any] = {
        "schema_version": PROFILE_SCHEMA_VERSION,
        "kind": "measured",
        "name": f"local-{system.slug(host_name)}-{dev_label}",
        "description": f"measured on {host_name} by 'kvplan profile' ({m.name} mode)",
        "device": {
            "type": device.type,
            "name": device.name,
            "memory_bytes": host_memory if cpu_only else device.memory_bytes,
            "memory_gb_per_s": device_mem_gb_per_s,
            "peak_tflops": peak,
        },
        "host": {
            "cores": system.cpu_cores(),
            "name": system.cpu_name(),
            "memory_bytes": host_memory,
            "memory_gb_per_s": host_mem_gb_per_s,
            "peak_tflops": host_peak or {"float32": peak.get("float32", 0.1)},
            "shared_with_device": cpu_only,
        },
        "disk": {"free_bytes": int(disk_free), "path": str(disk_path.resolve()), "method": disk_method},
        "links": link_entries,
        "cost_models": models,
        "samples": {k: s.to_dict() for k, s in samples.items()},
        "measurement": {
            "mode": m.name,
            "torch_version": torch_version,
            "torch_threads": threads,
            "load_average_at_start": load_at_start,
            "cpu_clock": cpu_clock(),
            "last_level_cache_bytes": llc_bytes,
            "cold_arena_bytes": cold_bytes,
            "disk_note": "link.disk_read/disk_write measured beside a compute thread (the runtime's situation); "
                         "link.disk_write: every size written through runtime.tiers.DiskFile, as the runtime "
                         "writes; *_idle samples: the disk alone",
            "disk_method": disk_method,
            "peak_tflops_note": "best achieved rate over the probed GEMM shapes, not a datasheet peak",
            "memory_gb_per_s_note": "2 x the sustained copy rate (a copy reads and writes every byte)",
        },
    }
    rounds = samples.get("link.disk_read_rounds")
    spread = disk.time_spread(rounds.rows) if rounds is not None else None
    if spread is not None:
        data["disk"]["read_time_spread"] = spread
    if device.type == "cuda":
        data["pcie"] = {"generation": device.pcie_generation, "width": device.pcie_width}
        data["device"]["compute_capability"] = device.compute_capability
    profile_from_dict(data, origin="measured")  # never hand out a profile the planner would refuse
    return data
