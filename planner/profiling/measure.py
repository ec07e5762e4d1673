"""`measure_profile`: run every probe of a mode on this machine, fit the cost models and return a
measured profile (the schema of planner/profile.py, kind "measured") as plain data.

A profile has three parts (docs/profiling.md, "Parts"): the device, the host (CPU, DRAM) and the
storage (the JSON `disk` section and the disk links). `parts` chooses what to measure: every part
(the default), or only the host and the storage, which never touches a GPU (the CPU stands as the
device); each measured section says so with `"provenance": "measured"`."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from planner.costmodel import fitted
from planner.disk_classes import KV_READ, WEIGHTS_READ
from planner.errors import KvplanError
from planner.models import DTYPE_BYTES
from planner.profile import PROFILE_SCHEMA_VERSION, PROFILES_DIR, profile_from_dict
from planner.profiling import compute, disk, links, shapes, system
from planner.profiling.compute import SampleSet
from planner.profiling.kernels import Kernels
from planner.profiling.modes import Mode, get_mode
from planner.profiling.timing import CLOCK, cpu_clock

# progress(label, total) -> advance(n): how the CLI shows a bar per probe family
ProgressFactory = Callable[[str, int], Callable[[int], None]]

DEFAULT_DISK_DIR = Path(tempfile.gettempdir()) / "kvplan-kvcache"
# fitted when probed at 3 sizes or more; without one the pricer falls back (planner/disk_classes.py): the
# smoke mode's disk cap leaves one weight record
OPTIONAL_FITS = ("link.disk_to_device", WEIGHTS_READ.model_key)
# samples kept for readers (and refits) but not fitted: the disk with nothing else running
BESIDE_DISK_SAMPLES = "compute.beside_disk_read"
NOT_FITTED = ("link.disk_read_idle", "link.disk_write_idle", "link.disk_read_rounds", BESIDE_DISK_SAMPLES)
BUSY_ARENA_BYTES = 256 << 20  # the compute loop beside the disk probe streams this many bytes of weights
BUSY_ALONE_CALLS = 9  # calls of the busy loop timed alone before each disk round (about 0.1-0.3 s on a CPU)
PARTS = ("device", "host", "storage")
HOST_PARTS = ("host", "storage")  # what `--parts host,storage` measures: no GPU probed
HOST_STREAM_MIN_BYTES = 64 << 20
# host.attention_gb_per_s: K,V bytes per second of the samples whose context is at least this share
# of the largest probed context ("at large contexts", where the fixed cost per call no longer counts)
LARGE_CONTEXT_SHARE = 0.5
MEASURED = "measured"


def parse_parts(text: str) -> tuple[str, ...]:
    """`--parts`: a comma list naming every part (device,host,storage, the default) or the host and
    the storage only (host,storage); any order. Other sets are refused with one line."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        raise KvplanError(f"--parts: unknown part {unknown[0]!r} (parts: {', '.join(PARTS)})")
    chosen = set(names)
    if chosen == set(PARTS):
        return PARTS
    if chosen == set(HOST_PARTS):
        return HOST_PARTS
    raise KvplanError(f"--parts {text!r}: measure either device,host,storage or host,storage "
                      "(the host and the drive are probed in every profile; the device alone is not offered)")


def default_output_path(device: system.DeviceInfo) -> Path:
    """profiles/local-<host>-<device>.json; <device> is "cpu" or the GPU's name as a slug."""
    dev = "cpu" if device.type == "cpu" else system.slug(device.name)
    return PROFILES_DIR / f"local-{system.slug(system.host_name())}-{dev}.json"


def _noop_progress(label: str, total: int) -> Callable[[int], None]:
    return lambda n: None


def _rate_tflops(samples: SampleSet) -> float:
    return max(2.0 * m * n * k / t for m, n, k, t in samples.rows) / 1e12


def attention_gb_per_s(samples: SampleSet, dtype: str) -> float:
    """GB/s of K,V bytes the decode-attention kernel read per second at large contexts: the median of
    batch * context * 2 * kv_heads * head_dim * dtype bytes / time over the samples whose context is
    at least LARGE_CONTEXT_SHARE of the largest probed one (host.attention_gb_per_s)."""
    rows = samples.rows
    if not rows:
        raise KvplanError(f"no attention samples for {dtype} to rate")
    longest = max(r[1] for r in rows)
    elem = DTYPE_BYTES[dtype]
    rates = [b * s * 2 * kvh * hd * elem / t for b, s, _, kvh, hd, t in rows if s >= LARGE_CONTEXT_SHARE * longest]
    return round(statistics.median(rates) / 1e9, 4)


def _link_entry(samples: SampleSet) -> dict[str, float]:
    """The profile's summary of a link: the sustained rate of its largest transfers (median over the
    three largest sizes) and the fixed cost left over at the smallest one. The fitted model under
    "cost_models" is what CostModel uses; this entry is for readers without it."""
    rows = sorted(samples.rows)
    rate = float(np.median([b / t for b, t in rows[-3:]]))
    small_b, small_t = rows[0]
    latency = max(0.0, small_t - small_b / rate)
    return {"gb_per_s": round(rate / 1e9, 4), "latency_s": round(latency, 9)}


def _busy_work(arena_bytes: int, kernels: Kernels) -> Callable[[], object]:
    """One round of a compute loop like a decode step's, run beside the disk probe so the disk is
    measured as the runtime meets it: the runtime's decode attention over a cold 12 MB token-major K,V
    buffer and a skinny GEMM over cold weights. Measured here (docs/profiling.md): O_DIRECT reads of
    12 MB ran at 2.9 GB/s alone, 2.5 GB/s beside this loop, 1.6 GB/s beside GEMMs only; the runtime
    achieved 2.4 GB/s."""
    import torch
    import torch.nn.functional as F

    arena = compute.ColdArena(arena_bytes, "float32", "cpu")
    x = arena.data[:16 * 2048].view(16, 2048).clone()
    q = torch.randn(1, 12, 1, 64)  # opt-125m's attention shape: 12 heads of 64

    def step() -> None:
        kernels.decode_attention(q, arena.take((2048, 1, 1536)).transpose(0, 1), 12)
        F.linear(x, arena.take((2048, 2048)))

    return step


@dataclass
class _TimedWork:
    """The busy compute loop with each call timed: beside the disk reads (disk.busy_thread runs it),
    its times over the same loop alone are the compute's slowdown while the disk worker reads
    (the runtime's situation on a CPU-only machine: planner/stepcost.py, `Pricer.while_reading`)."""

    work: Callable[[], object]
    times_s: list[float] = field(default_factory=list)

    def __call__(self) -> None:
        t0 = time.perf_counter()
        self.work()
        self.times_s.append(time.perf_counter() - t0)


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
    *,
    kernels: Kernels,
    parts: tuple[str, ...] = PARTS,
) -> dict[str, Any]:
    """Probe this machine and return a validated measured profile (plain data, nothing written).
    `kernels`: the runtime's kernels the compute probes time (planner/profiling/kernels.py; the CLI
    passes planner.cli.profile_cmd.runtime_kernels()). `threads`: torch intra-op threads for the CPU
    probes (default: torch's choice, all cores). `parts`: PARTS, or HOST_PARTS to leave the GPU alone."""
    import torch

    if threads is not None and threads < 1:
        raise KvplanError(f"--threads must be at least 1, got {threads}")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        m = get_mode(mode) if isinstance(mode, str) else mode
        return _Session.start(m, kernels, disk_dir, force_cpu or tuple(parts) == HOST_PARTS,
                              progress or _noop_progress, tuple(parts)).run()
    finally:
        torch.set_num_threads(previous)


def prepare_disk_dir(disk_dir: str | Path | None, need_bytes: int) -> tuple[Path, int]:
    """The disk folder (default DEFAULT_DISK_DIR, created) checked for room, its stale probe files
    of killed runs removed first (disk.remove_stale_probe_files); (path, free bytes)."""
    if disk_dir is None:
        path = DEFAULT_DISK_DIR
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KvplanError(f"cannot create the default disk folder {path}: {exc.strerror}") from exc
    else:
        path = Path(disk_dir)
    if path.is_dir():
        disk.remove_stale_probe_files(path)
    return path, disk.check_disk_dir(path, need_bytes)


@dataclass
class _Session:
    """One profile run: the mode, the machine, where the disk is, and the samples gathered so far."""

    m: Mode
    kernels: Kernels
    parts: tuple[str, ...]
    device: system.DeviceInfo
    disk_path: Path
    disk_free: int
    progress: ProgressFactory
    llc_bytes: int
    cold_bytes: int  # the device probes' cold arena (over the device's cache)
    cpu_cold_bytes: int  # the CPU probes' cold arena (over the CPU's last-level cache)
    load_at_start: float | None
    samples: dict[str, SampleSet] = field(default_factory=dict)
    disk_timed: dict = field(default_factory=dict)
    write_timed: dict = field(default_factory=dict)
    round_rows: list = field(default_factory=list)  # [bytes, round, median read time]: the disk's drift
    # [round, busy loop alone (s), beside the disk reads (s)]: the compute's slowdown while the disk reads
    beside_rows: list = field(default_factory=list)
    busy: Callable[[], object] | None = None
    disk_method: str = "o_direct"  # set by the disk probes: "o_direct" or "fadvise_dontneed"

    @classmethod
    def start(cls, m: Mode, kernels: Kernels, disk_dir: str | Path | None, force_cpu: bool,
              progress: ProgressFactory, parts: tuple[str, ...]) -> _Session:
        disk_path, disk_free = prepare_disk_dir(disk_dir, max(shapes.disk_sizes(m).reads) + (16 << 20))
        device = system.detect_device(force_cpu=force_cpu)
        llc = system.last_level_cache_bytes()
        host_cap = min(m.cold_max_bytes, system.available_memory_bytes() // 8)
        cpu_cold = compute.arena_bytes(llc, 0, host_cap)
        cold = cpu_cold
        if device.type == "cuda":  # a GPU's operands are cold once they overflow its L2, not the CPU's cache
            cold = compute.arena_bytes(system.cold_cache_bytes(device, llc), 0,
                                       min(m.cold_max_bytes, device.memory_bytes // 8))
        run = cls(m, kernels, parts, device, disk_path, disk_free, progress, llc, cold, cpu_cold,
                  system.load_average())
        if device.type == "cpu":  # on a GPU machine the CPU is free while the disk worker reads
            run.busy = _busy_work(min(BUSY_ARENA_BYTES, cpu_cold), kernels)
        return run

    def bar(self, label: str, items: int) -> Callable[[int], None]:
        return self.progress(label, items * max(self.m.repeats.passes, 1))

    def run(self) -> dict[str, Any]:
        """Every probe, then the fits. The disk beside a compute thread (the runtime's situation) is
        timed in DISK_PASSES rounds spread over the whole profile: one now, one after the GEMMs, the
        rest at the end. This virtual disk drifts between regimes over tens of seconds
        (docs/profiling.md, "Disk statistic"); rounds a minute apart sample more of them than
        back-to-back rounds would."""
        self.disk_round(0)
        self.device_gemms()
        self.disk_round(1)
        self.device_attention()
        if self.device.type == "cuda":
            self.cpu_helper()
        host_bw = self.host_links()
        self.disk_final()
        models = self.fit_all()
        import torch

        device_gb_per_s = None
        if self.device.type == "cuda":
            device_gb_per_s = round(links.cuda_device_copy_gb_per_s(256 << 20, self.m.repeats), 4)
        return assemble(Measured(
            mode=self.m, device=self.device, disk_path=self.disk_path, disk_free=self.disk_free,
            disk_method=self.disk_method, samples=self.samples, models=models, torch_version=torch.__version__,
            threads=torch.get_num_threads(), host_bandwidth=host_bw, device_memory_gb_per_s=device_gb_per_s,
            load_at_start=self.load_at_start, llc_bytes=self.llc_bytes, cold_bytes=self.cold_bytes,
            cpu_cold_bytes=self.cpu_cold_bytes, parts=self.parts, kernels=self.kernels.source))

    # -- the disk ----------------------------------------------------------------------------
    def disk_round(self, k: int, count: int = 1) -> tuple[SampleSet, SampleSet]:
        m, reps = self.m, self.m.repeats
        rounds = disk.disk_passes(reps)
        sizes = shapes.disk_sizes(m)
        round_budget = m.budget_s["disk"] * 7 / 12 / rounds
        before = {size: len(times[1]) for size, times in self.disk_timed.items()}
        label = f"disk beside compute, round {k + 1}/{rounds} ({self.disk_path})"
        alone = busy = None
        if self.busy is not None:
            alone, busy = _TimedWork(self.busy), _TimedWork(self.busy)
            for _ in range(BUSY_ALONE_CALLS):  # the loop alone, right before the round times it beside the reads
                alone()
        # both read classes in the same rounds (the same disk, the same moment); each class keeps its
        # own floor, so a loaded machine still gives each class enough sizes to fit
        floor = disk.floor_sizes(sizes.kv_read) | (disk.floor_sizes(sizes.weights_read) if sizes.weights_read
                                                   else set())
        reads, _, _ = disk.disk_samples(self.disk_path, sizes.reads, reps, round_budget * count,
                                        self.progress(label, count * len(sizes.reads)), busy=busy,
                                        passes=count, timed=self.disk_timed, first_round=k, writes=False, floor=floor)
        self.round_rows.extend(disk.round_medians(self.disk_timed, before, k))
        if busy is not None and busy.times_s:
            self.beside_rows.append([k, statistics.median(alone.times_s), statistics.median(busy.times_s)])
        # every write the runtime makes goes through its DiskFile (write-backs and prefill alike), which
        # copies into an aligned buffer first: 1-16 MiB went at 1.1-1.3 GB/s that way, 1.6-2.5 GB/s as
        # plain O_DIRECT writes (docs/profiling.md), so link.disk_write is timed through DiskFile at the
        # runtime's own write sizes (shapes.disk_sizes), in the same spread rounds as the reads
        for j in range(k, k + count):
            writes = disk.writeback_samples(self.disk_path, sizes.write, reps, m.budget_s["disk"] / 4 / rounds,
                                            busy=self.busy, timed=self.write_timed, first_round=j)
        return reads, writes

    def disk_final(self) -> None:
        """The disk alone (kept as samples), the last rounds beside compute, and on CUDA the runtime's
        disk -> device path."""
        m, reps = self.m, self.m.repeats
        sizes = shapes.disk_sizes(m)
        idle_r, idle_w, self.disk_method = disk.disk_samples(
            self.disk_path, sizes.reads, reps, m.budget_s["disk"] / 6,
            self.bar(f"disk alone ({self.disk_path})", len(sizes.reads)), passes=1)
        self.samples["link.disk_read_idle"], self.samples["link.disk_write_idle"] = idle_r, idle_w
        rounds = disk.disk_passes(reps)
        reads, self.samples["link.disk_write"] = self.disk_round(2, rounds - 2)
        # each read class is fitted on its own sizes only (planner/disk_classes.py)
        self.samples.update(disk.split_by_class(reads, sizes, (KV_READ, WEIGHTS_READ)))
        self.samples["link.disk_read_rounds"] = SampleSet(["bytes", "round", "time_s"], self.round_rows, 0)
        if self.beside_rows:
            self.samples[BESIDE_DISK_SAMPLES] = SampleSet(["round", "alone_s", "beside_s"], self.beside_rows, 0)
        if self.device.type == "cuda" and self.kernels.staging_pool is not None:
            import torch

            self.samples["link.disk_to_device"] = disk.disk_to_device_samples(
                self.disk_path, sizes.reads, reps, m.budget_s["disk"] / 3, self.kernels.staging_pool,
                torch.cuda.synchronize)

    # -- compute -----------------------------------------------------------------------------
    def device_gemms(self) -> None:
        m, dev = self.m, self.device.type
        gemm_shapes, recompute = shapes.gemm_shapes(m), shapes.recompute_shapes(m)
        for dtype in m.dtypes:
            self.samples[f"gemm.device.{dtype}"] = compute.gemm_samples(
                gemm_shapes, dtype, dev, m.repeats, m.budget_s["gemm"] / len(m.dtypes),
                self.bar(f"GEMM {dtype} on {dev}", len(gemm_shapes)), cold_bytes=self.cold_bytes,
                recompute=recompute, kernels=self.kernels)

    def device_attention(self) -> None:
        m, dev = self.m, self.device.type
        att_shapes = shapes.attention_shapes(m)
        for dtype in m.dtypes:
            self.samples[f"attention.device.{dtype}"] = compute.attention_samples(
                att_shapes, dtype, dev, m.repeats, m.budget_s["attention"] / len(m.dtypes), self.kernels,
                self.bar(f"attention {dtype} on {dev}", len(att_shapes)), cold_bytes=self.cold_bytes)
        ew = shapes.elementwise_shapes(m)
        self.samples["elementwise.device"] = compute.elementwise_samples(
            ew, dev, m.repeats, m.budget_s["elementwise"], self.bar(f"MLP activation on {dev}", len(ew)))

    def cpu_helper(self) -> None:
        """The CPU beside a GPU: its GEMMs and its decode attention (the runtime's CPU kernel)."""
        m = self.m
        gemm_shapes, att_shapes = shapes.gemm_shapes(m), shapes.attention_shapes(m)
        cpu_dtypes = m.dtypes[:2]
        for dtype in cpu_dtypes:
            budget = m.budget_s["cpu"] / (2 * len(cpu_dtypes))
            self.samples[f"gemm.cpu.{dtype}"] = compute.gemm_samples(
                gemm_shapes, dtype, "cpu", m.repeats, budget, self.bar(f"GEMM {dtype} on cpu", len(gemm_shapes)),
                cold_bytes=self.cpu_cold_bytes)
            self.samples[f"attention.cpu.{dtype}"] = compute.attention_samples(
                att_shapes, dtype, "cpu", m.repeats, budget, self.kernels,
                self.bar(f"attention {dtype} on cpu", len(att_shapes)), cold_bytes=self.cpu_cold_bytes)

    # -- memory links ------------------------------------------------------------------------
    def host_links(self) -> links.HostBandwidth:
        m = self.m
        stream_bytes = min(max(4 * self.llc_bytes, HOST_STREAM_MIN_BYTES), m.host_stream_max_bytes,
                           system.available_memory_bytes() // 8)
        advance = self.progress(f"host DRAM bandwidth ({stream_bytes >> 20} MiB copies)", 1)
        host_bw = links.host_bandwidth(stream_bytes, m.host_stream_rounds)
        advance(1)
        mem_sizes = shapes.transfer_sizes(m, m.link_max_bytes)
        self.samples["link.host_memcpy"] = links.host_memcpy_samples(
            mem_sizes, m.repeats, m.budget_s["link"] / 3, self.bar("host memcpy", len(mem_sizes)))
        if self.device.type == "cuda":
            for name, direction, pinned in (("h2d", "h2d", True), ("d2h", "d2h", True),
                                            ("h2d_pageable", "h2d", False), ("d2h_pageable", "d2h", False)):
                self.samples[f"link.{name}"] = links.cuda_copy_samples(
                    direction, pinned, mem_sizes, m.repeats, m.budget_s["link"] / 6, self.bar(name, len(mem_sizes)))
        return host_bw

    def fit_all(self) -> dict[str, dict[str, Any]]:
        advance = self.progress("fitting cost models", len(self.samples))
        models: dict[str, dict[str, Any]] = {}
        for key, s in self.samples.items():
            family = key.split(".")[0]
            dtype_bytes = DTYPE_BYTES.get(key.split(".")[-1], 1)
            if key in NOT_FITTED or (key in OPTIONAL_FITS and len(s.rows) < 3):
                continue  # an extra the planner does not need; its samples stay in the profile
            models[key] = _fit(family, s, dtype_bytes)
            advance(1)
        return models


@dataclass
class Measured:
    """Everything a profile is assembled from (`assemble`)."""

    mode: Mode
    device: system.DeviceInfo
    disk_path: Path
    disk_free: int
    disk_method: str
    samples: dict[str, SampleSet]
    models: dict[str, dict[str, Any]]
    torch_version: str
    threads: int
    host_bandwidth: links.HostBandwidth
    device_memory_gb_per_s: float | None = None  # CUDA: the device-to-device copy; None on the CPU
    load_at_start: float | None = None
    llc_bytes: int | None = None
    cold_bytes: int | None = None
    cpu_cold_bytes: int | None = None
    parts: tuple[str, ...] = PARTS
    kernels: str = "runtime"


def _host_section(r: Measured, device_peak: dict[str, float]) -> dict[str, Any]:
    """The host part: the CPU's GEMM and decode-attention rates and the DRAM bandwidth; on a CPU-only
    profile the CPU is the device, so its rates are the device probes'."""
    cpu_only = r.device.type == "cpu"
    proc = "device" if cpu_only else "cpu"
    dtypes = [d for d in r.mode.dtypes if f"gemm.{proc}.{d}" in r.samples]
    peak = dict(device_peak) if cpu_only else {d: round(_rate_tflops(r.samples[f"gemm.cpu.{d}"]), 6) for d in dtypes}
    attention = {d: attention_gb_per_s(r.samples[f"attention.{proc}.{d}"], d)
                 for d in r.mode.dtypes if f"attention.{proc}.{d}" in r.samples}
    return {
        "provenance": MEASURED,
        "cores": system.cpu_cores(),
        "name": system.cpu_name(),
        "memory_bytes": system.available_memory_bytes(),
        "memory_gb_per_s": r.host_bandwidth.gb_per_s,
        "peak_tflops": peak,  # never the GPU's: on a GPU machine the CPU helper's GEMMs are always probed
        "attention_gb_per_s": attention,
        "shared_with_device": cpu_only,
    }


def _links(r: Measured) -> dict[str, dict[str, float]]:
    """The links' summaries; on a CPU-only profile "h2d"/"d2h" are host memcpys (planner/profile.py),
    their models the memcpy's."""
    entries = {name: _link_entry(r.samples[f"link.{name}"]) for name in ("host_memcpy", "disk_read", "disk_write")}
    if r.device.type == "cpu":
        for name in ("h2d", "d2h"):
            entries[name] = dict(entries["host_memcpy"])
            r.models[f"link.{name}"] = dict(r.models["link.host_memcpy"])
    else:
        for name in ("h2d", "d2h", "h2d_pageable", "d2h_pageable"):
            entries[name] = _link_entry(r.samples[f"link.{name}"])
    return entries


def assemble(r: Measured) -> dict[str, Any]:
    """The measured profile (plain data), validated by planner/profile.py before it is handed out."""
    cpu_only = r.device.type == "cpu"
    peak = {d: round(_rate_tflops(r.samples[f"gemm.device.{d}"]), 6) for d in r.mode.dtypes}
    host = _host_section(r, peak)
    link_entries = _links(r)
    host_name = system.host_name()
    dev_label = "cpu" if cpu_only else system.slug(r.device.name)
    data: dict[str, Any] = {
        "schema_version": PROFILE_SCHEMA_VERSION,
        "kind": "measured",
        "name": f"local-{system.slug(host_name)}-{dev_label}",
        "description": f"measured on {host_name} by 'kvplan profile' ({r.mode.name} mode, parts {','.join(r.parts)})",
        "device": {
            "provenance": MEASURED,
            "type": r.device.type,
            "name": r.device.name,
            "memory_bytes": host["memory_bytes"] if cpu_only else r.device.memory_bytes,
            "memory_gb_per_s": host["memory_gb_per_s"] if cpu_only else r.device_memory_gb_per_s,
            "peak_tflops": peak,
        },
        "host": host,
        "disk": {"provenance": MEASURED, "free_bytes": int(r.disk_free), "path": str(r.disk_path.resolve()),
                 "method": r.disk_method},
        "links": link_entries,
        "cost_models": r.models,
        "samples": {k: s.to_dict() for k, s in r.samples.items()},
        "measurement": _measurement(r),
    }
    rounds = r.samples.get("link.disk_read_rounds")
    spread = disk.time_spread(rounds.rows) if rounds is not None else None
    if spread is not None:
        data["disk"]["read_time_spread"] = spread
    beside = r.samples.get(BESIDE_DISK_SAMPLES)
    if beside is not None and beside.rows:
        data["disk"]["compute_slowdown_while_reading"] = round(
            statistics.median(b / a for _, a, b in beside.rows), 4)
    if r.device.type == "cuda":
        data["pcie"] = {"generation": r.device.pcie_generation, "width": r.device.pcie_width}
        data["device"]["compute_capability"] = r.device.compute_capability
        data["device"]["l2_cache_bytes"] = r.device.cache_bytes
    profile_from_dict(data, origin="measured")  # never hand out a profile the planner would refuse
    return data


def _measurement(r: Measured) -> dict[str, Any]:
    from datetime import datetime, timezone

    return {
        # when the probes finished (UTC): `kvplan execute`'s machine check prints the profile's age
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": r.mode.name,
        "parts": list(r.parts),
        "kernels": r.kernels,
        "torch_version": r.torch_version,
        "torch_threads": r.threads,
        "load_average_at_start": r.load_at_start,
        "clock": CLOCK,
        "cpu_clock": cpu_clock(),
        "clock_note": "every probe times with the wall clock from the call to its completion (on a GPU "
                      "after torch.cuda.synchronize), as the runtime times its busy intervals",
        "last_level_cache_bytes": r.llc_bytes,
        "cold_arena_bytes": r.cold_bytes,
        "cpu_cold_arena_bytes": r.cpu_cold_bytes,
        "host_memory_probe": r.host_bandwidth.to_dict(),
        "disk_note": "link.disk_read/disk_read_weights/disk_write measured beside a compute thread (the "
                     "runtime's situation); link.disk_read: K,V and X piece sizes only, "
                     "link.disk_read_weights: one layer's weights (timed in the same rounds); "
                     "link.disk_write: the runtime's write-back and prefill sizes through its DiskFile; "
                     "*_idle samples: the disk alone, every read size",
        "disk_method": r.disk_method,
        "peak_tflops_note": "best achieved rate over the probed GEMM shapes, not a datasheet peak",
        "memory_gb_per_s_note": "host: a copy of several times the last-level cache, 2 x bytes per copy "
                                "(read + write), median of host_memory_probe.rounds_s",
        "attention_gb_per_s_note": "K,V bytes per second of the runtime's CPU decode attention, median over "
                                   f"the samples with context >= {LARGE_CONTEXT_SHARE} x the largest probed",
    }
