"""What the planner is asked: the SolveRequest record, its validation, and the Infeasible error."""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.errors import KvplanError
from planner.models import DTYPE_BYTES, ModelConfig
from planner.placement import ACTIVATION_CHOICES, PINNED_STRATEGIES, REQUEST_STRATEGIES
from planner.profile import Profile

OBJECTIVES = ("throughput", "latency")
__all__ = ["ACTIVATION_CHOICES", "DEFAULT_MAX_BATCH", "MAX_BATCH", "OBJECTIVES", "PINNED_STRATEGIES",
           "REQUEST_STRATEGIES", "Infeasible", "SolveRequest", "validate_request", "resolve_dtype"]
MAX_BATCH = 65536
DEFAULT_MAX_BATCH = 256  # the largest batch `--batch auto` tries unless --max-batch raises it
MAX_SEQ = 10_000_000


class Infeasible(KvplanError):
    """No plan fits: the message names what is missing, with numbers."""


@dataclass(frozen=True)
class SolveRequest:
    model: ModelConfig
    seq: int  # context length at the end of generation (prompt + gen)
    gen: int  # tokens to generate per sequence
    prompt: int | None = None  # default seq - gen
    batch: int | None = None  # None = auto
    objective: str = "throughput"
    strategy: str = "auto"
    dtype: str | None = None  # None = model dtype on CUDA profiles, float32 on CPU profiles
    gpu_mem_bytes: int | None = None
    cpu_mem_bytes: int | None = None
    disk_bytes: int | None = None
    grid: int | None = field(default=None, compare=True)  # tests: placements in multiples of 1/grid
    max_batch: int = DEFAULT_MAX_BATCH  # batch auto tries powers of two up to this (and this)
    # where the hidden states between layers live: device | host | auto (the solver's choice); device by
    # default because kvplan's runtime does not run host activations (runtime/executor.py refuses them)
    activations: str = "device"

    @property
    def prompt_tokens(self) -> int:
        return self.seq - self.gen if self.prompt is None else self.prompt


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_request(req: SolveRequest) -> None:
    """One-line KvplanError for every bad input."""
    if not _is_int(req.seq) or not 1 <= req.seq <= MAX_SEQ:
        raise KvplanError(f"--seq must be a positive number of tokens up to {MAX_SEQ}, got {req.seq!r}")
    if not _is_int(req.gen) or req.gen < 1:
        raise KvplanError(f"--gen must be at least 1 token, got {req.gen!r}")
    if req.gen >= req.seq:
        raise KvplanError(f"--gen {req.gen} must be smaller than --seq {req.seq} (seq = prompt + gen)")
    prompt = req.prompt_tokens
    if not _is_int(prompt) or prompt < 1 or prompt + req.gen > req.seq:
        raise KvplanError(f"prompt {prompt!r} + gen {req.gen} must be at least 1 and at most seq {req.seq}")
    if req.batch is not None and (not _is_int(req.batch) or not 1 <= req.batch <= MAX_BATCH):
        raise KvplanError(f"--batch must be 'auto' or an integer in [1, {MAX_BATCH}], got {req.batch!r}")
    if not _is_int(req.max_batch) or not 1 <= req.max_batch <= MAX_BATCH:
        raise KvplanError(f"--max-batch must be an integer in [1, {MAX_BATCH}], got {req.max_batch!r}")
    if req.objective not in OBJECTIVES:
        raise KvplanError(f"unknown objective '{req.objective}' (known: {', '.join(OBJECTIVES)})")
    if req.strategy not in REQUEST_STRATEGIES:
        raise KvplanError(f"unknown strategy '{req.strategy}' (known: {', '.join(REQUEST_STRATEGIES)})")
    if req.activations not in ACTIVATION_CHOICES:
        raise KvplanError(f"--activations must be one of {', '.join(ACTIVATION_CHOICES)}, got {req.activations!r}")
    if req.dtype is not None and req.dtype not in DTYPE_BYTES:
        raise KvplanError(f"unknown dtype '{req.dtype}' (known: {', '.join(DTYPE_BYTES)})")
    for name in ("gpu_mem_bytes", "cpu_mem_bytes", "disk_bytes"):
        v = getattr(req, name)
        if v is not None and (not _is_int(v) or v < 0):
            raise KvplanError(f"{name} must be a non-negative number of bytes, got {v!r}")
    if req.grid is not None and (not _is_int(req.grid) or not 1 <= req.grid <= 64):
        raise KvplanError(f"grid must be an integer in [1, 64], got {req.grid!r}")


def resolve_dtype(req: SolveRequest, profile: Profile) -> str:
    if req.dtype is not None:
        return req.dtype
    return "float32" if profile.device_type == "cpu" else req.model.dtype
