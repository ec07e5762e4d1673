"""Helpers shared by the runtime benchmarks: solve with this machine's profile, run a plan."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from planner.plan import plan_from_dict  # noqa: E402
from planner.profile import Profile, find_local_profile, load_profile  # noqa: E402
from runtime.run import RunOptions, execute_plan  # noqa: E402


def local_profile(path: str | None) -> tuple[Profile, Path]:
    p = Path(path) if path else find_local_profile()
    if p is None:
        sys.exit("no profile of this machine: run 'kvplan profile --quick' first (or pass --profile FILE)")
    return load_profile(p), p


def fresh_profile(disk_dir: Path, threads: int | None) -> tuple[Profile, Path]:
    """A `kvplan profile --quick` of this machine taken now (the benchmark's runs follow at once), written
    to a temporary file so that profiles/ (and `kvplan execute`'s default) stay as they were."""
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"kvplan-fresh-profile-{os.getpid()}.json"
    cmd = [sys.executable, "-m", "planner.cli", "profile", "--quick", "--disk-dir", str(disk_dir),
           "-o", str(out)] + ([] if threads is None else ["--threads", str(threads)])
    print(f"taking a fresh profile: {' '.join(cmd[2:])} ...", flush=True)
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    print(f"fresh profile {out} taken in {time.perf_counter() - t0:.0f} s, finished "
          f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC", flush=True)
    return load_profile(out), out


def with_decisions(plan: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(plan)
    out["decisions"].update(changes)
    return out


def run(plan: dict[str, Any], profile_path: Path, layers: int, steps: int, disk_dir: Path,
        threads: int | None, check: bool = True) -> dict[str, Any]:
    """Execute with random-filled caches (timing only) and the given profile's re-prediction, after
    execute's machine check (runtime/check.py) unless `check` is False."""
    return execute_plan(plan_from_dict(plan), RunOptions(steps=steps, layers=layers, disk_dir=disk_dir,
                                                         profile_path=profile_path, fill="random",
                                                         threads=threads, check=check))


def run_in_rounds(plans: list[tuple[Any, dict[str, Any]]], repeats: int, profile_path: Path, layers: int,
                  steps: int, disk_dir: Path, threads: int | None,
                  check: bool = True) -> dict[Any, list[dict[str, Any]]]:
    """Run every (key, plan) `repeats` times, in rounds over the whole list, so that one plan's runs
    are spread over the benchmark's minutes (this VM's disk drifts by up to 1.5x over tens of
    seconds); the run records per key, in run order."""
    runs: dict[Any, list[dict[str, Any]]] = {key: [] for key, _ in plans}
    for r in range(repeats):
        for key, plan in plans:
            runs[key].append(run(plan, profile_path, layers, steps, disk_dir, threads, check))
            rec = runs[key][-1]
            ratios = check_ratios(rec)
            print(f"  round {r + 1}/{repeats} {key}: measured {rec['measured']['decode_step_s']:.3f} s"
                  + (f"; machine check {ratios}" if ratios else ""), flush=True)
    return runs


def median_run(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The run record with the median decode step (the lower middle one for an even count)."""
    ordered = sorted(records, key=lambda rec: rec["measured"]["decode_step_s"])
    return ordered[(len(ordered) - 1) // 2]


CHECK_OPS = {"gemm": "GEMM", "attention": "att", "disk_read": "disk"}


def check_ratios(rec: dict[str, Any]) -> str:
    """The run's machine-check ratios (time here / the profile's model), e.g. "GEMM x1.12 att x1.05"."""
    probes = (rec.get("machine_check") or {}).get("probes", [])
    return " ".join(f"{CHECK_OPS[p['op']]} x{p['ratio']:.2f}" for p in probes)


def load_note() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) / {five:.2f} (5 min) on {os.cpu_count()} CPUs"
