"""Does this machine's profile predict this machine? Re-measure GEMM, CPU decode-attention and
disk-transfer times and the host's DRAM bandwidth in a separate process, at shapes and sizes the
profile did not probe (other catalog models, other token counts and contexts, other transfer sizes),
and compare with the profile's predictions (planner.costmodel) and its host part (the attention time
at host.attention_gb_per_s, host.memory_gb_per_s).

    python benchmarks/validate_local_profile.py [--profile FILE] [--disk-dir DIR] [--repeats N] [--json OUT]

Target (issue 3): median error <= 10% for GEMM and for disk transfers. The re-measurement uses the
same timing method as the probes (planner/profiling/timing.py) so the comparison is like for like.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from planner.costmodel import CostModel
from planner.jsonio import write_json_atomic
from planner.layer_costs import Gemm, layer_gemm_shapes, recompute_gemm
from planner.models import CATALOG, DTYPE_BYTES
from planner.profile import find_local_profile, load_profile
from planner.profiling.modes import get_mode

TOKENS = (10, 20, 40, 160)  # row counts no model probes in the smoke and quick modes (shapes._gemm_rows)
EXTRA_MODELS = ("opt-6.7b", "mistral-7b", "qwen2.5-7b", "llama-2-13b", "opt-1.3b", "tinyllama-1.1b")
DISK_SIZES = tuple(3 << k for k in range(14, 27, 2))  # 48 KiB .. 192 MiB, never a power of two
# decode attention at long contexts no mode probes exactly, for models with other head layouts
ATTENTION_MODELS = ("mistral-7b", "qwen2.5-7b", "opt-6.7b")
ATTENTION_CONTEXTS = (1500, 3000, 6000)
ATTENTION_BATCHES = (2, 8)


def attention_shapes(mode_name: str) -> list[list]:
    """[model, batch, context] of the re-measured decode attention, K,V capped like the mode's."""
    cap = get_mode(mode_name).attention_max_kv_bytes
    return [[name, b, s] for name in ATTENTION_MODELS for s in ATTENTION_CONTEXTS for b in ATTENTION_BATCHES
            if 2 * b * s * CATALOG[name].kv_dim * 4 <= cap]


def plan_shapes(mode_name: str) -> list[tuple[int, int, int]]:
    mode = get_mode(mode_name)
    shapes = set()
    for name in EXTRA_MODELS:
        model = CATALOG[name]
        for tokens in TOKENS:
            for g in [*layer_gemm_shapes(model, tokens), recompute_gemm(model, tokens)]:
                if g.n * g.k * 4 <= mode.gemm_max_weight_bytes:
                    shapes.add((g.m, g.n, g.k))
    return sorted(shapes)


def child(spec_path: Path, out_path: Path) -> None:
    """Runs in the fresh process: measure and write the raw samples."""
    import torch

    from planner.cli.profile_cmd import runtime_kernels
    from planner.profiling import compute, disk, links, measure

    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec["threads"])  # the thread count the profile was measured with
    mode = get_mode(spec["mode"])
    out = {"gemm": {}}
    for dtype in spec["dtypes"]:
        # cold weights from an arena as large as the profile's, as the probes and the runtime see them
        s = compute.gemm_samples([tuple(x) for x in spec["shapes"]], dtype, "cpu", mode.repeats, 1e9,
                                 cold_bytes=spec["cold_bytes"])
        out["gemm"][dtype] = s.rows
    # the runtime's CPU decode attention at unprobed shapes, and the DRAM copy at the profile's size
    kernels = runtime_kernels()
    out["attention"] = {}
    for dtype in spec["dtypes"]:
        rows = []
        for name, b, ctx in spec["attention"]:
            m = CATALOG[name]
            s = compute.attention_samples([(b, ctx, m.num_heads, m.num_kv_heads, m.head_dim)], dtype, "cpu",
                                          mode.repeats, 1e9, kernels, cold_bytes=spec["cold_bytes"])
            rows.append([name, b, ctx, s.rows[0][-1]])
        out["attention"][dtype] = rows
    if spec["host_memory_bytes"]:
        out["host_gb_per_s"] = links.host_bandwidth(spec["host_memory_bytes"], spec["host_memory_rounds"]).gb_per_s
    # the disk as the profile's link.disk_read / disk_write were measured: beside the same compute loop,
    # the same rounds and statistic (planner/profiling/disk.py), at sizes the profile did not probe
    busy = measure._busy_work(min(measure.BUSY_ARENA_BYTES, spec["cold_bytes"] or measure.BUSY_ARENA_BYTES),
                              runtime_kernels())
    reads, _, method = disk.disk_samples(Path(spec["disk_dir"]), spec["disk_sizes"], mode.repeats, 1e9,
                                         busy=busy, writes=False)
    # writes through the runtime's DiskFile at every size, as link.disk_write was measured
    write_timed: dict[int, list[float]] = {}
    for k in range(disk.disk_passes(mode.repeats)):  # the profile's rounds
        writes = disk.writeback_samples(Path(spec["disk_dir"]), spec["disk_sizes"], mode.repeats, 1e9, busy=busy,
                                        timed=write_timed, first_round=k)
    out.update({"disk_read": reads.rows, "disk_write": writes.rows, "disk_method": method})
    out_path.write_text(json.dumps(out))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", type=Path, default=None)
    ap.add_argument("--disk-dir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=1,
                    help="re-measure this many times, each in a fresh process; each shape keeps its median time")
    ap.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    path = args.profile or find_local_profile()
    if path is None:
        print("no local profile: run 'kvplan profile' first or pass --profile", file=sys.stderr)
        return 2
    profile = load_profile(path)
    if profile.device_type != "cpu":
        print("this benchmark re-measures on the CPU; the profile is for a GPU", file=sys.stderr)
        return 2
    mode = profile.data.get("measurement", {}).get("mode", "quick")
    dtypes = sorted(k.split(".")[-1] for k in profile.data.get("cost_models", {}) if k.startswith("gemm.device."))
    disk_dir = args.disk_dir or Path(profile.data["disk"]["path"])
    shapes = plan_shapes(mode)
    with tempfile.TemporaryDirectory() as tmp:
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        threads = int(profile.data.get("measurement", {}).get("torch_threads", 0)) or os.cpu_count() or 1
        cold_bytes = int(profile.data.get("measurement", {}).get("cold_arena_bytes", 0))
        host_probe = profile.data.get("measurement", {}).get("host_memory_probe") or {}
        spec.write_text(json.dumps({"mode": mode, "threads": threads, "dtypes": dtypes, "shapes": shapes,
                                    "cold_bytes": cold_bytes, "attention": attention_shapes(mode),
                                    "host_memory_bytes": host_probe.get("bytes", 0),
                                    "host_memory_rounds": len(host_probe.get("rounds_s", [])) or 5,
                                    "disk_dir": str(disk_dir), "disk_sizes": list(DISK_SIZES)}))
        runs = []
        for r in range(max(args.repeats, 1)):
            subprocess.run([sys.executable, __file__, "--child", str(spec), str(out)], check=True)
            runs.append(json.loads(out.read_text()))
            print(f"re-measurement {r + 1}/{max(args.repeats, 1)} done", file=sys.stderr, flush=True)

    cost = CostModel(profile)
    per_run = [_rows(cost, measured, profile.data["host"]) for measured in runs]
    # each shape's median measured time over the runs (this VM's disk drifts between runs minutes apart)
    rows = [(fam, shape, float(np.median([run[i][2] for run in per_run])), pred)
            for i, (fam, shape, _, pred) in enumerate(per_run[0])]
    measured = runs[0]

    host_runs = [r["host_gb_per_s"] for r in runs if "host_gb_per_s" in r]
    load = os.getloadavg()[0]
    print(f"profile {path} ({profile.name}, {mode} mode, {threads} torch threads); re-measured in {len(runs)} "
          f"separate process(es), each shape's median over them (disk: {disk_dir}, {measured['disk_method']}); "
          f"load average now {load:.2f}\n")
    print("| family | shape | measured ms | predicted ms | error |")
    print("|---|---|---|---|---|")
    for fam, shape, t, p in rows:
        print(f"| {fam} | {shape} | {t * 1e3:.3f} | {p * 1e3:.3f} | {(p - t) / t * 100:+.1f}% |")
    summary = {}
    if len(per_run) > 1:
        print("\nper re-measurement, median abs error:")
        for r, run in enumerate(per_run):
            parts = [f"{fam} {100 * float(np.median([abs(p - t) / t for f, _, t, p in run if f == fam])):.1f}%"
                     for fam in FAMILIES if any(f == fam for f, _, _, _ in run)]
            print(f"  run {r + 1}: {', '.join(parts)}")
    print("\n| family | samples | median abs error | 90th percentile |")
    print("|---|---|---|---|")
    for fam in FAMILIES:
        errs = np.array([abs(p - t) / t for f, _, t, p in rows if f == fam])
        if not len(errs):
            continue
        summary[fam] = {"samples": int(len(errs)), "median": float(np.median(errs)),
                        "p90": float(np.percentile(errs, 90))}
        print(f"| {fam} | {len(errs)} | {summary[fam]['median'] * 100:.1f}% | {summary[fam]['p90'] * 100:.1f}% |")
    if host_runs:
        stated, again = profile.data["host"].get("memory_gb_per_s"), float(np.median(host_runs))
        print(f"\nhost DRAM copy: profile {stated} GB/s; re-measured {', '.join(f'{v:.2f}' for v in host_runs)} GB/s "
              f"(median {again:.2f}; profile {(stated - again) / again * 100:+.1f}%)")
        summary["host_memory_gb_per_s"] = {"profile": stated, "measured": host_runs}
    if args.json:
        write_json_atomic(args.json, {"summary": summary, "rows": rows, "repeats": len(per_run),
                                      "per_run_rows": per_run})
    return 0


FAMILIES = ("gemm", "attention_fit", "attention_rate", "disk_read", "disk_write")


def _rows(cost: CostModel, measured: dict, host: dict) -> list[tuple[str, str, float, float]]:
    """(family, shape, measured s, predicted s) for one re-measurement. Attention twice: the fitted
    CPU model ("attention_fit") and the K,V bytes over host.attention_gb_per_s ("attention_rate"),
    the single number a host part states."""
    rows = []
    for dtype, samples in measured.get("attention", {}).items():
        rate = host.get("attention_gb_per_s", {}).get(dtype)
        for name, b, ctx, t in samples:
            model = CATALOG[name]
            shape = f"{dtype} {name} b{b} s{ctx}"
            rows.append(("attention_fit", shape, t, cost.attention_s(model, b, 1, ctx - 1, dtype, where="cpu")))
            if rate:
                kv_bytes = b * ctx * 2 * model.kv_dim * DTYPE_BYTES[dtype]
                rows.append(("attention_rate", shape, t, kv_bytes / (rate * 1e9)))
    for dtype, samples in measured["gemm"].items():
        for m, n, k, t in samples:
            rows.append(("gemm", f"{dtype} {int(m)}x{int(n)}x{int(k)}", t,
                         cost.gemm_s(Gemm(int(m), int(n), int(k)), dtype)))
    for link in ("disk_read", "disk_write"):
        for b, t in measured[link]:
            rows.append((link, f"{int(b) / 2**20:.2f} MiB", t, cost.transfer_s(link, b)))
    return rows


if __name__ == "__main__":
    sys.exit(main())
