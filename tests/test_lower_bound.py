"""The lower bound max(bytes / bandwidth of each memory and link, FLOPs / peak) never exceeds the plan's
own predicted step, and names the resource that binds."""

import json

import pytest


@pytest.mark.parametrize("model, seq, extra", [
    ("opt-125m", 2048, ["--batch", "16", "--gpu-mem", "1GB"]),
    ("opt-125m", 1024, ["--batch", "8", "--strategy", "transfer", "--gpu-mem", "600MB"]),
    ("tinyllama-1.1b", 2048, ["--batch", "4"]),
])
def test_local_plans_sit_at_or_above_their_bound(run_cli, local_profile_path, tmp_path, model, seq, extra):
    out = tmp_path / "plan.json"
    result = run_cli("solve", "--model", model, "--seq", seq, "--profile", local_profile_path, "-o", out, *extra)
    assert result.exit_code == 0, result.output
    plan = json.loads(out.read_text())
    bound = plan["lower_bound"]
    assert bound["step_s"] > 0
    assert bound["step_s"] <= plan["prediction"]["decode_step_s"] * (1 + 1e-9)
    assert bound["distance"] >= 1 - 1e-9


@pytest.mark.parametrize("gpu", ["a100-40g-pcie", "l4", "h100-sxm"])
@pytest.mark.parametrize("model", ["opt-13b", "llama-3-8b"])
def test_datasheet_plans_sit_at_or_above_their_bound(run_cli, tmp_path, gpu, model):
    out = tmp_path / "plan.json"
    result = run_cli("solve", "--model", model, "--seq", "4096", "--batch", "32", "--gpu", gpu, "-o", out)
    assert result.exit_code == 0, result.output
    plan = json.loads(out.read_text())
    assert plan["lower_bound"]["step_s"] <= plan["prediction"]["decode_step_s"] * (1 + 1e-9)


def test_a_resident_plan_is_bound_by_device_memory_bandwidth():
    """llama-13b at 8192 on the A100: every step reads all 40 layers' weights (25 GB) and the batch's
    K,V from HBM; the bound is at least those bytes over the datasheet's 1555 GB/s, and names it."""
    from planner.layer_costs import kv_bytes_per_token, layer_weight_bytes
    from planner.models import load_model
    from planner.profile import load_profile
    from planner.search import SolveRequest, solve

    model = load_model("llama-13b")
    plan = solve(SolveRequest(model=model, seq=8192, gen=128), load_profile(gpu="a100-40g-pcie"))
    lb, d = plan["lower_bound"], plan["decisions"]
    assert d["kv_placement"]["device"] == 1.0 and d["attention_where"] == "device"
    ctx = round(8064 + 127 / 2)
    hbm = model.num_layers * (layer_weight_bytes(model) + d["batch"] * ctx * kv_bytes_per_token(model)) / 1555e9
    assert lb["bound_by"] == "device_memory"
    assert lb["step_s"] == pytest.approx(hbm, rel=1e-6)
    assert lb["step_s"] <= plan["prediction"]["decode_step_s"]


def test_cpu_attention_is_bound_below_by_host_memory_bandwidth():
    """CPU attention reads the whole batch's K,V from host memory every step (100 GB/s on the
    datasheet host), far more than the device reads: the bound is host memory."""
    from planner.layer_costs import kv_bytes_per_token
    from planner.models import load_model
    from planner.profile import load_profile
    from planner.search import SolveRequest, solve

    model = load_model("opt-13b")
    plan = solve(SolveRequest(model=model, seq=4096, gen=128, batch=64, strategy="cpu-attention"),
                 load_profile(gpu="a100-40g-pcie"))
    lb = plan["lower_bound"]
    ctx = round(3968 + 127 / 2)
    host = model.num_layers * 64 * ctx * kv_bytes_per_token(model) / 100e9
    assert lb["bound_by"] == "host_memory"
    assert lb["step_s"] == pytest.approx(host, rel=1e-6)
    assert lb["step_s"] <= plan["prediction"]["decode_step_s"]


@pytest.mark.parametrize("strategy", ["auto", "resident", "transfer", "recompute", "cpu-attention"])
@pytest.mark.parametrize("gpu", ["a100-40g-pcie", "t4"])
def test_every_strategys_plan_sits_at_or_above_its_bound(gpu, strategy):
    from planner.models import load_model
    from planner.profile import load_profile
    from planner.search import Infeasible, SolveRequest, solve

    for name in ("opt-6.7b", "llama-3-8b"):
        try:
            plan = solve(SolveRequest(model=load_model(name), seq=2048, gen=64, batch=16, strategy=strategy),
                         load_profile(gpu=gpu))
        except Infeasible:
            continue
        assert 0 < plan["lower_bound"]["step_s"] <= plan["prediction"]["decode_step_s"] * (1 + 1e-9)
