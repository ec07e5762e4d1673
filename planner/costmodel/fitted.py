"""Regression cost models fitted on probe samples, stored as plain data (no pickle).

Every model is physically shaped first: a non-negative linear model over work terms,

    time_s = c0 + c1 * flops/1e9 + c2 * bytes/1e9          (GEMM, attention)
    time_s = c0 + c1 * bytes/1e9                            (element-wise ops, links)

i.e. a fixed latency plus work over a rate (the roofline's terms, added rather than max'ed so the
fit stays linear). A second base adds hinge terms max(0, bytes - knot) at three quantiles of the
sampled bytes: a convex, increasing line whose rate drops once data falls out of a cache level.
Either base is used alone ("linear") or times a multiplicative correction learned on the log of
the shape dimensions (m, n, k; batch, context, heads, ...), one of the kinds in CORRECTIONS:

- "poly":  log(time / line) = degree-2 polynomial of log(dims)   (ridge regression)
- "tree":  log(time / line) = a small regression tree of log(dims) (exported arrays)
- "rows":  log(time / line) = a piecewise-linear function of log(rows) alone (GEMM m, attention
           batch), through the median correction at each probed row count: on the CPU a GEMM's rate
           at a fixed row count is nearly the same for every weight shape, but changes in steps with
           the rows as the BLAS library switches kernels (measured here: 14.5 GB/s of weights at 1-3
           rows, 7 at 4-6, 5 at 7-11, 3.6 at 12-14, 5 at 16-28), which a tree over (m, n, k) smears

GEMMs and decode attention then get a table of what the probes measured ("probed"): per probed
weight shape (n, k) of a GEMM, per head shape (heads, KV heads, head dim) of attention, the log
ratio sample / model at each probed point, interpolated piecewise-linearly in log(m) (attention: in
log(batch), then log(context)) and held constant beyond the probed ends. The planner asks only for
the catalog models' shapes, which are exactly what the probes sample (planner/profiling/shapes.py),
so at a probed point the prediction is the sample, between probed row counts it follows the
measured points of that shape, and a shape never probed (a custom config.json) gets the model
alone (factor 1). The table rides on every candidate, so cross-validation scores model + table.

The candidate with the lowest cross-validated MAPE (k-fold, shuffled, fixed seed) is kept, with that
held-out MAPE stored next to it. Extrapolation: the shape dimensions are clamped into the sampled
range before the correction is evaluated, so outside the probed shapes a prediction is the linear
model (monotone in FLOPs and bytes, non-negative coefficients) times the correction at the nearest
sampled shape. A bigger GEMM than any probed one therefore costs its extra FLOPs at the rate of the
biggest probed shapes, never less. Monotonicity: transfers and element-wise ops take the running
maximum along bytes (MONOTONE_DIM), so more bytes never predict less time; GEMMs and attention
keep their shape effects, which are real. docs/cost-models.md has the details and the validation.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from planner.errors import KvplanError

FAMILIES = ("gemm", "attention", "elementwise", "link")
# Shape dimensions per family, in the order samples store them (before the time_s column).
DIMS: dict[str, tuple[str, ...]] = {
    "gemm": ("m", "n", "k"),
    "attention": ("batch", "context", "heads", "kv_heads", "head_dim"),
    "elementwise": ("bytes",),
    "link": ("bytes",),
}
MIN_SAMPLES_FOR_CORRECTION = 8
HINGE_KNOTS = 3
# The dim along which predictions are made monotone (non-decreasing): the bytes of a transfer or an
# element-wise op. A correction can dip (a tree step, a polynomial's curvature); the prediction is
# the running maximum over a power-of-two grid of bytes below the query (and a tree's thresholds).
# GEMMs and attention are left alone: their real times are not monotone in the rows (measured here:
# a 111x4096x4096 fp32 GEMM took 37.2 ms, a 192x4096x4096 one 36.4 ms, as the CPU kernel changes
# blocking), and forcing it cost 30-40% error at 192 rows (docs/cost-models.md).
MONOTONE_DIM = {"elementwise": 0, "link": 0}
# Families with a probed table: (dims that name a probed shape, dims interpolated in log space, outer
# first). GEMM: per weight shape (n, k), in m. Attention: per head shape, in batch then context.
PROBED_DIMS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "gemm": ((1, 2), (0,)),
    "attention": ((2, 3, 4), (0, 1)),
}
# The probed table corrects the model by at most this factor either way: on two idle quick profiles
# of this VM 99% of the fp32 GEMM and attention points needed less than x1.5 (the largest x1.75); a
# sample further off its model is taken as disturbed (a load spike while probing), not as the shape.
MAX_LOG_PROBED = math.log(1.5)
CV_FOLDS = 5
TREE_MAX_DEPTH = 4
POLY_RIDGE_ALPHA = 1e-2
# the correction factor is bounded so a bad fit can never make an op 20x faster or slower than its line
MAX_LOG_CORRECTION = math.log(20.0)


def work_terms(family: str, dims: np.ndarray, dtype_bytes: int) -> np.ndarray:
    """Columns of the linear model, in units of 1e9 (GFLOP, GB): rows = samples."""
    d = np.asarray(dims, dtype=float)
    if family == "gemm":
        m, n, k = d[:, 0], d[:, 1], d[:, 2]
        flops = 2.0 * m * n * k  # 2mnk per GEMM (planner/layer_costs.py convention)
        moved = dtype_bytes * (m * k + k * n + m * n)  # read A and B, write C
        return np.column_stack([flops, moved]) / 1e9
    if family == "attention":
        b, s, heads, kvh, hd = (d[:, i] for i in range(5))
        flops = 4.0 * b * s * heads * hd  # QK^T and PV of one new token (design.md §1)
        kv_bytes = 2.0 * b * s * kvh * hd * dtype_bytes  # read K and V once
        return np.column_stack([flops, kv_bytes]) / 1e9
    if family in ("elementwise", "link"):
        return d[:, :1] / 1e9
    raise KvplanError(f"unknown cost-model family '{family}'")


def _log_dims(dims: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(np.asarray(dims, dtype=float), 1.0))


def _with_hinges(x: np.ndarray, knots_gb: Sequence[float]) -> np.ndarray:
    """Append max(0, bytes - knot) columns (bytes = the last work term, in GB): with non-negative
    coefficients the line becomes a convex, increasing piecewise-linear function of bytes, i.e. a
    rate that drops once a working set falls out of a cache level."""
    if not knots_gb:
        return x
    hinges = [np.maximum(x[:, -1] - k, 0.0) for k in knots_gb]
    return np.column_stack([x, *hinges])


def _knots_gb(dims: np.ndarray, family: str, dtype_bytes: int) -> list[float]:
    """HINGE_KNOTS knots at evenly spaced quantiles of log(bytes) over the samples."""
    gb = work_terms(family, dims, dtype_bytes)[:, -1]
    qs = np.linspace(0, 1, HINGE_KNOTS + 2)[1:-1]
    return [float(v) for v in np.unique(np.exp(np.quantile(np.log(np.maximum(gb, 1e-12)), qs)))]


# -- fitting -------------------------------------------------------------------------------------
def _fit_linear(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares on relative error: weights 1/y^2 make it minimise sum((pred-y)/y)^2."""
    from sklearn.linear_model import LinearRegression

    reg = LinearRegression(positive=True)
    reg.fit(x, y, sample_weight=1.0 / np.square(y))
    coef = [max(float(reg.intercept_), 0.0)] + [float(c) for c in reg.coef_]
    return np.array(coef)


def _linear_predict(coef: np.ndarray, x: np.ndarray) -> np.ndarray:
    return coef[0] + x @ coef[1:]


def _fit_poly(logd: np.ndarray, resid: np.ndarray) -> dict[str, Any]:
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import PolynomialFeatures

    poly = PolynomialFeatures(degree=2, include_bias=False)
    feats = poly.fit_transform(logd)
    reg = Ridge(alpha=POLY_RIDGE_ALPHA)
    reg.fit(feats, resid)
    return {"powers": poly.powers_.tolist(), "coef": [float(c) for c in reg.coef_], "intercept": float(reg.intercept_)}


def _poly_at(data: dict[str, Any], logd: Sequence[float]) -> float:
    corr = data["intercept"]
    for powers, coef in zip(data["powers"], data["coef"], strict=True):
        term = coef
        for x, pw in zip(logd, powers, strict=True):
            if pw:
                term *= x ** pw
        corr += term
    return corr


def _fit_tree(logd: np.ndarray, resid: np.ndarray) -> dict[str, Any]:
    from sklearn.tree import DecisionTreeRegressor

    leaf = max(2, len(resid) // 16)
    reg = DecisionTreeRegressor(max_depth=TREE_MAX_DEPTH, min_samples_leaf=leaf, random_state=0)
    reg.fit(logd, resid)
    t = reg.tree_
    return {
        "children_left": [int(v) for v in t.children_left],
        "children_right": [int(v) for v in t.children_right],
        "feature": [int(v) for v in t.feature],
        "threshold": [float(v) for v in t.threshold],
        "value": [float(v) for v in t.value[:, 0, 0]],
    }


def _tree_at(data: dict[str, Any], logd: Sequence[float]) -> float:
    left, right, feat, thr = data["children_left"], data["children_right"], data["feature"], data["threshold"]
    node = 0
    while left[node] != -1:
        node = left[node] if logd[feat[node]] <= thr[node] else right[node]
    return data["value"][node]


def _fit_rows(logd: np.ndarray, resid: np.ndarray) -> dict[str, Any]:
    """Knots at every distinct log(rows) of the samples, each at the median correction there."""
    xs = np.unique(logd[:, 0])
    return {"x": [float(x) for x in xs], "y": [float(np.median(resid[logd[:, 0] == x])) for x in xs]}


def _rows_at(data: dict[str, Any], logd: Sequence[float]) -> float:
    """Linear interpolation in log(rows) between the knots, constant beyond the ends."""
    return _interp1(data["x"], data["y"], logd[0])


def _interp1(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear through (xs, ys), xs increasing; constant beyond the ends."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    hi = bisect.bisect_right(xs, x)
    x0, x1, y0, y1 = xs[hi - 1], xs[hi], ys[hi - 1], ys[hi]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def _check_rows(data: Any, ndim: int, where: str) -> None:
    ok = isinstance(data, dict) and isinstance(data.get("x"), list) and isinstance(data.get("y"), list)
    ok = ok and len(data["x"]) == len(data["y"]) >= 1 and all(_finite(v) for v in data["x"] + data["y"])
    if not ok or any(b <= a for a, b in zip(data["x"], data["x"][1:], strict=False)):
        raise KvplanError(f"{where}: malformed 'rows' block (x increasing, y, same length)")


def _check_poly(data: Any, ndim: int, where: str) -> None:
    ok = isinstance(data, dict) and isinstance(data.get("powers"), list) and isinstance(data.get("coef"), list)
    ok = ok and _finite(data.get("intercept")) and len(data["powers"]) == len(data["coef"])
    ok = ok and all(isinstance(p, list) and len(p) == ndim and all(_finite(v) for v in p) for p in data["powers"])
    if not ok or not all(_finite(c) for c in data["coef"]):
        raise KvplanError(f"{where}: malformed 'poly' block (powers, coef, intercept)")


def _check_tree(data: Any, ndim: int, where: str) -> None:
    keys = ("children_left", "children_right", "feature", "threshold", "value")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in keys):
        raise KvplanError(f"{where}: malformed 'tree' block (needs {', '.join(keys)})")
    n = len(data["value"])
    if n == 0 or any(len(data[k]) != n for k in keys):
        raise KvplanError(f"{where}: 'tree' arrays must have one entry per node")
    for i in range(n):
        left, right = data["children_left"][i], data["children_right"][i]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (left, right, data["feature"][i])):
            raise KvplanError(f"{where}: 'tree' node {i} has non-integer links")
        if left != -1 and not (i < left < n and i < right < n and 0 <= data["feature"][i] < ndim):
            raise KvplanError(f"{where}: 'tree' node {i} points outside the tree")
        if not (_finite(data["threshold"][i]) and _finite(data["value"][i])):
            raise KvplanError(f"{where}: 'tree' node {i} has a non-numeric threshold or value")


@dataclass(frozen=True)
class Correction:
    """A correction kind: log(time / line) as a function of the log shape dims, stored under the
    kind's name. `fit` maps (log dims of the samples, their log ratios) to the stored block; `at`
    evaluates a block at one row of log dims (vector callers map it over their rows, so scalar and
    vector predictions are the same numbers); `check` refuses a malformed block with one line."""

    fit: Callable[[np.ndarray, np.ndarray], dict[str, Any]]
    at: Callable[[dict[str, Any], Sequence[float]], float]
    check: Callable[[Any, int, str], None]
    families: tuple[str, ...]  # the op families it may be tried on (links are never corrected)


CORRECTIONS: dict[str, Correction] = {
    "poly": Correction(_fit_poly, _poly_at, _check_poly, ("gemm", "attention", "elementwise")),
    "tree": Correction(_fit_tree, _tree_at, _check_tree, ("gemm", "attention", "elementwise")),
    # the first dim is a row count (GEMM m, attention batch) only for these
    "rows": Correction(_fit_rows, _rows_at, _check_rows, ("gemm", "attention")),
}
KINDS = ("linear", *CORRECTIONS)


# -- the probed table: what the probes measured, per probed shape ------------------------------------
def _fit_probed(family: str, dims: np.ndarray, resid: np.ndarray) -> dict[str, Any]:
    """Per probed shape (PROBED_DIMS' key dims), the log ratio sample / model at each probed point
    (median over repeated points), the points sorted by their log interpolation coordinates."""
    key_dims, interp_dims = PROBED_DIMS[family]
    groups: dict[tuple[float, ...], dict[tuple[float, ...], list[float]]] = {}
    clipped = np.clip(resid, -MAX_LOG_PROBED, MAX_LOG_PROBED)
    for row, r in zip(dims.tolist(), clipped.tolist(), strict=True):
        key = tuple(float(row[i]) for i in key_dims)
        x = tuple(math.log(max(float(row[i]), 1.0)) for i in interp_dims)
        groups.setdefault(key, {}).setdefault(x, []).append(r)
    return {"groups": [{"key": list(key), "points": [[*x, float(np.median(rs))] for x, rs in sorted(pts.items())]}
                       for key, pts in sorted(groups.items())]}


def _interp_points(points: Sequence[Sequence[float]], x: Sequence[float]) -> float:
    """Nested piecewise-linear interpolation over sorted points [x0, (x1,) value]: along the last
    coordinate within each value of the outer one, then along the outer one; constant beyond ends."""
    if len(x) == 1:
        return _interp1([p[0] for p in points], [p[1] for p in points], x[0])
    outer = sorted({p[0] for p in points})
    inner = [_interp_points([p[1:] for p in points if p[0] == o], x[1:]) for o in outer]
    return _interp1(outer, inner, x[0])


def probed_log_factor(model: dict[str, Any], dims: Sequence[float]) -> float:
    """log(sample / model) interpolated at `dims` from the probed table of the same shape; 0 for a
    shape never probed or a model without a table."""
    table = model.get("probed")
    if not table:
        return 0.0
    key_dims, interp_dims = PROBED_DIMS[model["family"]]
    key = [float(dims[i]) for i in key_dims]
    for group in table["groups"]:
        if group["key"] == key:
            return _interp_points(group["points"], [math.log(max(float(dims[i]), 1.0)) for i in interp_dims])
    return 0.0


def _check_probed(data: Any, family: str, where: str) -> None:
    if family not in PROBED_DIMS:
        raise KvplanError(f"{where}: a 'probed' table is only for {', '.join(PROBED_DIMS)} models")
    key_dims, interp_dims = PROBED_DIMS[family]
    groups = data.get("groups") if isinstance(data, dict) else None
    if not isinstance(groups, list):
        raise KvplanError(f"{where}: malformed 'probed' block (needs a list 'groups')")
    for g in groups:
        key, points = (g.get("key"), g.get("points")) if isinstance(g, dict) else (None, None)
        ok = isinstance(key, list) and len(key) == len(key_dims) and all(_finite(v) for v in key)
        ok = ok and isinstance(points, list) and len(points) >= 1
        ok = ok and all(isinstance(p, list) and len(p) == len(interp_dims) + 1 and all(_finite(v) for v in p)
                        for p in points)
        if not ok or any(b[:-1] <= a[:-1] for a, b in zip(points, points[1:], strict=False)):
            raise KvplanError(f"{where}: malformed 'probed' group (key of {len(key_dims)} numbers, points "
                              f"[{len(interp_dims)} log coordinates, log ratio] sorted and distinct)")


def _fit_kind(
    kind: str, family: str, dims: np.ndarray, y: np.ndarray, dtype_bytes: int, hinge: bool = False
) -> dict[str, Any]:
    knots = _knots_gb(dims, family, dtype_bytes) if hinge else []
    x = _with_hinges(work_terms(family, dims, dtype_bytes), knots)
    coef = _fit_linear(x, y)
    model: dict[str, Any] = {"kind": kind, "linear": [float(c) for c in coef], "knots_gb": knots}
    if kind == "linear":
        return model
    base = np.maximum(_linear_predict(coef, x), 1e-12)
    resid = np.clip(np.log(y / base), -MAX_LOG_CORRECTION, MAX_LOG_CORRECTION)
    logd = _log_dims(dims)
    model[kind] = CORRECTIONS[kind].fit(logd, resid)
    return model


def _mape(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - y) / y))


def _complete(model: dict[str, Any], family: str, dims: np.ndarray, y: np.ndarray, dtype_bytes: int,
              probed: bool) -> dict[str, Any]:
    """Add what prediction needs besides the fit (family, dims, sampled range) and, with `probed`
    (families in PROBED_DIMS), the probed table of these samples over the finished model."""
    model.update({"family": family, "dims": list(DIMS[family]), "dtype_bytes": dtype_bytes,
                  "dim_min": dims.min(axis=0).tolist(), "dim_max": dims.max(axis=0).tolist()})
    if probed and family in PROBED_DIMS:
        model["probed"] = _fit_probed(family, dims, np.log(y / np.maximum(_raw_many(model, dims), 1e-12)))
    return model


def _cv_mape(kind: str, family: str, dims: np.ndarray, y: np.ndarray, dtype_bytes: int, hinge: bool) -> float:
    """k-fold held-out MAPE of a candidate alone (no probed table): how it predicts shapes and
    points it was not fitted on, which is what a shape never probed gets."""
    from sklearn.model_selection import KFold

    folds = min(CV_FOLDS, len(y))
    pred = np.empty(len(y))
    for train, test in KFold(n_splits=folds, shuffle=True, random_state=0).split(dims):
        model = _fit_kind(kind, family, dims[train], y[train], dtype_bytes, hinge)
        pred[test] = predict_many(_complete(model, family, dims[train], y[train], dtype_bytes, False), dims[test])
    return _mape(pred, y)


def _held_out_probed_mape(kind: str, family: str, dims: np.ndarray, y: np.ndarray, dtype_bytes: int,
                          hinge: bool) -> float:
    """Held-out MAPE of model + probed table: each sample predicted by the candidate fitted without
    its fold (CV_FOLDS, as _cv_mape) times the table of its shape built from every other sample, so
    a probed point is interpolated from its shape's neighbours in m (attention: batch, context), or
    is the model alone where it was its shape's only point. Leave-one-out for the table, k-fold for
    the model (refitting it n times cost seconds per family)."""
    from sklearn.model_selection import KFold

    key_dims = list(PROBED_DIMS[family][0])
    pred = np.empty(len(y))
    for train, test in KFold(n_splits=min(CV_FOLDS, len(y)), shuffle=True, random_state=0).split(dims):
        base = _complete(_fit_kind(kind, family, dims[train], y[train], dtype_bytes, hinge), family,
                         dims[train], y[train], dtype_bytes, False)
        raw = _raw_many(base, dims)
        resid = np.log(y / np.maximum(raw, 1e-12))
        for i in test:
            mates = np.all(dims[:, key_dims] == dims[i, key_dims], axis=1)
            mates[i] = False
            table = {"family": family, "probed": _fit_probed(family, dims[mates], resid[mates])} if mates.any() else {}
            pred[i] = raw[i] * math.exp(probed_log_factor(table, dims[i].tolist()))
    return _mape(pred, y)


def fit(family: str, rows: Sequence[Sequence[float]], dtype_bytes: int = 1) -> dict[str, Any]:
    """Fit every candidate on `rows` (dims..., time_s), keep the best by cross-validated MAPE."""
    if family not in FAMILIES:
        raise KvplanError(f"unknown cost-model family '{family}'")
    arr = np.asarray(rows, dtype=float)
    ndim = len(DIMS[family])
    if arr.ndim != 2 or arr.shape[1] != ndim + 1 or len(arr) < 3:
        raise KvplanError(f"{family}: need at least 3 samples of {ndim} dims + time_s to fit a model")
    arr = arr[arr[:, -1] > 0]
    dims, y = arr[:, :ndim], arr[:, -1]
    # links stay physically shaped (latency + bytes / bandwidth, piecewise with hinges): a learned
    # correction on bytes extrapolated inconsistently (2.98 GB/s at 168 MB, 2.24 GB/s at 2 GB)
    kinds = tuple(k for k in KINDS if k == "linear" or family in CORRECTIONS[k].families)
    if len(y) < MIN_SAMPLES_FOR_CORRECTION or not kinds:
        kinds = ("linear",)
    # candidates: each kind on the plain line, and (with enough samples) on the line with hinges
    cands = [(k, False) for k in kinds]
    if len(y) >= MIN_SAMPLES_FOR_CORRECTION:
        cands += [(k, True) for k in kinds]
    scores = {(k, h): _cv_mape(k, family, dims, y, dtype_bytes, h) for k, h in cands}
    best = min(cands, key=lambda c: (round(scores[c], 6), c[1], kinds.index(c[0])))
    model = _complete(_fit_kind(best[0], family, dims, y, dtype_bytes, best[1]), family, dims, y, dtype_bytes, True)
    model.update({
        "cv_mape": round(scores[best], 6),
        "cv_mape_by_kind": {k + ("+hinge" if h else ""): round(v, 6) for (k, h), v in scores.items()},
        "n_samples": int(len(y)), "cv_folds": min(CV_FOLDS, len(y)),
    })
    if family in PROBED_DIMS:
        # the error a probed shape's query meets (the planner's case) vs a shape never probed
        model["cv_mape_unprobed"] = model["cv_mape"]
        model["cv_mape"] = round(_held_out_probed_mape(best[0], family, dims, y, dtype_bytes, best[1]), 6)
        model["held_out"] = "model: 5-fold; probed table: leave-one-out"
    return model


# -- prediction ----------------------------------------------------------------------------------
def predict_many(model: dict[str, Any], dims: np.ndarray) -> np.ndarray:
    """Seconds for many queries (rows of dims); monotone along MONOTONE_DIM as in predict()."""
    dims = np.asarray(dims, dtype=float)
    best = _raw_many(model, dims)
    if model["kind"] == "linear" or len(dims) == 0 or model["family"] not in MONOTONE_DIM:
        return best
    d = MONOTONE_DIM[model["family"]]
    for g in _envelope_points(model):
        below = dims[:, d] > g
        if not below.any():
            continue
        probe = dims[below].copy()
        probe[:, d] = g
        best[below] = np.maximum(best[below], _raw_many(model, probe))
    return best


def _raw_many(model: dict[str, Any], dims: np.ndarray) -> np.ndarray:
    family = model["family"]
    dims = np.asarray(dims, dtype=float)
    coef = np.asarray(model["linear"], dtype=float)
    terms = _with_hinges(work_terms(family, dims, int(model["dtype_bytes"])), model.get("knots_gb") or [])
    base = _linear_predict(coef, terms)
    if model["kind"] == "linear" and not model.get("probed"):
        return base
    return base * np.array([correction(model, row) for row in dims.tolist()])


def _terms(family: str, dims: Sequence[float], dtype_bytes: int) -> tuple[float, ...]:
    """work_terms for one query in plain Python (the planner calls this thousands of times)."""
    if family == "gemm":
        m, n, k = dims
        return 2.0 * m * n * k / 1e9, dtype_bytes * (m * k + k * n + m * n) / 1e9
    if family == "attention":
        b, s, heads, kvh, hd = dims
        return 4.0 * b * s * heads * hd / 1e9, 2.0 * b * s * kvh * hd * dtype_bytes / 1e9
    return (dims[0] / 1e9,)


def correction(model: dict[str, Any], dims: Sequence[float]) -> float:
    """The multiplicative correction over the linear part at `dims`: the kind's (1 for a linear
    model; the dims clamped into the sampled range first, see the module docstring on
    extrapolation) times the probed table's factor at the unclamped dims (1 off the probed shapes)."""
    kind = model["kind"]
    probed = probed_log_factor(model, dims)
    if kind == "linear":
        return math.exp(probed) if probed else 1.0
    logd = [math.log(max(min(max(float(x), lo), hi), 1.0))
            for x, lo, hi in zip(dims, model["dim_min"], model["dim_max"], strict=True)]
    corr = CORRECTIONS[kind].at(model[kind], logd)
    return math.exp(min(max(corr, -MAX_LOG_CORRECTION), MAX_LOG_CORRECTION) + probed)


def predict_from_terms(model: dict[str, Any], terms: Sequence[float], dims: Sequence[float]) -> float:
    """The linear part on given work terms (GFLOP, GB) times the correction at `dims`: for queries
    whose work is not a function of the stored dims (attention of several new tokens at once)."""
    coef = model["linear"]
    knots = model.get("knots_gb") or ()
    if knots:
        terms = (*terms, *(max(terms[-1] - k, 0.0) for k in knots))
    base = coef[0] + sum(c * t for c, t in zip(coef[1:], terms, strict=True))
    return base * correction(model, dims)


def _raw(model: dict[str, Any], dims: Sequence[float]) -> float:
    return predict_from_terms(model, _terms(model["family"], dims, int(model["dtype_bytes"])), dims)


def _envelope_points(model: dict[str, Any]) -> list[float]:
    """Where a correction can peak along the monotone dim inside the sampled range: powers of two,
    and for a tree just below each of its thresholds on that dim (a tree only steps there)."""
    d = MONOTONE_DIM[model["family"]]
    lo, hi = max(float(model["dim_min"][d]), 1.0), max(float(model["dim_max"][d]), 1.0)
    points = {2.0 ** e for e in range(math.ceil(math.log2(lo)), int(math.floor(math.log2(hi))) + 1)}
    if model["kind"] == "tree":
        tree = model["tree"]
        for node, feat in enumerate(tree["feature"]):
            if tree["children_left"][node] != -1 and feat == d:
                x = math.exp(tree["threshold"][node]) * (1.0 - 1e-9)
                if lo <= x <= hi:
                    points.add(x)
    return sorted(points)


def _grid_below(model: dict[str, Any], value: float) -> list[float]:
    return [p for p in _envelope_points(model) if p < value]


def predict(model: dict[str, Any], dims: Sequence[float]) -> float:
    """Seconds for one query; the same number as predict_many, without numpy overhead."""
    best = _raw(model, dims)
    if model["kind"] == "linear" or model["family"] not in MONOTONE_DIM:
        return best  # a linear model has non-negative coefficients: already monotone
    d = MONOTONE_DIM[model["family"]]
    row = list(dims)
    for g in _grid_below(model, float(dims[d])):
        row[d] = g
        best = max(best, _raw(model, row))
    return best


def label(model: dict[str, Any]) -> str:
    """The kind ("linear" or a CORRECTIONS key), with "+hinge" when the line has knots and "+probed"
    when it carries a probed table."""
    return model["kind"] + ("+hinge" if model.get("knots_gb") else "") + ("+probed" if model.get("probed") else "")


@dataclass(frozen=True)
class LinkFit:
    """A link as latency + bytes / rate, read off a fitted link model's linear part."""

    latency_s: float
    gb_per_s: float


def link_parameters(model: dict[str, Any]) -> LinkFit | None:
    """Latency = the intercept; rate = the slope past the last knot (the sustained rate)."""
    coef = model.get("linear") or []
    slope = sum(coef[1:])
    if len(coef) < 2 or slope <= 0:
        return None
    return LinkFit(latency_s=float(coef[0]), gb_per_s=1.0 / float(slope))


def validate_model(model: Any, where: str) -> None:
    """One-line errors for a stored model that cannot be evaluated."""
    if not isinstance(model, dict):
        raise KvplanError(f"{where}: expected an object")
    family, kind = model.get("family"), model.get("kind")
    if family not in FAMILIES:
        raise KvplanError(f"{where}: unknown family {family!r}")
    if kind not in KINDS:
        raise KvplanError(f"{where}: unknown kind {kind!r}")
    ndim = len(DIMS[family])
    knots = model.get("knots_gb", [])
    if not isinstance(knots, list) or not all(_finite(k) and k >= 0 for k in knots):
        raise KvplanError(f"{where}: 'knots_gb' must be a list of non-negative numbers")
    nlin = (2 if family in ("elementwise", "link") else 3) + len(knots)
    lin = model.get("linear")
    if not isinstance(lin, list) or len(lin) != nlin or not all(_finite(v) and v >= 0 for v in lin):
        raise KvplanError(f"{where}: 'linear' must be {nlin} non-negative numbers")
    for key in ("dim_min", "dim_max"):
        vals = model.get(key)
        if not isinstance(vals, list) or len(vals) != ndim or not all(_finite(v) for v in vals):
            raise KvplanError(f"{where}: '{key}' must be {ndim} numbers")
    if not _finite(model.get("dtype_bytes")):
        raise KvplanError(f"{where}: 'dtype_bytes' must be a number")
    if kind in CORRECTIONS:
        CORRECTIONS[kind].check(model.get(kind), ndim, where)
    if model.get("probed") is not None:
        _check_probed(model["probed"], family, where)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
