"""`kvplan export`: a plan turned into the closest configuration FlexGen, vLLM or Accelerate can run,
with kvplan's prediction for that engine's policy beside the plan's own (docs/export.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from planner.errors import KvplanError
from planner.export import engines
from planner.export.policy import ENGINES, EnginePlan, engine_plan
from planner.plan import Plan
from planner.profile import Profile, find_local_profile, load_profile

__all__ = ["ENGINES", "Export", "export_plan", "profile_for_plan", "profile_note"]


@dataclass(frozen=True)
class Export:
    engine_plan: EnginePlan
    rendered: engines.Rendered

    def to_dict(self) -> dict[str, Any]:
        ep, r = self.engine_plan, self.rendered
        options = {str(k): ({str(a): b for a, b in v.items()} if isinstance(v, dict) else v)
                   for k, v in r.options.items()}
        return {
            "engine": r.engine, "options": options, "text": r.text, "notes": list(r.notes), "lost": ep.lost,
            "warnings": list(ep.warnings),
            "solved_again": ep.solved_again, "decisions": ep.decisions.to_dict(),
            "predicted": {k: ep.prediction[k] for k in ("decode_step_s", "throughput_tokens_per_s", "total_s")},
            "plan_predicted": {k: ep.original[k] for k in ("decode_step_s", "throughput_tokens_per_s", "total_s")},
        }


def profile_for_plan(plan: Plan, profile_path: str | None = None, gpu: str | None = None) -> Profile:
    """The profile the plan was solved with: the one given, else the datasheet or local profile of the
    plan's name. Another profile's name is refused; the same name with another hash (the profile was
    measured or revised since) is used, and `profile_note` says so."""
    hw = plan.data["hardware"]
    if profile_path or gpu:
        profile = load_profile(profile_path, gpu)
    elif hw.get("profile_kind") == "datasheet":
        profile = load_profile(gpu=hw["profile_name"])
    else:
        local = find_local_profile()
        if local is None:
            raise KvplanError(f"the plan was solved with the measured profile '{hw['profile_name']}'; give it with "
                              "--profile FILE")
        profile = load_profile(local)
    if profile.name != hw.get("profile_name"):
        raise KvplanError(f"profile '{profile.name}' is not the one the plan was solved with ('{hw['profile_name']}'); "
                          "give that one with --profile")
    return profile


def profile_note(plan: Plan, profile: Profile) -> str | None:
    """A warning when the profile has the plan's name but not its hash."""
    hw = plan.data["hardware"]
    if profile.profile_hash == hw.get("profile_hash"):
        return None
    return (f"profile '{profile.name}' has changed since the plan was solved (hash {hw.get('profile_hash')}, now "
            f"{profile.profile_hash}): the engine's prediction uses the current profile, the plan's is as written")


def export_plan(plan: Plan, profile: Profile, engine: str, offload_dir: str | None = None) -> Export:
    if profile.host_is_device:
        raise KvplanError(f"the plan is for a CPU-only profile ('{profile.name}'); export writes GPU settings "
                          f"for {engine}, which would not describe this plan")
    ep = engine_plan(plan, profile, engine)
    if engine == "flexgen":
        rendered = engines.flexgen(plan, ep, offload_dir)
    elif engine == "vllm":
        rendered = engines.vllm(plan, ep, profile)
    else:
        rendered = engines.accelerate(plan, ep, offload_dir)
    return Export(ep, rendered)
