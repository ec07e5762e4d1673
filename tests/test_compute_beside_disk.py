"""Compute beside the disk worker (planner/stepcost.py module docstring): on a CPU-only machine the
compute runs r times slower while the disk reads, so a layer's compute C next to D seconds of reads
costs C + (1 - 1/r) * D; r is measured by `kvplan profile` and ignored where the device is a GPU."""

from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path

import pytest

from planner.disk_classes import WEIGHTS_READ
from planner.hardware import Stated, compose_profile
from planner.layer_costs import layer_weight_bytes
from planner.models import load_model
from planner.plan import Decisions
from planner.prediction import cost_model_for, exact_amounts, setting_for
from planner.profile import DATASHEET_DIR, profile_from_dict
from planner.stepcost import Combo, ExactPricer, decode_terms, pipeline_s

REPO = Path(__file__).resolve().parents[1]
CPU_PROFILE = json.loads((REPO / "docs" / "profile_quick_idle.json").read_text())
MODEL = load_model("opt-125m")
INPUTS = {"seq": 1024, "prompt": 1000, "gen": 16}


def _profile(base: dict, name: str, r: float | None):
    data = copy.deepcopy(base)
    data["name"] = name
    data["disk"].pop("compute_slowdown_while_reading", None)
    if r is not None:
        data["disk"]["compute_slowdown_while_reading"] = r
    return profile_from_dict(data)


def _decisions(kv_tier: str) -> Decisions:
    kv = {t: 1.0 if t == kv_tier else 0.0 for t in ("device", "host", "disk")}
    return Decisions(strategy="transfer", dtype="float32", batch=4, gpu_batch=2, num_gpu_batches=2, split_tokens=0,
                     kv_placement=kv, x_placement={"device": 1.0, "host": 0.0, "disk": 0.0},
                     weight_placement={"device": 1.0, "host": 0.0, "disk": 0.0}, attention_where="device",
                     activation_placement="device")


def _terms(profile, d: Decisions):
    st = setting_for(MODEL, INPUTS, d.dtype, profile)
    pr = ExactPricer(cost_model_for(profile), MODEL, d.dtype)
    combo = Combo(d.batch, d.gpu_batch, d.num_gpu_batches, d.attention_where, d.activation_placement)
    return st, pr, decode_terms(st, combo, cost_model_for(profile), exact_amounts(st, d), pr)


def test_compute_pays_the_slowdown_on_the_reads_beside_it():
    plain, slowed = _profile(CPU_PROFILE, "cpu-r1", None), _profile(CPU_PROFILE, "cpu-r125", 1.25)
    _, _, t1 = _terms(plain, _decisions("disk"))
    _, _, t2 = _terms(slowed, _decisions("disk"))
    assert t1.disk_read > 0 and t2.disk_read == pytest.approx(t1.disk_read)
    assert t2.compute == pytest.approx(t1.compute + (1 - 1 / 1.25) * t1.disk_read, rel=1e-9)
    assert t2.compute_while_reading == pytest.approx(0.2 * t1.disk_read, rel=1e-9)
    # no disk reads, no slowdown
    _, _, r1 = _terms(plain, _decisions("device"))
    _, _, r2 = _terms(slowed, _decisions("device"))
    assert r2.compute == pytest.approx(r1.compute, rel=1e-12)


def test_each_layer_takes_the_larger_of_its_reads_and_its_slowed_compute():
    plain, slowed = _profile(CPU_PROFILE, "cpu-r1", None), _profile(CPU_PROFILE, "cpu-r2", 2.0)
    st, pr1, t1 = _terms(plain, _decisions("disk"))
    _, pr2, t2 = _terms(slowed, _decisions("disk"))
    L = MODEL.num_layers
    compute, read, disk = t1.compute / L, t1.disk_read / L, t1.disk / L
    # by hand: max(D, C + (1 - 1/r) D) per layer, r = 2, every layer alike (weights resident)
    assert pipeline_s(st, t2, {"device": L}, pr2) == pytest.approx(L * max(disk, compute + 0.5 * read), rel=1e-9)
    assert pipeline_s(st, t1, {"device": L}, pr1) == pytest.approx(L * max(disk, compute), rel=1e-9)


def test_a_gpu_computes_on_its_own_while_a_host_thread_reads():
    a100 = json.loads((DATASHEET_DIR / "a100-40g-pcie.json").read_text())
    a100["disk"]["compute_slowdown_while_reading"] = 3.0
    gpu = profile_from_dict(a100)
    assert not gpu.host_is_device and gpu.compute_slowdown_while_reading == 1.0
    assert _profile(CPU_PROFILE, "cpu-r3", 3.0).compute_slowdown_while_reading == 3.0
    assert _profile(CPU_PROFILE, "cpu-none", None).compute_slowdown_while_reading == 1.0


def test_a_measured_ratio_under_one_is_noise_and_never_makes_disk_reads_pay():
    """With r < 1 the term (1 - 1/r) * D would be negative: streaming weights from disk would shorten
    a compute-bound layer, and a resident plan would move its weights to disk (seen with r = 0.993)."""
    noisy = _profile(CPU_PROFILE, "cpu-r0993", 0.993)
    assert noisy.compute_slowdown_while_reading == 1.0
    _, _, t = _terms(noisy, _decisions("disk"))
    assert t.compute_while_reading == 0.0


def test_a_stated_disk_drops_the_slowdown_measured_beside_the_old_one():
    base = _profile(CPU_PROFILE, "cpu-r15", 1.5)
    composed = compose_profile(base, stated=Stated(disk_read_gbps=5.0))
    assert composed.compute_slowdown_while_reading == 1.0
    assert "compute_slowdown_while_reading" not in composed.data["disk"]


def test_a_measured_profile_records_the_compute_beside_its_disk_reads(local_profile_path):
    data = json.loads(Path(local_profile_path).read_text())
    rows = data["samples"]["compute.beside_disk_read"]["rows"]
    assert rows and all(alone > 0 and beside > 0 for _, alone, beside in rows)
    assert [r[0] for r in rows] == sorted({r[0] for r in rows})  # one row per disk round
    ratio = data["disk"]["compute_slowdown_while_reading"]
    assert ratio == pytest.approx(statistics.median(b / a for _, a, b in rows), abs=1e-4)
    assert profile_from_dict(data).compute_slowdown_while_reading == max(1.0, ratio)  # under 1: noise


def test_a_layer_whose_weights_come_from_disk_is_slowed_by_its_own_weight_reads():
    half = {"device": 0.5, "host": 0.0, "disk": 0.5}
    d = Decisions(strategy="transfer", dtype="float32", batch=4, gpu_batch=2, num_gpu_batches=2, split_tokens=0,
                  kv_placement={"device": 0.0, "host": 0.0, "disk": 1.0},
                  x_placement={"device": 1.0, "host": 0.0, "disk": 0.0}, weight_placement=half,
                  attention_where="device", activation_placement="device")
    plain, slowed = _profile(CPU_PROFILE, "cpu-r1", None), _profile(CPU_PROFILE, "cpu-r4", 4.0)
    st, pr1, t1 = _terms(plain, d)
    _, pr2, t2 = _terms(slowed, d)
    L = MODEL.num_layers
    w_read = pr1.xfer(WEIGHTS_READ.name, layer_weight_bytes(MODEL, "float32"))
    compute = t1.compute / L
    read_kv, disk_kv = (t1.disk_read - t1.weights_disk) / L, (t1.disk - t1.weights_disk) / L
    k = 1 - 1 / 4.0
    by_hand = (L // 2) * max(disk_kv, compute + k * read_kv) + (L // 2) * max(disk_kv + w_read,
                                                                             compute + k * (read_kv + w_read))
    assert pipeline_s(st, t2, {"device": L // 2, "disk": L // 2}, pr2) == pytest.approx(by_hand, rel=1e-9)
