"""What the machine is: the compute device (CUDA when present, else the CPU), its name, memory, cache
and PCIe link (torch's device properties; pynvml for the name and link, found by UUID or PCI bus id),
host memory and cores. A missing or failing pynvml never stops a profile."""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceInfo:
    type: str  # "cuda" | "cpu"
    name: str
    memory_bytes: int
    pcie_generation: int | None = None
    pcie_width: int | None = None
    compute_capability: str | None = None
    cache_bytes: int | None = None  # a GPU's L2 (torch's L2_cache_size); None for the CPU


GPU_L2_FALLBACK_BYTES = 128 << 20  # when torch does not say: above every current GPU's L2 (H100: 50 MB)


def cold_cache_bytes(device: DeviceInfo, cpu_llc_bytes: int) -> int:
    """The cache a probe's "cold" operands must overflow on `device`: the GPU's L2 for a CUDA device,
    the CPU's last-level cache for the CPU (planner/profiling/compute.py, ColdArena)."""
    if device.type == "cuda":
        return device.cache_bytes or GPU_L2_FALLBACK_BYTES
    return cpu_llc_bytes


def host_name() -> str:
    return platform.node() or "host"


def slug(text: str) -> str:
    """A file-name friendly form of a device name: 'NVIDIA A100-PCIE-40GB' -> 'nvidia-a100-pcie-40gb'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux); total physical memory elsewhere."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # a broken CUDA install must not stop a CPU profile
        return False


def pci_bus_id(props) -> str | None:
    """NVML's PCI bus id string ("00000000:3B:00.0") of a torch CUDA device from its properties
    (pci_domain_id, pci_bus_id, pci_device_id), or None when torch does not report them."""
    domain, bus, dev = (getattr(props, k, None) for k in ("pci_domain_id", "pci_bus_id", "pci_device_id"))
    if not all(isinstance(v, int) for v in (domain, bus, dev)):
        return None
    return f"{domain:08X}:{bus:02X}:{dev:02X}.0"


def nvml_handle(nvml, props):
    """The NVML handle of the GPU torch calls `props`, or None. Looked up by UUID, then by PCI bus id,
    never by the CUDA index: CUDA numbers only the visible GPUs (CUDA_VISIBLE_DEVICES) and may order
    them differently, while NVML numbers every GPU of the machine, so index i can be another GPU."""
    uuid = getattr(props, "uuid", None)
    if uuid is not None and str(uuid):
        text = str(uuid)
        for key in (text, f"GPU-{text}", f"MIG-{text}"):
            try:
                return nvml.nvmlDeviceGetHandleByUUID(key)
            except Exception:
                pass
    bus_id = pci_bus_id(props)
    if bus_id is not None:
        try:
            return nvml.nvmlDeviceGetHandleByPciBusId(bus_id)
        except Exception:
            pass
    return None


def _nvml_info(props) -> dict:
    """Name and maximum PCIe link of the GPU torch calls `props`, via pynvml; {} when NVML is
    unavailable or does not find it. The maximum link generation is recorded because the current one
    drops when the GPU idles. Memory is not taken from NVML: under MIG its total is the whole card's,
    not the slice torch can allocate (torch's total_memory is used)."""
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
    except Exception:
        return {}
    try:
        return _nvml_fields(pynvml, nvml_handle(pynvml, props))
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _nvml_fields(nvml, handle) -> dict:
    info: dict = {}
    if handle is None:
        return info
    try:
        name = nvml.nvmlDeviceGetName(handle)
        info["name"] = name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        pass
    for key, call in (("pcie_generation", "nvmlDeviceGetMaxPcieLinkGeneration"),
                      ("pcie_width", "nvmlDeviceGetMaxPcieLinkWidth")):
        try:
            info[key] = int(getattr(nvml, call)(handle))
        except Exception:
            pass
    return info


def device_from_props(props, nvml: dict) -> DeviceInfo:
    """The CUDA device as the profile records it: memory and compute capability from torch (the
    memory torch can allocate, a MIG slice's included), name and PCIe link from NVML when found."""
    l2 = getattr(props, "L2_cache_size", None)
    return DeviceInfo(
        type="cuda",
        name=nvml.get("name") or props.name,
        memory_bytes=int(props.total_memory),
        pcie_generation=nvml.get("pcie_generation"),
        pcie_width=nvml.get("pcie_width"),
        compute_capability=f"{props.major}.{props.minor}",
        cache_bytes=int(l2) if isinstance(l2, int) and l2 > 0 else None,
    )


def detect_device(force_cpu: bool = False) -> DeviceInfo:
    if not force_cpu and cuda_available():
        import torch

        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return device_from_props(props, _nvml_info(props))
    return DeviceInfo(type="cpu", name=cpu_name(), memory_bytes=available_memory_bytes())


def load_average() -> float | None:
    """The 1-minute load average, recorded with a profile: a busy machine gives noisy timings."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


LLC_FALLBACK_BYTES = 64 << 20  # when neither sysfs nor lscpu says: larger than most server L3 slices


def last_level_cache_bytes() -> int:
    """Size of the largest (last-level) cache of cpu0, from /sys/devices/system/cpu/cpu0/cache, else
    `lscpu -B`, else LLC_FALLBACK_BYTES. Cold-weight probes rotate over more bytes than this."""
    best = 0
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in sorted(os.listdir(root)):
            if not entry.startswith("index"):
                continue
            with open(os.path.join(root, entry, "size"), encoding="ascii") as fh:
                text = fh.read().strip()
            units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
            mult = units.get(text[-1:].upper(), 1)
            best = max(best, int(text.rstrip("KkMmGg")) * mult)
    except (OSError, ValueError):
        best = 0
    if best:
        return best
    try:
        import subprocess

        out = subprocess.run(["lscpu", "-B"], capture_output=True, text=True, timeout=5, check=False).stdout
        for line in out.splitlines():
            if re.match(r"L[23] cache:", line):
                best = max(best, int(line.split(":", 1)[1].split()[0]))
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    return best or LLC_FALLBACK_BYTES
