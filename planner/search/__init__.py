"""The planner: one MILP per (model, hardware, context) that emits the execution plan.

Public API (the cross-team contract):
    from planner.search import SolveRequest, solve, evaluate, Infeasible
(`evaluate` lives in planner/prediction.py, outside the search, so the runtime can use it.)
"""

from __future__ import annotations

from planner.prediction import evaluate
from planner.search.request import Infeasible, SolveRequest
from planner.search.solve import solve

__all__ = ["SolveRequest", "solve", "evaluate", "Infeasible"]
