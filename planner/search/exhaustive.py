"""Exhaustive search over the MILP's discrete space on a grid: the reference the MILP is tested
against. Every combo, every split of the `seq` tokens into the six X/K,V pieces in steps of
1/grid, every whole-layer weight placement; the buffers' binaries take their smallest feasible
value. Only for small grids (the count grows as grid^5 * L^2 per combo)."""

from __future__ import annotations

from dataclasses import dataclass

from planner.search.formulation import (
    FRACTION_VARS,
    LAYER_VARS,
    OFF_DEVICE_FRACTIONS,
    Coeffs,
    Combo,
    surrogate_value,
)

_MEM_RTOL = 1e-9


@dataclass(frozen=True)
class ExhaustiveResult:
    objective_value: float
    combo: Combo
    values: dict[str, float]
    points: int  # how many points were evaluated


def _compositions(total: int, parts: int):
    """All tuples of `parts` non-negative integers summing to `total`."""
    if parts == 1:
        yield (total,)
        return
    for first in range(total + 1):
        for rest in _compositions(total - first, parts - 1):
            yield (first, *rest)


def exhaustive_search(coeffs: list[Coeffs], zeros: list[frozenset[str]], num_layers: int,
                      caps: dict[str, float], grid: int, min_split_fraction: float = 0.0) -> ExhaustiveResult | None:
    best: ExhaustiveResult | None = None
    points = 0
    for co, zero in zip(coeffs, zeros, strict=True):
        free_f = [v for v in FRACTION_VARS if v not in zero]
        free_l = [v for v in LAYER_VARS if v not in zero]
        needs_zoff = dict(co.memory["device"].coefs).get("zoff", 0.0) > 0
        layer_points = list(_compositions(num_layers, len(free_l))) if free_l else []
        for fr in _compositions(grid, len(free_f)) if free_f else []:
            values = dict.fromkeys(FRACTION_VARS + LAYER_VARS, 0.0)
            for name, units in zip(free_f, fr, strict=True):
                values[name] = units / grid
            if values["xd"] + values["xh"] + values["xk"] < min_split_fraction - 1e-12:
                continue
            values["zoff"] = 1.0 if needs_zoff and any(values[v] > 0 for v in OFF_DEVICE_FRACTIONS) else 0.0
            for lp in layer_points:
                for name, n in zip(free_l, lp, strict=True):
                    values[name] = float(n)
                values["zw"] = 1.0 if values["nh"] + values["nk"] > 0 else 0.0
                points += 1
                if any(co.memory[t].at(values) > co.cap(t, caps[t]) * (1 + _MEM_RTOL) + 1.0 for t in caps):
                    continue
                obj = surrogate_value(co, values)["objective"]
                if best is None or obj < best.objective_value:
                    best = ExhaustiveResult(obj, co.combo, dict(values), 0)
    if best is None:
        return None
    return ExhaustiveResult(best.objective_value, best.combo, best.values, points)


__all__ = ["ExhaustiveResult", "exhaustive_search"]
