"""Every plan shipped under plans/ is what a fresh `kvplan solve` of its own request writes, byte for
byte (issue 14): a change to the planner that moves a shipped plan must regenerate it, and say so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

PLANS = sorted((Path(__file__).resolve().parents[1] / "plans").glob("*.json"))


def solve_args(plan: dict, out: Path) -> list[str]:
    """The `kvplan solve` command line of a plan's recorded request (datasheet profiles only)."""
    inp, hw = plan["inputs"], plan["hardware"]
    assert hw["profile_kind"] == "datasheet", "shipped plans are made for datasheet GPUs"
    args = ["solve", "--model", inp["model"], "--seq", inp["seq"], "--gen", inp["gen"], "--prompt", inp["prompt"],
            "--batch", inp["batch"], "--strategy", inp["strategy"], "--objective", inp["objective"],
            "--dtype", inp["dtype"], "--gpu", hw["profile_name"], "--max-batch", inp["max_batch"],
            "--activations", inp["activations"], "-o", out]
    for option, key in (("--gpu-mem", "gpu_mem_bytes"), ("--cpu-mem", "cpu_mem_bytes"), ("--disk", "disk_bytes")):
        if inp[key] is not None:
            args += [option, f"{inp[key]}B"]
    return [str(a) for a in args]


def test_there_are_shipped_plans():
    assert len(PLANS) >= 5


@pytest.mark.parametrize("path", PLANS, ids=lambda p: p.stem)
def test_shipped_plan_is_what_solve_writes(path, tmp_path, run_cli):
    out = tmp_path / "fresh.json"
    result = run_cli(*solve_args(json.loads(path.read_text()), out))
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == path.read_bytes(), f"{path.name} is stale: regenerate it with kvplan solve"
