"""What the machine is: the compute device (CUDA when present, else the CPU), its name, memory and
PCIe link (pynvml), host memory and cores. A missing or failing pynvml never stops a profile."""

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


def _nvml_info(index: int) -> dict:
    """Name, memory and maximum PCIe link of GPU `index` via pynvml; {} when NVML is unavailable.
    The maximum link generation is recorded because the current one drops when the GPU idles."""
    try:
        import pynvml
    except ImportError:
        return {}
    info: dict = {}
    try:
        pynvml.nvmlInit()
    except Exception:
        return {}
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(handle)
        info["name"] = name.decode() if isinstance(name, bytes) else str(name)
        info["memory_bytes"] = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
        for key, call in (("pcie_generation", "nvmlDeviceGetMaxPcieLinkGeneration"),
                          ("pcie_width", "nvmlDeviceGetMaxPcieLinkWidth")):
            try:
                info[key] = int(getattr(pynvml, call)(handle))
            except Exception:
                pass
        try:
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            info["compute_capability"] = f"{major}.{minor}"
        except Exception:
            pass
    except Exception:
        pass
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return info


def detect_device(force_cpu: bool = False) -> DeviceInfo:
    if not force_cpu and cuda_available():
        import torch

        index = torch.cuda.current_device()
        nvml = _nvml_info(index)
        props = torch.cuda.get_device_properties(index)
        return DeviceInfo(
            type="cuda",
            name=nvml.get("name") or props.name,
            memory_bytes=int(nvml.get("memory_bytes") or props.total_memory),
            pcie_generation=nvml.get("pcie_generation"),
            pcie_width=nvml.get("pcie_width"),
            compute_capability=nvml.get("compute_capability") or f"{props.major}.{props.minor}",
        )
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
