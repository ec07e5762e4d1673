"""One disk-read fit over every size, or one per disk class (planner/disk_classes.py)? Held-out error
of both on a profile's own disk samples, without touching the disk.

    python benchmarks/disk_size_classes.py PROFILE.json [--json OUT]

The profile's read samples are split into K,V/X pieces and weight records (a sample is a weight
record when its bytes are one layer's weights of a catalog model in float32 or float16, whole pages,
as planner/profiling/shapes.py probes them). Two hold-outs:

- by round: `link.disk_read_rounds` holds each size's median read time in each of the profile's
  rounds (minutes apart). Fit on all rounds but one, predict the held-out round's reads.
- by size: fit on the per-size medians (`link.disk_read`) without one size, predict that size
  (K,V pieces; a weight record's only other evidence is the other weight records, so with fewer
  than four of them the class fit by size is not possible and the table says so).

"single" is the old model: one `link.disk_read` fitted over every read size, weight records
included. "class" is the new one: `link.disk_read` on K,V/X pieces only, `link.disk_read_weights` on
weight records only. Writes: the write model fitted with and without weight-record sizes (a plan's
step never writes a weight record), held out by size, errors on write-back-sized writes (at most the
largest write-back of the full mode) and on the larger, prefill-sized ones. Error = (predicted -
measured) / measured; tables print the median |error| and the median signed error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from planner.costmodel import fitted
from planner.jsonio import write_json_atomic
from planner.models import CATALOG
from planner.profiling.modes import get_mode
from planner.profiling.shapes import weight_record_bytes, writeback_sizes

WEIGHT_BYTES = frozenset(weight_record_bytes(m, dt) for m in CATALOG.values() for dt in ("float32", "float16"))
WRITEBACK_MAX_BYTES = max(writeback_sizes(get_mode("full")))
Row = tuple[float, float]  # bytes, seconds


def is_weights(nbytes: float) -> bool:
    return int(nbytes) in WEIGHT_BYTES


def _fit_predict(train: Sequence[Row], test: Sequence[Row]) -> list[float] | None:
    """The link fit of planner/costmodel/fitted.py on `train`, evaluated at `test`'s bytes."""
    if len(train) < 3 or len({b for b, _ in train}) < 2:
        return None
    model = fitted.fit("link", [list(r) for r in train])
    return [fitted.predict(model, (b,)) for b, _ in test]


def by_round(rounds: Sequence[Sequence[float]]) -> list[dict]:
    """Leave one round out: each held-out read with the single fit's and the class fit's prediction."""
    out = []
    for held in sorted({int(r[1]) for r in rounds}):
        train = [(b, t) for b, k, t in rounds if int(k) != held]
        test = [(b, t) for b, k, t in rounds if int(k) == held]
        single = _fit_predict(train, test)
        for cls in (False, True):
            mine = [r for r in test if is_weights(r[0]) == cls]
            pred = _fit_predict([r for r in train if is_weights(r[0]) == cls], mine)
            for i, (b, t) in enumerate(mine):
                out.append({"round": held, "bytes": b, "weights": cls, "measured_s": t,
                            "single_s": single[test.index((b, t))] if single else None,
                            "class_s": pred[i] if pred else None})
    return out


def by_size(rows: Sequence[Row], own_class: Callable[[float], bool]) -> list[dict]:
    """Leave one size out over per-size medians: the single fit on every other size, the class fit on
    the other sizes of the held-out size's class (`own_class`)."""
    out = []
    for i, (b, t) in enumerate(rows):
        rest = [r for j, r in enumerate(rows) if j != i]
        single = _fit_predict(rest, [(b, t)])
        pred = _fit_predict([r for r in rest if own_class(r[0]) == own_class(b)], [(b, t)])
        out.append({"bytes": b, "weights": is_weights(b), "measured_s": t, "single_s": single[0] if single else None,
                    "class_s": pred[0] if pred else None})
    return out


def _err(p: float | None, t: float) -> float | None:
    return None if p is None else (p - t) / t


def summary(rows: Sequence[dict], keep: Callable[[dict], bool]) -> dict:
    chosen = [r for r in rows if keep(r)]
    out: dict = {"n": len(chosen)}
    for arm in ("single", "class"):
        errs = [e for r in chosen if (e := _err(r[f"{arm}_s"], r["measured_s"])) is not None]
        out[arm] = ({"median_abs": float(np.median(np.abs(errs))), "median_signed": float(np.median(errs)),
                     "n": len(errs)} if errs else None)
    return out


def _cell(s: dict | None) -> str:
    if not s:
        return "no fit"
    return f"{s['median_abs'] * 100:.1f}% ({s['median_signed'] * 100:+.1f}%, n={s['n']})"


def _print_rows(title: str, rows: Sequence[dict]) -> None:
    print(f"\n{title}\n\n| bytes | class | round | measured ms | single ms | class ms |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in rows:
        fmt = [f"{v * 1e3:.3f}" if v is not None else "-" for v in (r["measured_s"], r["single_s"], r["class_s"])]
        print(f"| {int(r['bytes'])} | {'weights' if r['weights'] else 'K,V/X'} | {r.get('round', '-')} | "
              + " | ".join(fmt) + " |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", type=Path)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--rows", action="store_true", help="print every held-out transfer too")
    args = ap.parse_args(argv)
    samples = json.loads(args.profile.read_text())["samples"]
    rounds = samples["link.disk_read_rounds"]["rows"]
    reads = [(b, t) for b, t in samples["link.disk_read"]["rows"]]
    if "link.disk_read_weights" in samples:  # a profile with the classes already split
        reads += [(b, t) for b, t in samples["link.disk_read_weights"]["rows"]]
    reads.sort()
    writes = sorted((b, t) for b, t in samples["link.disk_write"]["rows"])
    held_round = by_round(rounds)
    held_size = by_size(reads, is_weights)
    # writes: "single" = every write size, weight records included; "class" = without them
    held_write = [r for r in by_size(writes, lambda b: True) if not r["weights"]]
    for r in held_write:
        rest = [w for w in writes if w[0] != r["bytes"] and not is_weights(w[0])]
        pred = _fit_predict(rest, [(r["bytes"], r["measured_s"])])
        r["class_s"] = pred[0] if pred else None
    tables = {
        "reads held out by round, K,V/X pieces": summary(held_round, lambda r: not r["weights"]),
        "reads held out by round, weight records": summary(held_round, lambda r: r["weights"]),
        "reads held out by size, K,V/X pieces": summary(held_size, lambda r: not r["weights"]),
        "reads held out by size, weight records": summary(held_size, lambda r: r["weights"]),
        f"writes held out by size, write-back sized (<= {WRITEBACK_MAX_BYTES} B)":
            summary(held_write, lambda r: r["bytes"] <= WRITEBACK_MAX_BYTES),
        "writes held out by size, larger (prefill sized)":
            summary(held_write, lambda r: r["bytes"] > WRITEBACK_MAX_BYTES),
    }
    weights = sorted({int(b) for b, _ in reads if is_weights(b)})
    print(f"profile {args.profile}: {len(reads)} read sizes ({len(weights)} weight records: {weights}), "
          f"{len(rounds)} per-round medians, {len(writes)} write sizes\n")
    print("| held-out set | samples | single fit: median abs (signed) | class fits: median abs (signed) |")
    print("|---|---:|---|---|")
    for name, s in tables.items():
        print(f"| {name} | {s['n']} | {_cell(s['single'])} | {_cell(s['class'])} |")
    if args.rows:
        _print_rows("reads held out by round", held_round)
        _print_rows("reads held out by size", held_size)
        _print_rows("writes held out by size (single: with weight-record sizes; class: without)", held_write)
    if args.json:
        write_json_atomic(args.json, {"profile": str(args.profile), "tables": tables, "by_round": held_round,
                                      "by_size": held_size, "writes_by_size": held_write})
    return 0


if __name__ == "__main__":
    sys.exit(main())
