"""The predicted-vs-measured section from real run records: plan on this machine's measured profile,
run it with `kvplan execute --out`, and give the record to `kvplan report --runs` (with the same
profile in the grid through --profile)."""

from __future__ import annotations

import json

import pandas as pd


def test_report_ingests_execute_run_records(run_cli, tmp_path, local_profile_path):
    plan = tmp_path / "plan.json"
    solved = run_cli("solve", "--model", "opt-125m", "--seq", "256", "--gen", "8", "--batch", "2",
                     "--profile", local_profile_path, "-o", plan)
    assert solved.exit_code == 0, solved.output
    run = tmp_path / "run.json"
    executed = run_cli("execute", plan, "--layers", "1", "--steps", "2", "--fill", "random",
                       "--disk-dir", tmp_path, "--out", run)
    assert executed.exit_code == 0, executed.output
    record = json.loads(run.read_text())

    out = tmp_path / "report"
    result = run_cli("report", "--models", "opt-125m", "--profile", local_profile_path, "--seqs", "256",
                     "--gen", "8", "--batches", "2", "--strategies", "auto", "--runs", run, "-o", out)
    assert result.exit_code == 0, result.output
    assert (out / "figures" / "measured.png").is_file()
    md = (out / "report.md").read_text()
    assert "## Predicted vs measured" in md
    measured_ms = record["measured"]["decode_step_s"]
    row = next(line for line in md.splitlines() if "| decode_step_s |" in line)
    assert row.startswith("| 1. opt-125m")
    assert f"{measured_ms:.3g}" in row
    config = json.loads((out / "config.json").read_text())
    assert config["runs"] == [str(run)]
    assert config["grid"]["gpus"][0]["source"] == str(local_profile_path)
    # The grid's own row is the CPU profile's plan for the same request.
    frame = pd.read_csv(out / "results.csv")
    assert list(frame["status"]) == ["feasible"] and frame["hardware.device_type"].iloc[0] == "cpu"
