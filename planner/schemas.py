"""The schemas of the files kvplan writes and reads back: the plan (`kvplan solve`, docs/plan-schema.md)
and the run record (`kvplan execute --out`, docs/runtime.md).

Each is a pydantic model on `planner.validation.Strict`: strict types (768.0 and "768" are not a layer
width, true is not a batch), ranges, and the rules that tie fields together (placements are fractions
that sum to 1, split_tokens <= seq, gpu_batch x num_gpu_batches = batch, prompt + gen <= seq). The
loaders call `check_plan` / `check_run_record` first, so a bad file is one error line naming the field
before any code reads it. The JSON Schema in docs/plan.schema.json and docs/run.schema.json is generated
from these models (`kvplan schema plan|run`); a test checks the committed files match.

Unknown fields are kept (a newer writer may add some); the loaders decide what they use.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from planner.model_config import DTYPE_BYTES, ModelRecord
from planner.placement import ACTIVATION_CHOICES, ACTIVATION_PLACES, ATTENTION_PLACES, STRATEGIES
from planner.validation import Strict, validate

PLAN_SCHEMA_VERSION = 1  # the number `kvplan solve` writes and every reader checks
MAX_SEQ = 10_000_000  # tokens; the bound on inputs.seq
MAX_BATCH = 1 << 20  # sequences; the bound on decisions.batch
FRACTION_SLACK = 1e-6  # placements sum to 1 within this

Name = Annotated[str, Field(min_length=1, max_length=1000)]
Count = Annotated[int, Field(ge=1)]  # a positive whole number (layers, heads, widths)
Tokens = Annotated[int, Field(ge=0, le=MAX_SEQ)]
Seconds = Annotated[float, Field(ge=0)]  # finite: Strict refuses NaN and infinities
NonNegative = Annotated[float, Field(ge=0)]
Batch = Annotated[int, Field(ge=1, le=MAX_BATCH)]
Dtype = Literal[tuple(DTYPE_BYTES)]


def _fail(message: str) -> PydanticCustomError:
    return PydanticCustomError("kvplan", message)


class Section(Strict):
    """A part of a file: a required field that is absent reads "plan inputs: missing 'seq'"."""

    @model_validator(mode="before")
    @classmethod
    def _required_present(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                if field.is_required() and name not in data:
                    raise _fail(f"missing '{name}'")
        return data


class Fractions(Section, extra="forbid"):
    """Shares of something on the device, in host memory and on disk: each in [0, 1], summing to 1."""

    device: float = Field(ge=0, le=1)
    host: float = Field(ge=0, le=1)
    disk: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> Fractions:
        total = self.device + self.host + self.disk
        if abs(total - 1.0) > FRACTION_SLACK:
            raise _fail(f"fractions sum to {total:.6f}, not 1")
        return self


class Decisions(Section):
    """planner.plan.Decisions: what the planner chose (docs/plan-schema.md, "decisions")."""

    strategy: Literal[STRATEGIES]
    dtype: Dtype
    batch: Batch
    gpu_batch: Batch
    num_gpu_batches: Batch
    split_tokens: Tokens = Field(description="KVPR's l: tokens [0, l) kept as X and recomputed; at most inputs.seq")
    kv_placement: Fractions
    x_placement: Fractions
    weight_placement: Fractions
    attention_where: Literal[ATTENTION_PLACES]
    activation_placement: Literal[ACTIVATION_PLACES] = Field(
        default="device", description="where the hidden states between layers of the GPU batches not being "
        "computed live (FlexGen's activation placement); absent in older plans: device")

    @model_validator(mode="after")
    def _block(self) -> Decisions:
        if self.gpu_batch * self.num_gpu_batches != self.batch:
            raise _fail(f"gpu_batch {self.gpu_batch} x num_gpu_batches {self.num_gpu_batches} != batch {self.batch}")
        return self


class Inputs(Section):
    """What was asked for; seq, prompt and gen are required, the rest is what `kvplan solve` records."""

    seq: int = Field(ge=1, le=MAX_SEQ)
    prompt: int = Field(ge=1, le=MAX_SEQ)
    gen: Tokens
    model: Name | None = None
    batch: Batch | Literal["auto"] | None = None
    objective: Literal["throughput", "latency"] | None = None
    activations: Literal[ACTIVATION_CHOICES] | None = Field(
        default=None, description="what --activations asked for; absent in older plans (device)")
    strategy: Name | None = None
    dtype: Dtype | None = None
    gpu_mem_bytes: Annotated[int, Field(ge=0)] | None = None
    cpu_mem_bytes: Annotated[int, Field(ge=0)] | None = None
    disk_bytes: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _lengths(self) -> Inputs:
        if self.prompt + self.gen > self.seq:
            raise _fail(f"prompt {self.prompt} + gen {self.gen} exceeds seq {self.seq}")
        return self


class Hardware(Section):
    profile_name: Name
    profile_kind: Name | None = None
    profile_hash: Name | None = None
    device_type: Name | None = None
    device_name: Name | None = None


class Timeline(Section):
    overlapped: list[str] | None = None
    serial: list[list[str]] | None = None
    chain_s: Seconds | None = None
    bound_by: str | None = None


class Gain(Section):
    strategy: Name | None = None
    throughput_pct: float
    decode_step_pct: float


PREDICTION_NUMBERS = (
    "decode_step_s", "prefill_s", "total_s", "throughput_tokens_per_s", "decode_throughput_tokens_per_s",
    "per_layer_step_s", "surrogate_decode_step_s",
)
PREDICTION_MAPS = ("per_layer_busy_s", "memory_bytes", "link_bytes_per_step")


class Prediction(Section):
    """docs/plan-schema.md, "prediction": every number finite and non-negative (the gains may be negative)."""

    decode_step_s: Seconds | None = None
    prefill_s: Seconds | None = None
    total_s: Seconds | None = None
    throughput_tokens_per_s: NonNegative | None = None
    decode_throughput_tokens_per_s: NonNegative | None = None
    per_layer_step_s: Seconds | None = None
    surrogate_decode_step_s: Seconds | None = None
    surrogate_total_s: Seconds | None = None
    average_context: NonNegative | None = None
    flops_per_step: NonNegative | None = None
    per_layer_busy_s: dict[str, Seconds] | None = None
    memory_bytes: dict[str, NonNegative] | None = None
    link_bytes_per_step: dict[str, NonNegative] | None = None
    timeline: Timeline | None = None
    gain_over_best_pinned: Gain | None = None
    gain_over_transfer: Gain | None = None


class Baseline(Section):
    """One pinned strategy: feasible with its numbers, or infeasible with the reason."""

    feasible: bool
    reason: str | None = None
    decode_step_s: Seconds | None = None
    throughput_tokens_per_s: NonNegative | None = None
    total_s: Seconds | None = None
    batch: Batch | None = None
    split_tokens: Tokens | None = None
    strategy: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> Baseline:
        needed = ("decode_step_s", "throughput_tokens_per_s", "batch") if self.feasible else ("reason",)
        missing = [k for k in needed if getattr(self, k) is None]
        if missing:
            raise _fail(f"{'a feasible' if self.feasible else 'an infeasible'} baseline needs '{missing[0]}'")
        return self


class LowerBound(Section):
    step_s: Seconds | None = None
    distance: NonNegative | None = None
    bound_by: str | None = None


class SplitHedge(Section):
    disk_time_scales: list[Annotated[float, Field(gt=0)]] = Field(min_length=3, max_length=3)
    nominal_split_tokens: Tokens
    worst_regret_pct: float
    nominal_worst_regret_pct: float


class Solver(Section):
    name: Name
    status: Name
    formulation: str | None = None
    combos: Annotated[int, Field(ge=0)] | None = None
    variables: Annotated[int, Field(ge=0)] | None = None
    constraints: Annotated[int, Field(ge=0)] | None = None
    objective_value: float | None = None
    picked_from: str | None = None
    milp_split_tokens: Tokens | None = None
    split_hedge: SplitHedge | None = None
    usable_bytes: dict[str, NonNegative] | None = None


class PlanSchema(Section):
    """A kvplan execution plan (docs/plan-schema.md). model, inputs and decisions are all the runtime
    needs; a plan with a "solver" section was written by `kvplan solve` and has every section.
    Rules across fields: decisions.split_tokens <= inputs.seq; inputs.prompt + inputs.gen <= inputs.seq;
    decisions.gpu_batch * decisions.num_gpu_batches == decisions.batch; every placement's fractions sum
    to 1; inputs.dtype and an integer inputs.batch, when given, equal the decisions'."""

    schema_version: Literal[PLAN_SCHEMA_VERSION]
    model: ModelRecord  # the models' own record schema (planner/model_config.py)
    inputs: Inputs
    decisions: Decisions
    hardware: Hardware | None = None
    prediction: Prediction | None = None
    baselines: dict[str, Baseline] | None = None
    lower_bound: LowerBound | None = None
    solver: Solver | None = None
    warnings: list[str] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> PlanSchema:
        inputs, d = self.inputs, self.decisions
        if d.split_tokens > inputs.seq:
            raise _fail(f"decisions.split_tokens {d.split_tokens} exceeds inputs.seq {inputs.seq}")
        if inputs.dtype is not None and inputs.dtype != d.dtype:
            raise _fail(f"inputs.dtype {inputs.dtype!r} contradicts decisions.dtype {d.dtype!r}")
        if isinstance(inputs.batch, int) and inputs.batch != d.batch:
            raise _fail(f"inputs.batch {inputs.batch} contradicts decisions.batch {d.batch}")
        if self.solver is not None:
            self._complete()
        return self

    def _complete(self) -> None:
        """A plan written by `kvplan solve` has every section and every predicted number."""
        for key in ("hardware", "prediction", "baselines", "lower_bound", "warnings"):
            if getattr(self, key) is None:
                raise _fail(f"a plan with a 'solver' section must have '{key}' (was it written by 'kvplan solve'?)")
        for key in PREDICTION_NUMBERS + PREDICTION_MAPS:
            if getattr(self.prediction, key) is None:
                raise _fail(f"prediction is missing '{key}'")


# ---- the run record: what `kvplan execute --out` writes (runtime/run.py) -----------------------------------

class RunPlan(Section):
    """The plan a run was made from: `kvplan execute` writes the model's name and the decisions; a
    record that embeds a whole plan has the model as an object and an "inputs" section instead."""

    model: Name | ModelRecord | None = None
    seq: int | None = Field(default=None, ge=1, le=MAX_SEQ)
    prompt: int | None = Field(default=None, ge=1, le=MAX_SEQ)
    gen: Tokens | None = None
    inputs: Inputs | None = None
    hardware: Hardware | None = None
    decisions: Decisions | None = None
    prediction: Prediction | None = None

    @model_validator(mode="after")
    def _lengths(self) -> RunPlan:
        if None not in (self.seq, self.prompt, self.gen) and self.prompt + self.gen > self.seq:
            raise _fail(f"prompt {self.prompt} + gen {self.gen} exceeds seq {self.seq}")
        if self.decisions is not None and self.seq is not None and self.decisions.split_tokens > self.seq:
            raise _fail(f"decisions.split_tokens {self.decisions.split_tokens} exceeds seq {self.seq}")
        return self


# run.warnings that come from execute's machine check (runtime/check.py) start with this; the others
# say the run was contended (load, a crowded-out compute thread, uneven steps)
MACHINE_CHECK_WARNING = "machine check: "


class RunInfo(Section):
    device: Name | None = None
    layers_run: Count | None = None
    layers_total: Count | None = None
    steps: Count | None = None
    start_context: Tokens | None = None
    average_context: NonNegative | None = None
    fill: str | None = None
    direct_io: bool | None = None
    memory_needed_bytes: dict[str, NonNegative] | None = None  # {device, host, disk}
    torch_threads: Count | None = None
    load_average_1min: list[NonNegative] | None = None
    cpu_count: Count | None = None
    warnings: list[str] | None = None

    @model_validator(mode="after")
    def _layers(self) -> RunInfo:
        if None not in (self.layers_run, self.layers_total) and self.layers_run > self.layers_total:
            raise _fail(f"layers_run {self.layers_run} exceeds layers_total {self.layers_total}")
        return self


class Measured(Section):
    """What the run measured: the plan's prediction keys (seconds, tokens per second), finite and >= 0."""

    decode_step_s: Seconds | None = None
    per_layer_step_s: Seconds | None = None
    prefill_s: Seconds | None = None
    total_s: Seconds | None = None
    throughput_tokens_per_s: NonNegative | None = None
    decode_throughput_tokens_per_s: NonNegative | None = None
    head_s: float | None = None
    per_layer_busy_s: dict[str, Seconds] | None = None
    per_step_busy_s: dict[str, Seconds] | None = None
    link_bytes_per_step: dict[str, NonNegative] | None = None
    step_wall_s: list[Seconds] | None = None
    achieved_gb_per_s: dict[str, NonNegative] | None = None


class ComparisonRow(Section):
    quantity: str
    unit: str
    predicted: float | None = None
    measured: float | None = None
    gap_pct: float | None = None


class CheckProbe(Section):
    """One op of execute's machine check: its time here over the profile's cost model's time."""

    op: Literal["gemm", "attention", "disk_read"]
    shape: dict[str, Annotated[int, Field(ge=1)]]
    measured_s: Annotated[float, Field(gt=0)]
    predicted_s: Annotated[float, Field(gt=0)]
    ratio: Annotated[float, Field(gt=0)]
    band: list[Annotated[float, Field(gt=0)]] = Field(min_length=2, max_length=2)
    band_source: str
    within: bool


class MachineCheck(Section):
    """`kvplan execute`'s check of this machine against the profile (runtime/check.py, docs/runtime.md)."""

    profile: Name
    measured_at: str | None = None  # when the profile was measured (ISO 8601, UTC)
    age_s: float | None = None
    age_source: str | None = None
    probes: list[CheckProbe]
    seconds: Seconds
    warnings: list[str] = []
    # the prediction re-made with the profile's fitted models scaled by the ratios (runtime/check.py)
    predicted_with_ratios: Prediction | None = None
    ratios_applied_to: list[str] | None = None


class RunRecordSchema(Section):
    """A run record (`kvplan execute --out run.json`). "measured" is what the report compares; the
    prediction is "predicted" (what execute writes), "prediction", or the embedded plan's."""

    plan: RunPlan | None = None
    run: RunInfo | None = None
    measured: Measured | None = None
    predicted: Prediction | None = None
    prediction: Prediction | None = None
    prediction_source: str | None = None
    profile: str | None = None
    lower_bound: LowerBound | None = None
    comparison: list[ComparisonRow] | None = None
    notes: list[str] | None = None
    plan_file: str | None = None
    machine_check: MachineCheck | None = None


def check_plan(data: Any, origin: str) -> PlanSchema:
    """`data` checked against the plan schema; a one-line KvplanError naming the field otherwise. A bad
    model section is reported in the models' own words ("plan X: model field family: ..."), as
    planner.models.model_from_record says it."""
    if isinstance(data, dict) and data.get("schema_version") == PLAN_SCHEMA_VERSION and isinstance(
            data.get("model"), dict):
        validate(ModelRecord, data["model"], f"plan {origin}", "model")
    return validate(PlanSchema, data, origin, "plan")


def check_run_record(data: Any, origin: str) -> RunRecordSchema:
    return validate(RunRecordSchema, data, origin, "run record")


SCHEMAS = {"plan": PlanSchema, "run": RunRecordSchema}


def json_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one file kind, generated from its pydantic model."""
    schema = SCHEMAS[kind].model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
