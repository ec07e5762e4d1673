"""The probed table of the GEMM and attention fits: the prediction at a probed point is the sample,
between probed row counts (contexts) it follows the shape's own points, and a shape never probed
gets the fitted model alone. Plus the element-wise ops the layer time adds (planner/costmodel/layer_time.py)."""

import json
import math

import numpy as np
import pytest

from planner.costmodel import fitted
from planner.costmodel.layer_time import layer_op_times_s, other_ops_bytes, recompute_extra_bytes, recompute_kv_s
from planner.errors import KvplanError
from planner.models import load_model

SHAPES = ((768, 768), (2304, 768), (3072, 768), (768, 3072), (2048, 2048), (6144, 2048), (8192, 2048),
          (2048, 8192), (4096, 4096), (11008, 4096))
PROBED_M = (1, 2, 4, 8, 16, 32, 64)


def shape_factor(n, k):
    """A per-weight-shape efficiency no smooth function of (m, n, k) follows (0.8x .. 1.2x)."""
    return 1.0 + 0.2 * math.sin(0.37 * n + 0.11 * k)


def gemm_law(m, n, k):
    """Weights streamed at a rate that falls smoothly (in log m) from 14 GB/s at one row to 5 GB/s at 8,
    times the shape's own factor, plus compute at 100 GFLOP/s: a CPU BLAS as measured here, with a
    per-shape effect."""
    rate = 14e9 * (5 / 14) ** min(math.log2(m) / 3, 1.0)
    return (4 * n * k / rate + 2 * m * n * k / 100e9) * shape_factor(n, k)


def _rows(law, ms, noise, seed=0):
    rng = np.random.default_rng(seed)
    return [[m, n, k, law(m, n, k) * (1 + noise * rng.standard_normal())] for m in ms for n, k in SHAPES]


def test_probed_points_are_reproduced_and_between_them_the_shape_is_followed():
    rows = _rows(gemm_law, PROBED_M, 0.02)
    model = fitted.fit("gemm", rows, dtype_bytes=4)
    assert model.get("probed") and fitted.label(model).endswith("+probed")
    fitted.validate_model(json.loads(json.dumps(model)), "gemm")
    for m, n, k, t in rows:  # the planner's queries: a catalog shape at a probed row count
        assert fitted.predict(model, (m, n, k)) == pytest.approx(t, rel=1e-9)
    # row counts never probed, on probed shapes: within the samples' noise of the law
    errors = [abs(fitted.predict(model, (m, n, k)) / gemm_law(m, n, k) - 1) for m in (3, 6, 12, 24, 48)
              for n, k in SHAPES]
    assert np.median(errors) < 0.03 and max(errors) < 0.08
    # the held-out error it reports is that of model + table, half the model alone's
    assert model["cv_mape"] < 0.08 and model["cv_mape"] < 0.8 * model["cv_mape_unprobed"]


def test_without_the_table_the_fit_misses_the_shape_effect():
    # the same family fitted by the model alone (as before the table): off by the shape factor,
    # which is what the table above removes (guards against the table being dropped)
    rows = _rows(gemm_law, PROBED_M, 0.02)
    model = fitted.fit("gemm", rows, dtype_bytes=4)
    alone = {k: v for k, v in model.items() if k != "probed"}
    errors = [abs(fitted.predict(alone, (m, n, k)) / gemm_law(m, n, k) - 1) for m in (3, 6, 12) for n, k in SHAPES]
    assert np.median(errors) > 0.035 and np.mean(errors) > 0.06


def test_a_shape_never_probed_gets_the_model_alone():
    model = fitted.fit("gemm", _rows(gemm_law, PROBED_M, 0.02), dtype_bytes=4)
    alone = {k: v for k, v in model.items() if k != "probed"}
    for dims in ((8, 5120, 5120), (16, 13824, 5120), (8, 2048, 768)):
        assert fitted.predict(model, dims) == fitted.predict(alone, dims)
    assert fitted.predict(model, (8, 2048, 2048)) != fitted.predict(alone, (8, 2048, 2048))


HEADS = ((32, 32, 64), (32, 8, 128), (12, 12, 64))


def attention_law(b, s, heads, kvh, hd):
    """K,V streamed at 8 GB/s (MHA) with a per-head-shape factor, plus a fixed 20 us."""
    return 20e-6 + 2 * b * s * kvh * hd * 4 / 8e9 * (1.3 if kvh < heads else 1.0) * (0.8 if hd == 64 else 1.1)


def test_attention_table_interpolates_in_context_at_a_probed_batch():
    rng = np.random.default_rng(1)
    rows = [[b, s, *h, attention_law(b, s, *h) * (1 + 0.02 * rng.standard_normal())]
            for h in HEADS for b in (1, 4, 16) for s in (128, 512, 2048, 8192)]
    model = fitted.fit("attention", rows, dtype_bytes=4)
    for *dims, t in rows:
        assert fitted.predict(model, dims) == pytest.approx(t, rel=1e-9)
        assert fitted.predict_many(model, [dims])[0] == pytest.approx(t, rel=1e-9)
    for h in HEADS:
        for b in (1, 4, 16):
            for s in (300, 1000, 5000):
                assert fitted.predict(model, (b, s, *h)) == pytest.approx(attention_law(b, s, *h), rel=0.06)


def test_a_malformed_table_is_refused_with_one_line():
    model = json.loads(json.dumps(fitted.fit("gemm", _rows(gemm_law, PROBED_M, 0.02), dtype_bytes=4)))
    model["probed"]["groups"][0]["points"].reverse()
    with pytest.raises(KvplanError, match="probed") as info:
        fitted.validate_model(model, "profile p cost_models.gemm.device.float32")
    assert "\n" not in str(info.value)
    link = fitted.fit("link", [[b, 1e-5 + b / 2e9] for b in np.geomspace(4096, 1 << 26, 10)])
    with pytest.raises(KvplanError, match="probed"):
        fitted.validate_model({**link, "probed": {"groups": []}}, "link.disk_read")


# -- the layer's small element-wise ops ----------------------------------------------------------------
class _CountingCost:
    """Every GEMM and attention free; each element-wise query costs 1 s plus 1 s per GB."""

    def __init__(self):
        self.calls = []

    def gemm_s(self, gemm, dtype, where="device"):
        return 0.0

    def attention_s(self, *args, **kwargs):
        return 0.0

    def elementwise_s(self, nbytes, where="device"):
        self.calls.append(nbytes)
        return 1.0 + nbytes / 1e9

    def fitted_model(self, family, where, dtype=None):
        return {"kind": "linear"} if family == "elementwise" else None  # as a measured profile


def test_other_ops_are_one_elementwise_query_per_runtime_op():
    # OPT (runtime/model.py): 2 LayerNorms, K,V made contiguous, the new K,V written, the outputs
    # concatenated, 2 residual adds, 4 biased projections (qkv, o, fc1, fc2); no RoPE
    opt = load_model("opt-1.3b")
    rows, h = 8, opt.hidden_size
    ops = other_ops_bytes(opt, rows, "float32")
    assert len(ops) == 2 + 3 + 2 + 4
    assert ops.count(3 * rows * h * 4) == 2  # the residual adds: read 2, write 1
    # Llama (rotary, RMSNorm, no biases): 2 x 4 norm ops, RoPE on q and k, the same copies and adds
    llama = load_model("llama-2-7b")
    assert len(other_ops_bytes(llama, rows, "float32")) == 8 + 5 + 6 + 3 + 2
    cost = _CountingCost()
    times = layer_op_times_s(cost, opt, rows, 1, 512, "float32")
    assert times["other_ops"] == pytest.approx(len(ops) + sum(ops) / 1e9)
    # the recompute adds the X concatenation and, for OPT, the K,V bias
    assert recompute_kv_s(cost, opt, 4, 100, "float32") == pytest.approx(
        2 + sum(recompute_extra_bytes(opt, 4, 100, "float32")) / 1e9)
    assert recompute_extra_bytes(opt, 4, 100, "float32")[0] == 2 * 400 * h * 4


def test_a_datasheet_gpu_layer_charges_its_element_wise_ops_at_the_calibrated_floor_and_rate():
    from planner.costmodel import CostModel
    from planner.costmodel.calibration import CALIBRATED
    from planner.profile import load_profile

    profile = load_profile(gpu="a100-40g-pcie")
    cost = CostModel(profile)
    rate = profile.device_memory_gb_per_s * 1e9 * CALIBRATED.elementwise_memory_fraction
    floor = CALIBRATED.elementwise_floor_s
    opt = load_model("opt-6.7b")  # h = q = kv = 4096, i = 16384; LayerNorm, biased, no RoPE
    # one token, fp16, counted by hand from runtime/model.py: 2 LayerNorms (read + write 4,096 x 2 B),
    # K,V made contiguous and written to the store (read + write 8,192 x 2 B, twice), the attention
    # outputs concatenated (4,096), 2 residual adds (read 2, write 1), the biases of qkv (12,288),
    # o (4,096), fc1 (16,384) and fc2 (4,096), each read + written: 11 kernels
    kernels = 2 + 2 + 1 + 2 + 4
    nbytes = 2 * 16384 + 2 * 32768 + 16384 + 2 * 24576 + 4 * (12288 + 4096 + 16384 + 4096)
    expected = kernels * floor + nbytes / rate
    assert expected == pytest.approx(11 * 1.8e-6, rel=0.02)  # decode's ops are their fixed costs
    assert layer_op_times_s(cost, opt, 1, 1, 1000, "float16")["other_ops"] == pytest.approx(expected, rel=1e-9)
    # the recompute of 100 tokens adds the X parts concatenated and the K,V bias (2 kernels)
    extra = 2 * floor + (2 * 100 * 4096 * 2 + 2 * 100 * 8192 * 2) / rate
    assert recompute_kv_s(cost, opt, 1, 100, "float16") == pytest.approx(
        cost.gemm_s(_recompute_gemm(opt, 100), "float16") + extra, rel=1e-9)


def test_a_cpu_without_a_fitted_element_wise_model_does_not_charge_the_layer_ops():
    import copy
    import json

    from planner.costmodel import CostModel
    from planner.costmodel.layer_time import charges_other_ops
    from planner.profile import REPO_ROOT, profile_from_dict

    data = json.loads((REPO_ROOT / "docs" / "profile_quick_idle.json").read_text())  # a measured CPU
    assert charges_other_ops(CostModel(profile_from_dict(copy.deepcopy(data))))
    del data["cost_models"]["elementwise.device"]  # the same CPU, its element-wise op unmeasured
    cost = CostModel(profile_from_dict(data))
    assert not charges_other_ops(cost)
    assert layer_op_times_s(cost, load_model("opt-125m"), 4, 1, 100, "float32")["other_ops"] == 0.0


def test_a_gpu_other_than_the_a100_lists_the_a100_calibration_among_its_assumed_numbers():
    from planner.hardware import assumed_numbers
    from planner.profile import load_profile

    t4, a100 = (" ".join(assumed_numbers(load_profile(gpu=g))) for g in ("t4", "a100-40g-pcie"))
    assert "calibrated on an A100, not on Tesla T4" in t4
    assert "calibrated on an A100" not in a100


def _recompute_gemm(model, rows):
    from planner.layer_costs import recompute_gemm

    return recompute_gemm(model, rows)
