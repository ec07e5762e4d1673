"""`kvplan explain`: a plan for a human, and one-line refusals of bad plan files."""

from __future__ import annotations

import json


def _plan(run_cli, tmp_path, *extra: str):
    out = tmp_path / "plan.json"
    r = run_cli("solve", "--model", "opt-13b", "--seq", "1152", "--batch", "64", "--gpu", "a100-40g-pcie",
                *extra, "-o", out)
    assert r.exit_code == 0, r.stderr
    return out


def test_explain_says_what_goes_where_why_and_the_timeline(run_cli, tmp_path):
    path = _plan(run_cli, tmp_path, "--strategy", "recompute")
    r = run_cli("explain", path)
    assert r.exit_code == 0, r.stderr
    text = r.stdout
    assert "What goes where" in text and "weights:" in text
    assert "recomputed each step (KVPR)" in text  # the split is explained
    assert "bound by" in text and "<- sets the step" in text  # why
    assert "Per-layer timeline" in text and "#" in text and "overlapped" in text
    assert "serial: h2d then compute" in text  # KVPR's chain
    assert "Memory at peak" in text and "device" in text
    assert "Lower bound" in text and "Pinned strategies" in text
    assert "vs transfer (FlexGen-style)" in text


def test_explain_gqa_plan_says_why_no_recompute(run_cli, tmp_path):
    out = tmp_path / "gqa.json"
    r = run_cli("solve", "--model", "llama-3-8b", "--seq", "8192", "--batch", "16", "--gpu", "l4", "-o", out)
    assert r.exit_code == 0, r.stderr
    r = run_cli("explain", out)
    assert r.exit_code == 0
    assert "recomputing cannot save link bytes" in r.stdout


def test_explain_refuses_bad_files(run_cli, tmp_path, write_json):
    path = _plan(run_cli, tmp_path)
    text = path.read_text()
    truncated = tmp_path / "cut.json"
    truncated.write_text(text[: len(text) // 2])
    r = run_cli("explain", truncated)
    assert r.exit_code == 2 and "truncated" in r.stderr and len(r.stderr.strip().splitlines()) == 1

    data = json.loads(text)
    data["schema_version"] = 99
    r = run_cli("explain", write_json("v99.json", data))
    assert r.exit_code == 2 and "schema_version" in r.stderr

    data = json.loads(text)
    del data["prediction"]
    r = run_cli("explain", write_json("nopred.json", data))
    assert r.exit_code == 2 and "prediction" in r.stderr

    data = json.loads(text)
    data["decisions"]["split_tokens"] = 10**6
    r = run_cli("explain", write_json("split.json", data))
    assert r.exit_code == 2 and "split_tokens" in r.stderr

    r = run_cli("explain", tmp_path / "missing.json")
    assert r.exit_code == 2 and "not found" in r.stderr


def test_shipped_plans_load_and_explain(run_cli):
    from pathlib import Path

    from planner.plan import load_plan

    plans = sorted((Path(__file__).resolve().parents[1] / "plans").glob("*.json"))
    names = {p.name for p in plans}
    assert "llama-2-13b-a100-40g-pcie-s8192-g128-bauto.json" in names  # the user's example
    assert {f"opt-{m}-a100-40g-pcie-s1152-g128-b64-{s}.json" for m in ("6.7b", "13b", "30b")
            for s in ("recompute", "transfer")} <= names  # KVPR's paper setting
    for path in plans:
        plan = load_plan(path)
        assert plan.data["solver"]["status"] == "Optimal"
        r = run_cli("explain", path)
        assert r.exit_code == 0 and "What goes where" in r.stdout
