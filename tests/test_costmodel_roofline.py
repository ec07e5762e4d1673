"""The GPU roofline's shape at sustained rates, against hand-computed values, and its A100 calibration."""

import copy
import dataclasses
import importlib.util
import math

import numpy as np
import pytest
from conftest import SHARED

from planner.costmodel import CostModel, roofline
from planner.costmodel.calibration import CALIBRATED, SustainedRates
from planner.layer_costs import Gemm
from planner.models import load_model
from planner.profile import REPO_ROOT, load_profile, profile_from_dict

# round numbers, so every expected value below can be worked out by hand
ROUND = SustainedRates(
    gemm_compute_fraction=0.5, gemm_memory_fraction=0.5, overlap_exponent=2.0, launch_s=10e-6,
    elementwise_memory_fraction=0.25, elementwise_floor_s=4e-6,
    decode_attention_memory_fraction=0.5, decode_attention_floor_s=20e-6,
    decode_attention_wave_memory_fraction=0.8, decode_attention_wave_floor_s=2e-6, decode_attention_units_per_sm=2,
    prefill_attention_compute_fraction=0.25, prefill_attention_floor_s=100e-6,
)
PEAK_TFLOPS, GB_PER_S = 200.0, 1000.0  # sustained: 100 TFLOP/s and 500 GB/s; ridge 200 FLOP/byte


def test_decode_attention_reads_kv_at_the_calibrated_bandwidth_plus_a_floor():
    # 1 GB of K,V at 500 GB/s = 2 ms; 1 GFLOP at 50 TFLOP/s = 20 us; overlap sqrt(2000^2 + 20^2) us
    t = roofline.device_attention_time_s(1e9, 1e9, 1, PEAK_TFLOPS, GB_PER_S, ROUND)
    assert t == pytest.approx(20e-6 + math.sqrt(2000.0**2 + 20.0**2) * 1e-6, rel=1e-12)
    doubled = roofline.device_attention_time_s(2e9, 2e9, 1, PEAK_TFLOPS, GB_PER_S, ROUND)
    assert doubled - 20e-6 == pytest.approx(2 * (t - 20e-6), rel=1e-12)  # twice the K,V, twice the time
    # several new tokens per sequence: the prefill floor, and compute at a quarter of the peak
    pre = roofline.device_attention_time_s(1e12, 1e6, 512, PEAK_TFLOPS, GB_PER_S, ROUND)
    assert pre == pytest.approx(100e-6 + math.hypot(1e12 / 50e12, 1e6 / 500e9), rel=1e-12)


def test_decode_attention_on_the_a100_scales_with_kv_heads_bandwidth_and_waves():
    cost = CostModel(load_profile(gpu="a100-80g-sxm"))  # 2,039 GB/s, 108 SMs
    mha, gqa = load_model("llama-2-13b"), load_model("mistral-7b")  # 40 of 40 vs 8 of 32 heads K,V
    # 32 sequences: 1,280 units fill 6 waves of 216 slots (1,296), 256 units 2 waves (432)
    for model, wave in ((mha, 1296 / 1280), (gqa, 432 / 256)):
        t = cost.attention_s(model, 32, 1, 8191, "float16")
        # 32 sequences x 8192 keys: K,V = 2 x kv_heads x 128 x 2 bytes per key, QK^T + PV = 4 x heads x 128
        kv_bytes = 32 * 8192 * 2 * model.num_kv_heads * 128 * 2
        flops = 4 * 32 * 8192 * model.num_heads * 128
        memory_s, compute_s = kv_bytes * wave / (0.967 * 2039e9), flops / (0.3962 * 312e12)
        assert t == pytest.approx((memory_s**1.357 + compute_s**1.357) ** (1 / 1.357), rel=0.001)
        assert t == pytest.approx(memory_s, rel=0.02)  # bandwidth-bound: the FLOPs hide under the reads
    # another GPU: the same fraction of its own datasheet bandwidth, waves over its own SMs (no per-GPU
    # factor): the T4's 40 SMs hold 80 units, so 1,280 units are exactly 16 full waves
    t4 = CostModel(load_profile(gpu="t4"))
    a100_s = cost.attention_s(mha, 32, 1, 8191, "float16") - CALIBRATED.decode_attention_wave_floor_s
    t4_s = t4.attention_s(mha, 32, 1, 8191, "float16") - CALIBRATED.decode_attention_wave_floor_s
    ratio = t4.profile.device_memory_gb_per_s / cost.profile.device_memory_gb_per_s * (1296 / 1280)
    assert a100_s / t4_s == pytest.approx(ratio, rel=0.01)


def test_tiny_ops_cost_their_launch_floor():
    assert roofline.gemm_time_s(1, 1, 1, 2, PEAK_TFLOPS, GB_PER_S, ROUND) == pytest.approx(10e-6, rel=1e-4)
    assert roofline.elementwise_time_s(1.0, GB_PER_S, ROUND) == pytest.approx(4e-6, rel=1e-4)
    assert roofline.device_attention_time_s(4.0, 4.0, 1, PEAK_TFLOPS, GB_PER_S, ROUND) == pytest.approx(20e-6, rel=1e-4)
    cost = CostModel(load_profile(gpu="h100-sxm"))
    tiny = load_model("tinyllama-1.1b")
    # with an SM count the decode floor is the wave model's (fitted at 0: see calibration.py) plus 1 key's bytes
    assert cost.attention_s(tiny, 1, 1, 0, "bfloat16") < CALIBRATED.decode_attention_wave_floor_s + 1e-8
    data = copy.deepcopy(cost.profile.data)
    del data["device"]["sm_count"]  # an old profile: the single-fraction model and its floor
    no_sm = CostModel(profile_from_dict(data))
    assert no_sm.attention_s(tiny, 1, 1, 0, "bfloat16") == pytest.approx(13.71e-6, rel=0.01)
    assert cost.gemm_s(Gemm(1, 8, 8), "bfloat16") == pytest.approx(5.58e-6, rel=0.01)


def _achieved_fraction(m: int, n: int = 100_000, k: int = 100_000, rates=ROUND, gb_per_s=GB_PER_S) -> float:
    t = roofline.gemm_time_s(m, n, k, 2, PEAK_TFLOPS, gb_per_s, rates) - rates.launch_s
    return 2.0 * m * n * k / t / (PEAK_TFLOPS * 1e12 * rates.gemm_compute_fraction)


def test_gemm_efficiency_rises_with_tokens_and_saturates_past_the_ridge_point():
    assert roofline.ridge_flops_per_byte(PEAK_TFLOPS, GB_PER_S, ROUND) == pytest.approx(200.0)
    # fp16, n = k = 1e5: intensity I = mnk / (mk + kn + mn); fraction of f_c x peak = (1 + (200/I)^2)^-1/2
    for m in (1, 50, 200, 1000, 4000):
        intensity = m * 1e10 / (m * 1e5 + 1e10 + m * 1e5)
        assert _achieved_fraction(m) == pytest.approx((1 + (200 / intensity) ** 2) ** -0.5, rel=1e-9)
    grid = [_achieved_fraction(m) for m in (1, 4, 16, 64, 256, 1024, 4096, 16384)]
    assert all(a < b for a, b in zip(grid, grid[1:], strict=False))
    assert _achieved_fraction(200) == pytest.approx(2**-0.5, rel=0.01)  # at the ridge point: 1/sqrt(2)
    assert _achieved_fraction(4000) > 0.99  # 20x past the ridge: saturated
    # a GPU with 4x the ridge point (same FLOP/s, a quarter of the bandwidth) needs 4x the tokens
    # for the same efficiency (intensity ~ m while m << n, k)
    for m in (10, 50, 200):
        assert _achieved_fraction(4 * m, gb_per_s=GB_PER_S / 4) == pytest.approx(_achieved_fraction(m), rel=0.02)
        assert _achieved_fraction(m, gb_per_s=GB_PER_S / 4) < 0.8 * _achieved_fraction(m)


def test_calibrated_constants_are_fractions_and_floors():
    for field in dataclasses.fields(CALIBRATED):
        value = getattr(CALIBRATED, field.name)
        if field.name.endswith("_fraction"):
            assert 0 < value <= 1, field.name
        elif field.name.endswith("_s"):
            assert 0 <= value < 1e-3, field.name


VALIDATE = REPO_ROOT / "benchmarks" / "validate_a100.py"


@pytest.fixture(scope="module")
def bench():
    data = SHARED / "data" / "gpu-op-timings" / "a100"
    if not (data / "Llama-2-7b-hf.attention.csv").is_file():
        pytest.skip("../shared/data/gpu-op-timings/a100 is not present")
    spec = importlib.util.spec_from_file_location("validate_a100", VALIDATE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sheet = load_profile(gpu=mod.DATASHEET)
    return mod, data, sheet.device_peak_tflops["float16"], sheet.device_memory_gb_per_s, sheet.device.sm_count


def test_a100_gemms_of_held_out_models_within_20_percent(bench):
    mod, data, peak, bw, _ = bench
    rows = mod.load_rows(data)
    test = rows[rows.model.isin(mod.HELD_OUT) & (rows.tp == 1)].reset_index(drop=True)
    errors = mod.ape(mod.gemm_table_times(test, CALIBRATED, peak, bw), test.time_s)
    is_gemm = ~test.op.isin(mod.ELEMENTWISE_OPS).to_numpy()
    assert np.median(errors[is_gemm]) < 0.20  # GEMMs; 5.2% at calibration


def test_a100_small_element_wise_kernels_of_held_out_models_within_15_percent(bench):
    # torch's add kernel (the kind every small op of the runtime launches) on the models the constants
    # never saw: 11.4% on all rows, 8.5% under 64 tokens at calibration (the constants fitted on the
    # fused activation kernel instead missed them by 86% and 79%)
    mod, data, peak, bw, _ = bench
    rows = mod.load_rows(data)
    test = rows[rows.model.isin(mod.HELD_OUT) & (rows.op == "add")].reset_index(drop=True)
    errors = mod.ape(mod.gemm_table_times(test, CALIBRATED, peak, bw), test.time_s)
    small = (test.m < mod.SMALL_TOKENS).to_numpy()
    assert small.sum() == 120
    assert np.median(errors[small]) < 0.15
    assert np.median(errors) < 0.20


def test_a100_attention_left_out_rows_within_20_percent(bench):
    mod, data, peak, bw, sms = bench
    att = mod.load_attention(data)
    loo = np.abs(mod.leave_one_out_attention(att, peak, bw))  # without an SM count
    decode = (att.phase == "decode").to_numpy()
    assert np.median(loo[decode]) < 0.20  # 10.2% at calibration
    assert np.median(loo[~decode]) < 0.20  # 2.6% at calibration
    shipped = mod.ape(mod.attention_table_times(att, CALIBRATED, peak, bw), att.time_s)
    assert np.median(shipped[decode]) < 0.20 and np.median(shipped[~decode]) < 0.20
    with_sms = mod.ape(mod.attention_table_times(att, CALIBRATED, peak, bw, sms), att.time_s)
    assert np.median(with_sms[decode]) < 0.10 and np.median(with_sms[~decode]) < 0.20  # 2.8%, 1.8%
