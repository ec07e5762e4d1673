"""The profile file's schema (pydantic, planner/validation.py): types, ranges and cross-field rules,
checked when a profile is read, so a wrong type, NaN or an absurd rate is a one-line error naming the
field. Schema version 1 (profiles written before parts had a provenance) and 2 are both read; in
version 1 a part's provenance follows the profile's kind (planner/profile.py, `part_provenance`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from planner.units import MAX_BYTES, MAX_GBPS
from planner.validation import Strict

Provenance = Literal["measured", "datasheet", "stated", "assumed"]
DtypeName = Literal["float16", "bfloat16", "float32"]
LinkName = Literal["h2d", "d2h", "h2d_pageable", "d2h_pageable", "disk_read", "disk_write", "host_memcpy"]
REQUIRED_LINKS = ("h2d", "d2h", "disk_read", "disk_write")
MAX_TFLOPS = 1e5  # 100 PFLOP/s: more than any single device built

Rate = Annotated[float, Field(gt=0, le=MAX_GBPS)]
Tflops = Annotated[float, Field(gt=0, le=MAX_TFLOPS)]
Bytes = Annotated[int, Field(gt=0, le=MAX_BYTES)]


def _printable(text: str) -> str:
    if not text.isprintable():
        raise ValueError("must not contain control characters (newlines, tabs, escapes)")
    return text


Name = Annotated[str, Field(min_length=1, max_length=300), AfterValidator(_printable)]


class LinkSchema(Strict):
    gb_per_s: Rate
    latency_s: Annotated[float, Field(ge=0, le=10)] = 0.0


class DeviceSchema(Strict):
    provenance: Provenance | None = None
    type: Literal["cuda", "cpu"]
    name: Name
    memory_bytes: Bytes
    memory_gb_per_s: Rate
    peak_tflops: Annotated[dict[DtypeName, Tflops], Field(min_length=1)]
    # streaming multiprocessors (a GPU's datasheet number): the decode-attention wave term
    # (planner/costmodel/roofline.py); absent in old and measured profiles
    sm_count: Annotated[int, Field(ge=1, le=1_000_000)] | None = None


class HostSchema(Strict):
    provenance: Provenance | None = None
    cores: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    name: str | None = None
    memory_bytes: Bytes
    memory_gb_per_s: Rate
    peak_tflops: Annotated[dict[DtypeName, Tflops], Field(min_length=1)]
    # GB/s of K,V bytes the runtime's CPU decode-attention kernel reads per second at large contexts
    attention_gb_per_s: dict[DtypeName, Rate] | None = None
    shared_with_device: bool | None = None
    stated: list[str] = []  # fields a user stated on the command line (composed profiles)


class SpreadSchema(Strict):
    fast: Annotated[float, Field(gt=0, le=1)]
    slow: Annotated[float, Field(ge=1, le=1000)]


class DiskSchema(Strict):
    provenance: Provenance | None = None
    free_bytes: Annotated[int, Field(ge=0, le=MAX_BYTES)]
    path: str | None = None
    read_time_spread: SpreadSchema | None = None
    # compute time beside the disk worker's reads over the same compute alone (CPU-only profiles)
    compute_slowdown_while_reading: Annotated[float, Field(ge=0.5, le=10)] | None = None
    stated: list[str] = []


class SampleTable(Strict):
    rows: list[Any]


class ProfileSchema(Strict):
    schema_version: Literal[1, 2]
    kind: Literal["datasheet", "measured", "composed"]
    name: Name
    device: DeviceSchema
    host: HostSchema
    disk: DiskSchema
    links: dict[LinkName, LinkSchema]
    cost_models: dict[str, dict[str, Any]] | None = None
    samples: dict[str, SampleTable] | None = None
    efficiency: dict[str, Annotated[float, Field(gt=0, le=1e6)] | str] | None = None

    @field_validator("links")
    @classmethod
    def _required_links(cls, links: dict[str, LinkSchema]) -> dict[str, LinkSchema]:
        missing = [name for name in REQUIRED_LINKS if name not in links]
        if missing:
            raise ValueError(f"missing link(s) {', '.join(missing)}")
        return links

    @field_validator("efficiency")
    @classmethod
    def _efficiency_text_only_for_notes(cls, eff: dict[str, Any] | None) -> dict[str, Any] | None:
        for key, value in (eff or {}).items():
            if isinstance(value, str) and key not in ("source", "note"):
                raise ValueError(f"efficiency.{key} must be a number")
        return eff

    @model_validator(mode="after")
    def _one_pool_on_a_cpu(self) -> ProfileSchema:
        if self.device.type == "cuda" and self.host.shared_with_device:
            raise ValueError("host.shared_with_device is true, but the device is a GPU with memory of its own")
        if self.schema_version == 1 and self.kind == "composed":
            raise ValueError("kind 'composed' needs schema_version 2")
        return self
