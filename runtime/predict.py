"""What the runtime compares against: the plan's own prediction, or a re-prediction of the plan's
decisions with a profile of this machine (planner.search.evaluate, the planner's full cost models)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.errors import KvplanError
from planner.plan import Plan
from planner.profile import Profile, find_local_profile, load_profile

RESOURCES = ("compute", "cpu", "h2d", "disk_read", "d2h", "disk_write")


@dataclass(frozen=True)
class Prediction:
    data: dict[str, Any] | None  # the "prediction" object, None when nothing could predict
    lower_bound: dict[str, Any] | None
    profile: Profile | None
    source: str  # one sentence for the output: where the numbers come from


def repredict(plan: Plan, profile: Profile) -> dict[str, Any]:
    """The plan's decisions evaluated under `profile` (planner.search.evaluate)."""
    try:
        from planner.search import evaluate
    except ImportError as exc:  # the planner's evaluator is not installed in this tree
        raise KvplanError(f"cannot re-predict: planner.search.evaluate is not available ({exc})") from exc
    return evaluate(plan.model, plan.data["inputs"], plan.decisions, profile)


def _lower_bound(pred: dict[str, Any], plan: Plan) -> dict[str, Any] | None:
    lb = pred.get("lower_bound") or plan.data.get("lower_bound")
    return lb if isinstance(lb, dict) and lb.get("step_s") else None


def choose_prediction(plan: Plan, local_type: str, profile_path: str | Path | None) -> Prediction:
    """--profile FILE wins; else the plan's own prediction when it was made for this kind of machine
    (and no newer local profile disagrees); else a re-prediction with this machine's `kvplan profile`."""
    hw = plan.data.get("hardware") if isinstance(plan.data.get("hardware"), dict) else {}
    plan_type = hw.get("device_type")
    if profile_path is not None:
        prof = load_profile(profile_path)
        pred = repredict(plan, prof)
        return Prediction(pred, _lower_bound(pred, plan), prof, f"re-predicted with --profile {prof.name}")
    local = find_local_profile()
    local_prof = load_profile(local) if local is not None else None
    own = plan.data.get("prediction") if isinstance(plan.data.get("prediction"), dict) else None
    same = local_prof is not None and local_prof.profile_hash == hw.get("profile_hash")
    if plan_type == local_type and own and (local_prof is None or same):
        lb = _lower_bound(own, plan)
        return Prediction(own, lb, local_prof, f"the plan's own prediction (profile {hw.get('profile_name', '?')})")
    if local_prof is None:
        why = (f"the plan was made for {plan_type or 'unknown'} hardware ({hw.get('profile_name', '?')}), "
               f"this machine runs on {local_type}" if plan_type != local_type else "the plan has no prediction")
        return Prediction(None, None, None, f"no prediction: {why} and there is no profile of this machine; "
                          "run 'kvplan profile' (or pass --profile FILE) to compare against predictions")
    prof = local_prof
    assert prof is not None
    pred = repredict(plan, prof)
    what = (f"the plan was made for {hw.get('profile_name', '?')} ({plan_type}); re-predicted with this "
            f"machine's profile {prof.name}") if plan_type != local_type else f"re-predicted with {prof.name}"
    return Prediction(pred, _lower_bound(pred, plan), prof, what)


def gap_pct(measured: float | None, predicted: float | None) -> float | None:
    """100 * (measured - predicted) / predicted: positive when the run was slower than predicted."""
    if measured is None or predicted is None or predicted == 0:
        return None
    return 100.0 * (measured - predicted) / predicted
