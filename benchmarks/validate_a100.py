"""Validate the cost models on real A100 per-operator timings (../shared/data/gpu-op-timings/a100,
measured with microsoft/vidur, MIT licence): fit on some models, predict the held-out ones.

Three predictors, scored on the same held-out rows (num_tokens >= 64 unless --min-tokens):
  fitted    - planner.costmodel.fitted regressions fitted on the training models' rows
  datasheet - the datasheet A100 profile through the roofline with its "efficiency" block
  roofline-default - the same roofline with the built-in default efficiencies (before calibration)

`--write-efficiency` re-fits the roofline efficiencies on the training models only and stores them
in every profiles/datasheet/*.json (docs/cost-models.md says why the A100 values stand in for all).

    python benchmarks/validate_a100.py [--data DIR] [--min-tokens 64] [--write-efficiency]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from planner.costmodel import fitted, roofline
from planner.jsonio import write_json_atomic
from planner.profile import DATASHEET_DIR, REPO_ROOT, load_profile

DATA = REPO_ROOT.parent / "shared" / "data" / "gpu-op-timings" / "a100"
TRAIN = ("Llama-2-7b-hf", "Llama-2-70b-hf", "Meta-Llama-3-70B", "Qwen-72B", "phi-2")
HELD_OUT = ("Meta-Llama-3-8B", "CodeLlama-34b-Instruct-hf", "internlm-20b")
GEMM_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
DATASHEET = "a100-80g-sxm"  # vidur's "a100" device; see docs/cost-models.md
FP16_BYTES = 2


def load_rows(data_dir: Path) -> pd.DataFrame:
    """One row per (model, tensor-parallel degree, num_tokens, op) with the GEMM shape of one shard
    (vidur's column/row-parallel layers) and the median time in seconds."""
    frames = []
    for path in sorted(data_dir.glob("*.mlp.csv")):
        df = pd.read_csv(path)
        name = path.name.removesuffix(".mlp.csv")
        head_dim = df.n_embd // df.n_head
        tp = df.num_tensor_parallel_workers
        m = df.num_tokens
        up_width = df.n_expanded_embd * np.where(df.use_gated_mlp, 2, 1)
        shapes = {
            "attn_pre_proj": (m, (df.n_head + 2 * df.n_kv_head) * head_dim // tp, df.n_embd),
            "attn_post_proj": (m, df.n_embd, df.n_head * head_dim // tp),
            "mlp_up_proj": (m, up_width // tp, df.n_embd),
            "mlp_down_proj": (m, df.n_embd, df.n_expanded_embd // tp),
        }
        for op, (mm, nn, kk) in shapes.items():
            frames.append(pd.DataFrame({"model": name, "op": op, "tp": tp, "m": mm, "n": nn, "k": kk,
                                        "time_s": df[f"time_stats.{op}.median"] / 1e3}))
        act_bytes = m * df.n_expanded_embd // tp * (np.where(df.use_gated_mlp, 2, 1) + 1) * FP16_BYTES
        frames.append(pd.DataFrame({"model": name, "op": "mlp_act", "tp": tp, "m": m, "n": act_bytes, "k": 0,
                                    "time_s": df["time_stats.mlp_act.median"] / 1e3}))
    if not frames:
        raise SystemExit(f"no *.mlp.csv files under {data_dir}")
    rows = pd.concat(frames, ignore_index=True)
    return rows[rows.time_s > 0].reset_index(drop=True)


def roofline_times(rows: pd.DataFrame, eff: roofline.Efficiency, peak_tflops: float, mem_gb_per_s: float) -> np.ndarray:
    out = np.empty(len(rows))
    for i, r in enumerate(rows.itertuples(index=False)):
        if r.op == "mlp_act":
            out[i] = roofline.elementwise_time_s(r.n, mem_gb_per_s, eff)
        else:
            out[i] = roofline.gemm_time_s(int(r.m), int(r.n), int(r.k), FP16_BYTES, peak_tflops, mem_gb_per_s, eff)
    return out


def fit_models(train: pd.DataFrame) -> dict[str, dict]:
    gemm = train[train.op != "mlp_act"]
    act = train[train.op == "mlp_act"]
    return {
        "gemm": fitted.fit("gemm", gemm[["m", "n", "k", "time_s"]].to_numpy(), FP16_BYTES),
        "elementwise": fitted.fit("elementwise", act[["n", "time_s"]].to_numpy()),
    }


def fitted_times(models: dict[str, dict], rows: pd.DataFrame) -> np.ndarray:
    out = np.empty(len(rows))
    is_act = (rows.op == "mlp_act").to_numpy()
    out[~is_act] = fitted.predict_many(models["gemm"], rows.loc[~is_act, ["m", "n", "k"]].to_numpy())
    out[is_act] = fitted.predict_many(models["elementwise"], rows.loc[is_act, ["n"]].to_numpy())
    return out


def calibrate(train: pd.DataFrame, peak_tflops: float, mem_gb_per_s: float) -> roofline.Efficiency:
    """Least squares on log(predicted / measured) over the training models' rows."""
    from scipy.optimize import least_squares

    y = train.time_s.to_numpy()

    def make(p: np.ndarray) -> roofline.Efficiency:
        return roofline.Efficiency(
            gemm_peak_fraction=float(p[0]), gemm_half_rows=float(p[1]), memory_fraction=float(p[2]),
            attention_memory_fraction=roofline.DEFAULT_EFFICIENCY.attention_memory_fraction,
            elementwise_memory_fraction=float(p[3]), launch_s=float(p[4]))

    def resid(p: np.ndarray) -> np.ndarray:
        return np.log(roofline_times(train, make(p), peak_tflops, mem_gb_per_s) / y)

    start = np.array([0.75, 64.0, 0.8, 0.8, 8e-6])
    res = least_squares(resid, start, bounds=([0.05, 1.0, 0.05, 0.05, 0.0], [1.0, 4096.0, 1.0, 1.0, 1e-3]),
                        x_scale=[0.1, 10.0, 0.1, 0.1, 1e-6])
    p = res.x
    return make(np.array([round(p[0], 4), round(p[1], 2), round(p[2], 4), round(p[3], 4), round(p[4], 8)]))


def ape(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.abs(pred - y) / y


def report(rows: pd.DataFrame, preds: dict[str, np.ndarray], min_tokens: int) -> list[dict]:
    keep = (rows.m >= min_tokens).to_numpy()
    table = []
    for (model, op), idx in rows[keep].groupby(["model", "op"]).groups.items():
        pos = rows.index.get_indexer(idx)
        entry = {"model": model, "op": op, "rows": len(pos)}
        for name, pred in preds.items():
            entry[name] = float(np.median(ape(pred[pos], rows.time_s.to_numpy()[pos])))
        table.append(entry)
    for label, mask in ((f"ALL held-out, num_tokens >= {min_tokens}", keep),
                        ("ALL held-out, every num_tokens", np.ones(len(rows), dtype=bool))):
        total = {"model": label, "op": "all", "rows": int(mask.sum())}
        for name, pred in preds.items():
            total[name] = float(np.median(ape(pred[mask], rows.time_s.to_numpy()[mask])))
        table.append(total)
    return table


def print_table(table: list[dict], names: list[str]) -> None:
    head = "| model | op | rows | " + " | ".join(f"{n} median err" for n in names) + " |"
    print(head)
    print("|" + "---|" * (3 + len(names)))
    for e in table:
        cells = " | ".join(f"{e[n] * 100:.1f}%" for n in names)
        print(f"| {e['model']} | {e['op']} | {e['rows']} | {cells} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--min-tokens", type=int, default=64)
    ap.add_argument("--write-efficiency", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"A100 timings not found at {args.data}", file=sys.stderr)
        return 2
    rows = load_rows(args.data)
    train = rows[rows.model.isin(TRAIN)].reset_index(drop=True)
    test = rows[rows.model.isin(HELD_OUT)].reset_index(drop=True)
    profile = load_profile(gpu=DATASHEET)
    peak, bw = profile.device_peak_tflops["float16"], profile.device_memory_gb_per_s

    models = fit_models(train)
    calibrated = calibrate(train, peak, bw)
    preds = {
        "fitted": fitted_times(models, test),
        "datasheet": roofline_times(test, roofline.Efficiency.from_dict(profile.data.get("efficiency")), peak, bw),
        "roofline-default": roofline_times(test, roofline.DEFAULT_EFFICIENCY, peak, bw),
        "roofline-calibrated": roofline_times(test, calibrated, peak, bw),
    }
    print(f"train: {', '.join(TRAIN)} ({len(train)} rows); held out: {', '.join(HELD_OUT)} ({len(test)} rows)")
    for fam, m in models.items():
        print(f"fitted {fam}: kind {fitted.label(m)}, {m['n_samples']} samples, cross-validated MAPE "
              f"{m['cv_mape'] * 100:.1f}% (by kind: "
              + ", ".join(f"{k} {v * 100:.1f}%" for k, v in m["cv_mape_by_kind"].items()) + ")")
    print(f"calibrated roofline efficiencies (training models only): {calibrated}")
    print(f"\nmedian absolute percentage error on held-out models, num_tokens >= {args.min_tokens}:\n")
    table = report(test, preds, args.min_tokens)
    print_table(table, list(preds))
    if args.json:
        write_json_atomic(args.json, {"table": table, "calibrated": calibrated.__dict__})
    if args.write_efficiency:
        block = {k: getattr(calibrated, k) for k in roofline.Efficiency.__dataclass_fields__}
        block["source"] = (f"benchmarks/validate_a100.py: least squares on log error over the A100 timings "
                           f"of {', '.join(TRAIN)} (training models only); see docs/cost-models.md")
        for path in sorted(DATASHEET_DIR.glob("*.json")):
            data = json.loads(path.read_text())
            data["efficiency"] = block
            write_json_atomic(path, data)
        print(f"\nwrote the efficiency block into {len(list(DATASHEET_DIR.glob('*.json')))} datasheet profiles")
    return 0 if math.isfinite(table[-2]["fitted"]) else 1


if __name__ == "__main__":
    sys.exit(main())
