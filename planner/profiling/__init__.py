"""Hardware probes for `kvplan profile`: one module per probe family (compute.py: GEMM, attention,
MLP activation; links.py: memcpy and PCIe copies; disk.py: reads and writes past the page cache;
system.py: device, memory and disk capacities), probe sizes from the catalog models (shapes.py),
modes (modes.py), and `measure_profile` (measure.py) which runs them and fits the cost models."""

from __future__ import annotations

from planner.profiling.measure import DEFAULT_DISK_DIR, default_output_path, measure_profile
from planner.profiling.modes import MODE_NAMES, get_mode

__all__ = ["DEFAULT_DISK_DIR", "MODE_NAMES", "default_output_path", "get_mode", "measure_profile"]
