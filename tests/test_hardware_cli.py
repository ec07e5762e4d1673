"""A machine as device + host + storage parts with provenance: the profile schema, composing a
datasheet GPU with a measured host and drive or stated numbers, CPU attention from the host part,
and what each command says was assumed — through the CLI as a user runs it."""

import copy
import json
from pathlib import Path

import pytest

from planner.costmodel import CostModel
from planner.errors import KvplanError
from planner.hardware import Stated, assumed_numbers, compose_profile
from planner.models import load_model
from planner.profile import DATASHEET_DIR, datasheet_names, load_profile, profile_from_dict

REPO = Path(__file__).resolve().parents[1]
CPU_V1 = REPO / "docs" / "validation_profile_cpu_1thread.json"  # a measured CPU-only profile, schema_version 1
SOLVE = ("solve", "--model", "opt-13b", "--seq", "1152", "--gen", "128", "--batch", "64", "--gpu", "a100-40g-pcie")
FAST_HOST = ("--cpu-attention-gbps", "100", "--dram-gbps", "200")
SLOW_HOST = ("--cpu-attention-gbps", "5", "--disk-read-gbps", "0.5")


def _plan(run_cli, tmp_path, *extra, name="plan.json"):
    out = tmp_path / name
    result = run_cli(*SOLVE, *extra, "-o", out)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text()), result


@pytest.mark.parametrize("name", datasheet_names())
def test_datasheet_parts_are_marked_and_consistent(name):
    p = load_profile(gpu=name)
    assert (p.device.provenance, p.host.provenance, p.storage.provenance) == ("datasheet", "assumed", "assumed")
    assert p.data["schema_version"] == 2 and "host.attention_gb_per_s" in p.data["sources"]
    # CPU attention reads K,V from DRAM: an assumed rate above the assumed DRAM bandwidth would be nonsense
    assert set(p.host.attention_gb_per_s) == {"float16", "bfloat16", "float32"}
    assert all(0 < r <= p.host.memory_gb_per_s for r in p.host.attention_gb_per_s.values())


def test_schema_v1_profiles_still_load_with_provenance_from_their_kind():
    measured = load_profile(CPU_V1)
    assert json.loads(CPU_V1.read_text())["schema_version"] == 1
    assert (measured.device.provenance, measured.host.provenance, measured.storage.provenance) == ("measured",) * 3
    assert measured.host_is_device and measured.disk_time_spread == (0.6745, 1.097)
    sheet = json.loads((DATASHEET_DIR / "t4.json").read_text())
    sheet["schema_version"] = 1
    for part in ("device", "host", "disk"):
        del sheet[part]["provenance"]
    old = profile_from_dict(sheet, "old-t4")
    assert (old.device.provenance, old.host.provenance, old.storage.provenance) == ("datasheet", "assumed", "assumed")


def _set(data, path, value):
    obj = data
    *parents, last = path.split(".")
    for key in parents:
        obj = obj[key]
    obj[last] = value


@pytest.mark.parametrize("path, value, field", [
    ("host.memory_gb_per_s", "100", "host.memory_gb_per_s"),
    ("host.memory_gb_per_s", float("nan"), "host.memory_gb_per_s"),
    ("host.attention_gb_per_s.float16", -2.0, "host.attention_gb_per_s.float16"),
    ("host.attention_gb_per_s.float16", 0, "host.attention_gb_per_s.float16"),
    ("links.disk_read.gb_per_s", 0.0, "links.disk_read.gb_per_s"),
    ("links.h2d.gb_per_s", 1e9, "links.h2d.gb_per_s"),
    ("device.peak_tflops.float16", "312", "device.peak_tflops.float16"),
    ("host.provenance", "guessed", "host.provenance"),
    ("disk.free_bytes", 1.5e12, "disk.free_bytes"),
    ("host.cores", 0, "host.cores"),
    ("device.memory_bytes", -1, "device.memory_bytes"),
    ("name", "evil\nname", "name"),
    ("device.name", "", "device.name"),
])
def test_bad_profile_fields_are_one_line_errors_naming_the_field(run_cli, tmp_path, path, value, field):
    data = json.loads((DATASHEET_DIR / "a100-40g-pcie.json").read_text())
    _set(data, path, value)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    out = tmp_path / "plan.json"
    for args in (("--profile", bad), ("--gpu", "a100-40g-pcie", "--host", bad), ("--gpu", "t4", "--storage", bad)):
        result = run_cli("solve", "--model", "opt-125m", "--seq", "512", *args, "-o", out)
        assert result.exit_code == 2 and field in result.stderr, (args, result.output)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
        assert not out.exists()


def test_a_slow_host_flips_auto_from_cpu_attention_to_recompute(run_cli, tmp_path):
    """opt-13b on an A100 40 GB PCIe: with a host whose attention reads K,V at 100 GB/s, auto puts
    attention on the CPU; with 5 GB/s and a 0.5 GB/s drive (a cloud VM) it recomputes part of the
    context on the GPU instead."""
    fast, _ = _plan(run_cli, tmp_path, *FAST_HOST, name="fast.json")
    slow, _ = _plan(run_cli, tmp_path, *SLOW_HOST, name="slow.json")
    assert fast["decisions"]["attention_where"] == "cpu" and fast["decisions"]["strategy"] == "cpu-attention"
    assert slow["decisions"]["attention_where"] == "device" and slow["decisions"]["split_tokens"] > 0
    assert slow["decisions"]["strategy"] in ("recompute", "mixed")
    # the CPU's time in the plan is the K,V bytes over the stated rate
    assert fast["prediction"]["timeline"]["bound_by"] == "cpu"
    model = load_model("opt-13b")
    ctx = fast["prediction"]["average_context"]
    kv_bytes = model.num_layers * 64 * (round(ctx) + 1) * 2 * model.kv_dim * 2
    assert fast["prediction"]["per_layer_busy_s"]["cpu"] * model.num_layers == pytest.approx(kv_bytes / 100e9,
                                                                                             rel=0.01)


def test_datasheet_cpu_attention_uses_the_assumed_host_rate():
    p = load_profile(gpu="a100-40g-pcie")
    m = load_model("opt-13b")
    t = CostModel(p).attention_s(m, 64, 1, 4095, "float16", where="cpu")
    assert t == pytest.approx(64 * 4096 * 2 * m.kv_dim * 2 / 25e9)
    faster = compose_profile(p, stated=Stated(cpu_attention_gbps=50.0))
    assert CostModel(faster).attention_s(m, 64, 1, 4095, "float16", where="cpu") == pytest.approx(t / 2)


def test_measured_cpu_profile_as_the_host_part(run_cli, tmp_path):
    """--host FILE with a CPU-only measured profile: its CPU becomes the GPU's host; the CPU's device
    models answer the host's CPU queries, and the plan says where each part came from."""
    cpu = load_profile(CPU_V1)
    composed = compose_profile(load_profile(gpu="t4"), host=cpu, storage=cpu)
    assert composed.kind == "composed" and composed.name == "t4+host-local-vm-cpu+storage-local-vm-cpu"
    assert not composed.host_is_device and composed.host.memory_bytes == cpu.host.memory_bytes
    assert composed.storage.read == cpu.links["disk_read"] and composed.disk_time_spread == cpu.disk_time_spread
    m = load_model("opt-125m")
    assert CostModel(composed).attention_s(m, 4, 1, 999, "float32", where="cpu") == \
        CostModel(cpu).attention_s(m, 4, 1, 999, "float32", where="device")
    assert CostModel(composed).cpu_attention_source("float32").startswith("fitted:")
    plan, result = _plan(run_cli, tmp_path, "--host", CPU_V1, "--storage", CPU_V1)
    parts = plan["hardware"]["parts"]
    assert {k: (v["provenance"], v["from"]) for k, v in parts.items()} == {
        "device": ("datasheet", "a100-40g-pcie"), "host": ("measured", "local-vm-cpu"),
        "storage": ("measured", "local-vm-cpu")}
    assert plan["hardware"]["profile_kind"] == "composed"
    # float16 was not measured on that CPU: the one number still assumed is said so
    assert plan["hardware"]["assumed"] == ["CPU attention (a roofline over DRAM bandwidth with an assumed "
                                           "efficiency) (float16)"]
    assert "assumed, not measured or stated: CPU attention" in result.stdout


def test_composition_is_deterministic_and_named(run_cli, tmp_path):
    a, _ = _plan(run_cli, tmp_path, *SLOW_HOST, "--host", CPU_V1, name="a.json")
    b_path = tmp_path / "b.json"
    assert run_cli(*SOLVE, *SLOW_HOST, "--host", CPU_V1, "-o", b_path).exit_code == 0
    assert (tmp_path / "a.json").read_bytes() == b_path.read_bytes()
    plain, _ = _plan(run_cli, tmp_path, name="plain.json")
    assert plain["hardware"]["profile_hash"] == load_profile(gpu="a100-40g-pcie").profile_hash
    assert a["hardware"]["profile_hash"] != plain["hardware"]["profile_hash"]
    assert a["hardware"]["profile_name"] == "a100-40g-pcie+host-local-vm-cpu+stated"
    assert a["hardware"]["parts"]["host"]["stated"] == ["attention_gb_per_s"]
    assert a["hardware"]["parts"]["storage"]["stated"] == ["disk_read"]


def test_solve_and_explain_say_what_was_assumed(run_cli, tmp_path):
    plan, result = _plan(run_cli, tmp_path, *SLOW_HOST)
    line = [s for s in result.stdout.splitlines() if "assumed, not measured or stated" in s]
    assert len(line) == 1
    assert "DRAM 100 GB/s" in line[0] and "drive write 2 GB/s" in line[0]
    assert "CPU attention" not in line[0] and "drive read" not in line[0]  # stated, not assumed
    explained = run_cli("explain", tmp_path / "plan.json")
    assert explained.exit_code == 0
    assert "hardware parts: device datasheet (a100-40g-pcie), host assumed (a100-40g-pcie, stated: " \
           "attention_gb_per_s)" in explained.stdout
    assert "DRAM 100 GB/s" in explained.stdout
    _, measured = _plan(run_cli, tmp_path, "--host", CPU_V1, "--storage", CPU_V1, "--cpu-attention-gbps", "3",
                        name="m.json")
    assert "assumed, not measured or stated" not in measured.stdout


def test_stated_dram_rescales_an_assumed_attention_rate_but_not_a_stated_one():
    sheet = load_profile(gpu="a100-40g-pcie")
    p = compose_profile(sheet, stated=Stated(dram_gbps=200.0))
    assert p.host.attention_gb_per_s["float16"] == pytest.approx(50.0)
    assert p.links["host_memcpy"].gb_per_s == pytest.approx(100.0)
    assert "DRAM" not in " ".join(assumed_numbers(p)) and "CPU attention" in " ".join(assumed_numbers(p))
    p = compose_profile(sheet, stated=Stated(dram_gbps=200.0, cpu_attention_gbps=10.0))
    assert p.host.attention_gb_per_s["float16"] == 10.0


def test_predict_and_report_compose_parts(run_cli, tmp_path):
    result = run_cli("predict", "--gpu", "t4", "--model", "opt-125m", "--tokens", "1", "--context", "1000",
                     "--batch", "4", "--cpu-attention-gbps", "8", "--json")
    out = json.loads(result.stdout)
    assert out["ops"]["cpu_attention"]["model"] == "host rate (stated)"
    m = load_model("opt-125m")
    assert out["ops"]["cpu_attention"]["time_s"] == pytest.approx(4 * 1001 * 2 * m.kv_dim * 2 / 8e9)
    assert out["hardware"]["parts"]["host"]["stated"] == ["attention_gb_per_s"]
    report = run_cli("report", "--models", "opt-125m", "--gpus", "t4", "--profile", CPU_V1, "--seqs", "1024",
                     "--strategies", "auto", "--cpu-attention-gbps", "8", "--storage", CPU_V1, "-o", tmp_path / "rep")
    assert report.exit_code == 0, report.output
    config = json.loads((tmp_path / "rep" / "config.json").read_text())
    assert f"--storage {CPU_V1} --cpu-attention-gbps 8 -o" in config["command"]
    gpu, cpu = config["grid"]["gpus"]
    assert gpu["hardware"]["parts"]["storage"]["provenance"] == "measured"
    assert gpu["hardware"]["parts"]["host"]["stated"] == ["attention_gb_per_s"]
    assert gpu["profile_hash"] != load_profile(gpu="t4").profile_hash
    # the CPU-only entry keeps its own host (its CPU is its device): no stated CPU attention there
    assert cpu["hardware"]["parts"]["host"] == {**cpu["hardware"]["parts"]["host"], "provenance": "measured",
                                                "from": "local-vm-cpu", "stated": [], "shared_with_device": True}
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "assumed, not measured or stated" in html and "DRAM 100 GB/s" in html


def _plan_file(tmp_path):
    plan = json.loads(next((REPO / "plans").glob("*.json")).read_text())
    path = tmp_path / "a-plan.json"
    path.write_text(json.dumps(plan))
    return path


def _zero_disk(tmp_path):
    data = json.loads(CPU_V1.read_text())
    data["links"]["disk_read"]["gb_per_s"] = 0
    path = tmp_path / "zero-disk.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("args, message", [
    (("--cpu-attention-gbps", "-5"), "--cpu-attention-gbps"),
    (("--cpu-attention-gbps", "1e9"), "--cpu-attention-gbps"),
    (("--dram-gbps", "fast"), "--dram-gbps"),
    (("--disk-read-gbps", "0"), "--disk-read-gbps"),
    (("--disk-write-gbps", "nan"), "--disk-write-gbps"),
    (("--cpu-cores", "2.5"), "--cpu-cores must be a whole number"),
    (("--cpu-tflops", "0"), "--cpu-tflops"),
    (("--host-mem", "0"), "--host-mem"),
    (("--cpu-attention-gbps", "150"), "faster than the host's DRAM bandwidth 100 GB/s (assumed)"),
    (("--host", "PLAN"), "is a kvplan plan, not a hardware profile"),
    (("--host", "MISSING"), "--host"),
    (("--host", "CPU", "--cpu-mem", "10000GB"), "--cpu-mem 10 TB is more than the host memory"),
    (("--storage", "ZERO"), "links.disk_read.gb_per_s"),
    (("--profile", "CPU", "--host", "CPU"), "is CPU-only"),
    (("--profile", "CPU", "--cpu-attention-gbps", "5"), "--cpu-attention-gbps: profile local-vm-cpu is CPU-only"),
])
def test_bad_hardware_input_is_one_line_and_writes_nothing(run_cli, tmp_path, args, message):
    files = {"PLAN": _plan_file(tmp_path), "MISSING": tmp_path / "nope.json", "CPU": CPU_V1,
             "ZERO": _zero_disk(tmp_path)}
    args = [str(files.get(a, a)) for a in args]
    base = ["--gpu", "a100-40g-pcie"] if "--profile" not in args else []
    out = tmp_path / "plan.json"
    result = run_cli("solve", "--model", "opt-125m", "--seq", "512", *base, *args, "-o", out)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert not out.exists()


def test_host_local_without_a_measured_profile(run_cli, tmp_path, monkeypatch):
    monkeypatch.setattr("planner.cli.hardware.find_local_profile", lambda: None)
    result = run_cli(*SOLVE, "--host", "local", "-o", tmp_path / "p.json")
    assert result.exit_code == 2 and "--host local: this machine has no measured profile" in result.stderr
    monkeypatch.setattr("planner.cli.hardware.find_local_profile", lambda: CPU_V1)
    plan, _ = _plan(run_cli, tmp_path, "--host", "local")
    assert plan["hardware"]["parts"]["host"]["from"] == "local-vm-cpu"


def test_composing_nothing_keeps_the_profile():
    sheet = load_profile(gpu="l4")
    assert compose_profile(sheet) is sheet
    with pytest.raises(KvplanError, match="CPU-only"):
        compose_profile(load_profile(CPU_V1), host=sheet)
    data = copy.deepcopy(sheet.data)
    data["host"]["shared_with_device"] = True
    with pytest.raises(KvplanError, match="shared_with_device"):
        profile_from_dict(data, "x")


def _measured_gpu_with_cpu_models():
    """A measured GPU profile whose host CPU has a fitted attention model (taken from the CPU profile)."""
    data = json.loads((DATASHEET_DIR / "t4.json").read_text())
    cpu = json.loads(CPU_V1.read_text())
    data.update(kind="measured", name="local-box-tesla-t4",
                cost_models={"attention.cpu.float16": cpu["cost_models"]["attention.device.bfloat16"]})
    for part in ("device", "host", "disk"):
        data[part]["provenance"] = "measured"
    return profile_from_dict(data, "gpu-box")


def test_a_host_part_replaces_the_base_profiles_cpu_models():
    box = _measured_gpu_with_cpu_models()
    assert CostModel(box).cpu_attention_source("float16").startswith("fitted:")
    sheet_host = compose_profile(box, host=load_profile(gpu="a100-40g-pcie"))
    assert "attention.cpu.float16" not in (sheet_host.data.get("cost_models") or {})
    assert CostModel(sheet_host).cpu_attention_source("float16") == "host rate (assumed)"
    assert sheet_host.host.provenance == "assumed" and sheet_host.device.provenance == "measured"
    # and the other way round: a GPU box's measured host under a datasheet GPU keeps its fitted model
    on_a100 = compose_profile(load_profile(gpu="a100-40g-pcie"), host=box)
    m = load_model("opt-125m")
    assert CostModel(on_a100).attention_s(m, 4, 1, 999, "float16", where="cpu") == \
        CostModel(box).attention_s(m, 4, 1, 999, "float16", where="cpu")
    # a stated rate wins over the fitted model
    stated = compose_profile(box, stated=Stated(cpu_attention_gbps=7.0))
    assert CostModel(stated).cpu_attention_source("float16") == "host rate (stated)"


@pytest.mark.parametrize("args, message", [
    (("--dram-gbps", "-1"), "--dram-gbps"),
    (("--profile", "CPU", "--host", "CPU"), "is CPU-only"),
])
def test_demo_refuses_bad_hardware_before_running(run_cli, tmp_path, args, message):
    args = [str(CPU_V1) if a == "CPU" else a for a in args]
    result = run_cli("demo", *args, "-o", tmp_path / "run")
    assert result.exit_code == 2 and message in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()
