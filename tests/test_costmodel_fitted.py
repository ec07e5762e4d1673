"""Fitted cost models: physically shaped fits, sane extrapolation, plain-data storage, fallbacks."""

import importlib.util
import json

import numpy as np
import pytest

from planner.costmodel import CostModel, fitted
from planner.errors import KvplanError
from planner.layer_costs import Gemm
from planner.profile import REPO_ROOT, load_profile, profile_from_dict

RNG = np.random.default_rng(0)


def gemm_rows(time_fn, ms=(1, 2, 4, 8, 16, 32, 64, 128, 256), widths=((768, 768), (2304, 768), (3072, 768),
                                                                        (768, 3072), (4096, 4096), (11008, 4096))):
    rows = []
    for m in ms:
        for n, k in widths:
            noise = 1 + 0.02 * RNG.standard_normal()
            rows.append([m, n, k, time_fn(m, n, k) * noise])
    return rows


def roofline_law(m, n, k):
    # 5 us launch + max(compute at a rate that grows with m, weights + activations at 20 GB/s)
    return 5e-6 + max(2 * m * n * k / (200e9 * m / (m + 16)), 4 * (m * k + n * k + m * n) / 20e9)


def test_linear_law_is_recovered():
    rows = gemm_rows(lambda m, n, k: 5e-6 + 2 * m * n * k / 100e9 + 4 * (m * k + n * k + m * n) / 10e9)
    model = fitted.fit("gemm", rows, dtype_bytes=4)
    assert model["cv_mape"] < 0.05
    assert fitted.predict(model, (512, 4096, 4096)) == pytest.approx(
        5e-6 + 2 * 512 * 4096 * 4096 / 100e9 + 4 * (512 * 4096 * 2 + 4096 * 4096) / 10e9, rel=0.1)


def test_shape_dependent_efficiency_beats_the_line_and_is_selected_by_cv():
    model = fitted.fit("gemm", gemm_rows(roofline_law), dtype_bytes=4)
    scores = model["cv_mape_by_kind"]
    assert {"linear", "poly", "tree", "rows", "linear+hinge", "poly+hinge", "tree+hinge", "rows+hinge"} == set(scores)
    assert model["cv_mape_unprobed"] == min(scores.values())  # the model alone picks the kind
    assert model["cv_mape"] < 0.15


def test_a_row_count_kernel_switch_is_followed_at_weight_shapes_never_probed():
    # a CPU BLAS: the weights' streaming rate depends on the row count in steps (kernel switches,
    # as measured on this machine: 14.5 GB/s at 1-3 rows, 7 at 4-6, 5 from 7), not on the shape
    def law(m, n, k):
        rate = 14.5e9 if m < 4 else 7e9 if m < 7 else 5e9
        return 1e-5 + 4 * n * k / rate

    ms = (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 16)
    model = fitted.fit("gemm", gemm_rows(law, ms=ms), dtype_bytes=4)
    assert model["kind"] == "rows"
    fitted.validate_model(json.loads(json.dumps(model)), "gemm")  # plain data, and valid
    for m in (1, 3, 4, 6, 8, 12):
        for n, k in ((2048, 8192), (8192, 2048), (5120, 5120)):
            assert fitted.predict(model, (m, n, k)) == pytest.approx(law(m, n, k), rel=0.06)
    broken = {**model, "rows": {"x": model["rows"]["x"][::-1], "y": model["rows"]["y"]}}
    with pytest.raises(KvplanError, match="rows"):
        fitted.validate_model(broken, "gemm.device.float32")


@pytest.mark.parametrize("kind", ["linear", "poly", "tree", "rows"])
def test_extrapolation_is_monotone_and_no_faster_than_the_biggest_probe(kind, monkeypatch):
    monkeypatch.setattr(fitted, "KINDS", (kind,))
    model = fitted.fit("gemm", gemm_rows(roofline_law), dtype_bytes=4)
    assert model["kind"] == kind
    times = [fitted.predict(model, (m, 11008, 4096)) for m in (256, 512, 2048, 8192, 32768)]
    assert all(a < b for a, b in zip(times, times[1:], strict=False))
    # beyond the sampled range time grows at least like the extra work at the biggest probed shape's rate
    assert times[-1] / times[0] > 32768 / 256 * 0.5
    wider = [fitted.predict(model, (64, n, 8192)) for n in (4096, 28672, 57344)]
    assert all(a < b for a, b in zip(wider, wider[1:], strict=False))
    # inside the sampled range a shape effect may make more rows a little faster, never much
    dense = fitted.predict_many(model, [[m, 4096, 4096] for m in range(1, 600)])
    assert np.min(dense[1:] / dense[:-1]) > 0.6


def test_transfer_time_never_drops_with_size():
    # a cache-like knee: fast below 8 MiB, slow above, plus noise that would tempt a tree into steps;
    # links are fitted as latency + bytes / bandwidth only (piecewise with hinges), never corrected
    sizes = np.geomspace(4096, 1 << 28, 24)
    rows = [[b, 2e-6 + (b / 40e9 if b < 8 << 20 else b / 8e9) * (1 + 0.1 * RNG.standard_normal())]
            for b in sizes]
    model = fitted.fit("link", rows)
    assert model["kind"] == "linear"
    grid = np.geomspace(1024, 1 << 32, 500)[:, None]
    assert np.all(np.diff(fitted.predict_many(model, grid)) >= 0)
    # the rate of large transfers extrapolates to the slow side of the knee, in both directions
    assert 6e9 < (1 << 33) / fitted.predict(model, (1 << 33,)) < 10e9


def test_link_model_reads_as_latency_plus_bandwidth():
    rows = [[b, 50e-6 + b / 2e9 * (1 + 0.01 * RNG.standard_normal())] for b in np.geomspace(4096, 1 << 28, 20)]
    model = fitted.fit("link", rows)
    params = fitted.link_parameters(model)
    assert params.gb_per_s == pytest.approx(2.0, rel=0.05)
    assert params.latency_s == pytest.approx(50e-6, rel=0.3)
    assert fitted.predict(model, (1 << 34,)) == pytest.approx((1 << 34) / 2e9, rel=0.05)


def test_models_are_plain_data_and_round_trip():
    model = fitted.fit("gemm", gemm_rows(roofline_law), dtype_bytes=4)
    again = json.loads(json.dumps(model))
    shapes = np.array([[1, 4096, 4096], [300, 2304, 768], [5000, 11008, 4096]])
    assert np.allclose(fitted.predict_many(model, shapes), fitted.predict_many(again, shapes))
    fitted.validate_model(again, "x")


def test_malformed_models_are_refused_with_one_line():
    model = fitted.fit("gemm", gemm_rows(roofline_law), dtype_bytes=4)
    if model["kind"] == "tree":
        model["tree"]["children_left"][0] = 10_000
        match = "tree"
    else:
        model["linear"] = [0.0, -1.0, 0.0]
        match = "linear"
    with pytest.raises(KvplanError, match=match) as info:
        fitted.validate_model(model, "profile p cost_models.gemm.device.float32")
    assert "\n" not in str(info.value)
    with pytest.raises(KvplanError, match="too|need"):
        fitted.fit("link", [[1, 1.0]])


def test_datasheet_profile_answers_by_roofline_and_measured_falls_back(local_profile_path):
    sheet = CostModel(load_profile(gpu="a100-80g-sxm"))
    assert sheet.source("gemm", "device", "float16") == "roofline"
    measured = CostModel(load_profile(local_profile_path))
    g = Gemm(64, 4096, 4096)
    assert measured.source("gemm", "device", "float32").startswith("fitted:")
    # a dtype the smoke profile did not measure falls back to the roofline of the profile's own rates
    assert measured.source("gemm", "device", "float16") == "roofline"
    assert measured.gemm_s(g, "float16") > 0
    with pytest.raises(KvplanError, match="no link"):
        measured.transfer_s("nvlink", 1e6)


def test_profile_without_optional_sections_still_loads(local_profile_path):
    data = json.loads(local_profile_path.read_text())
    for key in ("cost_models", "samples", "efficiency"):
        data.pop(key, None)
    profile = profile_from_dict(data, "stripped")
    assert CostModel(profile).source("gemm", "device", "float32") == "roofline"


VALIDATE = REPO_ROOT / "benchmarks" / "validate_a100.py"


def test_a100_held_out_models_within_10_percent():
    spec = importlib.util.spec_from_file_location("validate_a100", VALIDATE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not mod.DATA.is_dir():
        pytest.skip("../shared/data/gpu-op-timings/a100 is not present")
    rows = mod.load_rows(mod.DATA)
    rows = rows[rows.tp == 1]  # one tensor-parallel degree keeps the test quick
    train = rows[rows.model.isin(mod.TRAIN)].reset_index(drop=True)
    test = rows[rows.model.isin(mod.HELD_OUT) & (rows.m >= 64)].reset_index(drop=True)
    pred = mod.regression_times(train, test)
    assert np.median(np.abs(pred - test.time_s) / test.time_s) <= 0.10


@pytest.mark.parametrize("family, ndim", [("gemm", 3), ("attention", 5), ("link", 1)])
@pytest.mark.parametrize("kind", ["poly", "tree"])
def test_scalar_and_vector_predictions_agree(family, ndim, kind, monkeypatch):
    monkeypatch.setattr(fitted, "KINDS", (kind,))
    dims = np.exp(RNG.uniform(0, 8, (40, ndim))).round() + 1
    terms = fitted.work_terms(family, dims, 2)
    y = (1e-5 + terms.sum(axis=1) / 50) * np.exp(0.3 * np.sin(np.log(dims).sum(axis=1)))
    model = fitted.fit(family, np.column_stack([dims, y]).tolist(), dtype_bytes=2)
    queries = np.exp(RNG.uniform(0, 11, (30, ndim))).round() + 1  # inside and outside the sampled range
    vector = fitted.predict_many(model, queries)
    scalar = [fitted.predict(model, q) for q in queries]
    assert np.allclose(vector, scalar, rtol=1e-9)
    assert all(p > 0 for p in scalar)


def test_missing_or_broken_nvml_never_stops_a_cpu_profile(monkeypatch):
    import pynvml

    from planner.profiling import system

    def broken():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", broken)
    assert system._nvml_info(0) == {}
    device = system.detect_device(force_cpu=True)
    assert device.type == "cpu" and device.memory_bytes > 0


# -- stored models predict what their stored numbers say (an evaluation written independently) ---
def _independent_raw(model, dims):
    """The stored line (numpy) times exp(clipped correction) at the dims clamped into the sampled
    range: polynomial features as products of powers, the tree walked from its arrays, np.interp."""
    d = np.asarray(dims, dtype=float)
    p = model["dtype_bytes"]
    if model["family"] == "gemm":
        m, n, k = d
        terms = [2 * m * n * k / 1e9, p * (m * k + k * n + m * n) / 1e9]
    elif model["family"] == "attention":
        b, s, h, kvh, hd = d
        terms = [4 * b * s * h * hd / 1e9, 2 * b * s * kvh * hd * p / 1e9]
    else:
        terms = [d[0] / 1e9]
    terms += [max(terms[-1] - knot, 0.0) for knot in model.get("knots_gb") or []]
    line = model["linear"][0] + float(np.dot(model["linear"][1:], terms))
    logd = np.log(np.maximum(np.clip(d, model["dim_min"], model["dim_max"]), 1.0))
    kind = model["kind"]
    if kind == "linear":
        return line
    if kind == "poly":
        block = model["poly"]
        corr = block["intercept"] + float(np.dot(np.prod(logd ** np.asarray(block["powers"]), axis=1), block["coef"]))
    elif kind == "rows":
        corr = float(np.interp(logd[0], model["rows"]["x"], model["rows"]["y"]))
    else:
        tree, node = model["tree"], 0
        while tree["children_left"][node] >= 0:
            go_left = logd[tree["feature"][node]] <= tree["threshold"][node]
            node = tree["children_left"][node] if go_left else tree["children_right"][node]
        corr = tree["value"][node]
    return line * float(np.exp(np.clip(corr, -np.log(20), np.log(20))))


def _independent(model, dims):
    """Element-wise ops and links: the largest raw prediction at the query and at the powers of two
    (and just below a tree's byte thresholds) inside the sampled range below it."""
    best = _independent_raw(model, dims)
    if model["kind"] == "linear" or model["family"] not in ("elementwise", "link"):
        return best
    lo, hi = model["dim_min"][0], model["dim_max"][0]
    points = [2.0 ** e for e in range(64) if lo <= 2.0 ** e <= hi]
    if model["kind"] == "tree":
        tree = model["tree"]
        nodes = zip(tree["threshold"], tree["feature"], tree["children_left"], strict=True)
        points += [np.exp(t) * (1 - 1e-9) for t, f, left in nodes if left >= 0 and f == 0]
    for g in points:
        if g < dims[0] and lo <= g <= hi:
            best = max(best, _independent_raw(model, [g]))
    return best


STORED_SHAPES = {
    "gemm": [(1, 4096, 4096), (7, 2304, 768), (48, 11008, 4096), (300, 5120, 13824), (8192, 28672, 8192)],
    "attention": [(1, 100, 32, 32, 128), (4, 2048, 32, 8, 128), (16, 13000, 40, 40, 128), (64, 32768, 64, 8, 128)],
    "elementwise": [(1000.0,), (5e5,), (3e6,), (2e7,), (5e8,)],
    "link": [(100.0,), (65536.0,), (3e6,), (1e9,)],
}


def test_stored_profile_models_predict_what_an_independent_evaluation_says():
    data = json.loads((REPO_ROOT / "docs" / "validation_profile_cpu_1thread.json").read_text())
    kinds = set()
    for key, model in data["cost_models"].items():
        kinds.add(model["kind"])
        for dims in STORED_SHAPES[model["family"]]:
            expected = _independent(model, dims)
            assert fitted.predict(model, dims) == pytest.approx(expected, rel=1e-12), (key, dims)
            assert fitted.predict_many(model, [dims])[0] == pytest.approx(expected, rel=1e-12), (key, dims)
    assert kinds == set(fitted.KINDS)  # the stored profile exercises every kind
