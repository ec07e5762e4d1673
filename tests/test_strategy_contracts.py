"""A pinned strategy is a contract: whatever happens after the MILP (whole-token rounding, the split
refinement, the hedge, auto's pick of a pinned plan) the final decisions keep its constraints
(docs/planner.md, the strategy table). Checked on the decisions' fields directly, over a grid of
models x GPUs x contexts x batches."""

from __future__ import annotations

import itertools

import pytest

from planner.models import load_model
from planner.placement import PINNED_STRATEGIES
from planner.plan import Decisions
from planner.profile import load_profile
from planner.search import Infeasible, SolveRequest, solve
from planner.search.solve import setting_for_request, solve_strategy


def assert_contract(strategy: str, d: Decisions) -> None:
    kv, x = d.kv_placement, d.x_placement
    assert d.strategy == strategy
    if strategy == "resident":
        assert d.split_tokens == 0 and kv["device"] == 1.0 and d.attention_where == "device"
    elif strategy == "transfer":
        assert d.split_tokens == 0 and kv["device"] == 0.0 and d.attention_where == "device"
    elif strategy == "recompute":
        assert d.split_tokens > 0 and kv["device"] == 0.0 and x["device"] == 0.0
        assert d.attention_where == "device"
    elif strategy == "cpu-attention":
        assert d.split_tokens == 0 and kv["device"] == 0.0 and d.attention_where == "cpu"


GRID = list(itertools.product(["opt-6.7b", "llama-3-8b"], ["a100-40g-pcie", "t4"], [1152, 8192], [8, 64]))


@pytest.mark.parametrize("model_name,gpu,seq,batch", GRID)
def test_every_pinned_strategy_keeps_its_contract(model_name, gpu, seq, batch):
    profile = load_profile(gpu=gpu)
    req = SolveRequest(model=load_model(model_name), seq=seq, gen=128, batch=batch)
    st, caps = setting_for_request(req, profile)
    feasible = 0
    for strategy in PINNED_STRATEGIES:
        try:
            result = solve_strategy(req, st, profile, strategy, caps)
        except Infeasible:
            continue
        feasible += 1
        assert_contract(strategy, result.decisions)
        assert all(result.prediction["memory_bytes"][t] <= caps[t] for t in caps)
    assert feasible >= 2


def test_the_reported_recompute_plan_keeps_the_contract_end_to_end():
    """The case from the issue: the MILP put every token in the X-cache (l = seq, no K,V range), the
    refinement lowered l, and the K,V range's default "device" placement became real K,V on the device."""
    plan = solve(SolveRequest(model=load_model("opt-6.7b"), seq=1152, gen=128, batch=64, strategy="recompute"),
                 load_profile(gpu="a100-40g-pcie"))
    from planner.plan import plan_from_dict

    d = plan_from_dict(plan).decisions
    assert_contract("recompute", d)
    assert plan["baselines"]["recompute"]["strategy"] == "recompute"
    for name, base in plan["baselines"].items():
        if base["feasible"]:
            assert base["strategy"] == name


def test_a_gqa_model_pinned_to_recompute_still_recomputes_a_token():
    """Recompute never pays for a GQA model (X is larger than K,V), so the MILP goes to the least
    recompute the strategy allows: one token, not zero (which would be a transfer plan)."""
    plan = solve(SolveRequest(model=load_model("llama-3-8b"), seq=8192, gen=128, batch=16, strategy="recompute",
                              gpu_mem_bytes=int(18e9)), load_profile(gpu="a100-40g-pcie"))
    assert plan["decisions"]["strategy"] == "recompute"
    assert 1 <= plan["decisions"]["split_tokens"] <= 16
