"""Cost models: how long an op or a transfer takes on a profiled machine.

`CostModel` answers every timing query the planner and `kvplan predict` make. A measured profile
answers from its fitted regressions (planner/costmodel/fitted.py) where it has one for the query,
and every profile falls back to the roofline (planner/costmodel/roofline.py).
"""

from __future__ import annotations

from planner.costmodel.cost_model import CostModel

__all__ = ["CostModel"]
