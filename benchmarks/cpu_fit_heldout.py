"""Held-out error of the CPU compute fits (GEMM, decode attention, element-wise) on a profile's own
samples: the model stored in the profile ("stored": what the profile was written with) against the
same samples refitted by today's planner/costmodel/fitted.py ("refit": with the probed table for
GEMMs and attention). No new timings are taken: every number comes from samples already in the files.

Columns, per profile and model key:
  stored held-out  the stored model's own held-out MAPE (its "cv_mape")
  stored at probes MAPE of the stored model at the probed points themselves (what the planner asks
                   for: the catalog models' shapes at the probed row counts)
  refit held-out   the refitted model's held-out MAPE ("cv_mape": GEMM/attention: the model fitted
                   without the sample's fold, the probed table without the sample, i.e. the point
                   interpolated from its shape's other probed points)
  refit unprobed   the refitted model alone, 5-fold (what a shape never probed gets)
  refit at probes  the refitted model at the probed points (0 when the table reproduces them)
With two or more profiles, "cross-run" also fits each family on one profile's samples and predicts
another profile's samples at the points both probed, after dividing out the median ratio between the
two runs (the machine's drift between them): an independent re-measurement as the held-out set.

    python benchmarks/cpu_fit_heldout.py PROFILE.json [PROFILE.json ...] [--refit-to OUT.json]

`--refit-to` writes a copy of the first profile with its compute models refitted (links untouched),
so `kvplan predict/solve --profile OUT.json` can use the new fits without profiling again.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

from planner.costmodel import fitted
from planner.jsonio import read_json, write_json_atomic
from planner.models import DTYPE_BYTES

FAMILIES = ("gemm", "attention", "elementwise")


def compute_keys(data: dict) -> list[str]:
    return sorted(k for k in data.get("samples", {}) if k.split(".")[0] in FAMILIES and k in data["cost_models"])


def refit(key: str, rows: list) -> dict:
    return fitted.fit(key.split(".")[0], rows, DTYPE_BYTES.get(key.split(".")[-1], 1))


def mape_at(model: dict, rows: np.ndarray, scale: float = 1.0) -> tuple[float, float]:
    pred = fitted.predict_many(model, rows[:, :-1]) * scale
    err = np.abs(pred - rows[:, -1]) / rows[:, -1]
    return float(np.mean(err)), float(np.median(err))


def own_table(name: str, data: dict, refits: dict[str, dict]) -> list[tuple]:
    out = []
    for key in compute_keys(data):
        rows = np.asarray(data["samples"][key]["rows"], dtype=float)
        old, new = data["cost_models"][key], refits[key]
        out.append((name, key, len(rows), fitted.label(old), old["cv_mape"], mape_at(old, rows)[0],
                    fitted.label(new), new["cv_mape"], new.get("cv_mape_unprobed", new["cv_mape"]),
                    mape_at(new, rows)[0]))
    return out


def cross_table(a: tuple[str, dict, dict], b: tuple[str, dict, dict]) -> list[tuple]:
    """Fit on a's samples, predict b's at the points both probed, drift divided out."""
    out = []
    for key in sorted(set(compute_keys(a[1])) & set(compute_keys(b[1]))):
        mine = {tuple(r[:-1]): r[-1] for r in a[1]["samples"][key]["rows"]}
        theirs = {tuple(r[:-1]): r[-1] for r in b[1]["samples"][key]["rows"]}
        common = sorted(set(mine) & set(theirs))
        if len(common) < 3:
            continue
        rows = np.array([[*c, theirs[c]] for c in common])
        drift = float(np.exp(np.median(np.log(rows[:, -1] / np.array([mine[c] for c in common])))))
        new = a[2][key]
        alone = {k: v for k, v in new.items() if k != "probed"}
        old = a[1]["cost_models"][key]
        out.append((f"{a[0]} -> {b[0]}", key, len(common), f"x{drift:.3f}",
                    *mape_at(old, rows, drift), *mape_at(alone, rows, drift), *mape_at(new, rows, drift)))
    return out


def _pct(v) -> str:
    return f"{100 * v:.1f}%" if isinstance(v, float) else str(v)


def show(title: str, header: list[str], rows: list[tuple]) -> None:
    cells = [header] + [[_pct(v) for v in r] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    print(title)
    for c in cells:
        print("  " + "  ".join(v.rjust(w) if i > 1 else v.ljust(w) for i, (v, w) in enumerate(zip(c, widths,
                                                                                                    strict=True))))
    print()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profiles", nargs="+", type=Path)
    ap.add_argument("--refit-to", type=Path, default=None)
    args = ap.parse_args(argv)
    loaded = []
    for path in args.profiles:
        data = read_json(path, "profile")
        loaded.append((path.stem, data, {k: refit(k, data["samples"][k]["rows"]) for k in compute_keys(data)}))
    show("held-out error on each profile's own samples (MAPE)",
         ["profile", "model", "samples", "stored kind", "stored held-out", "stored at probes", "refit kind",
          "refit held-out", "refit unprobed", "refit at probes"],
         [r for name, data, refits in loaded for r in own_table(name, data, refits)])
    if len(loaded) > 1:
        show("cross-run: fitted on one profile, predicting the other's samples at common points (mean / median)",
             ["fit -> predict", "model", "points", "drift", "stored mean", "stored median", "refit alone mean",
              "refit alone median", "refit mean", "refit median"],
             [r for a, b in itertools.permutations(loaded, 2) for r in cross_table(a, b)])
    if args.refit_to is not None:
        name, data, refits = loaded[0]
        write_json_atomic(args.refit_to, {**data, "cost_models": {**data["cost_models"], **refits}})
        print(f"wrote {args.refit_to}: {name} with its compute models refitted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
