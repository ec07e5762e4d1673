"""`kvplan profile` as a user runs it: a valid measured profile, nothing half-written, one-line errors."""

import json

import pytest

from planner.costmodel import CostModel, fitted
from planner.layer_costs import layer_gemms
from planner.models import load_model
from planner.profile import load_profile, profile_from_dict


def test_smoke_profile_is_a_valid_measured_profile(local_profile_path):
    profile = load_profile(local_profile_path)
    data = profile.data
    assert profile.kind == "measured" and profile.device_type == "cpu"
    assert profile.host_is_device and data["host"]["shared_with_device"] is True
    assert profile.device_memory_bytes == profile.host_memory_bytes > 0
    assert profile.device_peak_tflops["float32"] > 0
    assert data["disk"]["method"] in ("o_direct", "fadvise_dontneed")
    assert data["disk"]["free_bytes"] > 0
    # the host is the device: h2d/d2h are the host memcpy
    assert data["links"]["h2d"] == data["links"]["host_memcpy"]
    for link in ("h2d", "d2h", "disk_read", "disk_write", "host_memcpy"):
        assert profile.links[link].gb_per_s > 0
    for key in ("gemm.device.float32", "attention.device.float32", "elementwise.device",
                "link.disk_read", "link.disk_write", "link.host_memcpy"):
        model = data["cost_models"][key]
        assert model["kind"] in fitted.KINDS
        assert 0 <= model["cv_mape"] < 5
        assert len(data["samples"][key]["rows"]) == model["n_samples"] >= 3
    # the disk's drift between rounds: per-round medians kept, their spread around 1
    rounds = data["samples"]["link.disk_read_rounds"]
    assert rounds["columns"] == ["bytes", "round", "time_s"]
    assert {row[1] for row in rounds["rows"]} == {0, 1, 2}
    fast, slow = profile.disk_time_spread
    assert 0 < fast <= 1 <= slow
    # plain data only: the profile round-trips through JSON unchanged
    assert json.loads(json.dumps(data)) == data


def test_measured_profile_answers_from_its_fitted_models(local_profile_path):
    cost = CostModel(load_profile(local_profile_path))
    assert cost.source("gemm", "device", "float32").startswith("fitted:")
    assert cost.source("gemm", "cpu", "float32").startswith("fitted:")  # the CPU is the device here
    assert cost.source("link", "disk_read").startswith("fitted:")
    model = load_model("llama-2-13b")
    small = cost.gemm_s(layer_gemms(model, 1)["mlp_up"], "float32")
    big = cost.gemm_s(layer_gemms(model, 4096)["mlp_up"], "float32")
    assert 0 < small < big
    assert cost.transfer_s("disk_read", 1 << 30) > cost.transfer_s("disk_read", 1 << 20) > 0


def test_profile_json_summary(run_cli, tmp_path):
    out = tmp_path / "p.json"
    result = run_cli("profile", "--smoke", "--cpu", "--disk-dir", tmp_path, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["path"] == str(out) and summary["mode"] == "smoke"
    assert set(summary["cost_models"]) == set(json.loads(out.read_text())["cost_models"])
    assert not list(tmp_path.glob(".kvplan-disk-probe*")) and not list(tmp_path.glob(".p.json.*"))


@pytest.mark.parametrize("make_bad", ["missing", "file"])
def test_bad_disk_dir_is_one_line_error(run_cli, tmp_path, make_bad):
    target = tmp_path / "nope"
    if make_bad == "file":
        target.write_text("x")
    out = tmp_path / "p.json"
    result = run_cli("profile", "--smoke", "--cpu", "--disk-dir", target, "-o", out)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "--disk-dir" in result.stderr
    assert not out.exists()


def test_full_disk_dir_is_one_line_error(run_cli, tmp_path, monkeypatch):
    import shutil

    from planner.profiling import disk

    monkeypatch.setattr(disk.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 1 << 20))
    result = run_cli("profile", "--smoke", "--cpu", "--disk-dir", tmp_path, "-o", tmp_path / "p.json")
    assert result.exit_code == 2 and "MB free" in result.stderr
    assert not (tmp_path / "p.json").exists()


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError])
def test_interrupt_or_failure_leaves_no_profile(run_cli, tmp_path, monkeypatch, failure):
    from planner.profiling import measure

    def boom(*args, **kwargs):
        raise failure()

    monkeypatch.setattr(measure.links, "host_memcpy_samples", boom)
    out = tmp_path / "p.json"
    out.write_text("previous profile")
    result = run_cli("profile", "--smoke", "--cpu", "--disk-dir", tmp_path, "-o", out)
    assert result.exit_code == (130 if failure is KeyboardInterrupt else 2)
    assert out.read_text() == "previous profile"  # the old file is untouched, no partial one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json"]


def test_profile_validation_rejects_malformed_cost_models(local_profile_path):
    data = json.loads(local_profile_path.read_text())
    data["cost_models"]["gemm.device.float32"]["linear"] = [1.0, -2.0]
    with pytest.raises(Exception, match="linear"):
        profile_from_dict(data, "x")


@pytest.mark.parametrize("spread", [{"fast": 1.2, "slow": 1.5}, {"fast": 0.8, "slow": 0.9},
                                    {"fast": "0.8", "slow": 1.2}, {"fast": 0.8}, [0.8, 1.2],
                                    {"fast": 0.0, "slow": 1.2}])
def test_malformed_disk_spread_is_a_one_line_error(spread, run_cli, local_profile_path, write_json):
    data = json.loads(local_profile_path.read_text())
    data["disk"]["read_time_spread"] = spread
    path = write_json("bad.json", data)
    result = run_cli("solve", "--profile", path, "--model", "opt-125m", "--seq", "512")
    assert result.exit_code == 2 and "read_time_spread" in result.stderr and result.stderr.count("\n") == 1


def test_cuda_profile_assembly_without_a_gpu(monkeypatch, tmp_path):
    """The CUDA branch of the profile (separate device and host, pinned and pageable links, the CPU
    as a helper) is assembled from synthetic samples, since this machine has no GPU."""
    import numpy as np

    from planner.costmodel import fitted
    from planner.profiling import links, measure, system
    from planner.profiling.compute import SampleSet
    from planner.profiling.modes import get_mode

    mode = get_mode("quick")
    gemm_rows = [[m, n, 4096, 2e-6 + 2 * m * n * 4096 / 150e12] for m in (1, 8, 64, 512) for n in (4096, 11008)]
    att_rows = [[b, s, 32, 8, 128, 5e-6 + 2 * b * s * 8 * 128 * 2 / 1.2e12] for b in (1, 4, 16) for s in (512, 4096)]
    link_rows = [[b, 1e-5 + b / 24e9] for b in np.geomspace(4096, 1 << 28, 10)]
    samples = {}
    for proc, scale in (("device", 1), ("cpu", 200)):
        for dtype in mode.dtypes[:2]:
            samples[f"gemm.{proc}.{dtype}"] = SampleSet(["m", "n", "k", "time_s"],
                                                        [r[:3] + [r[3] * scale] for r in gemm_rows])
            samples[f"attention.{proc}.{dtype}"] = SampleSet(["b", "s", "h", "kv", "d", "time_s"],
                                                             [r[:5] + [r[5] * scale] for r in att_rows])
    samples["elementwise.device"] = SampleSet(["bytes", "time_s"], link_rows)
    for name in ("host_memcpy", "h2d", "d2h", "h2d_pageable", "d2h_pageable", "disk_read", "disk_write"):
        samples[f"link.{name}"] = SampleSet(["bytes", "time_s"], link_rows)
    models = {k: fitted.fit(k.split(".")[0], s.rows, 2) for k, s in samples.items()}
    device = system.DeviceInfo("cuda", "NVIDIA Fake-80GB", 80 << 30, 4, 16, "8.0", cache_bytes=40 << 20)
    host_bw = links.HostBandwidth(21.5, 1 << 30, 16, (0.1, 0.1, 0.1))
    data = measure.assemble(measure.Measured(mode, device, tmp_path, 1 << 40, "o_direct", samples, models, "2.x", 16,
                                             host_bw, device_memory_gb_per_s=1500.0, load_at_start=0.1))
    profile = profile_from_dict(data, "fake-cuda")
    assert profile.device_type == "cuda" and not profile.host_is_device
    assert profile.device_memory_bytes == 80 << 30 and data["pcie"] == {"generation": 4, "width": 16}
    assert data["device"]["memory_gb_per_s"] == 1500.0 and data["device"]["l2_cache_bytes"] == 40 << 20
    assert {data[p]["provenance"] for p in ("device", "host", "disk")} == {"measured"}
    # the host part is the CPU helper's: DRAM from the copy probe, attention from the attention.cpu.* rows
    # at the long context (4096, not 512): K,V bytes b * 4096 * 2 * 8 * 128 * 4 (float32) over 200 x the
    # row's time, median over b = 1, 4, 16 = the b = 4 row
    assert data["host"]["memory_gb_per_s"] == 21.5 and data["host"]["shared_with_device"] is False
    kv_bytes = 4 * 4096 * 2 * 8 * 128
    f32 = data["host"]["attention_gb_per_s"]["float32"]
    assert f32 == pytest.approx(kv_bytes * 4 / (200 * (5e-6 + kv_bytes * 2 / 1.2e12)) / 1e9, rel=1e-3)
    assert data["host"]["attention_gb_per_s"]["bfloat16"] == pytest.approx(f32 / 2, rel=1e-3)
    assert set(profile.links) >= {"h2d", "d2h", "h2d_pageable", "d2h_pageable", "disk_read", "disk_write"}
    assert data["name"].endswith("nvidia-fake-80gb")
    cost = CostModel(profile)
    g = layer_gemms(load_model("llama-2-7b"), 64)["mlp_up"]
    # the CPU helper answers from its own (200x slower) models
    assert cost.gemm_s(g, "float32", where="cpu") > 50 * cost.gemm_s(g, "float32", where="device")
