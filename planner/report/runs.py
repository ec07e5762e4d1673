"""Run records (`kvplan execute --out run.json`) for the report's predicted-vs-measured section.

A run record holds a "measured" object next to the plan's prediction, with the same keys as the
plan's "prediction" (seconds, tokens per second). The prediction is read from the record's
"prediction" (or "predicted") object, or from the plan embedded under "plan"; the run's model,
context, batch and strategy from the embedded plan, or from the record's own "inputs"/"decisions".
A record whose run carries warnings (load above the CPU count, a crowded-out compute thread; or
execute's machine check finding the machine slower or faster than its profile) says so in its label,
which the report's measured table and figure show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.errors import KvplanError
from planner.jsonio import read_json
from planner.schemas import MACHINE_CHECK_WARNING, check_run_record

# Compared when both sides have them; the first is the headline of the figure.
METRICS = (
    "decode_step_s", "per_layer_step_s", "prefill_s", "total_s", "throughput_tokens_per_s",
    "decode_throughput_tokens_per_s",
)


@dataclass(frozen=True)
class RunRecord:
    source: str
    label: str
    predicted: dict[str, float]
    measured: dict[str, float]
    # why the run's timings may not be evidence (kvplan execute's run.warnings: load, contention, drift)
    warnings: tuple[str, ...] = ()

    def metrics(self) -> list[str]:
        return [m for m in METRICS if m in self.predicted and m in self.measured]


def _numbers(obj: Any) -> dict[str, float]:
    if not isinstance(obj, dict):
        return {}
    return {
        k: float(v) for k, v in obj.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def _first_dict(*candidates: Any) -> dict[str, Any]:
    for c in candidates:
        if isinstance(c, dict) and c:
            return c
    return {}


def run_record_from_dict(data: Any, source: str) -> RunRecord:
    check_run_record(data, source)  # types and ranges of every field it has (planner/schemas.py)
    if not isinstance(data, dict):
        raise KvplanError(f"run record {source}: expected a JSON object (the output of 'kvplan execute --out')")
    plan = data.get("plan") if isinstance(data.get("plan"), dict) else {}
    measured = _numbers(data.get("measured"))
    if not measured:
        raise KvplanError(f"run record {source} has no 'measured' numbers (expected the output of "
                          "'kvplan execute --out')")
    predicted = _numbers(_first_dict(data.get("prediction"), data.get("predicted"), plan.get("prediction")))
    if not predicted:
        raise KvplanError(f"run record {source} has no prediction to compare with (no 'prediction' object "
                          "and no embedded plan)")
    if not any(m in predicted and m in measured for m in METRICS):
        raise KvplanError(f"run record {source}: 'measured' and 'prediction' share none of {', '.join(METRICS)}")
    # kvplan execute --out writes "plan": {model (name), seq, prompt, gen, hardware, decisions}; a record
    # that embeds a whole plan object has "inputs", "model" (an object) and "hardware" instead.
    inputs = _first_dict(plan.get("inputs"), data.get("inputs"), plan)
    decisions = _first_dict(plan.get("decisions"), data.get("decisions"))
    hardware = _first_dict(plan.get("hardware"), data.get("hardware"))
    model = plan.get("model", data.get("model"))
    model_name = model.get("name") if isinstance(model, dict) else model
    parts = [str(model_name or inputs.get("model") or Path(source).stem)]
    device = hardware.get("device_name") or hardware.get("profile_name")
    run = data.get("run") if isinstance(data.get("run"), dict) else {}
    if device or run.get("device"):
        parts.append(f"on {device or run.get('device')}")
    if "seq" in inputs:
        parts.append(f"seq {inputs['seq']}")
    if "batch" in decisions:
        parts.append(f"batch {decisions['batch']}")
    if "strategy" in decisions:
        parts.append(str(decisions["strategy"]))
    warnings = tuple(str(w) for w in run.get("warnings", []) if isinstance(w, str)) if isinstance(
        run.get("warnings"), list) else ()
    drift = [w for w in warnings if w.startswith(MACHINE_CHECK_WARNING)]
    for kind, found in (("contended", [w for w in warnings if w not in drift]), ("not as profiled", drift)):
        if found:
            more = f" (+{len(found) - 1} more)" if len(found) > 1 else ""
            # a machine-check warning up to its band: "GEMM took x1.31 the profile's time"
            first = found[0].removeprefix(MACHINE_CHECK_WARNING).split(", outside")[0]
            parts.append(f"[{kind}: {first}{more}]")
    return RunRecord(source=source, label=" ".join(parts), predicted=predicted, measured=measured,
                     warnings=warnings)


def load_runs(paths: list[str | Path]) -> list[RunRecord]:
    records = [run_record_from_dict(read_json(p, "run record"), str(p)) for p in paths]
    labels = [r.label for r in records]
    # Number the runs and name their files, so the figure's bars and the table's rows match up.
    return [
        RunRecord(r.source, f"{i + 1}. {r.label}" + (f" ({Path(r.source).name})" if labels.count(r.label) > 1 else ""),
                  r.predicted, r.measured, r.warnings)
        for i, r in enumerate(records)
    ]
