"""`kvplan solve` through the CLI: the user's example, determinism, infeasible and bad inputs."""

from __future__ import annotations

import json

import pytest

from planner.plan import load_plan


def test_users_example_writes_a_valid_plan(run_cli, tmp_path):
    out = tmp_path / "plan.json"
    r = run_cli("solve", "--model", "llama-13b", "--seq", "8192", "--gpu", "a100-40g-pcie", "-o", out)
    assert r.exit_code == 0, r.stderr
    plan = load_plan(out)
    assert plan.seq == 8192 and plan.model.name == "llama-2-13b"
    data = plan.data
    assert data["hardware"]["profile_name"] == "a100-40g-pcie" and len(data["hardware"]["profile_hash"]) == 16
    assert data["solver"]["name"] == "HiGHS" and data["solver"]["status"] == "Optimal"
    # llama-2 was trained on 4096 tokens: a warning, not a refusal
    assert "trained context" in r.stderr and any("4096" in w for w in data["warnings"])
    assert "wrote" in r.stdout and "ms" in r.stdout
    assert "decode step" in r.stdout
    for key in ("decode_step_s", "prefill_s", "total_s", "throughput_tokens_per_s", "memory_bytes",
                "link_bytes_per_step", "surrogate_decode_step_s", "per_layer_busy_s", "gain_over_best_pinned"):
        assert key in data["prediction"]
    assert set(data["baselines"]) == {"resident", "transfer", "recompute", "cpu-attention"}


def test_same_inputs_give_the_same_bytes(run_cli, tmp_path):
    args = ["solve", "--model", "opt-6.7b", "--seq", "1152", "--batch", "64", "--gpu", "a100-40g-pcie"]
    assert run_cli(*args, "-o", tmp_path / "a.json").exit_code == 0
    assert run_cli(*args, "-o", tmp_path / "b.json").exit_code == 0
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_default_output_path_is_under_plans(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run_cli("solve", "--model", "opt-125m", "--seq", "512", "--gen", "32", "--gpu", "t4")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "plans" / "opt-125m-t4-s512-g32-bauto.json").exists()


def test_json_flag_prints_the_plan(run_cli, tmp_path):
    r = run_cli("solve", "--model", "opt-125m", "--seq", "512", "--gen", "32", "--gpu", "t4", "--json",
                "-o", tmp_path / "p.json")
    assert r.exit_code == 0
    assert json.loads(r.stdout)["inputs"]["seq"] == 512


def test_infeasible_names_what_is_missing(run_cli, tmp_path):
    r = run_cli("solve", "--model", "opt-30b", "--seq", "1152", "--batch", "64", "--gpu", "a100-40g-pcie",
                "--cpu-mem", "24GB", "--disk", "10GB", "-o", tmp_path / "p.json")
    assert r.exit_code == 2
    line = r.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "GB of host memory, 24 GB available" in line
    assert not (tmp_path / "p.json").exists()


def test_pinned_strategy_that_cannot_fit_is_refused(run_cli, tmp_path):
    r = run_cli("solve", "--model", "opt-30b", "--seq", "1152", "--batch", "64", "--gpu", "a100-40g-pcie",
                "--strategy", "resident", "-o", tmp_path / "p.json")
    assert r.exit_code == 2
    assert "resident K,V needs" in r.stderr and "GB of device memory" in r.stderr


@pytest.mark.parametrize("args,needle", [
    (["--seq", "0"], "--seq"),
    (["--seq", "100", "--gen", "100"], "--gen"),
    (["--seq", "100", "--gen", "0"], "--gen"),
    (["--seq", "1024", "--batch", "100000000"], "--batch"),
    (["--seq", "1024", "--batch", "many"], "--batch"),
    (["--seq", "1024", "--gpu-mem", "lots"], "--gpu-mem"),
    (["--seq", "1024", "--gpu", "a100-40"], "unknown GPU"),
])
def test_bad_inputs_are_one_line_errors(run_cli, args, needle):
    r = run_cli("solve", "--model", "opt-125m", *args, *([] if "--gpu" in args else ["--gpu", "t4"]))
    assert r.exit_code == 2
    assert needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_unknown_strategy_and_model(run_cli):
    r = run_cli("solve", "--model", "opt-125m", "--seq", "512", "--gpu", "t4", "--strategy", "magic")
    assert r.exit_code == 2 and "unknown strategy 'magic'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("solve", "--model", "opt-125m", "--seq", "512", "--gpu", "t4", "--objective", "fast")
    assert r.exit_code == 2 and "unknown objective" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("solve", "--model", "gpt-17", "--seq", "512", "--gpu", "t4")
    assert r.exit_code == 2 and "unknown model" in r.stderr


def test_no_profile_says_how_to_get_one(run_cli, monkeypatch):
    import planner.cli.solve_cmd as solve_cmd

    monkeypatch.setattr(solve_cmd, "find_local_profile", lambda: None)
    r = run_cli("solve", "--model", "opt-125m", "--seq", "512")
    assert r.exit_code == 2
    assert "kvplan profile" in r.stderr and "--gpu" in r.stderr


def test_measured_local_profile_is_used_by_default(run_cli, local_profile_path, monkeypatch, tmp_path):
    import planner.cli.solve_cmd as solve_cmd

    monkeypatch.setattr(solve_cmd, "find_local_profile", lambda: local_profile_path)
    out = tmp_path / "p.json"
    r = run_cli("solve", "--model", "opt-125m", "--seq", "1024", "--gen", "64", "--batch", "8", "-o", out)
    assert r.exit_code == 0, r.stderr
    plan = load_plan(out).data
    assert plan["hardware"]["device_type"] == "cpu" and plan["hardware"]["profile_kind"] == "measured"
    assert plan["decisions"]["dtype"] == "float32"
    assert plan["prediction"]["memory_bytes"]["host"] == 0


def test_cpu_only_profile_infeasible_names_the_disk(run_cli, local_profile_path, tmp_path):
    r = run_cli("solve", "--model", "opt-30b", "--seq", "2048", "--batch", "8", "--profile", local_profile_path,
                "--disk", "20GB", "-o", tmp_path / "p.json")
    assert r.exit_code == 2
    assert "of disk" in r.stderr and "20 GB available" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_caps_are_respected(run_cli, tmp_path):
    out = tmp_path / "p.json"
    r = run_cli("solve", "--model", "opt-13b", "--seq", "2048", "--batch", "32", "--gpu", "a100-40g-pcie",
                "--gpu-mem", "30GB", "--cpu-mem", "16GiB", "-o", out)
    assert r.exit_code == 0, r.stderr
    plan = load_plan(out).data
    mem = plan["prediction"]["memory_bytes"]
    assert mem["device"] <= 30e9 * 1.0001 and mem["host"] <= 16 * 2**30
    assert plan["inputs"]["gpu_mem_bytes"] == 30 * 10**9 and plan["inputs"]["cpu_mem_bytes"] == 16 * 2**30
    assert mem["disk"] > 0  # what did not fit in 30 GB + 16 GiB went to disk


def test_solve_and_explain_say_when_the_split_is_hedged(run_cli, local_profile_path, write_json, tmp_path):
    """A profile that measured its disk drifting gets a hedged split, and `solve` says so; the plan
    records the split that would be best at the profiled rate, and the same inputs give the same bytes."""
    data = json.loads(local_profile_path.read_text())
    data["disk"]["read_time_spread"] = {"fast": 0.7, "slow": 1.3}
    profile = write_json("drift.json", data)
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    for out in outs:
        r = run_cli("solve", "--profile", profile, "--model", "opt-125m", "--seq", "2048", "--batch", "8",
                    "--gen", "16", "--gpu-mem", "1GB", "--strategy", "recompute", "--objective", "latency", "-o", out)
        assert r.exit_code == 0, r.stderr
        assert "split hedged against the disk's measured drift (x0.7 .. x1.3" in r.stdout
    assert outs[0].read_bytes() == outs[1].read_bytes()
    hedge = json.loads(outs[0].read_text())["solver"]["split_hedge"]
    assert hedge["worst_regret_pct"] < hedge["nominal_worst_regret_pct"]
    explained = run_cli("explain", outs[0])
    assert explained.exit_code == 0 and "is hedged" in explained.stdout
    assert f"profiled rate ({hedge['nominal_split_tokens']})" in explained.stdout
