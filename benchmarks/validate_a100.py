"""Validate the GPU cost models on real A100 per-operator timings (../shared/data/gpu-op-timings/a100,
measured with microsoft/vidur, MIT licence; read in place): median error on rows the constants
were not fitted on, separately for GEMMs, element-wise ops, decode attention and prefill attention.

Held out:
  GEMMs, element-wise - three whole models (HELD_OUT) whose shapes no training model has; the
                        constants are fitted on the TRAIN models' rows only.
  attention           - the data has one model (Llama-2-7b), so each row is predicted from constants
                        fitted without it (leave one out, over batches and contexts): prefill and the
                        no-SM-count decode model on the other 17 rows, the decode wave model (with the
                        GPU's SM count) on the other 9 decode rows.

Predictors: "shipped" = planner/costmodel/calibration.py's CALIBRATED through the roofline (what
every datasheet profile predicts); "refit" = the same formulas with constants fitted now;
"fitted regression" = planner.costmodel.fitted on the training rows (GEMMs and element-wise);
"previous" = the roofline this replaced (hand-set / single-GPU fractions, kept here only to compare);
"before" (element-wise classes) = the element-wise constants fitted on the fused activation rows, which
the torch add rows replaced.

    python benchmarks/validate_a100.py [--data DIR] [--calibrate] [--json FILE]

`--calibrate` prints the refitted constants as a SustainedRates literal to paste into calibration.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from planner.costmodel import fitted, roofline
from planner.costmodel.calibration import CALIBRATED, SustainedRates
from planner.jsonio import write_json_atomic
from planner.layer_costs import attention_flops
from planner.models import load_model
from planner.profile import REPO_ROOT, load_profile

DATA = REPO_ROOT.parent / "shared" / "data" / "gpu-op-timings" / "a100"
TRAIN = ("Llama-2-7b-hf", "Llama-2-70b-hf", "Meta-Llama-3-70B", "Qwen-72B", "phi-2")
HELD_OUT = ("Meta-Llama-3-8B", "CodeLlama-34b-Instruct-hf", "internlm-20b")
ATTENTION_FILE = "Llama-2-7b-hf.attention.csv"
ATTENTION_MODEL = "llama-2-7b"  # the catalog entry of the attention file's model (shapes checked on load)
DATASHEET = "a100-80g-sxm"  # vidur's "a100" device: A100-SXM4-80GB
FP16_BYTES = 2
GEMM_FIELDS = ("gemm_compute_fraction", "gemm_memory_fraction", "overlap_exponent", "launch_s",
               "elementwise_memory_fraction", "elementwise_floor_s")
ATTENTION_FIELDS = ("decode_attention_memory_fraction", "decode_attention_floor_s",
                    "prefill_attention_compute_fraction", "prefill_attention_floor_s")
WAVE_FIELDS = ("decode_attention_wave_memory_fraction", "decode_attention_wave_floor_s")
# element-wise rows: "add" is torch's own element-wise kernel (the residual add, eager, like every small op
# of kvplan's runtime): the element-wise constants are fitted on it; "mlp_act" is sarathi's fused
# activation kernel (SiluAndMul, one thread block per token; GELU for phi-2), scored, not fitted
ELEMENTWISE_OPS = ("add", "mlp_act")
FITTED_ELEMENTWISE = "add"
# the models whose block adds attention, MLP and residual in one expression (vidur's GPTBlock without a
# post-attention norm: `attn_outputs + feed_forward_hidden_states + residual`, two add kernels)
PARALLEL_BLOCK = ("phi-2",)
# the element-wise constants as they were fitted on the fused activation rows (mlp_act) before the add rows
# replaced them: the "before" column of the element-wise classes
MLP_ACT_FITTED = dataclasses.replace(CALIBRATED, elementwise_memory_fraction=0.5128, elementwise_floor_s=3.107e-06)
SMALL_TOKENS = 64  # "small" rows: fewer tokens than this (decode's element-wise ops are of this size)
UNITS_PER_SM = (1, 2, 3, 4)  # the candidates for decode_attention_units_per_sm (an integer: picked, not fitted)


# -- data ----------------------------------------------------------------------------------------
def load_rows(data_dir: Path) -> pd.DataFrame:
    """One row per (model, tensor-parallel degree, num_tokens, op) with the GEMM shape of one shard
    (vidur's column/row-parallel layers) and the median time in seconds; the element-wise rows
    (`ELEMENTWISE_OPS`) carry the bytes one kernel reads and writes in `n`, and how many kernels the
    timed region launched in `kernels`."""
    frames = []
    for path in sorted(data_dir.glob("*.mlp.csv")):
        df = pd.read_csv(path)
        name = path.name.removesuffix(".mlp.csv")
        head_dim = df.n_embd // df.n_head
        tp = df.num_tensor_parallel_workers
        m = df.num_tokens
        # vidur times a gated MLP's gate and up as ONE GEMM of 2i columns (vidur/profiling/mlp/mlp_impl.py:
        # one ColumnParallelLinear of 2 * mlp_hidden_dim, "mlp_up_proj"), so that row is predicted at its
        # own shape: this validates gemm_s on measured shapes, not the layer (kvplan's runtime runs two
        # GEMMs of i columns, and planner.layer_costs prices those)
        up_width = df.n_expanded_embd * np.where(df.use_gated_mlp, 2, 1)
        shapes = {
            "attn_pre_proj": (m, (df.n_head + 2 * df.n_kv_head) * head_dim // tp, df.n_embd),
            "attn_post_proj": (m, df.n_embd, df.n_head * head_dim // tp),
            "mlp_up_proj": (m, up_width // tp, df.n_embd),
            "mlp_down_proj": (m, df.n_embd, df.n_expanded_embd // tp),
        }
        for op, (mm, nn, kk) in shapes.items():
            frames.append(pd.DataFrame({"model": name, "op": op, "tp": tp, "m": mm, "n": nn, "k": kk, "kernels": 1,
                                        "time_s": df[f"time_stats.{op}.median"] / 1e3}))
        act_bytes = m * df.n_expanded_embd // tp * (np.where(df.use_gated_mlp, 2, 1) + 1) * FP16_BYTES
        frames.append(pd.DataFrame({"model": name, "op": "mlp_act", "tp": tp, "m": m, "n": act_bytes, "k": 0,
                                    "kernels": 1, "time_s": df["time_stats.mlp_act.median"] / 1e3}))
        # the residual add: torch's own element-wise kernel over the full hidden size (o_proj and
        # down_proj keep n_embd per shard), reading two tensors and writing one; two kernels where
        # the block adds attention, MLP and residual at once (PARALLEL_BLOCK)
        frames.append(pd.DataFrame({"model": name, "op": "add", "tp": tp, "m": m, "n": 3 * m * df.n_embd * FP16_BYTES,
                                    "k": 0, "kernels": 2 if name in PARALLEL_BLOCK else 1,
                                    "time_s": df["time_stats.add.median"] / 1e3}))
    if not frames:
        raise SystemExit(f"no *.mlp.csv files under {data_dir}")
    rows = pd.concat(frames, ignore_index=True)
    return rows[rows.time_s > 0].reset_index(drop=True)


def load_attention(data_dir: Path) -> pd.DataFrame:
    """One row per attention call: phase, batch, new tokens per sequence, cached tokens, the work units
    (batch x KV heads), the causal FLOPs and K,V bytes as CostModel.attention_s counts them, and the
    median time in seconds."""
    df = pd.read_csv(data_dir / ATTENTION_FILE)
    model = load_model(ATTENTION_MODEL)
    if not ((df.n_embd == model.hidden_size) & (df.n_q_head == model.num_heads)
            & (df.n_kv_head == model.num_kv_heads) & (df.num_tensor_parallel_workers == 1)).all():
        raise SystemExit(f"{ATTENTION_FILE}: shapes differ from the catalog's {ATTENTION_MODEL}")
    prefill = df.is_prefill.astype(bool).to_numpy()
    query = np.where(prefill, df.prefill_chunk_size, 1).astype(int)
    batch, context = df.batch_size.astype(int).to_numpy(), df.kv_cache_size.astype(int).to_numpy()
    flops = [attention_flops(model, int(b), int(q), int(c), causal=True)
             for b, q, c in zip(batch, query, context, strict=True)]
    kv_bytes = batch * (context + query) * 2 * model.kv_dim * FP16_BYTES
    time_ms = np.where(prefill, df["time_stats.attn_prefill.median"], df["time_stats.attn_decode.median"])
    return pd.DataFrame({"phase": np.where(prefill, "prefill", "decode"), "batch": batch, "query": query,
                         "context": context, "units": batch * model.num_kv_heads,
                         "flops": np.asarray(flops, dtype=float),
                         "kv_bytes": kv_bytes.astype(float), "time_s": time_ms / 1e3})


# -- predictions -----------------------------------------------------------------------------------
def gemm_table_times(rows: pd.DataFrame, rates: SustainedRates, peak_tflops: float, gb_per_s: float) -> np.ndarray:
    """The roofline over a table of GEMM and element-wise rows (vectorised); an element-wise row is
    `kernels` kernels of `n` bytes each."""
    m, n, k = (rows[c].to_numpy(dtype=float) for c in ("m", "n", "k"))
    elementwise = rows.op.isin(ELEMENTWISE_OPS).to_numpy()
    gemm = roofline.gemm_time_s(m, n, k, FP16_BYTES, peak_tflops, gb_per_s, rates)
    return np.where(elementwise, rows.kernels.to_numpy() * roofline.elementwise_time_s(n, gb_per_s, rates), gemm)


def attention_table_times(att: pd.DataFrame, rates: SustainedRates, peak_tflops: float, gb_per_s: float,
                          sm_count: int | None = None) -> np.ndarray:
    """The roofline over attention rows; with `sm_count` decode rows take the wave model."""
    out = np.empty(len(att))
    for phase, query in (("decode", 1), ("prefill", 2)):  # any query > 1 takes the prefill floor
        sel = (att.phase == phase).to_numpy()
        out[sel] = roofline.device_attention_time_s(att.flops.to_numpy()[sel], att.kv_bytes.to_numpy()[sel],
                                                    query, peak_tflops, gb_per_s, rates,
                                                    work_units=att.units.to_numpy()[sel], sm_count=sm_count)
    return out


def previous_times(rows: pd.DataFrame, att: pd.DataFrame, peak: float, bw: float) -> tuple[np.ndarray, np.ndarray]:
    """The roofline this replaced, for comparison: launch + max(compute at 0.7398 of peak times
    m / (m + 98.73), memory at 0.7373 of bandwidth); element-wise at 0.5176; attention at max(FLOPs
    at 0.7398 of peak, K,V at 0.6 of bandwidth); launch 3.46 us."""
    m, n, k = (rows[c].to_numpy(dtype=float) for c in ("m", "n", "k"))
    compute = 2 * m * n * k / (peak * 1e12 * 0.7398 * m / (m + 98.73))
    memory = FP16_BYTES * (m * k + k * n + m * n) / (bw * 1e9 * 0.7373)
    elementwise = rows.op.isin(ELEMENTWISE_OPS).to_numpy()
    gemm = 3.46e-6 + np.where(elementwise, n / (bw * 1e9 * 0.5176), np.maximum(compute, memory))
    gemm = gemm * rows.kernels.to_numpy()
    attn = 3.46e-6 + np.maximum(att.flops / (peak * 1e12 * 0.7398), att.kv_bytes / (bw * 1e9 * 0.6)).to_numpy()
    return gemm, attn


def regression_times(train: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
    """planner.costmodel.fitted's regressions, fitted on `train`, predicting `rows`."""
    gemm = train[~train.op.isin(ELEMENTWISE_OPS)]
    out = np.empty(len(rows))
    is_gemm = ~rows.op.isin(ELEMENTWISE_OPS).to_numpy()
    model = fitted.fit("gemm", gemm[["m", "n", "k", "time_s"]].to_numpy(), FP16_BYTES)
    out[is_gemm] = fitted.predict_many(model, rows.loc[is_gemm, ["m", "n", "k"]].to_numpy())
    for op in ELEMENTWISE_OPS:  # each kernel its own regression (time per kernel against its bytes)
        fit, sel = train[train.op == op], (rows.op == op).to_numpy()
        model = fitted.fit("elementwise", np.column_stack([fit.n, fit.time_s / fit.kernels]))
        out[sel] = fitted.predict_many(model, rows.loc[sel, ["n"]].to_numpy()) * rows.kernels.to_numpy()[sel]
    return out


# -- calibration -----------------------------------------------------------------------------------
def _least_squares(resid, start: list[float], lower: list[float], upper: list[float]) -> np.ndarray:
    from scipy.optimize import least_squares

    scale = [max(abs(s), 1e-9) for s in start]
    return least_squares(resid, np.array(start), bounds=(lower, upper), x_scale=scale).x


def fit_weights(rows: pd.DataFrame) -> np.ndarray:
    """Each row's weight in the calibration's residuals: 1, except that the small element-wise rows
    (fewer than SMALL_TOKENS tokens: a handful among thousands, and the size of decode's ops) are weighted
    so that together they count as much as the element-wise rest (weight sqrt(rest / small))."""
    ew = (rows.op == FITTED_ELEMENTWISE).to_numpy()
    small = ew & (rows.m < SMALL_TOKENS).to_numpy()
    weight = np.sqrt((ew & ~small).sum() / max(int(small.sum()), 1))
    return np.where(small, weight, 1.0)


def calibrate_gemm(train: pd.DataFrame, peak: float, bw: float, base: SustainedRates = CALIBRATED) -> SustainedRates:
    """f_c, f_m, n, the launch cost, f_e and the element-wise floor by least squares on the weighted
    log(predicted / measured) over `train`'s GEMM rows and FITTED_ELEMENTWISE rows (`fit_weights`)."""
    train = train[~train.op.isin(ELEMENTWISE_OPS) | (train.op == FITTED_ELEMENTWISE)]
    y, w = train.time_s.to_numpy(), fit_weights(train)

    def rates(p: np.ndarray) -> SustainedRates:
        return dataclasses.replace(base, **dict(zip(GEMM_FIELDS, (float(v) for v in p), strict=True)))

    p = _least_squares(lambda p: w * np.log(gemm_table_times(train, rates(p), peak, bw) / y),
                       [0.7, 0.7, 2.0, 5e-6, 0.6, 5e-6], [0.05, 0.05, 0.5, 0.0, 0.05, 0.0],
                       [1.0, 1.0, 20.0, 1e-3, 1.0, 1e-3])
    return rates(p)


def calibrate_attention(att: pd.DataFrame, peak: float, bw: float, base: SustainedRates = CALIBRATED) -> SustainedRates:
    """f_a, the decode floor, f_p and the prefill floor (the overlap exponent is the GEMMs')."""
    y = att.time_s.to_numpy()

    def rates(p: np.ndarray) -> SustainedRates:
        return dataclasses.replace(base, **dict(zip(ATTENTION_FIELDS, (float(v) for v in p), strict=True)))

    p = _least_squares(lambda p: np.log(attention_table_times(att, rates(p), peak, bw) / y),
                       [0.8, 1e-5, 0.4, 1e-4], [0.05, 0.0, 0.01, 0.0], [1.5, 1e-3, 1.0, 1e-2])
    return rates(p)


def calibrate_decode_waves(att: pd.DataFrame, peak: float, bw: float, sm_count: int,
                           base: SustainedRates = CALIBRATED) -> SustainedRates:
    """f_w and the floor of the decode wave model by least squares on log(predicted / measured) over
    the decode rows, for each candidate units-per-SM k; the k with the smallest residual wins."""
    dec = att[att.phase == "decode"]
    y, flops, kv_bytes, units = (dec[c].to_numpy() for c in ("time_s", "flops", "kv_bytes", "units"))
    best: tuple[float, SustainedRates] | None = None
    for k in UNITS_PER_SM:
        def rates(p: np.ndarray, k: int = k) -> SustainedRates:
            fields = dict(zip(WAVE_FIELDS, (float(v) for v in p), strict=True))
            return dataclasses.replace(base, decode_attention_units_per_sm=k, **fields)

        def resid(p: np.ndarray, rates=rates) -> np.ndarray:
            pred = roofline.device_attention_time_s(flops, kv_bytes, 1, peak, bw, rates(p), units, sm_count)
            return np.log(pred / y)

        p = _least_squares(resid, [0.9, 1e-5], [0.05, 0.0], [1.0, 1e-3])
        cost = float(np.sum(resid(p) ** 2))
        if best is None or cost < best[0]:
            best = (cost, rates(p))
    return best[1]


def leave_one_out_attention(att: pd.DataFrame, peak: float, bw: float, sm_count: int | None = None) -> np.ndarray:
    """Each row's relative error (predicted / measured - 1) from constants fitted without it. With
    `sm_count`, decode rows are predicted by the wave model fitted on the other decode rows."""
    err = np.empty(len(att))
    for i in range(len(att)):
        rest = att.drop(index=att.index[i])
        rates = calibrate_attention(rest, peak, bw)
        sm = sm_count if att.phase.iloc[i] == "decode" else None
        if sm is not None:
            rates = calibrate_decode_waves(rest, peak, bw, sm, rates)
        err[i] = attention_table_times(att.iloc[[i]], rates, peak, bw, sm)[0] / att.time_s.iloc[i] - 1
    return err


def ape(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.abs(np.asarray(pred) / np.asarray(y) - 1)


def decode_splits(att: pd.DataFrame, peak: float, bw: float, sm_count: int) -> list[dict]:
    """Harder held-out splits of the decode rows than leave-one-out: fit on one batch range, score the
    other (extrapolation), and fit on every other row; the wave model against the single fraction."""
    dec = att[att.phase == "decode"].reset_index(drop=True)
    splits = (("fit batches 1-16, score 32-128", dec.batch <= 16), ("fit batches 16-128, score 1-8", dec.batch >= 16),
              ("fit every other row, score the rest", dec.index % 2 == 1))
    out = []
    for name, train in splits:
        mask = np.asarray(train, dtype=bool)
        fit, test = dec[mask], dec[~mask]
        flat = calibrate_attention(fit, peak, bw)
        waves = calibrate_decode_waves(fit, peak, bw, sm_count, flat)
        y = test.time_s.to_numpy()
        err_w = ape(attention_table_times(test, waves, peak, bw, sm_count), y)
        err_f = ape(attention_table_times(test, flat, peak, bw), y)
        out.append({"split": name, "scored": len(test), "units_per_sm": waves.decode_attention_units_per_sm,
                    "wave_median": float(np.median(err_w)), "wave_max": float(np.max(err_w)),
                    "flat_median": float(np.median(err_f)), "flat_max": float(np.max(err_f))})
    return out


# -- the table -----------------------------------------------------------------------------------
def _attention_entry(label: str, sel: np.ndarray, att: pd.DataFrame, shipped: np.ndarray, loo: np.ndarray,
                     previous: np.ndarray) -> dict:
    y = att.time_s.to_numpy()[sel]
    return {"class": label, "rows": int(sel.sum()), "held out": "leave one out",
            "shipped": float(np.median(ape(shipped[sel], y))), "refit": float(np.median(np.abs(loo[sel]))),
            "regression": None, "previous": float(np.median(ape(previous[sel], y))), "before": None}


def summary(data_dir: Path, peak: float, bw: float, sm_count: int) -> dict:
    rows = load_rows(data_dir)
    train = rows[rows.model.isin(TRAIN)].reset_index(drop=True)
    test = rows[rows.model.isin(HELD_OUT)].reset_index(drop=True)
    att = load_attention(data_dir)
    refit = calibrate_attention(att, peak, bw, calibrate_gemm(train, peak, bw))
    refit = calibrate_decode_waves(att, peak, bw, sm_count, refit)
    loo_flat = leave_one_out_attention(att, peak, bw)
    loo = leave_one_out_attention(att, peak, bw, sm_count)
    y = test.time_s.to_numpy()
    prev_gemm, prev_attn = previous_times(test, att, peak, bw)
    preds = {"shipped": gemm_table_times(test, CALIBRATED, peak, bw), "refit": gemm_table_times(test, refit, peak, bw),
             "regression": regression_times(train, test), "previous": prev_gemm,
             "before": gemm_table_times(test, MLP_ACT_FITTED, peak, bw)}
    shipped_flat = attention_table_times(att, CALIBRATED, peak, bw)
    shipped_attn = attention_table_times(att, CALIBRATED, peak, bw, sm_count)
    table = []
    classes = (("GEMMs", ~test.op.isin(ELEMENTWISE_OPS)), ("element-wise (torch add)", test.op == "add"),
               ("fused activation (not fitted)", test.op == "mlp_act"))
    for label, mask in classes:
        mask = mask.to_numpy()
        small = (test.m < SMALL_TOKENS).to_numpy()
        for name, tokens in (("", np.ones(len(test), bool)), (f", < {SMALL_TOKENS} tokens", small)):
            sel = mask & tokens
            entry = {"class": label + name, "rows": int(sel.sum()), "held out": "3 models"}
            entry.update({k: float(np.median(ape(v[sel], y[sel]))) for k, v in preds.items()})
            table.append(entry)
    decode = (att.phase == "decode").to_numpy()
    table.append(_attention_entry("decode attention (SM count)", decode, att, shipped_attn, loo, prev_attn))
    table.append(_attention_entry("decode attention, no SM count", decode, att, shipped_flat, loo_flat, prev_attn))
    table.append(_attention_entry("prefill attention", ~decode, att, shipped_attn, loo, prev_attn))
    per_row = [{"phase": r.phase, "batch": int(r.batch), "query": int(r.query), "context": int(r.context),
                "units": int(r.units), "measured_ms": r.time_s * 1e3, "shipped_ms": s * 1e3, "loo_error": float(e),
                "shipped_no_sm_ms": f * 1e3, "loo_error_no_sm": float(g)}
               for r, s, e, f, g in zip(att.itertuples(index=False), shipped_attn, loo, shipped_flat, loo_flat,
                                        strict=True)]
    return {"table": table, "attention_rows": per_row, "decode_splits": decode_splits(att, peak, bw, sm_count),
            "refit": dataclasses.asdict(refit)}


def print_summary(result: dict) -> None:
    names = ("shipped", "refit", "regression", "previous", "before")
    print("| op class | rows | held out | " + " | ".join(names) + " |")
    print("|" + "---|" * (3 + len(names)))
    for e in result["table"]:
        cells = " | ".join("-" if e[n] is None else f"{e[n] * 100:.1f}%" for n in names)
        print(f"| {e['class']} | {e['rows']} | {e['held out']} | {cells} |")
    print("\nattention rows (measured; shipped constants with and without the SM count; error from constants "
          "fitted without the row):\n")
    print("| phase | batch | units | new tokens | cached | measured ms | shipped ms | leave-one-out error "
          "| no SM count: shipped ms | leave-one-out error |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in result["attention_rows"]:
        print(f"| {r['phase']} | {r['batch']} | {r['units']} | {r['query']} | {r['context']} | "
              f"{r['measured_ms']:.3f} | {r['shipped_ms']:.3f} | {r['loo_error'] * 100:+.1f}% | "
              f"{r['shipped_no_sm_ms']:.3f} | {r['loo_error_no_sm'] * 100:+.1f}% |")
    print("\ndecode attention, harder splits (|predicted / measured - 1| on the scored rows):\n")
    print("| split | rows scored | units per SM picked | SM count: median | max | no SM count: median | max |")
    print("|---|---|---|---|---|---|---|")
    for r in result["decode_splits"]:
        print(f"| {r['split']} | {r['scored']} | {r['units_per_sm']} | {r['wave_median'] * 100:.1f}% | "
              f"{r['wave_max'] * 100:.1f}% | {r['flat_median'] * 100:.1f}% | {r['flat_max'] * 100:.1f}% |")


FITTED = ("fitted constants: 6 for GEMMs and element-wise ops (on the training models' GEMM and torch add rows, "
          f"the add rows under {SMALL_TOKENS} tokens weighted), 4 for attention without "
          "an SM count (2 prefill, 2 decode), 3 for the decode wave model (f_w and the floor by least squares, "
          f"units per SM picked from {', '.join(map(str, UNITS_PER_SM))}); plus the overlap exponent shared by all")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--calibrate", action="store_true", help="print the refitted constants as a literal")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"A100 timings not found at {args.data}", file=sys.stderr)
        return 2
    profile = load_profile(gpu=DATASHEET)
    peak, bw, sms = profile.device_peak_tflops["float16"], profile.device_memory_gb_per_s, profile.device.sm_count
    print(f"A100 timings: {args.data} (microsoft/vidur, MIT); datasheet {DATASHEET}: {peak} TFLOP/s fp16, "
          f"{bw} GB/s, {sms} SMs")
    print(f"GEMM training models: {', '.join(TRAIN)}; held out: {', '.join(HELD_OUT)}")
    print(FITTED + "\n")
    result = summary(args.data, peak, bw, sms)
    print("median |predicted / measured - 1| on held-out rows:\n")
    print_summary(result)
    if args.calibrate:
        fields = ",\n".join(f"    {k}={v:.4g}" for k, v in result["refit"].items())
        print(f"\nCALIBRATED = SustainedRates(\n{fields},\n)")
    if args.json:
        write_json_atomic(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
