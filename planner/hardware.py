"""Composing a machine from parts: a device part (a datasheet GPU, or a measured profile) with a host
part and a storage part from other profiles (this machine's measured host and drive, `--host local`)
and the numbers a user states (`--cpu-attention-gbps 5`), each part keeping its provenance.

The composition is a profile of its own (kind "composed", schema_version 2): its JSON names the
parts' sources and the stated numbers, so its name and profile_hash identify exactly what a plan was
made for, and the same inputs give the same profile byte for byte. docs/hardware.md describes it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from typing import Any

from planner.costmodel.calibration import CALIBRATED_GPU
from planner.disk_classes import DISK_CLASSES, STORAGE_MODEL_KEYS
from planner.errors import KvplanError
from planner.profile import (
    DTYPES,
    PROFILE_SCHEMA_VERSION,
    Profile,
    profile_from_dict,
)
from planner.units import format_bytes, format_gbps

# on a CPU-only profile the CPU is the device: its device models are the host's CPU models
_HOST_MODEL_PREFIXES = ("gemm.cpu.", "attention.cpu.", "elementwise.cpu", "link.host_memcpy")
_ASSUMED_ROOFLINE = "CPU attention (a roofline over DRAM bandwidth with an assumed efficiency)"


@dataclass(frozen=True)
class Stated:
    """Numbers the user states on the command line; each replaces the part's own value."""

    dram_gbps: float | None = None  # host.memory_gb_per_s
    cpu_attention_gbps: float | None = None  # host.attention_gb_per_s, every dtype
    cpu_tflops: float | None = None  # host.peak_tflops, every dtype
    cpu_cores: int | None = None  # host.cores
    host_mem_bytes: int | None = None  # host.memory_bytes
    disk_read_gbps: float | None = None  # links.disk_read.gb_per_s
    disk_write_gbps: float | None = None  # links.disk_write.gb_per_s

    def given(self) -> dict[str, float | int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


HOST_STATED = ("dram_gbps", "cpu_attention_gbps", "cpu_tflops", "cpu_cores", "host_mem_bytes")


def compose_profile(base: Profile, host: Profile | None = None, storage: Profile | None = None,
                    stated: Stated | None = None) -> Profile:
    """`base`'s device with `host`'s host part, `storage`'s drive and the `stated` numbers. With
    nothing to compose, `base` itself (its plans keep their profile_hash)."""
    stated = stated or Stated()
    given = stated.given()
    if host is None and storage is None and not given:
        return base
    if base.host_is_device and (host is not None or any(k in given for k in HOST_STATED)):
        what = "--host" if host is not None else "--" + next(k for k in HOST_STATED if k in given).replace("_", "-")
        raise KvplanError(f"{what}: profile {base.name} is CPU-only (its CPU is the device and its RAM the device "
                          "memory), so it has no separate host part to replace; use it with a GPU profile")
    data = copy.deepcopy(base.data)
    data.pop("samples", None)  # raw probe samples stay in the source profiles named under "parts"
    models: dict[str, Any] = data.setdefault("cost_models", {})
    parts = _sources(base)
    data["device"]["provenance"] = base.device.provenance
    data["host"]["provenance"] = base.host.provenance
    data["disk"]["provenance"] = base.storage.provenance
    if host is not None:
        _take_host(data, models, host)
        parts["host"] = _sources(host)["host"]
    if storage is not None:
        _take_storage(data, models, storage)
        parts["storage"] = _sources(storage)["storage"]
    _apply_stated(data, models, stated)
    if not models:
        data.pop("cost_models")
    name = base.name + (f"+host-{host.name}" if host else "") + (f"+storage-{storage.name}" if storage else "") \
        + ("+stated" if given else "")
    description = f"composed: device of {parts['device']['from']}, host of {parts['host']['from']}, storage of " \
        f"{parts['storage']['from']}" + (", numbers stated by the user" if given else "")
    data.update(schema_version=PROFILE_SCHEMA_VERSION, kind="composed", name=name, parts=parts,
                description=description)
    data["stated"] = {k: given[k] for k in sorted(given)}
    data["assumptions"] = [a for a in base.data.get("assumptions", [])
                           if not a.startswith(("host", "disk"))]
    profile = profile_from_dict(data, origin=f"composed profile {name}")
    _check_consistent(profile)
    profile.data["assumptions"] += assumed_numbers(profile)  # the same numbers every output lists
    return profile_from_dict(profile.data, origin=f"composed profile {name}")


def _sources(profile: Profile) -> dict[str, dict[str, str]]:
    """Where each part of `profile` came from: the source profile's name and hash."""
    own = profile.data.get("parts")
    if isinstance(own, dict) and all(isinstance(own.get(p), dict) for p in ("device", "host", "storage")):
        return copy.deepcopy(own)
    entry = {"from": profile.name, "profile_hash": profile.profile_hash}
    return {"device": dict(entry), "host": dict(entry), "storage": dict(entry)}


def _take_host(data: dict[str, Any], models: dict[str, Any], host: Profile) -> None:
    part = copy.deepcopy(host.data["host"])
    part["provenance"] = host.host.provenance
    part["shared_with_device"] = False  # it now sits beside a GPU
    data["host"] = part
    for key in [k for k in models if k.startswith(_HOST_MODEL_PREFIXES)]:
        del models[key]
    for key, model in (host.data.get("cost_models") or {}).items():
        if host.host_is_device:  # the CPU-only profile's device models are its CPU's
            family, _, rest = key.partition(".device")
            if key.startswith(("gemm.device.", "attention.device.")) or key == "elementwise.device":
                models[f"{family}.cpu{rest}"] = copy.deepcopy(model)
        elif key.startswith(_HOST_MODEL_PREFIXES):
            models[key] = copy.deepcopy(model)
        if key == "link.host_memcpy":
            models[key] = copy.deepcopy(model)
    if "host_memcpy" in host.data["links"]:
        data["links"]["host_memcpy"] = copy.deepcopy(host.data["links"]["host_memcpy"])


def _take_storage(data: dict[str, Any], models: dict[str, Any], storage: Profile) -> None:
    part = copy.deepcopy(storage.data["disk"])
    part["provenance"] = storage.storage.provenance
    data["disk"] = part
    for key in STORAGE_MODEL_KEYS:
        models.pop(key, None)
        if key in (storage.data.get("cost_models") or {}):
            models[key] = copy.deepcopy(storage.data["cost_models"][key])
    for name in ("disk_read", "disk_write"):
        data["links"][name] = copy.deepcopy(storage.data["links"][name])


def _mark(part: dict[str, Any], field: str) -> None:
    part["stated"] = sorted({*part.get("stated", []), field})


def _apply_stated(data: dict[str, Any], models: dict[str, Any], s: Stated) -> None:
    host, disk, links = data["host"], data["disk"], data["links"]
    if s.dram_gbps is not None:
        old = host["memory_gb_per_s"]
        host["memory_gb_per_s"] = s.dram_gbps
        if "attention_gb_per_s" not in host.get("stated", []) and host.get("provenance") == "assumed" \
                and host.get("attention_gb_per_s"):
            # an assumed attention rate is a fraction of the assumed DRAM bandwidth: keep the fraction
            host["attention_gb_per_s"] = {t: round(v * s.dram_gbps / old, 6) for t, v in
                                          host["attention_gb_per_s"].items()}
        # a copy reads and writes every byte (the convention of `kvplan profile`)
        links["host_memcpy"] = {"gb_per_s": s.dram_gbps / 2,
                                "latency_s": links.get("host_memcpy", {}).get("latency_s", 1e-6)}
        models.pop("link.host_memcpy", None)
        _mark(host, "memory_gb_per_s")
    if s.cpu_attention_gbps is not None:
        host["attention_gb_per_s"] = dict.fromkeys(DTYPES, s.cpu_attention_gbps)
        for key in [k for k in models if k.startswith("attention.cpu.")]:
            del models[key]
        _mark(host, "attention_gb_per_s")
    if s.cpu_tflops is not None:
        host["peak_tflops"] = dict.fromkeys(DTYPES, s.cpu_tflops)
        for key in [k for k in models if k.startswith("gemm.cpu.")]:
            del models[key]
        _mark(host, "peak_tflops")
    if s.cpu_cores is not None:
        host["cores"] = int(s.cpu_cores)
        _mark(host, "cores")
    if s.host_mem_bytes is not None:
        host["memory_bytes"] = int(s.host_mem_bytes)
        _mark(host, "memory_bytes")
    for rate, name in ((s.disk_read_gbps, "disk_read"), (s.disk_write_gbps, "disk_write")):
        if rate is not None:
            links[name] = {"gb_per_s": rate, "latency_s": links[name].get("latency_s", 1e-4)}
            for cls in DISK_CLASSES.values():  # every model of that link's classes (disk_classes.py)
                if cls.link == name:
                    models.pop(cls.model_key, None)
            disk.pop("read_time_spread", None)  # measured against the old drive's fitted model
            disk.pop("compute_slowdown_while_reading", None)  # measured beside the old drive's reads
            _mark(disk, name)


def _check_consistent(profile: Profile) -> None:
    """A stated number that contradicts the rest of its part: CPU attention reads K,V from DRAM, so it
    cannot outrun the DRAM bandwidth."""
    host = profile.host
    if "attention_gb_per_s" not in host.stated and "memory_gb_per_s" not in host.stated:
        return
    for dtype, rate in sorted(host.attention_gb_per_s.items()):
        if rate > host.memory_gb_per_s * (1 + 1e-9):
            raise KvplanError(
                f"CPU attention {format_gbps(rate)} ({dtype}, {host.provenance_of('attention_gb_per_s')}) is faster "
                f"than the host's DRAM bandwidth {format_gbps(host.memory_gb_per_s)} "
                f"({host.provenance_of('memory_gb_per_s')}): attention reads every K,V byte from DRAM; state both "
                "with --cpu-attention-gbps and --dram-gbps")


def check_request_fits(profile: Profile, cpu_mem_bytes: int | None) -> None:
    """A host-memory cap larger than the host part has contradicts the hardware described."""
    if cpu_mem_bytes is not None and cpu_mem_bytes > profile.host.memory_bytes:
        raise KvplanError(
            f"--cpu-mem {format_bytes(cpu_mem_bytes)} is more than the host memory of {profile.name} "
            f"({format_bytes(profile.host.memory_bytes)}, {profile.host.provenance_of('memory_bytes')}); "
            "state the host's memory with --host-mem, or lower --cpu-mem")


def assumed_numbers(profile: Profile, dtype: str | None = None) -> list[str]:
    """The numbers of `profile` the planner uses that are assumed, not measured, read off a datasheet
    or stated: one short phrase each (for all dtypes, or for `dtype`)."""
    out = []
    if profile.device.provenance == "assumed":
        out.append(f"device {profile.device.name} (every number)")
    if profile.device_type == "cuda" and profile.device.provenance != "measured" \
            and CALIBRATED_GPU not in profile.device_name:  # the roofline's constants came from another GPU
        out.append(f"GPU kernel rates (roofline fractions and fixed costs, a layer's element-wise ops included) "
                   f"calibrated on an {CALIBRATED_GPU}, not on {profile.device_name}")
    host, disk = profile.host, profile.storage
    dtypes = [dtype] if dtype else sorted(host.peak_tflops)
    if not host.shared_with_device:
        items = [("memory_bytes", f"host memory {format_bytes(host.memory_bytes)}"),
                 ("memory_gb_per_s", f"DRAM {format_gbps(host.memory_gb_per_s)}")]
        unfitted = [t for t in dtypes if not _has_model(profile, f"attention.cpu.{t}")]
        att = {t: host.attention_gb_per_s[t] for t in unfitted if t in host.attention_gb_per_s}
        if att:
            items.append(("attention_gb_per_s", "CPU attention " + ", ".join(
                f"{format_gbps(v)} ({t})" for t, v in att.items())))
        roofline = [t for t in unfitted if t not in att]
        if roofline:
            out.append(f"{_ASSUMED_ROOFLINE} ({', '.join(roofline)})")
        peak = {t: _peak(host.peak_tflops, t) for t in dtypes}
        items.append(("peak_tflops", "CPU " + ", ".join(f"{v:g} TFLOP/s ({t})" for t, v in peak.items())))
        out += [text for field, text in items if host.provenance_of(field) == "assumed"]
    items = [("disk_read", f"drive read {format_gbps(disk.read.gb_per_s)}"),
             ("disk_write", f"drive write {format_gbps(disk.write.gb_per_s)}"),
             ("free_bytes", f"drive space {format_bytes(disk.free_bytes)}")]
    out += [text for field, text in items if disk.provenance_of(field) == "assumed"]
    return out


def _peak(table: dict[str, float], dtype: str) -> float:
    return table.get(dtype, table.get("float32", min(table.values())))


def _has_model(profile: Profile, key: str) -> bool:
    return key in (profile.data.get("cost_models") or {})


def hardware_record(profile: Profile, dtype: str | None = None) -> dict[str, Any]:
    """The plan's `hardware` section: the profile, and each part's source and provenance."""
    sources = _sources(profile)
    host, disk = profile.host, profile.storage
    parts = {
        "device": {"provenance": profile.device.provenance, "from": sources["device"]["from"]},
        "host": {"provenance": host.provenance, "from": sources["host"]["from"], "stated": list(host.stated),
                 "memory_bytes": host.memory_bytes, "memory_gb_per_s": host.memory_gb_per_s,
                 "attention_gb_per_s": {t: v for t, v in host.attention_gb_per_s.items() if dtype in (None, t)}},
        "storage": {"provenance": disk.provenance, "from": sources["storage"]["from"], "stated": list(disk.stated),
                    "read_gb_per_s": disk.read.gb_per_s, "write_gb_per_s": disk.write.gb_per_s,
                    "free_bytes": disk.free_bytes},
    }
    if host.shared_with_device:
        parts["host"]["shared_with_device"] = True
    return {
        "profile_name": profile.name, "profile_kind": profile.kind, "profile_hash": profile.profile_hash,
        "device_type": profile.device_type, "device_name": profile.device_name,
        "parts": parts, "assumed": assumed_numbers(profile, dtype),
    }


def provenance_line(hardware: dict[str, Any]) -> str | None:
    """One line on what was assumed, from a plan's `hardware` section (None when nothing was)."""
    assumed = hardware.get("assumed")
    if not assumed:
        return None
    return ("assumed, not measured or stated: " + "; ".join(assumed)
            + " (measure with 'kvplan profile' and pass --host local --storage local, or state them)")


def parts_line(hardware: dict[str, Any]) -> str:
    """'device datasheet (t4), host measured (local-vm-cpu), storage assumed (t4)' from a `hardware`
    record; stated numbers are named after their part."""
    out = []
    for part, info in (hardware.get("parts") or {}).items():
        stated = info.get("stated") or []
        extra = f", stated: {', '.join(stated)}" if stated else ""
        out.append(f"{part} {info.get('provenance', '?')} ({info.get('from', '?')}{extra})")
    return ", ".join(out)
