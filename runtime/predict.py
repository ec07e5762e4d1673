"""What the runtime compares against: the plan's own prediction, or a re-prediction of the plan's
decisions with a profile of this machine (planner.prediction.evaluate, the planner's full cost models)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.errors import KvplanError
from planner.plan import Decisions, Plan
from planner.prediction import evaluate
from planner.profile import Profile, find_local_profile, load_profile


@dataclass(frozen=True)
class Prediction:
    data: dict[str, Any] | None  # the "prediction" object, None when nothing could predict
    lower_bound: dict[str, Any] | None
    profile: Profile | None
    source: str  # one sentence for the output: where the numbers come from


def repredict(plan: Plan, profile: Profile) -> dict[str, Any]:
    """The plan's decisions evaluated under `profile` (planner.prediction.evaluate)."""
    return evaluate(plan.model, plan.data["inputs"], as_run_on(plan.decisions, profile), profile)


def _fold_host(fr: dict[str, float]) -> dict[str, float]:
    return {"device": fr["device"] + fr["host"], "host": 0.0, "disk": fr["disk"]}


def as_run_on(d: Decisions, profile: Profile) -> Decisions:
    """The decisions as they physically run on `profile`'s machine. On a CPU-only machine host memory
    is device memory and the CPU is the device, so a GPU plan's host tier is RAM that needs no copy
    (folded into "device"), its CPU attention is device attention and its host activations are
    device activations (docs/runtime.md)."""
    if not profile.host_is_device:
        return d
    return dataclasses.replace(d, attention_where="device", activation_placement="device",
                               kv_placement=_fold_host(d.kv_placement), x_placement=_fold_host(d.x_placement),
                               weight_placement=_fold_host(d.weight_placement))


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
        return _repredicted(plan, prof, f"re-predicted with --profile {prof.name}")
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
    what = f"re-predicted with {local_prof.name}"
    if plan_type != local_type:
        what = (f"the plan was made for {hw.get('profile_name', '?')} ({plan_type}); re-predicted with this "
                f"machine's profile {local_prof.name}")
    return _repredicted(plan, local_prof, what)


def _repredicted(plan: Plan, prof: Profile, what: str) -> Prediction:
    try:
        pred = repredict(plan, prof)
    except KvplanError as exc:  # e.g. CPU attention re-predicted on a CPU-only profile
        return Prediction(None, None, prof, f"no prediction: cannot re-predict with {prof.name}: {exc}")
    return Prediction(pred, _lower_bound(pred, plan), prof, what)


def gap_pct(measured: float | None, predicted: float | None) -> float | None:
    """100 * (measured - predicted) / predicted: positive when the run was slower than predicted."""
    if measured is None or predicted is None or predicted == 0:
        return None
    return 100.0 * (measured - predicted) / predicted
