"""How long `solve` takes per configuration (target: median <= 100 ms on this machine).

For every configuration of a grid (models x GPUs x contexts x batch), times
  - milp_ms:  the one auto MILP alone (build + HiGHS), as `kvplan solve` runs it,
  - solve_ms: the whole `planner.search.solve` (auto MILP + the 4 pinned baselines' MILPs + full-model
              re-evaluation + plan assembly), first call for that configuration,
and prints a table of medians / 90th percentiles, plus the MILP sizes.

    /work/venv/bin/python benchmarks/solve_speed.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from planner.models import load_model
from planner.profile import load_profile
from planner.search import SolveRequest, solve
from planner.search.solve import setting_for_request, solve_surrogate

MODELS = ["opt-6.7b", "opt-13b", "opt-30b", "llama-2-13b", "llama-3-8b", "mistral-7b", "qwen2.5-14b"]
GPUS = ["a100-40g-pcie", "l4", "h100-sxm"]
SEQS = [1152, 4096, 8192, 32768]
BATCHES = [None, 64]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smaller grid")
    args = ap.parse_args()
    models = MODELS[:3] if args.quick else MODELS
    gpus = GPUS[:1] if args.quick else GPUS
    rows = []
    for gpu in gpus:
        profile = load_profile(gpu=gpu)
        for name in models:
            model = load_model(name)
            for seq in SEQS:
                for batch in BATCHES:
                    req = SolveRequest(model=model, seq=seq, gen=128, batch=batch)
                    t0 = time.perf_counter()
                    try:
                        plan = solve(req, profile)
                        ok = True
                    except Exception:  # infeasible configurations are timed too
                        plan, ok = None, False
                    solve_ms = (time.perf_counter() - t0) * 1e3
                    st, caps = setting_for_request(req, profile)
                    t0 = time.perf_counter()
                    try:
                        result, _, combos = solve_surrogate(req, st, profile, "auto", caps)
                        size = (combos, result.variables, result.constraints)
                    except Exception:
                        size = (0, 0, 0)
                    milp_ms = (time.perf_counter() - t0) * 1e3
                    rows.append((gpu, name, seq, batch, ok, solve_ms, milp_ms, size,
                                 plan["decisions"]["strategy"] if plan else "infeasible"))
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; "
          f"python {platform.python_version()}")
    print(f"{'gpu':<14} {'model':<12} {'seq':>6} {'batch':>5} {'strategy':<14} {'solve ms':>9} {'milp ms':>8} "
          f"{'combos':>6} {'vars':>5} {'rows':>5}")
    for gpu, name, seq, batch, _ok, s_ms, m_ms, size, strat in rows:
        print(f"{gpu:<14} {name:<12} {seq:>6} {str(batch or 'auto'):>5} {strat:<14} {s_ms:9.1f} {m_ms:8.1f} "
              f"{size[0]:>6} {size[1]:>5} {size[2]:>5}")
    solve_all = [r[5] for r in rows]
    milp_all = [r[6] for r in rows]
    print()
    print(f"configurations: {len(rows)} ({sum(1 for r in rows if not r[4])} infeasible)")
    print(f"full solve (auto + 4 baselines): median {statistics.median(solve_all):.1f} ms, "
          f"p90 {pct(solve_all, 0.9):.1f} ms, max {max(solve_all):.1f} ms")
    print(f"auto MILP alone:                 median {statistics.median(milp_all):.1f} ms, "
          f"p90 {pct(milp_all, 0.9):.1f} ms, max {max(milp_all):.1f} ms")


if __name__ == "__main__":
    main()
