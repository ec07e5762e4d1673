"""Hardware profiles: one JSON schema for datasheet profiles (profiles/datasheet/) and measured
ones (`kvplan profile`), so either is accepted wherever a profile is.

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

PROFILE_SCHEMA_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILES_DIR = REPO_ROOT / "profiles"
DATASHEET_DIR = PROFILES_DIR / "datasheet"

# Links a profile may describe. "h2d"/"d2h" are pinned copies; on a CPU-only machine the
# device is the host, so "h2d" is a host memcpy and the slow link is the disk.
LINK_NAMES = ("h2d", "d2h", "h2d_pageable", "d2h_pageable", "disk_read", "disk_write", "host_memcpy")
REQUIRED_LINKS = ("h2d", "d2h", "disk_read", "disk_write")
DTYPES = ("float16", "bfloat16", "float32")


@dataclass(frozen=True)
class Link:
    gb_per_s: float  # sustained rate for large transfers
    latency_s: float  # fixed cost per transfer

    def time_s(self, nbytes: float) -> float:
        if nbytes <= 0:
            return 0.0
        return self.latency_s + nbytes / (self.gb_per_s * 1e9)


@dataclass(frozen=True)
class Profile:
    """A validated profile; `data` is the full JSON object it was read from."""

    name: str
    kind: str  # "datasheet" | "measured"
    device_type: str  # "cuda" | "cpu"
    device_name: str
    device_memory_bytes: int
    device_memory_gb_per_s: float
    device_peak_tflops: dict[str, float]
    host_memory_bytes: int
    host_peak_tflops: dict[str, float]
    host_memory_gb_per_s: float
    host_is_device: bool  # CPU-only machine: device memory and host memory are one pool
    disk_free_bytes: int
    links: dict[str, Link]
    data: dict[str, Any]
    # how much slower or faster than the fitted model the disk ran from one round of the profile to the
    # next, as multipliers of a transfer's time (fast <= 1 <= slow); None: not measured (datasheets)
    disk_time_spread: tuple[float, float] | None = None

    @property
    def profile_hash(self) -> str:
        """sha256 of the canonical JSON: names the exact hardware description a plan was made for."""
        text = json.dumps(self.data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _get(obj: dict[str, Any], key: str, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise KvplanError(f"profile {where}: missing field '{key}'")
    return obj[key]


def _positive(value: Any, where: str, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise KvplanError(f"profile {where}: expected a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero) or value != value or value == float("inf"):
        raise KvplanError(f"profile {where}: expected a positive number, got {value!r}")
    return value


def _tflops(obj: Any, where: str) -> dict[str, float]:
    if not isinstance(obj, dict) or not obj:
        raise KvplanError(f"profile {where}: expected an object of dtype -> TFLOP/s")
    out = {}
    for dtype, value in obj.items():
        if dtype not in DTYPES:
            raise KvplanError(f"profile {where}: unknown dtype '{dtype}'")
        out[dtype] = float(_positive(value, f"{where}.{dtype}"))
    return out


def profile_from_dict(data: Any, origin: str = "<profile>") -> Profile:
    """Validate a profile object and wrap it; every problem is a one-line KvplanError."""
    if not isinstance(data, dict):
        raise KvplanError(f"profile {origin}: expected a JSON object")
    version = data.get("schema_version")
    if version != PROFILE_SCHEMA_VERSION:
        raise KvplanError(
            f"profile {origin}: schema_version {version!r} is not supported (expected {PROFILE_SCHEMA_VERSION})"
        )
    device = _get(data, "device", origin)
    host = _get(data, "host", origin)
    disk = _get(data, "disk", origin)
    links_obj = _get(data, "links", origin)
    kind = _get(data, "kind", origin)
    if kind not in ("datasheet", "measured"):
        raise KvplanError(f"profile {origin}: kind must be 'datasheet' or 'measured', got {kind!r}")
    device_type = _get(device, "type", f"{origin} device")
    if device_type not in ("cuda", "cpu"):
        raise KvplanError(f"profile {origin}: device.type must be 'cuda' or 'cpu', got {device_type!r}")
    links = {}
    if not isinstance(links_obj, dict):
        raise KvplanError(f"profile {origin}: links must be an object")
    for name in REQUIRED_LINKS:
        _get(links_obj, name, f"{origin} links")
    for name, link in links_obj.items():
        if name not in LINK_NAMES:
            raise KvplanError(f"profile {origin}: unknown link '{name}' (known: {', '.join(LINK_NAMES)})")
        links[name] = Link(
            gb_per_s=float(_positive(_get(link, "gb_per_s", f"{origin} links.{name}"), f"links.{name}.gb_per_s")),
            latency_s=float(_positive(link.get("latency_s", 0.0), f"links.{name}.latency_s", allow_zero=True)),
        )
    _check_optional_sections(data, origin)
    return Profile(
        name=str(_get(data, "name", origin)),
        kind=kind,
        device_type=device_type,
        device_name=str(_get(device, "name", f"{origin} device")),
        device_memory_bytes=int(_positive(_get(device, "memory_bytes", f"{origin} device"), "device.memory_bytes")),
        device_memory_gb_per_s=float(
            _positive(_get(device, "memory_gb_per_s", f"{origin} device"), "device.memory_gb_per_s")
        ),
        device_peak_tflops=_tflops(_get(device, "peak_tflops", f"{origin} device"), "device.peak_tflops"),
        host_memory_bytes=int(_positive(_get(host, "memory_bytes", f"{origin} host"), "host.memory_bytes")),
        host_peak_tflops=_tflops(_get(host, "peak_tflops", f"{origin} host"), "host.peak_tflops"),
        host_memory_gb_per_s=float(
            _positive(_get(host, "memory_gb_per_s", f"{origin} host"), "host.memory_gb_per_s")
        ),
        host_is_device=bool(host.get("shared_with_device", device_type == "cpu")),
        disk_free_bytes=int(_positive(_get(disk, "free_bytes", f"{origin} disk"), "disk.free_bytes", allow_zero=True)),
        links=links,
        data=data,
        disk_time_spread=_time_spread(disk.get("read_time_spread"), origin),
    )


def _time_spread(obj: Any, origin: str) -> tuple[float, float] | None:
    """disk.read_time_spread {"fast": f, "slow": s, ...} as (f, s), checked 0 < f <= 1 <= s."""
    if obj is None:
        return None
    where = f"{origin} disk.read_time_spread"
    if not isinstance(obj, dict):
        raise KvplanError(f"profile {where} must be an object with 'fast' and 'slow'")
    fast = _positive(_get(obj, "fast", where), f"{where}.fast")
    slow = _positive(_get(obj, "slow", where), f"{where}.slow")
    if not fast <= 1 <= slow:
        raise KvplanError(f"profile {where} needs fast <= 1 <= slow, got fast={fast!r} slow={slow!r}")
    return float(fast), float(slow)


def _check_optional_sections(data: dict[str, Any], origin: str) -> None:
    """Optional sections: "cost_models" (fitted regressions, planner/costmodel/fitted.py), "samples"
    (the raw probe samples they were fitted on) and "efficiency" (roofline parameters)."""
    models = data.get("cost_models")
    if models is not None:
        if not isinstance(models, dict):
            raise KvplanError(f"profile {origin}: cost_models must be an object")
        from planner.costmodel.fitted import validate_model

        for key, model in models.items():
            validate_model(model, f"profile {origin} cost_models.{key}")
    samples = data.get("samples")
    if samples is not None and not (
        isinstance(samples, dict) and all(isinstance(s, dict) and isinstance(s.get("rows"), list)
                                          for s in samples.values())
    ):
        raise KvplanError(f"profile {origin}: samples must be an object of {{columns, rows}} tables")
    eff = data.get("efficiency")
    if eff is not None:
        if not isinstance(eff, dict):
            raise KvplanError(f"profile {origin}: efficiency must be an object")
        for key, value in eff.items():
            if key != "source" and key != "note":
                _positive(value, f"{origin} efficiency.{key}")


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
        import difflib

        key = gpu.strip().lower()
        names = datasheet_names()
        if key not in names:
            close = difflib.get_close_matches(key, names, n=3, cutoff=0.4)
            hint = f"; did you mean {', '.join(close)}?" if close else f" (known: {', '.join(names)})"
            raise KvplanError(f"unknown GPU '{gpu}'{hint}")
        path = DATASHEET_DIR / f"{key}.json"
    if path is None:
        raise KvplanError("no profile given: pass --profile FILE or --gpu NAME, or run 'kvplan profile' first")
    return profile_from_dict(read_json(path, "profile"), origin=str(path))
