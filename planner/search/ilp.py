"""The one MILP per (model, hardware, context), built with PuLP and solved with HiGHS (CBC fallback).

Disaggregated formulation over the combos (batch, GPU batch, attention place): every combo k has
a selector y_k (binary, exactly one is 1) and its own copy of the placement variables, whose sums
are tied to y_k (fractions sum to y_k, layers to L * y_k). Every constant is multiplied by y_k, so an
unselected combo contributes nothing and the memory constraints can simply add all combos up. The
max() over resources is an epigraph: T_dec_k >= each decode resource, T_pf_k >= each prefill one.
This is exact (no big-M), so the MILP optimum is the optimum over the whole discrete space.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import pulp

from planner.search.formulation import (
    ALL_VARS,
    BINARY_VARS,
    FRACTION_VARS,
    LAYER_VARS,
    OFF_DEVICE_FRACTIONS,
    Coeffs,
    LinForm,
)


@dataclass(frozen=True)
class IlpResult:
    status: str  # "Optimal" | "Infeasible" | ...
    solver: str
    index: int | None  # the chosen combo
    values: dict[str, float]  # variable values of the chosen combo (fractions, layers, binaries, T_dec, T_pf)
    objective_value: float | None
    variables: int
    constraints: int


TIME_LIMIT_S = 30.0  # a safety net: the MILPs here solve in milliseconds (docs/planner.md, "Speed")


def _solver(prefer: str = "HiGHS") -> tuple[pulp.LpSolver, str]:
    """HiGHS through highspy (a dependency); CBC (COIN_CMD, PuLP 3.3's non-deprecated interface, on the
    binary PuLP bundles when none is on PATH) if HiGHS is unavailable or CBC is asked for."""
    if prefer == "HiGHS":
        # presolve off: on these small models it costs more than it saves (docs/planner.md, "Speed");
        # tight gaps so the optimum is the optimum (tests compare it with exhaustive search).
        highs = pulp.HiGHS(msg=False, threads=1, presolve="off", gapRel=1e-7, gapAbs=1e-9, timeLimit=TIME_LIMIT_S)
        if highs.available():
            return highs, "HiGHS"
    cbc = pulp.COIN_CMD(msg=False, gapRel=1e-7, threads=1, timeLimit=TIME_LIMIT_S)
    if not cbc.available():
        from pulp.apis.coin_api import pulp_cbc_path

        cbc = pulp.COIN_CMD(msg=False, gapRel=1e-7, threads=1, timeLimit=TIME_LIMIT_S, path=pulp_cbc_path)
    return cbc, "CBC"


def _silence_highs_banner() -> None:
    """HiGHS prints its copyright banner to the C-level stdout when the first Highs object is made,
    before PuLP can switch output off; make that first object here with stdout pointed at /dev/null
    so `kvplan solve --json` output stays clean."""
    global _BANNER_DONE
    if _BANNER_DONE:
        return
    _BANNER_DONE = True
    try:
        import highspy
    except ImportError:  # pragma: no cover
        return
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)


_BANNER_DONE = False


def solve_milp(coeffs: list[Coeffs], zero: list[frozenset[str]], num_layers: int,
               caps: dict[str, float], grid: int | None, solver: str = "HiGHS",
               min_split_fraction: float = 0.0) -> IlpResult:
    """`min_split_fraction`: the X fractions of the selected combo sum to at least this (a pinned
    recompute keeps l >= 1 token: formulation.min_split_fraction)."""
    prob = pulp.LpProblem("kvplan", pulp.LpMinimize)
    objective: list[tuple[pulp.LpVariable, float]] = []
    per_combo = []
    ys = []
    frac_scale = 1.0 if grid is None else 1.0 / grid
    # Numerics: times are in units of `tu` (the best combo's fixed compute time per objective unit)
    # and memory rows in units of their capacity, so every row and the objective are O(1).
    tu = _time_unit(coeffs)
    for k, co in enumerate(coeffs):
        y = prob.add_variable(f"y_{k}", 0, 1, pulp.LpBinary)
        ys.append(y)
        var: dict[str, pulp.LpVariable] = {}
        scale: dict[str, float] = {}
        for name in FRACTION_VARS:
            if name in zero[k]:
                continue
            if grid is None:
                var[name] = prob.add_variable(f"{name}_{k}", 0, 1)
            else:  # tests: fractions in steps of 1/grid (the variable counts grid units)
                var[name] = prob.add_variable(f"{name}_{k}", 0, grid, pulp.LpInteger)
            scale[name] = frac_scale
        for name in LAYER_VARS:
            if name not in zero[k]:
                var[name] = prob.add_variable(f"{name}_{k}", 0, num_layers, pulp.LpInteger)
                scale[name] = 1.0
        for name in BINARY_VARS:
            var[name] = prob.add_variable(f"{name}_{k}", 0, 1, pulp.LpBinary)
            scale[name] = 1.0
        var["T_dec"] = prob.add_variable(f"T_dec_{k}", 0)
        var["T_pf"] = prob.add_variable(f"T_pf_{k}", 0)
        scale["T_dec"] = scale["T_pf"] = 1.0

        def terms(form: LinForm, unit: float = 1.0, var=var, scale=scale, y=y) -> list[tuple[pulp.LpVariable, float]]:
            out = [(var[n], c * scale[n] / unit) for n, c in form.coefs if n in var]
            if form.const:
                out.append((y, form.const / unit))  # constants count only for the selected combo
            return out

        def add(lhs: list, sense: int, name: str) -> None:
            merged: dict[pulp.LpVariable, float] = {}
            for v, c in lhs:  # the same variable may appear twice (y: constant and capacity)
                merged[v] = merged.get(v, 0.0) + c
            prob.addConstraint(pulp.LpConstraint(pulp.LpAffineExpression(list(merged.items())), sense, name, 0.0))

        fracs = [(var[n], scale[n]) for n in FRACTION_VARS if n in var]
        add(fracs + [(y, -1.0)], pulp.LpConstraintEQ, f"frac_{k}")
        if min_split_fraction > 0:
            xs = [(var[n], -scale[n]) for n in ("xd", "xh", "xk") if n in var]
            add(xs + [(y, min_split_fraction)], pulp.LpConstraintLE, f"split_floor_{k}")
        add([(var[n], 1.0) for n in LAYER_VARS if n in var] + [(y, -float(num_layers))], pulp.LpConstraintEQ,
            f"layers_{k}")
        off = [(var[n], scale[n]) for n in OFF_DEVICE_FRACTIONS if n in var]
        if off and dict(co.memory["device"].coefs).get("zoff", 0.0) > 0:
            add(off + [(var["zoff"], -1.0)], pulp.LpConstraintLE, f"zoff_{k}")
        streamed = [(var[n], 1.0) for n in ("nh", "nk") if n in var]
        if streamed:
            add(streamed + [(var["zw"], -float(num_layers))], pulp.LpConstraintLE, f"zw_{k}")
        for group, tvar in ((co.decode, "T_dec"), (co.prefill, "T_pf")):
            for res, form in group.items():
                if form.const or form.coefs:  # epigraph: T >= this resource's busy time
                    add(terms(form, tu) + [(var[tvar], -1.0)], pulp.LpConstraintLE, f"{tvar}_{res}_{k}")
        for tier, cap in caps.items():
            # each combo's memory within the caps when selected: exact, since exactly one combo is
            # selected, and it makes the LP relaxation the convex hull of the union of the combos
            room = co.cap(tier, cap)
            unit = room if room > 0 else 1e9
            add(terms(co.memory[tier], unit) + [(y, -room / unit)], pulp.LpConstraintLE, f"mem_{tier}_{k}")
        # T variables are already in units of tu; the tie-break terms are seconds
        objective.extend((v, c if n in ("T_dec", "T_pf") else c / tu)
                         for (v, c), n in zip(terms(co.objective), [n for n, _ in co.objective.coefs if n in var],
                                              strict=True))
        per_combo.append((var, scale))
    prob.setObjective(pulp.LpAffineExpression(objective))
    prob.addConstraint(pulp.LpConstraint(pulp.LpAffineExpression([(y, 1.0) for y in ys]), pulp.LpConstraintEQ,
                                         "one_combo", 1.0))
    _silence_highs_banner()
    lp_solver, name = _solver(solver)
    prob.solve(lp_solver)
    status = pulp.LpStatus[prob.status]
    n_vars = prob.numVariables()
    n_cons = prob.numConstraints()
    if status != "Optimal":
        return IlpResult(status, name, None, {}, None, n_vars, n_cons)
    chosen = max(range(len(ys)), key=lambda i: (ys[i].value() or 0.0, -i))
    var, scale = per_combo[chosen]
    values: dict[str, float] = {n: 0.0 for n in ALL_VARS}
    for n, v in var.items():
        values[n] = float(v.value() or 0.0) * scale[n]
    values["T_dec"] *= tu
    values["T_pf"] *= tu
    return IlpResult(status, name, chosen, values, float(pulp.value(prob.objective)) * tu, n_vars, n_cons)


def _time_unit(coeffs: list[Coeffs]) -> float:
    """A lower bound of the best objective: each combo's objective with only its fixed times."""
    best = None
    for co in coeffs:
        t_dec = max(f.const for f in co.decode.values())
        t_pf = max(f.const for f in co.prefill.values())
        value = co.objective.at({"T_dec": t_dec, "T_pf": t_pf})
        if value > 0 and (best is None or value < best):
            best = value
    return best or 1.0
