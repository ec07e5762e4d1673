"""Activations between layers on the host (FlexGen's activation placement, issue 11 item 4).

FlexGen's OPT-175B policy on a T4 (Sheng et al., ICML 2023, arXiv:2303.06865): GPU batch 32 x 8 GPU
batches, prompt 512 + gen 32, weights and K,V off the GPU, the activations on the CPU. The block's
hidden states alone (2 * 256 * 512 * 12288 * 2 B = 6.4 GB) do not fit on a T4 beside two streamed
layers, so that policy is only feasible with the activations on the host. Every expected number
below is computed here from the model's dimensions, not by the functions under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.memory import usable_bytes
from planner.models import load_model
from planner.plan import Decisions, plan_from_dict
from planner.prediction import cost_model_for, evaluate, exact_amounts, setting_for
from planner.profile import load_profile
from planner.search.formulation import combos_for
from planner.stepcost import BytePricer, Combo, prefill_terms

OPT175 = load_model("opt-175b")
T4 = load_profile(None, "t4")
FLEXGEN_INPUTS = {"seq": 544, "prompt": 512, "gen": 32, "objective": "throughput"}
H, L, P = 12288, 96, 2  # OPT-175B: hidden size, layers, float16 bytes
GB, NB = 32, 8  # FlexGen's GPU batch and number of GPU batches
CPU_PROFILE = Path(__file__).resolve().parents[1] / "docs" / "validation_profile_cpu_1thread.json"


def _flexgen_policy(activations: str) -> Decisions:
    return Decisions(strategy="transfer", dtype="float16", batch=GB * NB, gpu_batch=GB, num_gpu_batches=NB,
                     split_tokens=0, kv_placement={"device": 0.0, "host": 0.0, "disk": 1.0},
                     x_placement={"device": 1.0, "host": 0.0, "disk": 0.0},
                     weight_placement={"device": 0.0, "host": 0.5, "disk": 0.5}, attention_where="device",
                     activation_placement=activations)


def test_flexgen_opt175b_t4_policy_fits_only_with_activations_on_the_host():
    usable = usable_bytes(T4, None, None, None)
    on_device = evaluate(OPT175, FLEXGEN_INPUTS, _flexgen_policy("device"), T4)["memory_bytes"]
    on_host = evaluate(OPT175, FLEXGEN_INPUTS, _flexgen_policy("host"), T4)["memory_bytes"]
    assert on_device["device"] > usable["device"]
    assert all(on_host[t] <= usable[t] for t in usable)
    # the block's hidden states leave the device (in and out of a layer: 2 per sequence) and the device
    # keeps the working GPU batch's and the next one's; the host takes the block's
    block = 2 * GB * NB * 512 * H * P
    working = 2 * 2 * GB * 512 * H * P
    assert on_device["device"] - on_host["device"] == block - working
    assert on_host["host"] - on_device["host"] == block
    assert on_host["disk"] == on_device["disk"]


def test_decode_link_bytes_grow_by_each_gpu_batch_hidden_state_in_and_out_of_every_layer():
    dev = evaluate(OPT175, FLEXGEN_INPUTS, _flexgen_policy("device"), T4)
    host = evaluate(OPT175, FLEXGEN_INPUTS, _flexgen_policy("host"), T4)
    act = L * NB * GB * 1 * H * P  # one token's hidden state per sequence, each layer, each GPU batch
    for link in ("h2d", "d2h"):
        assert host["link_bytes_per_step"][link] - dev["link_bytes_per_step"][link] == act, link
    for link in ("disk_read", "disk_write"):
        assert host["link_bytes_per_step"][link] == dev["link_bytes_per_step"][link], link
    # and the time: T4's datasheet links (latency + bytes / rate) per transfer of one GPU batch's state
    per = {k: T4.links[k].latency_s + GB * H * P / (T4.links[k].gb_per_s * 1e9) for k in ("h2d", "d2h")}
    for link in ("h2d", "d2h"):
        extra_s = (host["per_layer_busy_s"][link] - dev["per_layer_busy_s"][link]) * L
        assert extra_s == pytest.approx(L * NB * per[link], rel=1e-6), link


def test_prefill_link_bytes_grow_by_the_prompt_hidden_states_in_and_out():
    st = setting_for(OPT175, FLEXGEN_INPUTS, "float16", T4)
    cost = cost_model_for(T4)
    out = {}
    for where in ("device", "host"):
        d = _flexgen_policy(where)
        combo = Combo(d.batch, d.gpu_batch, d.num_gpu_batches, d.attention_where, where)
        out[where] = prefill_terms(st, combo, cost, exact_amounts(st, d), BytePricer())
    act = L * NB * GB * 512 * H * P
    assert out["host"].h2d - out["device"].h2d == act
    assert out["host"].d2h - out["device"].d2h == act
    assert out["host"].disk == out["device"].disk and out["host"].compute == out["device"].compute


def test_solve_pins_or_chooses_the_activation_placement(run_cli, tmp_path):
    base = ["solve", "--model", "opt-175b", "--gpu", "t4", "--seq", "544", "--gen", "32", "--batch", "256"]
    res = run_cli(*base, "--activations", "device", "-o", tmp_path / "d.json")
    assert res.exit_code == 2 and "device memory" in res.output and len(res.output.strip().splitlines()) == 1
    for choice in ("host", "auto"):
        res = run_cli(*base, "--activations", choice, "-o", tmp_path / f"{choice}.json")
        assert res.exit_code == 0, res.output
        plan = json.loads((tmp_path / f"{choice}.json").read_text())
        assert plan["inputs"]["activations"] == choice
        assert plan["decisions"]["activation_placement"] == "host"
        assert plan["decisions"]["num_gpu_batches"] > 2
        assert "activations on host" in res.output
    res = run_cli("explain", tmp_path / "auto.json")
    assert res.exit_code == 0 and "hidden states between layers live in host memory" in res.output


def test_auto_keeps_activations_on_the_device_when_the_host_cannot_help(run_cli, tmp_path):
    out = tmp_path / "small.json"
    res = run_cli("solve", "--model", "opt-1.3b", "--gpu", "a100-40g-pcie", "--seq", "1024", "--batch", "8",
                  "--activations", "auto", "-o", out)
    assert res.exit_code == 0, res.output
    plan = json.loads(out.read_text())
    assert plan["inputs"]["activations"] == "auto"
    assert plan["decisions"]["activation_placement"] == "device"
    assert "activations on device" in res.output


def test_the_default_keeps_activations_on_the_device_where_the_runtime_runs_them(run_cli, tmp_path):
    """opt-6.7b, batch 64 on an A100: auto would move the hidden states to the host (room for more K,V on
    the device); the default keeps them on the device, so `kvplan execute` can run the plan."""
    base = ["solve", "--model", "opt-6.7b", "--gpu", "a100-40g-pcie", "--seq", "1152", "--batch", "64"]
    plans = {}
    for name, extra in (("default", []), ("auto", ["--activations", "auto"])):
        res = run_cli(*base, *extra, "-o", tmp_path / f"{name}.json")
        assert res.exit_code == 0, res.output
        plans[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert plans["default"]["inputs"]["activations"] == "device"
    assert plans["default"]["decisions"]["activation_placement"] == "device"
    assert plans["auto"]["decisions"]["activation_placement"] == "host"
    assert plans["auto"]["prediction"]["throughput_tokens_per_s"] > plans["default"]["prediction"][
        "throughput_tokens_per_s"]


def test_bad_activation_values_are_one_line_errors(run_cli, tmp_path, write_json):
    res = run_cli("solve", "--model", "opt-125m", "--gpu", "t4", "--seq", "256", "--activations", "gpu",
                  "-o", tmp_path / "x.json")
    assert res.exit_code == 2 and "--activations" in res.output and len(res.output.strip().splitlines()) == 1
    res = run_cli("solve", "--model", "opt-125m", "--profile", CPU_PROFILE, "--seq", "256", "--activations", "host",
                  "-o", tmp_path / "x.json")
    assert res.exit_code == 2 and "CPU-only" in res.output and len(res.output.strip().splitlines()) == 1
    plan = _small_plan(run_cli, tmp_path)
    plan["decisions"]["activation_placement"] = "cpu"
    res = run_cli("explain", write_json("bad.json", plan))
    assert res.exit_code == 2 and "activation_placement" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_cpu_only_profiles_offer_only_device_activations(run_cli, tmp_path):
    assert {c.activation_placement for c in combos_for(None, True, "auto", 256, "auto")} == {"device"}
    assert {c.activation_placement for c in combos_for(None, False, "auto", 256, "auto")} == {"device", "host"}
    out = tmp_path / "cpu.json"
    res = run_cli("solve", "--model", "opt-125m", "--profile", CPU_PROFILE, "--seq", "256", "-o", out)
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["decisions"]["activation_placement"] == "device"


def _small_plan(run_cli, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / ("small" + "".join(extra).replace("-", "") + ".json")
    res = run_cli("solve", "--model", "opt-125m", "--gpu", "t4", "--seq", "256", "--batch", "16", *extra, "-o", out)
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text())


def test_plans_without_the_field_load_as_device(run_cli, tmp_path):
    plan = _small_plan(run_cli, tmp_path)
    del plan["decisions"]["activation_placement"]
    del plan["inputs"]["activations"]
    assert plan_from_dict(plan).decisions.activation_placement == "device"


def test_execute_refuses_host_activations_with_one_line(run_cli, tmp_path):
    plan = _small_plan(run_cli, tmp_path, "--activations", "host")
    assert plan["decisions"]["activation_placement"] == "host"
    path = tmp_path / "host.json"
    path.write_text(json.dumps(plan))
    res = run_cli("execute", path, "--steps", "1", "--layers", "1", "--fill", "random", "--quiet", "--device", "cpu")
    assert res.exit_code == 2
    assert "decisions.activation_placement 'host'" in res.output and len(res.output.strip().splitlines()) == 1


def test_export_to_flexgen_maps_host_activations_to_the_act_percent(run_cli, tmp_path):
    percents = {}
    for where in ("device", "host"):
        plan = _small_plan(run_cli, tmp_path, "--strategy", "transfer", "--activations", where)
        path = tmp_path / f"{where}-plan.json"
        path.write_text(json.dumps(plan))
        res = run_cli("export", path, "--to", "flexgen", "--json")
        assert res.exit_code == 0, res.output
        percents[where] = json.loads(res.stdout)["options"]["--percent"]
    assert percents["device"][4:] == [100, 0]
    assert percents["host"][4:] == [0, 100]


def test_decisions_made_without_the_field_keep_activations_on_the_device():
    d = _flexgen_policy("device")
    assert Decisions(**{k: v for k, v in d.to_dict().items() if k != "activation_placement"}) == d
