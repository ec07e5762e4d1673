"""The lower bound max(link bytes / bandwidth, FLOPs / peak) never exceeds the plan's own predicted step."""

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
