"""The disk's size classes (planner/disk_classes.py): K,V/X pieces and weight records are fitted on their
own samples and priced by their own models; profiles without the weights model price as before.

Expected seconds are written by hand from made-up rates (1 GB/s + 1 ms for K,V pieces, 4 GB/s for
weight records), so a weight read priced by the K,V model, or a K,V fit that saw weight records,
lands on a different number."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from planner.costmodel import CostModel, fitted
from planner.disk_classes import KV_READ, STORAGE_MODEL_KEYS, WEIGHTS_READ
from planner.hardware import Stated, compose_profile
from planner.layer_costs import kv_bytes_per_token, layer_weight_bytes, x_bytes_per_token
from planner.models import load_model
from planner.plan import Decisions
from planner.prediction import cost_model_for, evaluate, setting_for
from planner.profile import DATASHEET_DIR, load_profile, profile_from_dict
from planner.profiling import disk, shapes
from planner.profiling.compute import SampleSet
from planner.profiling.modes import get_mode
from planner.search.formulation import coefficients
from planner.stepcost import Combo

MODEL = dataclasses.replace(load_model("opt-1.3b"), name="opt-1.3b-8l", num_layers=8)
W = layer_weight_bytes(MODEL, "float16")  # 100.7 MB
KV_LATENCY_S, KV_S_PER_GB, WEIGHTS_S_PER_GB = 1e-3, 1.0, 0.25  # K,V: 1 GB/s + 1 ms; weights: 4 GB/s


def _line(latency_s: float, s_per_gb: float) -> dict:
    """A stored link model: latency + bytes / rate (fitted.py's linear kind)."""
    return {"kind": "linear", "linear": [latency_s, s_per_gb], "knots_gb": [], "family": "link", "dims": ["bytes"],
            "dtype_bytes": 1, "dim_min": [4096.0], "dim_max": [1e9], "cv_mape": 0.0, "n_samples": 5}


def _profile(weights_model: bool):
    data = copy.deepcopy(json.loads((DATASHEET_DIR / "a100-40g-pcie.json").read_text()))
    data["name"] = "a100-disk-classes"
    data["cost_models"] = {KV_READ.model_key: _line(KV_LATENCY_S, KV_S_PER_GB)}
    if weights_model:
        data["cost_models"][WEIGHTS_READ.model_key] = _line(0.0, WEIGHTS_S_PER_GB)
    return profile_from_dict(data)


def _weights_on_disk(batch: int = 16) -> Decisions:
    half = {"device": 0.5, "host": 0.0, "disk": 0.5}
    resident = {"device": 1.0, "host": 0.0, "disk": 0.0}
    return Decisions(strategy="mixed", dtype="float16", batch=batch, gpu_batch=batch, num_gpu_batches=1,
                     split_tokens=0, kv_placement=resident, x_placement=resident, weight_placement=half,
                     attention_where="device")


INPUTS = {"seq": 513, "prompt": 480, "gen": 33, "objective": "throughput"}


def test_weight_reads_are_priced_by_the_weights_model_and_kv_reads_by_theirs():
    cost = CostModel(_profile(weights_model=True))
    assert cost.transfer_s(WEIGHTS_READ.name, W) == pytest.approx(W / 4e9, rel=1e-12)
    assert cost.transfer_s(KV_READ.name, 8e6) == pytest.approx(1e-3 + 8e6 / 1e9, rel=1e-12)
    assert cost.source("link", WEIGHTS_READ.name) == cost.source("link", KV_READ.name) == "fitted:linear"


def test_the_step_reads_weights_from_disk_at_the_weights_rate():
    """Half of 8 layers' weights on disk, K,V resident: the step's disk reads are 4 weight records at
    4 GB/s, prefill's disk reads the same; the MILP's coefficient per disk layer is one record."""
    profile = _profile(weights_model=True)
    pred = evaluate(MODEL, INPUTS, _weights_on_disk(), profile)
    L = MODEL.num_layers
    assert pred["per_layer_busy_s"]["disk_read"] * L == pytest.approx(4 * W / 4e9, rel=1e-6)
    # the pipeline (stepcost.pipeline_s): each disk layer waits for its own weight record, the longest
    # of its reads and its compute; the 4 device layers compute
    own = pred["per_layer_busy_s"]["compute"]
    h2d_w = profile.links["h2d"].latency_s + W / (profile.links["h2d"].gb_per_s * 1e9)
    assert W / 4e9 > max(own, h2d_w)
    assert pred["decode_step_s"] == pytest.approx(4 * own + 4 * W / 4e9, rel=1e-6)
    # the lower bound reads the drive at its best rate over both classes: here the disk bound is the
    # step's 4 records at 4 GB/s (at 1 GB/s + 1 ms it would exceed the prediction)
    assert pred["lower_bound"]["step_s"] == pytest.approx(4 * W / 4e9, rel=1e-6)
    st = setting_for(MODEL, INPUTS, "float16", profile)
    coef = coefficients(st, Combo(16, 16, 1, "device"), cost_model_for(profile), profile)
    assert dict(coef.decode["disk"].coefs)["nk"] == pytest.approx(W / 4e9, rel=1e-9)
    assert dict(coef.prefill["disk"].coefs)["nk"] == pytest.approx(W / 4e9, rel=1e-9)


def test_a_profile_without_the_weights_model_prices_weights_as_before():
    """Older profiles have one link.disk_read for every read: a weight record costs what it cost then."""
    profile = _profile(weights_model=False)
    cost = CostModel(profile)
    assert cost.transfer_s(WEIGHTS_READ.name, W) == pytest.approx(1e-3 + W / 1e9, rel=1e-12)
    pred = evaluate(MODEL, INPUTS, _weights_on_disk(), profile)
    assert pred["per_layer_busy_s"]["disk_read"] * MODEL.num_layers == pytest.approx(4 * (1e-3 + W / 1e9), rel=1e-6)
    # no fitted model at all (a datasheet profile): the drive's summary link, latency + bytes / rate
    sheet = json.loads((DATASHEET_DIR / "a100-40g-pcie.json").read_text())["links"]["disk_read"]
    plain = CostModel(profile_from_dict(json.loads((DATASHEET_DIR / "a100-40g-pcie.json").read_text())))
    assert plain.transfer_s(WEIGHTS_READ.name, W) == pytest.approx(sheet["latency_s"] + W / (sheet["gb_per_s"] * 1e9))


def _reads(sizes: tuple[int, ...], latency_s: float, s_per_gb: float) -> list[list[float]]:
    return [[float(b), latency_s + b / 1e9 * s_per_gb] for b in sizes]


def test_weight_records_never_reach_the_kv_fit():
    """Reads of both classes timed together, split by class and fitted: each fit finds its own rate."""
    sizes = shapes.DiskSizes(kv_read=(1 << 20, 4 << 20, 16 << 20, 64 << 20, 256 << 20),
                             weights_read=(100 << 20, 200 << 20, 400 << 20), write=())
    rows = sorted(_reads(sizes.kv_read, KV_LATENCY_S, KV_S_PER_GB) + _reads(sizes.weights_read, 0.0, WEIGHTS_S_PER_GB))
    split = disk.split_by_class(SampleSet(["bytes", "time_s"], rows), sizes, (KV_READ, WEIGHTS_READ))
    assert sorted(r[0] for r in split[KV_READ.model_key].rows) == list(sizes.kv_read)
    kv = fitted.link_parameters(fitted.fit("link", split[KV_READ.model_key].rows))
    weights = fitted.link_parameters(fitted.fit("link", split[WEIGHTS_READ.model_key].rows))
    assert kv.gb_per_s == pytest.approx(1.0, rel=1e-3) and kv.latency_s == pytest.approx(1e-3, rel=1e-2)
    assert weights.gb_per_s == pytest.approx(4.0, rel=1e-3)


def test_the_profile_fits_kv_reads_on_piece_sizes_only(local_profile_path):
    """A real (smoke) profile: link.disk_read's samples are K,V/X piece sizes, the weight records are
    kept apart; with fewer than 3 of them (smoke's 16 MiB cap leaves one) no weights model is fitted and
    weight reads fall back to link.disk_read."""
    data = load_profile(local_profile_path).data
    sizes = shapes.disk_sizes(get_mode("smoke"))
    kv = {int(r[0]) for r in data["samples"][KV_READ.model_key]["rows"]}
    weights = {int(r[0]) for r in data["samples"][WEIGHTS_READ.model_key]["rows"]}
    assert kv and kv <= set(sizes.kv_read) and not kv & set(sizes.weights_read)
    assert weights <= set(sizes.weights_read)
    assert len(sizes.weights_read) < 3 and WEIGHTS_READ.model_key not in data["cost_models"]
    cost = CostModel(load_profile(local_profile_path))
    assert cost.link_model_key(WEIGHTS_READ.name) == KV_READ.model_key


def test_writes_are_probed_at_the_runtimes_write_back_sizes():
    """The smallest write-back of the quick mode is one token's K,V of one sequence of TinyLlama in
    16-bit: 2 x 256 (kv_dim) x 2 bytes = 1024 B, not a whole page; no write is a weight record."""
    mode = get_mode("quick")
    sizes = shapes.disk_sizes(mode)
    assert min(sizes.write) == 1024
    tiny = load_model("tinyllama-1.1b")
    assert kv_bytes_per_token(tiny, "bfloat16") == 1024 and x_bytes_per_token(tiny, "float32") * 16 in \
        shapes.writeback_sizes(mode)
    assert not set(sizes.write) & set(sizes.weights_read)
    assert set(sizes.kv_read).isdisjoint(sizes.weights_read)


def test_a_stated_drive_rate_replaces_both_read_models_and_storage_carries_both():
    measured = _profile(weights_model=True)
    stated = compose_profile(measured, stated=Stated(disk_read_gbps=3.0))
    models = stated.data.get("cost_models") or {}
    assert KV_READ.model_key not in models and WEIGHTS_READ.model_key not in models
    assert CostModel(stated).transfer_s(WEIGHTS_READ.name, W) == pytest.approx(
        stated.links["disk_read"].latency_s + W / 3e9, rel=1e-12)
    base = profile_from_dict(json.loads((DATASHEET_DIR / "a100-40g-pcie.json").read_text()))
    composed = compose_profile(base, storage=measured)
    assert {k for k in composed.data["cost_models"] if k in STORAGE_MODEL_KEYS} == {KV_READ.model_key,
                                                                                   WEIGHTS_READ.model_key}


def test_the_machine_checks_disk_ratio_scales_both_read_models():
    """execute's machine check measures the drive's drift once; the re-made prediction applies it to
    K,V and weight reads alike (runtime/check.py scaled_profile): x2 doubles both lines."""
    from runtime.check import Where, scaled_profile

    profile = _profile(weights_model=True)
    check = {"probes": [{"op": "disk_read", "ratio": 2.0}]}
    scaled, applied = scaled_profile(profile, check, _weights_on_disk(), Where("cpu", "cpu", "device"))
    cost = CostModel(scaled)
    assert cost.transfer_s(WEIGHTS_READ.name, W) == pytest.approx(2 * W / 4e9, rel=1e-12)
    assert cost.transfer_s(KV_READ.name, 8e6) == pytest.approx(2 * (1e-3 + 8e6 / 1e9), rel=1e-12)
    assert applied == ["link.disk_read x2.00", "link.disk_read_weights x2.00"]
