"""Hardware profiles: a machine as three parts, each with its provenance — the compute `device`
(a GPU, or the CPU on a CPU-only machine, with its host links), the `host` (DRAM, CPU GEMM and CPU
attention rates) and the storage (the JSON's `disk` section with the `disk_read`/`disk_write` links).
One schema (planner/profile_schema.py) holds datasheet profiles (profiles/datasheet/), measured
ones (`kvplan profile`) and composed ones (planner/hardware.py: a datasheet GPU with this machine's
measured host and drive, or numbers a user states), so any of them is accepted wherever a profile is.

A part's provenance is "measured" (by `kvplan profile`), "datasheet" (read off a vendor datasheet),
"stated" (typed by the user) or "assumed" (a typical value, not known for this machine). Profiles of
schema_version 1 carry none: their parts are measured in a measured profile; in a datasheet profile
the device is "datasheet" and the host and the drive are "assumed".

Rates are in GB/s (1e9 bytes per second) and TFLOP/s (1e12 FLOP per second); sizes in bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.errors import KvplanError
from planner.jsonio import read_json
from planner.profile_schema import REQUIRED_LINKS, ProfileSchema  # noqa: F401  (REQUIRED_LINKS re-exported)
from planner.units import escape_name
from planner.validation import validate

PROFILE_SCHEMA_VERSION = 2
READ_SCHEMA_VERSIONS = (1, 2)
REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILES_DIR = REPO_ROOT / "profiles"
DATASHEET_DIR = PROFILES_DIR / "datasheet"

# Links a profile may describe. "h2d"/"d2h" are pinned copies; on a CPU-only machine the
# device is the host, so "h2d" is a host memcpy and the slow link is the disk.
LINK_NAMES = ("h2d", "d2h", "h2d_pageable", "d2h_pageable", "disk_read", "disk_write", "host_memcpy")
DTYPES = ("float16", "bfloat16", "float32")
PROVENANCES = ("measured", "datasheet", "stated", "assumed")
PARTS = ("device", "host", "storage")


@dataclass(frozen=True)
class Link:
    gb_per_s: float  # sustained rate for large transfers
    latency_s: float  # fixed cost per transfer

    def time_s(self, nbytes: float) -> float:
        if nbytes <= 0:
            return 0.0
        return self.latency_s + nbytes / (self.gb_per_s * 1e9)


@dataclass(frozen=True)
class DevicePart:
    """The compute device and its memory; its links are `h2d`/`d2h` (and the pageable ones)."""

    provenance: str
    type: str  # "cuda" | "cpu"
    name: str
    memory_bytes: int
    memory_gb_per_s: float
    peak_tflops: dict[str, float]
    sm_count: int | None = None  # streaming multiprocessors (datasheet); None: unknown (decode attention's fallback)


@dataclass(frozen=True)
class HostPart:
    """Host memory as a tier and the CPU as a helper processor (CPU attention, docs/hardware.md)."""

    provenance: str
    memory_bytes: int
    memory_gb_per_s: float  # DRAM bandwidth
    peak_tflops: dict[str, float]  # CPU GEMM
    attention_gb_per_s: dict[str, float]  # K,V bytes per second of CPU decode attention; {} when unknown
    cores: int | None
    shared_with_device: bool  # CPU-only machine: host memory and device memory are one pool
    stated: tuple[str, ...] = ()  # fields the user stated over the part's own values

    def provenance_of(self, field: str) -> str:
        return "stated" if field in self.stated else self.provenance


@dataclass(frozen=True)
class StoragePart:
    """The drive holding spilled weights, K,V and X: the JSON's `disk` section and its links."""

    provenance: str
    free_bytes: int
    read: Link
    write: Link
    # how much slower or faster than the fitted model the disk ran from one round of the profile to the
    # next, as multipliers of a transfer's time (fast <= 1 <= slow); None: not measured
    time_spread: tuple[float, float] | None
    # compute time beside the disk worker's reads over the same compute alone, measured on CPU-only
    # machines where the two share the cores and the memory (planner/profiling/measure.py); None: not
    # measured (datasheet and older profiles), taken as no slowdown
    compute_slowdown_while_reading: float | None = None
    stated: tuple[str, ...] = ()

    def provenance_of(self, field: str) -> str:
        return "stated" if field in self.stated else self.provenance


@dataclass(frozen=True)
class Profile:
    """A validated profile; `data` is the full JSON object it was read from."""

    name: str
    kind: str  # "datasheet" | "measured" | "composed"
    device: DevicePart
    host: HostPart
    storage: StoragePart
    links: dict[str, Link]
    data: dict[str, Any]

    @property
    def profile_hash(self) -> str:
        """sha256 of the canonical JSON: names the exact hardware description a plan was made for."""
        text = json.dumps(self.data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # the flat names the planner, runtime and commands read
    @property
    def device_type(self) -> str:
        return self.device.type

    @property
    def device_name(self) -> str:
        return self.device.name

    @property
    def device_memory_bytes(self) -> int:
        return self.device.memory_bytes

    @property
    def device_memory_gb_per_s(self) -> float:
        return self.device.memory_gb_per_s

    @property
    def device_peak_tflops(self) -> dict[str, float]:
        return self.device.peak_tflops

    @property
    def host_memory_bytes(self) -> int:
        return self.host.memory_bytes

    @property
    def host_memory_gb_per_s(self) -> float:
        return self.host.memory_gb_per_s

    @property
    def host_peak_tflops(self) -> dict[str, float]:
        return self.host.peak_tflops

    @property
    def host_is_device(self) -> bool:
        return self.host.shared_with_device

    @property
    def disk_free_bytes(self) -> int:
        return self.storage.free_bytes

    @property
    def disk_time_spread(self) -> tuple[float, float] | None:
        return self.storage.time_spread

    @property
    def compute_slowdown_while_reading(self) -> float:
        """How much longer the device's compute takes while the disk worker reads (1.0: no slowdown).
        Only where the device is the host CPU: a GPU computes on its own while a host thread reads. A
        measured ratio under 1 is the probe's noise (reads beside it cannot speed the compute up) and
        is taken as 1: below 1 the planner would find reading the disk cheaper than not reading it."""
        measured = self.storage.compute_slowdown_while_reading
        return max(1.0, measured) if self.host_is_device and measured is not None else 1.0


def part_provenance(data: dict[str, Any], section: str) -> str:
    """A part's provenance: its own field, else what its profile's kind implies (schema version 1)."""
    own = (data.get(section) or {}).get("provenance")
    if own is not None:
        return own
    if data.get("kind") == "measured":
        return "measured"
    return "datasheet" if section == "device" else "assumed"


def profile_from_dict(data: Any, origin: str = "<profile>") -> Profile:
    """Validate a profile object and wrap it; every problem is a one-line KvplanError naming the field."""
    if not isinstance(data, dict):
        raise KvplanError(f"profile {origin}: expected a JSON object")
    if "decisions" in data and "prediction" in data:
        raise KvplanError(f"profile {origin}: this is a kvplan plan, not a hardware profile")
    version = data.get("schema_version")
    if version not in READ_SCHEMA_VERSIONS:
        raise KvplanError(f"profile {origin}: schema_version {version!r} is not supported "
                          f"(expected one of {', '.join(map(str, READ_SCHEMA_VERSIONS))})")
    schema = validate(ProfileSchema, data, origin, "profile")
    if schema.cost_models:
        from planner.costmodel.fitted import validate_model

        for key, model in schema.cost_models.items():
            validate_model(model, f"profile {origin} cost_models.{key}")
    links = {name: Link(gb_per_s=float(link.gb_per_s), latency_s=float(link.latency_s))
             for name, link in schema.links.items()}
    d, h, k = schema.device, schema.host, schema.disk
    device = DevicePart(part_provenance(data, "device"), d.type, d.name, d.memory_bytes, float(d.memory_gb_per_s),
                        {t: float(v) for t, v in d.peak_tflops.items()}, d.sm_count)
    host = HostPart(
        provenance=part_provenance(data, "host"), memory_bytes=h.memory_bytes,
        memory_gb_per_s=float(h.memory_gb_per_s), peak_tflops={t: float(v) for t, v in h.peak_tflops.items()},
        attention_gb_per_s={t: float(v) for t, v in (h.attention_gb_per_s or {}).items()}, cores=h.cores,
        shared_with_device=h.shared_with_device if h.shared_with_device is not None else d.type == "cpu",
        stated=tuple(h.stated),
    )
    spread = (float(k.read_time_spread.fast), float(k.read_time_spread.slow)) if k.read_time_spread else None
    storage = StoragePart(part_provenance(data, "disk"), k.free_bytes, links["disk_read"], links["disk_write"],
                          spread, k.compute_slowdown_while_reading, tuple(k.stated))
    return Profile(name=schema.name, kind=schema.kind, device=device, host=host, storage=storage, links=links,
                   data=data)


def _squash(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def suggest_gpus(key: str, names: list[str]) -> list[str]:
    """Datasheet names a mistyped GPU probably meant: every name of the family the key starts
    ('a100' -> both A100 profiles; 'rtx4090' -> rtx-4090), else the closest spellings."""
    import difflib

    squashed = _squash(key)
    family = [n for n in names if squashed and (_squash(n).startswith(squashed) or squashed.startswith(_squash(n)))]
    if family:
        return family
    return difflib.get_close_matches(key, names, n=3, cutoff=0.4)


def datasheet_names() -> list[str]:
    return sorted(p.stem for p in DATASHEET_DIR.glob("*.json"))


def find_local_profile() -> Path | None:
    """The newest measured profile of this machine under profiles/, if `kvplan profile` was run."""
    import platform

    host = platform.node() or "host"
    found = sorted(PROFILES_DIR.glob(f"local-{host}-*.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def load_profile(path: str | Path | None = None, gpu: str | None = None) -> Profile:
    """A profile from a file, or a datasheet profile by GPU name."""
    if path is not None and gpu is not None:
        raise KvplanError("give either --profile or --gpu, not both")
    if gpu is not None:
        key = gpu.strip().lower()
        names = datasheet_names()
        if key not in names:
            close = suggest_gpus(key, names)
            hint = f"; did you mean {', '.join(close)}?" if close else f" (known: {', '.join(names)})"
            raise KvplanError(f"unknown GPU '{escape_name(gpu)}'{hint}")
        path = DATASHEET_DIR / f"{key}.json"
    if path is None:
        raise KvplanError("no profile given: pass --profile FILE or --gpu NAME, or run 'kvplan profile' first")
    return profile_from_dict(read_json(path, "profile"), origin=str(path))
