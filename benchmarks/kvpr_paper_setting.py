"""KVPR's paper setting, predicted by kvplan: OPT-6.7B / 13B / 30B, fp16, A100 40 GB PCIe 4.0, batch 64,
prompts 128-1024, generation 32-128 (Jiang et al., KVPR, arXiv:2411.17089, evaluation section).

For every (model, prompt, gen) it solves the same request three ways — `--strategy transfer`
(FlexGen-style: all K,V copied in every step), `--strategy recompute` (KVPR: partial recompute), and
`auto` (everything free, CPU attention included) — and prints the predicted throughput (prefill
counted) and decode-step latency, the gains over transfer, and the averages per model, next to the
paper's reported numbers. `--write-plans DIR` also writes the plans (prompt 1024, gen 128).

    /work/venv/bin/python benchmarks/kvpr_paper_setting.py [--write-plans plans]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from planner.cli.solve_cmd import default_plan_path
from planner.models import load_model
from planner.plan import save_plan
from planner.profile import load_profile
from planner.search import Infeasible, SolveRequest, solve

MODELS = ["opt-6.7b", "opt-13b", "opt-30b"]
PROMPTS = [128, 256, 512, 1024]
GENS = [32, 128]
BATCH = 64
GPU = "a100-40g-pcie"
# KVPR's reported decode throughput gains over FlexGen (same models) and its best latency reduction
# (vs Hugging Face Accelerate), from the paper's abstract and evaluation; design.md §2.3.
PAPER_THROUGHPUT_GAIN_PCT = {"opt-6.7b": 15.1, "opt-13b": 46.2, "opt-30b": 29.0}
PAPER_LATENCY_REDUCTION_PCT = 35.8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-plans", type=Path, default=None, help="write the prompt-1024/gen-128 plans here")
    args = ap.parse_args()
    profile = load_profile(gpu=GPU)
    print(f"{'model':<9} {'prompt':>6} {'gen':>4} | {'transfer':>9} {'recompute':>9} {'auto':>9} tok/s | "
          f"{'rc/tr':>7} {'auto/tr':>8} | {'step tr':>8} {'step rc':>8} {'rc step':>8} | split  auto strategy")
    per_model: dict[str, dict[str, list[float]]] = {}
    for name in MODELS:
        model = load_model(name)
        acc = per_model.setdefault(name, {"rc": [], "auto": [], "lat": [], "dec_rc": [], "split": []})
        for prompt in PROMPTS:
            for gen in GENS:
                plans = {}
                for strategy in ("transfer", "recompute", "auto"):
                    req = SolveRequest(model=model, seq=prompt + gen, gen=gen, batch=BATCH, strategy=strategy)
                    try:
                        plans[strategy] = solve(req, profile)
                    except Infeasible as exc:
                        print(f"{name} {prompt} {gen} {strategy}: infeasible: {exc}")
                if len(plans) < 3:
                    continue
                tr, rc, au = (plans[s]["prediction"] for s in ("transfer", "recompute", "auto"))
                g_rc = 100 * (rc["throughput_tokens_per_s"] / tr["throughput_tokens_per_s"] - 1)
                g_au = 100 * (au["throughput_tokens_per_s"] / tr["throughput_tokens_per_s"] - 1)
                lat = 100 * (1 - rc["decode_step_s"] / tr["decode_step_s"])
                dec_rc = 100 * (rc["decode_throughput_tokens_per_s"] / tr["decode_throughput_tokens_per_s"] - 1)
                split = plans["recompute"]["decisions"]["split_tokens"] / (prompt + gen)
                acc["rc"].append(g_rc)
                acc["auto"].append(g_au)
                acc["lat"].append(lat)
                acc["dec_rc"].append(dec_rc)
                acc["split"].append(split)
                print(f"{name:<9} {prompt:>6} {gen:>4} | {tr['throughput_tokens_per_s']:9.2f} "
                      f"{rc['throughput_tokens_per_s']:9.2f} {au['throughput_tokens_per_s']:9.2f}       | "
                      f"{g_rc:+6.1f}% {g_au:+7.1f}% | {tr['decode_step_s'] * 1e3:8.1f} "
                      f"{rc['decode_step_s'] * 1e3:8.1f} "
                      f"{-lat:+7.1f}% | {split:5.2f}  {plans['auto']['decisions']['strategy']}")
                if args.write_plans is not None and prompt == 1024 and gen == 128:
                    for plan in plans.values():
                        path = args.write_plans / default_plan_path(plan).name
                        save_plan(path, plan)
    print()
    print("Averages over prompts x gens (batch 64, A100 40 GB PCIe 4.0, fp16), predicted by kvplan:")
    print(f"{'model':<9} {'recompute vs transfer':>22} {'(decode only)':>14} {'auto vs transfer':>17} "
          f"{'rc step vs tr':>14} {'split l/s':>10} | {'paper: KVPR vs FlexGen':>22}")
    for name, acc in per_model.items():
        if not acc["rc"]:
            continue
        print(f"{name:<9} {statistics.mean(acc['rc']):+21.1f}% {statistics.mean(acc['dec_rc']):+13.1f}% "
              f"{statistics.mean(acc['auto']):+16.1f}% {-statistics.mean(acc['lat']):+13.1f}% "
              f"{statistics.mean(acc['split']):10.2f} | {PAPER_THROUGHPUT_GAIN_PCT[name]:+21.1f}%")
    all_lat = [v for acc in per_model.values() for v in acc["lat"]]
    if all_lat:
        print(f"best decode-step reduction, recompute vs transfer: {-max(all_lat):+.1f}% "
              f"(paper: {-PAPER_LATENCY_REDUCTION_PCT:+.1f}% vs Hugging Face Accelerate)")


if __name__ == "__main__":
    main()
