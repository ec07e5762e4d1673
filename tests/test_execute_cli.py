"""`kvplan execute` as a user runs it: reports, run records, refusals of bad or oversized plans."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
from _helpers import with_changes

from planner.models import CATALOG

TINY = dataclasses.replace(
    CATALOG["opt-125m"], name="tiny-opt", hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=4, head_dim=16,
    intermediate_size=128, vocab_size=101, max_position_embeddings=64)
DISK = {"device": 0.0, "host": 0.0, "disk": 1.0}
RAM = {"device": 1.0, "host": 0.0, "disk": 0.0}


def tiny_plan(**decisions) -> dict:
    d = {"strategy": "recompute", "dtype": "float32", "batch": 4, "gpu_batch": 2, "num_gpu_batches": 2,
         "split_tokens": 10, "kv_placement": DISK, "x_placement": DISK, "weight_placement": RAM,
         "attention_where": "device"}
    d.update(decisions)
    return {
        "schema_version": 1, "model": TINY.to_dict(),
        "hardware": {"profile_name": "hand-made", "profile_kind": "measured", "profile_hash": "none",
                     "device_type": "cpu", "device_name": "cpu"},
        "inputs": {"model": "tiny-opt", "seq": 40, "prompt": 24, "gen": 16, "batch": d["batch"],
                   "objective": "throughput", "strategy": "auto", "dtype": "float32", "gpu_mem_bytes": None,
                   "cpu_mem_bytes": None, "disk_bytes": None},
        "decisions": d,
    }


def _takes_o_direct(folder) -> bool:
    import os

    try:
        fd = os.open(folder / "o-direct-probe", os.O_RDWR | os.O_CREAT | getattr(os, "O_DIRECT", 0), 0o600)
    except OSError:
        return False
    os.close(fd)
    (folder / "o-direct-probe").unlink()
    return hasattr(os, "O_DIRECT")


@pytest.fixture
def no_local_profile(monkeypatch):
    """Behave as on a machine where 'kvplan profile' was never run."""
    monkeypatch.setattr("runtime.predict.find_local_profile", lambda: None)


def test_execute_reports_measured_and_writes_record(run_cli, write_json, tmp_path, no_local_profile):
    plan = write_json("plan.json", tiny_plan())
    disk = tmp_path / "disk"
    disk.mkdir()
    out = tmp_path / "run.json"
    result = run_cli("execute", plan, "--steps", "4", "--disk-dir", disk, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert "predicted vs measured" in result.stdout
    assert "disk_read busy per layer" in result.stdout
    assert "run 'kvplan profile'" in result.stdout  # no prediction to compare with: says how to get one
    rec = json.loads(out.read_text())
    assert rec["run"]["steps"] == 4 and rec["run"]["layers_run"] == 3
    assert rec["run"]["start_context"] == 24 + (16 - 4) // 2  # centred on the plan's average context
    assert rec["run"]["fill"] == "prefill"
    assert rec["run"]["direct_io"] is _takes_o_direct(disk)  # reports what the file system allowed
    m = rec["measured"]
    assert m["per_layer_busy_s"]["disk_read"] > 0 and m["per_layer_busy_s"]["disk_write"] > 0
    assert m["link_bytes_per_step"]["disk_read"] > 0
    assert len(m["step_wall_s"]) == 4 and m["decode_step_s"] > 0
    assert m["prefill_s"] > 0 and m["total_s"] > m["prefill_s"]  # the 24-token prompt, really prefilled
    assert any("6 untimed decode steps" in n for n in rec["notes"])
    assert rec["predicted"] is None
    assert list(disk.iterdir()) == [], "the run left files in --disk-dir"


def test_layers_and_json_output(run_cli, write_json, tmp_path, no_local_profile):
    plan = write_json("plan.json", tiny_plan(split_tokens=0, kv_placement=RAM, x_placement=RAM))
    result = run_cli("execute", plan, "--steps", "2", "--layers", "2", "--json", "--disk-dir", tmp_path)
    assert result.exit_code == 0, result.stderr
    rec = json.loads(result.stdout)
    assert any("runs all 3 layers, cycling through 2 stored" in n for n in rec["notes"])
    assert rec["measured"]["per_layer_busy_s"]["disk_read"] == 0
    m = rec["measured"]
    assert m["decode_step_s"] == pytest.approx(m["per_layer_step_s"] * 3)
    assert m["per_layer_busy_s"]["compute"] > 0


def test_layers_keep_the_whole_models_weight_placement(run_cli, write_json, tmp_path, no_local_profile):
    """--layers 1 of a 3-layer plan with a third of the weights on disk: the last layer of every step
    still streams its weights from disk."""
    third = {"device": 2 / 3, "host": 0.0, "disk": 1 / 3}
    plan = write_json("plan.json", tiny_plan(split_tokens=0, kv_placement=RAM, x_placement=RAM,
                                             weight_placement=third))
    result = run_cli("execute", plan, "--steps", "3", "--layers", "1", "--json", "--disk-dir", tmp_path)
    assert result.exit_code == 0, result.stderr
    m = json.loads(result.stdout)["measured"]
    assert m["per_layer_busy_s"]["disk_read"] > 0
    assert m["link_bytes_per_step"]["disk_read"] > 0


def _mutate(path: str, value):
    return with_changes(tiny_plan(), {path: value})


BAD_PLANS = {
    "schema version": (_mutate("schema_version", 2), "schema_version"),
    "no decisions": (_mutate("decisions", KeyError), "missing 'decisions'"),
    "no seq": (_mutate("inputs.seq", KeyError), "'seq'"),
    "batch product": (_mutate("decisions.gpu_batch", 3), "gpu_batch"),
    "split past seq": (_mutate("decisions.split_tokens", 41), "split_tokens"),
    "dtype contradiction": (_mutate("inputs.dtype", "float16"), "contradicts decisions.dtype"),
    "batch contradiction": (_mutate("inputs.batch", 8), "contradicts decisions.batch"),
    "past learned positions": (_mutate("model.max_position_embeddings", 32), "learned positions"),
    "model name contradiction": (_mutate("inputs.model", "opt-13b"), "does not match"),
    "bad fractions": (_mutate("decisions.kv_placement", {"device": 0.5, "host": 0.0, "disk": 0.2}), "sum to"),
}


@pytest.mark.parametrize("name", list(BAD_PLANS))
def test_bad_plans_refused_with_one_line(name, run_cli, write_json, tmp_path):
    plan, expected = BAD_PLANS[name]
    result = run_cli("execute", write_json("bad.json", copy.deepcopy(plan)), "--disk-dir", tmp_path)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error:") and result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr


def test_truncated_and_missing_plan_files(run_cli, write_json, tmp_path):
    text = json.dumps(tiny_plan())
    result = run_cli("execute", write_json("cut.json", text[: len(text) // 2]))
    assert result.exit_code == 2 and "truncated" in result.stderr and result.stderr.count("\n") == 1
    result = run_cli("execute", tmp_path / "nope.json")
    assert result.exit_code == 2 and "not found" in result.stderr


def test_plan_that_does_not_fit_is_refused_before_allocating(run_cli, write_json, tmp_path):
    big = tiny_plan(batch=4096, gpu_batch=4096, num_gpu_batches=1, split_tokens=0, kv_placement=RAM)
    big["model"] = CATALOG["opt-66b"].to_dict()
    big["inputs"].update(model="opt-66b", batch=4096, seq=2048, prompt=2000, gen=48)
    result = run_cli("execute", write_json("big.json", big), "--disk-dir", tmp_path)
    assert result.exit_code == 2
    assert "GiB of RAM" in result.stderr and "available" in result.stderr, result.stderr
    result = run_cli("execute", write_json("big.json", big), "--layers", "99")
    assert result.exit_code == 2 and "--layers" in result.stderr
    result = run_cli("execute", write_json("small.json", tiny_plan()), "--steps", "17")
    assert result.exit_code == 2 and "--steps" in result.stderr


def test_plan_for_a_gpu_is_repredicted_with_the_local_profile(run_cli, write_json, tmp_path, local_profile_path):
    """A plan made for a T4 runs here on the CPU; its numbers are re-predicted with this machine's profile."""
    from planner.profile import load_profile
    from planner.search import SolveRequest, solve

    plan = solve(SolveRequest(model=TINY, seq=40, gen=16, batch=4, dtype="float32"), load_profile(gpu="t4"))
    assert plan["hardware"]["device_type"] == "cuda"
    path = write_json("t4.json", plan)
    result = run_cli("execute", path, "--steps", "3", "--profile", local_profile_path, "--disk-dir", tmp_path,
                     "--json")
    assert result.exit_code == 0, result.stderr
    rec = json.loads(result.stdout)
    assert rec["prediction_source"].startswith("re-predicted with --profile")
    assert rec["predicted"]["decode_step_s"] > 0
    rows = {r["quantity"]: r for r in rec["comparison"]}
    assert rows["decode step (all layers)"]["gap_pct"] is not None


def test_solve_then_execute_on_this_machine(run_cli, tmp_path, local_profile_path):
    """The whole loop: a plan solved for this machine with the K,V forced to disk, then run."""
    cfg = {"model_type": "opt", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "ffn_dim": 128, "vocab_size": 101, "max_position_embeddings": 128, "torch_dtype": "float32"}
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.json").write_text(json.dumps(cfg))
    plan = tmp_path / "plan.json"
    solved = run_cli("solve", "--model", tmp_path / "tiny" / "config.json", "--seq", "96", "--gen", "8",
                     "--batch", "4", "--profile", local_profile_path, "--strategy", "transfer", "-o", plan)
    assert solved.exit_code == 0, solved.stderr
    result = run_cli("execute", plan, "--steps", "3", "--profile", local_profile_path, "--disk-dir", tmp_path,
                     "--out", tmp_path / "run.json")
    assert result.exit_code == 0, result.stderr
    rec = json.loads((tmp_path / "run.json").read_text())
    assert rec["predicted"]["decode_step_s"] > 0
    assert {r["quantity"] for r in rec["comparison"]} >= {"layer time", "decode step (all layers)"}


def test_steps_and_layers_zero_refused_before_allocating(run_cli, write_json, tmp_path, monkeypatch):
    """--steps 0 and --layers 0 are not 'the default': one line, exit 2, before the memory check."""
    def no_allocation(_setup):
        raise AssertionError("the run got as far as checking memory")

    monkeypatch.setattr("runtime.run.check_fits", no_allocation)
    plan = write_json("plan.json", tiny_plan())
    for option in ("--steps", "--layers"):
        result = run_cli("execute", plan, option, "0", "--disk-dir", tmp_path)
        assert result.exit_code == 2, result.stderr
        assert result.stderr.startswith("Error:") and result.stderr.count("\n") == 1, result.stderr
        assert option in result.stderr and "got 0" in result.stderr


def test_progress_on_stderr_and_notes_say_what_ran(run_cli, write_json, tmp_path, no_local_profile):
    plan = write_json("plan.json", tiny_plan(split_tokens=0, kv_placement=RAM, x_placement=RAM))
    result = run_cli("execute", plan, "--steps", "3", "--layers", "2", "--fill", "random", "--disk-dir", tmp_path,
                     "--out", tmp_path / "run.json")
    assert result.exit_code == 0, result.stderr
    assert "decode step 1/3" in result.stderr and "decode step 3/3" in result.stderr
    assert "random values" in result.stderr
    assert "decode step 1/3" not in result.stdout  # progress stays off the table
    rec = json.loads((tmp_path / "run.json").read_text())
    layers_note = next(n for n in rec["notes"] if n.startswith("--layers 2"))
    assert "cycling through 2 stored" in layers_note and "prefill" not in layers_note  # no prefill ran
    assert any(f"{rec['run']['torch_threads']} torch threads" in n for n in rec["notes"])
    quiet = run_cli("execute", plan, "--steps", "2", "--fill", "random", "--quiet", "--disk-dir", tmp_path)
    assert quiet.exit_code == 0 and "decode step 1/" not in quiet.stderr


def test_load_above_the_cpu_count_is_warned_in_table_record_and_report(run_cli, write_json, tmp_path,
                                                                       no_local_profile, monkeypatch):
    import os

    from planner.report.runs import run_record_from_dict

    cpus = os.cpu_count() or 1
    monkeypatch.setattr("runtime.run.os.getloadavg", lambda: (cpus + 3.0, 1.0, 1.0))
    plan = write_json("plan.json", tiny_plan(split_tokens=0, kv_placement=RAM, x_placement=RAM))
    out = tmp_path / "run.json"
    result = run_cli("execute", plan, "--steps", "2", "--fill", "random", "--disk-dir", tmp_path, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert "WARNING: contended run" in result.stdout
    assert f"warning: timings not trustworthy: load average {cpus + 3.0:.2f} on {cpus} CPUs" in result.stdout
    rec = json.loads(out.read_text())
    assert rec["run"]["warnings"][0].startswith(f"load average {cpus + 3.0:.2f}")
    rec["prediction"] = {"decode_step_s": 0.01}
    assert "[contended: load average" in run_record_from_dict(rec, "run.json").label


def test_contention_warnings_from_the_runs_own_times():
    from runtime.run import contention_warnings

    run = {"cpu_count": 4, "load_average_1min": [1.0, 2.0], "torch_threads": 1}
    calm = {"per_layer_busy_s": {"compute": 0.010}, "per_layer_compute_thread_cpu_s": 0.0095,
            "step_wall_s": [0.5, 0.10, 0.11, 0.12]}
    assert contention_warnings(run, calm, [1, 2, 3]) == []  # step 0 (warm-up) is not compared
    crowded = dict(calm, per_layer_compute_thread_cpu_s=0.005)
    assert contention_warnings(run, crowded, [1, 2, 3]) == [
        "the compute thread ran only 50% of its busy time (it waited for a CPU the rest)"]
    # with several torch threads the calling thread's CPU time is not the whole compute: no verdict
    assert contention_warnings(dict(run, torch_threads=2), crowded, [1, 2, 3]) == []
    uneven = dict(calm, step_wall_s=[0.1, 0.10, 0.25, 0.11])
    assert contention_warnings(run, uneven, [1, 2, 3]) == ["measured steps ranged from 100.0 to 250.0 ms"]
    loaded = dict(run, load_average_1min=[3.0, 4.5])
    assert contention_warnings(loaded, calm, [1, 2, 3]) == ["load average 4.50 on 4 CPUs: other processes "
                                                            "competed for the CPUs"]


# -- the machine check: the plan's own ops timed against the profile's cost models (runtime/check.py) --
OPT_RAM = dict(split_tokens=0, kv_placement=RAM, x_placement=RAM)


def _check(rec: dict) -> dict:
    return {p["op"]: p for p in rec["machine_check"]["probes"]}


def test_machine_check_lands_in_the_table_and_the_record(run_cli, write_json, tmp_path, local_profile_path):
    """Before the steps, execute times the plan's GEMM, attention and disk read at the plan's shapes and
    records each time over the profile's model for that shape; the profile's age comes from its stamp."""
    plan = write_json("plan.json", tiny_plan())
    out = tmp_path / "run.json"
    result = run_cli("execute", plan, "--steps", "3", "--profile", local_profile_path, "--disk-dir", tmp_path,
                     "--out", out)
    assert result.exit_code == 0, result.stderr
    name = json.loads(local_profile_path.read_text())["name"]
    assert f"of the profile's time (profile {name}, taken 20" in result.stdout
    rec = json.loads(out.read_text())
    check = rec["machine_check"]
    assert check["age_source"] == "measurement.measured_at" and 0 <= check["age_s"] < 3600  # made this session
    probes = _check(rec)
    assert set(probes) == {"gemm", "attention", "disk_read"}
    # the tiny model's largest projection (the fused QKV: 3 x 64 outputs of 64 inputs) over batch 4 rows
    assert probes["gemm"]["shape"] == {"m": 4, "n": 192, "k": 64}
    # one GPU batch (2) at the run's average context round(30 + (3 - 1) / 2) = 31
    assert probes["attention"]["shape"] == {"batch": 2, "context": 31, "heads": 4, "kv_heads": 4, "head_dim": 16}
    # the largest disk read of a step: K,V of positions [10, 31) for 2 sequences, 2 x 64 x 4 bytes each,
    # rounded up to whole pages (21,504 -> 24,576)
    assert probes["disk_read"]["shape"] == {"bytes": 24576}
    for p in probes.values():
        assert p["measured_s"] > 0 and p["predicted_s"] > 0
        assert p["ratio"] == pytest.approx(p["measured_s"] / p["predicted_s"], rel=1e-3)
        assert p["within"] == (p["band"][0] <= p["ratio"] <= p["band"][1])
    # each time is compared with the profile's model at the shape recorded (not at another one)
    from planner.costmodel import CostModel
    from planner.profile import load_profile

    cost, a = CostModel(load_profile(local_profile_path)), probes["attention"]["shape"]
    assert probes["attention"]["predicted_s"] == pytest.approx(
        cost.attention_s(TINY, a["batch"], 1, a["context"], "float32"), rel=1e-9)
    assert probes["disk_read"]["predicted_s"] == pytest.approx(cost.transfer_s("disk_read", 24576), rel=1e-9)
    assert probes["gemm"]["band"] == [0.75, 1.25] and "spread" in probes["gemm"]["band_source"]
    assert "read_time_spread" in probes["disk_read"]["band_source"]
    # every op outside its band is one warning in run.warnings, printed under the table
    off = [p["op"] for p in probes.values() if not p["within"]]
    drift = [w for w in rec["run"]["warnings"] if w.startswith("machine check: ")]
    assert len(drift) == len(off) == result.stdout.count("warning: machine check: ")
    assert check["predicted_with_ratios"]["decode_step_s"] > 0
    assert len(check["ratios_applied_to"]) == 3


def _doctored(local_profile_path, tmp_path, key: str, factor: float):
    """The session's profile with one fitted model's times multiplied by `factor` (a fitted model's
    time is linear in its coefficients, planner/costmodel/fitted.py)."""
    data = json.loads(local_profile_path.read_text())
    data["cost_models"][key]["linear"] = [c * factor for c in data["cost_models"][key]["linear"]]
    path = tmp_path / "doctored.json"
    path.write_text(json.dumps(data))
    return path


def test_a_profile_3x_too_fast_for_gemms_is_warned(run_cli, write_json, tmp_path, local_profile_path):
    """A profile whose GEMM model says a third of the time: the check's GEMM ratio is 3x the GEMM's time
    over the honest profile's model, far outside the band, printed and recorded as a warning."""
    from planner.costmodel import CostModel
    from planner.layer_costs import Gemm
    from planner.profile import load_profile

    # opt-125m's shapes are inside the smoke profile's sampled range; one stored layer keeps it small
    plan = tiny_plan(**OPT_RAM)
    plan["model"] = CATALOG["opt-125m"].to_dict()
    plan["inputs"].update(model="opt-125m", seq=64, prompt=32, gen=8)
    doctored = _doctored(local_profile_path, tmp_path, "gemm.device.float32", 1 / 3)
    out = tmp_path / "run.json"
    result = run_cli("execute", write_json("plan.json", plan), "--steps", "2", "--layers", "1", "--fill", "random",
                     "--disk-dir", tmp_path, "--profile", doctored, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert "warning: machine check: GEMM took x" in result.stdout
    rec = json.loads(out.read_text())
    gemm = _check(rec)["gemm"]
    honest_s = CostModel(load_profile(local_profile_path)).gemm_s(Gemm(**gemm["shape"]), "float32")
    expected = 3 * gemm["measured_s"] / honest_s
    assert gemm["ratio"] == pytest.approx(expected, rel=0.01)
    # loose: a shared machine is slower than its profile more often than faster; 1.5 leaves it 2x room
    assert gemm["ratio"] > 1.5 and not gemm["within"]
    assert any(w.startswith("machine check: GEMM took x") for w in rec["run"]["warnings"])
    # the prediction re-made with the measured ratios undoes the doctoring of the GEMM model: its compute
    # busy time is the doctored prediction's with the GEMM part multiplied by the ratio (> 1.5)
    busy = rec["predicted"]["per_layer_busy_s"]["compute"]
    assert rec["machine_check"]["predicted_with_ratios"]["per_layer_busy_s"]["compute"] > 1.2 * busy


def test_no_check_skips_the_machine_check(run_cli, write_json, tmp_path, local_profile_path, monkeypatch):
    def no_check(*_args, **_kwargs):
        raise AssertionError("the machine check ran under --no-check")

    monkeypatch.setattr("runtime.check.machine_check", no_check)
    plan = write_json("plan.json", tiny_plan(**OPT_RAM))
    result = run_cli("execute", plan, "--steps", "2", "--fill", "random", "--profile", local_profile_path,
                     "--disk-dir", tmp_path, "--no-check", "--json")
    assert result.exit_code == 0, result.stderr
    rec = json.loads(result.stdout)
    assert rec["machine_check"] is None and "machine check skipped (--no-check)" in rec["notes"]
    assert "machine check" not in result.stderr


def test_drift_warning_labels_the_report_row_apart_from_contention():
    from planner.report.runs import run_record_from_dict

    rec = {"measured": {"decode_step_s": 0.012}, "prediction": {"decode_step_s": 0.01},
           "run": {"warnings": ["machine check: GEMM took x1.31 the profile's time, outside x0.90-x1.10 (assumed)"]}}
    label = run_record_from_dict(rec, "run.json").label
    assert "[not as profiled: GEMM took x1.31 the profile's time]" in label and "contended" not in label


def test_profile_age_from_its_stamp_else_the_file_time(tmp_path):
    from datetime import datetime, timezone

    from planner.profile import load_profile, profile_from_dict
    from runtime.check import profile_age

    data = copy.deepcopy(load_profile(gpu="t4").data)
    now = datetime(2026, 12, 3, 10, 0, tzinfo=timezone.utc)
    data["measurement"] = {"measured_at": "2026-12-02T09:00:00+00:00"}
    age = profile_age(profile_from_dict(data), None, now)
    assert age == {"measured_at": "2026-12-02T09:00:00+00:00", "age_s": 25 * 3600.0,
                   "age_source": "measurement.measured_at"}
    del data["measurement"]
    path = tmp_path / "old.json"
    path.write_text("{}")
    old = profile_age(profile_from_dict(data), path, now)
    assert old["age_source"].startswith("the profile file's modification time")
    assert profile_age(profile_from_dict(data), None, now)["age_s"] is None
