"""`kvplan profile` as a user runs it: a valid measured profile, nothing half-written, one-line errors."""

import json

import pytest

from planner.costmodel import CostModel, fitted
from planner.layer_costs import Gemm
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
    h, i = model.hidden_size, model.intermediate_size  # the MLP's up projection, one row and 4,096
    small = cost.gemm_s(Gemm(1, i, h), "float32")
    big = cost.gemm_s(Gemm(4096, i, h), "float32")
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
    llama = load_model("llama-2-7b")
    g = Gemm(64, llama.intermediate_size, llama.hidden_size)  # its MLP's up projection at 64 rows
    # the CPU helper answers from its own (200x slower) models
    assert cost.gemm_s(g, "float32", where="cpu") > 50 * cost.gemm_s(g, "float32", where="device")


# -- the host and storage parts -----------------------------------------------------------------

def test_smoke_profile_measures_host_and_storage_parts(local_profile_path):
    """Issue 11: each part says it was measured; the host part carries DRAM bandwidth from its own
    copy probe and the CPU decode-attention rate from the attention samples at long contexts."""
    data = json.loads(local_profile_path.read_text())
    assert {data[part]["provenance"] for part in ("device", "host", "disk")} == {"measured"}
    host, meas = data["host"], data["measurement"]
    probe = meas["host_memory_probe"]
    assert len(probe["rounds_s"]) == 3 and probe["bytes"] >= 64 << 20 and probe["threads"] == 1
    # a copy counts its bytes twice (read + write), median of the rounds
    median_s = sorted(probe["rounds_s"])[1]
    assert host["memory_gb_per_s"] == pytest.approx(2 * probe["bytes"] / median_s / 1e9, rel=1e-3)
    assert data["device"]["memory_gb_per_s"] == host["memory_gb_per_s"]  # the CPU is the device
    # K,V bytes per second of the long-context rows (context >= half the longest), median
    rows = data["samples"]["attention.device.float32"]["rows"]
    longest = max(r[1] for r in rows)
    rates = sorted(b * s * 2 * kvh * hd * 4 / t for b, s, _, kvh, hd, t in rows if 2 * s >= longest)
    assert len(rates) >= 2 and longest >= 1024
    mid = len(rates) // 2
    median = rates[mid] if len(rates) % 2 else (rates[mid - 1] + rates[mid]) / 2
    assert host["attention_gb_per_s"]["float32"] == pytest.approx(median / 1e9, rel=1e-3)
    assert meas["parts"] == ["device", "host", "storage"] and meas["clock"] == "wall"
    assert meas["kernels"].startswith("runtime.model.attention")


def test_attention_rate_takes_the_long_contexts_median():
    from planner.profiling.compute import SampleSet
    from planner.profiling.measure import attention_gb_per_s

    # batch, context, heads, kv_heads, head_dim, time: 1 x 2000 x 2 x 2 x 64 float32 = 2,048,000 bytes of K,V
    rows = [[1, 100, 8, 2, 64, 1.0],  # short context: a slow per-call cost, left out
            [1, 2000, 8, 2, 64, 2.048e-3],  # 1.0 GB/s
            [1, 2000, 8, 2, 64, 1.024e-3],  # 2.0 GB/s
            [2, 1000, 8, 2, 64, 0.512e-3],  # 4.0 GB/s (context 1000 >= 2000 / 2)
            [1, 999, 8, 2, 64, 1.0]]  # below half the longest context: left out
    assert attention_gb_per_s(SampleSet(["b", "s", "h", "kvh", "d", "t"], rows), "float32") == 2.0
    assert attention_gb_per_s(SampleSet(["b", "s", "h", "kvh", "d", "t"], rows), "bfloat16") == 1.0


def test_host_bandwidth_counts_read_and_write():
    from planner.profiling import links

    bw = links.host_bandwidth(8 << 20, 5)
    assert bw.nbytes == 8 << 20 and len(bw.rounds_s) == 5
    assert bw.gb_per_s == pytest.approx(2 * bw.nbytes / sorted(bw.rounds_s)[2] / 1e9, rel=1e-3)


@pytest.mark.parametrize("parts", ["storage,host", "host, storage"])
def test_parts_host_storage_never_probes_a_gpu(run_cli, tmp_path, monkeypatch, parts):
    """`--parts host,storage` measures the CPU as the device even where CUDA is present."""
    from planner.profiling import system

    monkeypatch.setattr(system, "cuda_available", lambda: True)  # a GPU machine; probing it would fail here
    out = tmp_path / "p.json"
    result = run_cli("profile", "--smoke", "--parts", parts, "--disk-dir", tmp_path, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["parts"] == ["host", "storage"] and summary["device"]["type"] == "cpu"
    data = json.loads(out.read_text())
    assert data["measurement"]["parts"] == ["host", "storage"] and data["host"]["attention_gb_per_s"]["float32"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json"]
    # the parts it wrote are what a GPU datasheet is composed with (planner/hardware.py)
    plan = tmp_path / "plan.json"
    solved = run_cli("solve", "--model", "opt-125m", "--seq", "512", "--gpu", "t4", "--host", out, "--storage", out,
                     "-o", plan)
    assert solved.exit_code == 0, solved.output
    parts = json.loads(plan.read_text())["hardware"]["parts"]
    assert (parts["host"]["provenance"], parts["storage"]["provenance"]) == ("measured", "measured")


@pytest.mark.parametrize("parts, word", [("device", "device,host,storage or host,storage"), ("gpu,host", "'gpu'"),
                                         ("", "device,host,storage or host,storage"), ("host", "host,storage")])
def test_bad_parts_is_a_one_line_error(run_cli, tmp_path, parts, word):
    out = tmp_path / "p.json"
    result = run_cli("profile", "--smoke", "--cpu", "--parts", parts, "--disk-dir", tmp_path, "-o", out)
    assert result.exit_code == 2 and "--parts" in result.stderr and word in result.stderr
    assert result.stderr.count("\n") == 1 and not out.exists()


# -- the runtime's kernels, injected ------------------------------------------------------------

def test_probes_time_the_injected_kernels():
    """planner/profiling times whatever kernels it is handed (the CLI hands it the runtime's)."""
    import time

    from planner.profiling import compute
    from planner.profiling.kernels import Kernels
    from planner.profiling.timing import Repeats

    seen = []

    def attention(q, kv, kv_heads):
        seen.append((tuple(q.shape), tuple(kv.shape), kv_heads))
        time.sleep(0.004)

    def recompute(wkv, x_tm, out):
        seen.append(("kv", tuple(wkv.shape), tuple(x_tm.shape), tuple(out.shape)))
        time.sleep(0.004)

    reps = Repeats(warmup=0, min_reps=3, max_reps=3, target_s=0)
    kernels = Kernels(attention, recompute)
    att = compute.attention_samples([(2, 64, 8, 2, 16)], "float32", "cpu", reps, 10.0, kernels)
    assert att.rows[0][:5] == [2, 64, 8, 2, 16] and att.rows[0][5] >= 0.004
    assert seen[0] == ((2, 8, 1, 16), (2, 64, 2 * 2 * 16), 2)  # q [b, heads, 1, d], kv [b, context, 2 kv_dim]
    gemm = compute.gemm_samples([(4, 32, 16)], "float32", "cpu", reps, 10.0, recompute=frozenset({(4, 32, 16)}),
                                kernels=kernels)
    assert gemm.rows[0][3] >= 0.004 and seen[-1] == ("kv", (32, 16), (4, 1, 16), (4, 1, 32))


def test_profiling_does_not_import_the_runtime():
    """Issue 12: dependencies point CLI -> planner <- runtime. The one allowance (the disk probes'
    DiskFile) goes when planner/directio.py exists."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    allowed = set() if (root / "planner" / "directio.py").exists() else {("disk.py", "runtime.tiers")}
    found = set()
    for path in (root / "planner" / "profiling").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found |= {(path.name, n) for n in names if n == "runtime" or n.startswith("runtime.")}
    assert found <= allowed, found


# -- GPU decisions, made testable on the CPU ----------------------------------------------------

def test_timer_includes_the_devices_completion():
    """Issue 13 item 9: the wall clock from the call to its completion (the runtime's busy time), so
    the time waited in sync is counted; CUDA events would count the GPU's side only."""
    import time

    from planner.profiling.timing import Repeats, Timer

    syncs = []

    def sync():
        syncs.append(1)
        time.sleep(0.01)

    t = Timer("cuda", sync=sync).sample_s(lambda: None, Repeats(warmup=1, min_reps=3, max_reps=3, target_s=0))
    assert t >= 0.01 and len(syncs) == 4  # after the warmup, then once per timed run


class _FakeNvml:
    """Two GPUs as NVML numbers them; CUDA_VISIBLE_DEVICES=1 makes the second one torch's cuda:0."""

    GPUS = {"h0": ("GPU-aaaa", "00000000:3B:00.0", "NVIDIA A", 4),
            "h1": ("GPU-bbbb", "00000000:86:00.0", "NVIDIA B", 5)}

    def __init__(self, finds_by):
        self.finds_by = finds_by  # "uuid" or "pci": the lookup this NVML answers (the other fails)

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, i):
        return f"h{i}"

    def nvmlDeviceGetHandleByUUID(self, uuid):
        for h, (u, _, _, _) in self.GPUS.items():
            if self.finds_by == "uuid" and u == uuid:
                return h
        raise RuntimeError("not found")

    def nvmlDeviceGetHandleByPciBusId(self, bus):
        for h, (_, b, _, _) in self.GPUS.items():
            if self.finds_by == "pci" and b == bus:
                return h
        raise RuntimeError("not found")

    def nvmlDeviceGetName(self, h):
        return self.GPUS[h][2].encode()

    def nvmlDeviceGetMemoryInfo(self, h):  # the whole card: more than a MIG slice torch can use
        from types import SimpleNamespace

        return SimpleNamespace(total=80 << 30)

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h):
        return self.GPUS[h][3]

    def nvmlDeviceGetMaxPcieLinkWidth(self, h):
        return 16


@pytest.mark.parametrize("finds_by", ["uuid", "pci"])
def test_nvml_finds_torchs_gpu_not_the_same_index(monkeypatch, finds_by):
    """Issue 13 item 7: NVML is asked for the GPU torch calls cuda:0 by UUID, else PCI bus id; torch's
    total memory (a MIG slice's) is kept, never NVML's whole card."""
    import sys
    from types import SimpleNamespace

    from planner.profiling import system

    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml(finds_by))
    props = SimpleNamespace(name="torch name", total_memory=10 << 30, major=8, minor=0, uuid="bbbb",
                            pci_domain_id=0, pci_bus_id=0x86, pci_device_id=0, L2_cache_size=40 << 20)
    dev = system.device_from_props(props, system._nvml_info(props))
    assert (dev.name, dev.pcie_generation, dev.pcie_width) == ("NVIDIA B", 5, 16)
    assert dev.memory_bytes == 10 << 30 and dev.cache_bytes == 40 << 20 and dev.compute_capability == "8.0"
    assert system.pci_bus_id(props) == "00000000:86:00.0"


def test_gpu_probes_overflow_the_gpus_l2_not_the_cpus_cache(monkeypatch, tmp_path):
    """Issue 13 item 8: the device probes' cold arena is sized from the GPU's L2, the CPU helper's
    from the CPU's last-level cache."""
    from planner.profiling import measure, system
    from planner.profiling.modes import get_mode

    gpu = system.DeviceInfo("cuda", "NVIDIA Fake", 80 << 30, cache_bytes=6 << 20)
    monkeypatch.setattr(system, "detect_device", lambda force_cpu=False: gpu)
    monkeypatch.setattr(system, "last_level_cache_bytes", lambda: 32 << 20)
    monkeypatch.setattr(system, "available_memory_bytes", lambda: 64 << 30)
    run = measure._Session.start(get_mode("quick"), None, tmp_path, False, measure._noop_progress, measure.PARTS)
    assert run.cold_bytes == 9 << 20 and run.cpu_cold_bytes == 48 << 20  # 1.5 x each cache
    assert run.busy is None  # on a GPU machine the CPU is free while the disk worker reads
    no_l2 = system.DeviceInfo("cuda", "x", 1, cache_bytes=None)
    assert system.cold_cache_bytes(no_l2, 1) == system.GPU_L2_FALLBACK_BYTES
    assert system.cold_cache_bytes(system.DeviceInfo("cpu", "x", 1), 7) == 7


def test_disk_to_device_reads_through_the_runtime_pool_and_takes_the_median(tmp_path):
    """Issue 13 item 5: the runtime's path (DiskFile into a staging pool buffer, copy, sync), timed
    from the read to the copy's completion, median of the calls (the lower quartile was kept before)."""
    import time

    from planner.profiling import disk
    from planner.profiling.timing import Repeats
    from runtime.tiers import BufferPool

    delays = iter([0.0, 0.03, 0.03] * 2)  # per call: the first fast, the other two slow

    class SlowPool(BufferPool):
        def take(self, nbytes):
            time.sleep(next(delays))
            return super().take(nbytes)

    syncs = []
    reps = Repeats(warmup=0, min_reps=3, max_reps=3, target_s=0)
    out = disk.disk_to_device_samples(tmp_path, [8192, 5000], reps, 10.0, SlowPool, lambda: syncs.append(1), "cpu")
    assert [r[0] for r in out.rows] == [8192, 8192] and all(r[1] >= 0.03 for r in out.rows)
    assert len(syncs) == 6 and list(tmp_path.iterdir()) == []


# -- scratch files: named by process, removed when their process is gone --------------------------

def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_probe_files_of_dead_processes_are_removed(tmp_path):
    import os

    from planner.profiling import disk

    dead, mine = _dead_pid(), os.getpid()
    names = [f".kvplan-probe-{dead}-read", f".kvplan-probe-{dead}-writeback", f".kvplan-probe-{mine}-read",
             ".kvplan-disk-probe", "notes.txt", f"kvplan-probe-{dead}-read"]
    for name in names:
        (tmp_path / name).write_text("x")
    removed = disk.remove_stale_probe_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted(names[:2] + [".kvplan-disk-probe"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names[2], "notes.txt", names[5]])
    assert disk.probe_path(tmp_path, "read").name == f".kvplan-probe-{mine}-read"


def _start_profile(tmp_path):
    """`kvplan profile --smoke` in a real process; returns it once its disk probe file exists."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    disk_dir = tmp_path / "disk"
    disk_dir.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", "from planner.cli import main; main()", "profile", "--smoke",
                             "--cpu", "--disk-dir", str(disk_dir), "-o", str(tmp_path / "p.json")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    probe = disk_dir / f".kvplan-probe-{proc.pid}-read"
    deadline = time.monotonic() + 120
    while not probe.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the profile never reached its disk probe"
        time.sleep(0.005)
    return proc, disk_dir


def test_killed_profile_leaves_a_file_the_next_profile_removes(tmp_path, run_cli):
    import signal

    proc, disk_dir = _start_profile(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    left = list(disk_dir.glob(f".kvplan-probe-{proc.pid}-*"))
    assert left  # no finally runs on SIGKILL
    result = run_cli("profile", "--smoke", "--cpu", "--disk-dir", disk_dir, "-o", tmp_path / "q.json")
    assert result.exit_code == 0, result.output
    assert list(disk_dir.iterdir()) == []


def test_interrupted_profile_leaves_nothing(tmp_path):
    import signal

    proc, disk_dir = _start_profile(tmp_path)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert list(disk_dir.iterdir()) == [] and not (tmp_path / "p.json").exists()


def test_a_probe_file_whose_disk_file_fails_is_removed(tmp_path, monkeypatch):
    """The scratch file goes even when the runtime's DiskFile created it and then failed (no room)."""
    from planner.errors import KvplanError
    from planner.profiling import disk
    from planner.profiling.timing import Repeats

    def failing(path, size_bytes):
        path.write_bytes(b"x")
        raise KvplanError(f"cannot reserve {size_bytes} bytes in {path}")

    monkeypatch.setattr(disk, "_disk_file_class", lambda: failing)
    with pytest.raises(KvplanError, match="cannot reserve"):
        disk.writeback_samples(tmp_path, [4096], Repeats(), 1.0)
    assert list(tmp_path.iterdir()) == []


def test_disk_probes_keep_enough_sizes_to_fit_when_the_budget_is_spent(tmp_path):
    """On a loaded machine the time budget can run out before the first transfer; the probes still
    time MIN_SAMPLES sizes, so the smoke profile every test depends on can always be fitted."""
    from planner.profiling import disk
    from planner.profiling.compute import MIN_SAMPLES
    from planner.profiling.timing import Repeats

    sizes = [4096, 8192, 16384, 32768, 65536]
    reps = Repeats(warmup=0, min_reps=1, max_reps=1, target_s=0)
    reads, writes, _ = disk.disk_samples(tmp_path, sizes, reps, 0.0, passes=2)
    assert len(reads.rows) == len(writes.rows) == MIN_SAMPLES and reads.skipped == len(sizes) - MIN_SAMPLES
    # every round times the same sizes (the disk's drift between rounds needs them): the smallest of
    # at least 1 MiB, else the largest
    timed: dict = {}
    for k in range(3):
        disk.disk_samples(tmp_path, [4096, 1 << 20, 3 << 20, 5 << 20, 7 << 20], reps, 0.0, passes=1, timed=timed,
                          first_round=k, writes=False)
    assert {size: len(t[1]) for size, t in timed.items()} == {1 << 20: 12, 3 << 20: 12, 5 << 20: 12}
    timed = {}
    for k in range(3):
        back = disk.writeback_samples(tmp_path, sizes, reps, 0.0, timed=timed, first_round=k)
    assert len(back.rows) == MIN_SAMPLES and all(len(t) == 8 for t in timed.values())  # none timed twice
    assert list(tmp_path.iterdir()) == []
