"""Hardware probes for `kvplan profile`: one module per probe family (compute.py: GEMM, attention,
MLP activation; links.py: host DRAM bandwidth, memcpy and PCIe copies; disk.py: reads and writes past
the page cache; system.py: device, memory, cache and disk capacities), probe sizes from the catalog
models (shapes.py), modes (modes.py), the runtime kernels the probes time, handed in by the caller
(kernels.py), and `measure_profile` (measure.py) which runs them and fits the cost models."""

from __future__ import annotations

from planner.profiling.kernels import Kernels
from planner.profiling.measure import (
    DEFAULT_DISK_DIR,
    HOST_PARTS,
    PARTS,
    default_output_path,
    measure_profile,
    parse_parts,
)
from planner.profiling.modes import MODE_NAMES, get_mode

__all__ = ["DEFAULT_DISK_DIR", "HOST_PARTS", "MODE_NAMES", "PARTS", "Kernels", "default_output_path", "get_mode",
           "measure_profile", "parse_parts"]
