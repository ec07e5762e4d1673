"""The plan and run-record schemas (planner/schemas.py): the files kvplan writes pass them, the JSON Schema
in docs/ is the one the models generate, and the rules they add refuse what they should."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from planner.cli import main
from planner.errors import KvplanError
from planner.jsonio import dumps_canonical
from planner.schemas import check_plan, check_run_record, json_schema

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "plans").glob("*.json"))


@pytest.mark.parametrize("kind, path", [("plan", "docs/plan.schema.json"), ("run", "docs/run.schema.json")])
def test_committed_json_schema_is_the_generated_one(kind, path):
    """Regenerate with `kvplan schema plan -o docs/plan.schema.json` (and `run`) after changing the models."""
    assert (ROOT / path).read_text() == dumps_canonical(json_schema(kind))


def test_schema_command_prints_the_schema(run_cli):
    result = run_cli("schema", "plan")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["required"] == ["schema_version", "model", "inputs", "decisions"]
    assert schema["$defs"]["Fractions"]["additionalProperties"] is False


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_plans_pass(path):
    check_plan(json.loads(path.read_text()), str(path))


def _plan() -> dict:
    return json.loads(SHIPPED[0].read_text())


@pytest.mark.parametrize("change, needle", [
    (lambda p: p["model"].update(hidden_size="768"), "model field hidden_size: Input should be a valid integer"),
    (lambda p: p["model"].update(num_layers=12.5), "model field num_layers"),
    (lambda p: p["decisions"].update(split_tokens=p["inputs"]["seq"] + 1), "exceeds inputs.seq"),
    (lambda p: p["decisions"].update(num_gpu_batches=3), "x num_gpu_batches 3 != batch"),
    (lambda p: p["inputs"].update(gen=p["inputs"]["seq"]), "exceeds seq"),
    (lambda p: p["decisions"]["x_placement"].update(disk=0.5), "x_placement: fractions sum to 1.5"),
    (lambda p: p["decisions"]["kv_placement"].update(gpu=0.0), "kv_placement.gpu: Extra inputs"),
    (lambda p: p["inputs"].update(dtype="float32"), "contradicts decisions.dtype"),
    (lambda p: p["prediction"].pop("memory_bytes"), "prediction is missing 'memory_bytes'"),
    (lambda p: p.pop("warnings"), "must have 'warnings'"),
    (lambda p: p["inputs"].pop("prompt"), "plan inputs: missing 'prompt'"),
    (lambda p: p["baselines"]["transfer"].update(feasible=False), "needs 'reason'"),
])
def test_plan_rules(change, needle):
    data = _plan()
    change(data)
    with pytest.raises(KvplanError, match="x.json: ") as err:
        check_plan(data, "x.json")
    assert needle in str(err.value)


def test_unknown_fields_are_kept_for_newer_writers():
    data = _plan()
    data["decisions"]["note"] = "added by a newer kvplan"
    assert check_plan(data, "x").decisions.model_extra == {"note": "added by a newer kvplan"}


def test_run_record_rules():
    good = {"plan": {"model": "opt-125m", "seq": 1024, "prompt": 896, "gen": 128},
            "predicted": {"decode_step_s": 0.01}, "measured": {"decode_step_s": 0.02, "step_wall_s": [0.02, 0.02]},
            "run": {"layers_run": 2, "layers_total": 12}}
    check_run_record(good, "r")
    for path, value, needle in [
        (("measured", "decode_step_s"), -1.0, "greater than or equal to 0"),
        (("plan", "gen"), 200, "exceeds seq"),
        (("run", "layers_run"), 13, "exceeds layers_total"),
        (("measured", "step_wall_s"), [0.1, "x"], "step_wall_s.1"),
    ]:
        bad = json.loads(json.dumps(good))
        bad[path[0]][path[1]] = value
        with pytest.raises(KvplanError, match=needle):
            check_run_record(bad, "r")


def test_default_plan_path_never_replaces_a_plan_for_another_request(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    solve = ["solve", "--model", "opt-125m", "--seq", "512", "--gpu", "t4"]
    first = CliRunner().invoke(main, solve)
    assert first.exit_code == 0, first.output
    path = tmp_path / "plans" / "opt-125m-t4-s512-g128-bauto.json"
    original = path.read_bytes()
    again = CliRunner().invoke(main, solve)  # the same request: the same file, the same bytes
    assert again.exit_code == 0 and path.read_bytes() == original and "note:" not in again.stderr
    capped = CliRunner().invoke(main, [*solve, "--gpu-mem", "1GB"])  # same default name, another request
    assert capped.exit_code == 0, capped.output
    assert path.read_bytes() == original
    others = sorted(p.name for p in (tmp_path / "plans").iterdir() if p != path)
    assert len(others) == 1 and others[0].startswith("opt-125m-t4-s512-g128-bauto-")
    assert f"writing plans/{others[0]}" in capped.stderr and capped.stderr.count("\n") == 1 + capped.stderr.count(
        "Warning:")
    assert json.loads((tmp_path / "plans" / others[0]).read_text())["inputs"]["gpu_mem_bytes"] == 10**9
