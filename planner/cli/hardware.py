"""The hardware options shared by `solve`, `predict`, `report` and `demo`: a host part and a storage
part from another profile (`--host local`: this machine's newest measured profile) and the numbers a
user knows (`--cpu-attention-gbps 5`, `--disk-read-gbps 0.5`, ...), composed with the device profile
by planner.hardware.compose_profile."""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Any

import click

from planner.errors import KvplanError
from planner.hardware import Stated, compose_profile
from planner.profile import Profile, find_local_profile, load_profile
from planner.profile_schema import MAX_TFLOPS
from planner.units import RATE_HELP, parse_bytes, parse_gbps, parse_positive

MAX_CORES = 100_000


@dataclass(frozen=True)
class HardwareArgs:
    """The options as typed (strings); `stated()` parses them with planner/units.py."""

    host: str | None = None
    storage: str | None = None
    dram_gbps: str | None = None
    cpu_attention_gbps: str | None = None
    cpu_tflops: str | None = None
    cpu_cores: str | None = None
    host_mem: str | None = None
    disk_read_gbps: str | None = None
    disk_write_gbps: str | None = None

    def stated(self) -> Stated:
        cores = parse_positive(self.cpu_cores, "--cpu-cores", MAX_CORES)
        if cores is not None and cores != int(cores):
            raise KvplanError(f"--cpu-cores must be a whole number, got {self.cpu_cores!r}")
        host_mem = parse_bytes(self.host_mem, "--host-mem")
        if host_mem is not None and host_mem <= 0:
            raise KvplanError(f"--host-mem must be above 0, got {self.host_mem!r}")
        return Stated(
            dram_gbps=parse_gbps(self.dram_gbps, "--dram-gbps"),
            cpu_attention_gbps=parse_gbps(self.cpu_attention_gbps, "--cpu-attention-gbps"),
            cpu_tflops=parse_positive(self.cpu_tflops, "--cpu-tflops", MAX_TFLOPS),
            cpu_cores=None if cores is None else int(cores), host_mem_bytes=host_mem,
            disk_read_gbps=parse_gbps(self.disk_read_gbps, "--disk-read-gbps"),
            disk_write_gbps=parse_gbps(self.disk_write_gbps, "--disk-write-gbps"),
        )

    def compose(self, base: Profile) -> Profile:
        """`base` with the host and storage parts and the stated numbers these options name."""
        stated = self.stated()
        return compose_profile(base, part_profile(self.host, "--host"), part_profile(self.storage, "--storage"),
                               stated)

    def storage_only(self) -> HardwareArgs:
        """These options less the host ones (for a CPU-only profile, whose host is its device)."""
        return HardwareArgs(storage=self.storage, disk_read_gbps=self.disk_read_gbps,
                            disk_write_gbps=self.disk_write_gbps)

    def as_options(self) -> list[str]:
        """The options as they would be typed again (recorded in a report's config)."""
        out = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out += ["--" + f.name.replace("_", "-"), value]
        return out


def part_profile(spec: str | None, option: str) -> Profile | None:
    """The profile a part comes from: 'local' (this machine's newest measured profile) or a file."""
    if spec is None:
        return None
    if spec.strip().lower() == "local":
        path = find_local_profile()
        if path is None:
            raise KvplanError(f"{option} local: this machine has no measured profile yet; run 'kvplan profile' first")
    else:
        path = spec
    try:
        return load_profile(path)
    except KvplanError as exc:
        raise KvplanError(f"{option} {spec}: {exc}") from None


_OPTIONS = (
    click.option("--host", "host", metavar="local|FILE", default=None,
                 help="Host part (DRAM, CPU GEMM and attention) from a profile: 'local' = this machine's measured "
                      "profile, or a profile file."),
    click.option("--storage", "storage", metavar="local|FILE", default=None,
                 help="Storage part (drive read/write rates, free space) from a profile: 'local' or a file."),
    click.option("--dram-gbps", "dram_gbps", metavar="RATE", default=None, help=f"Host DRAM bandwidth, {RATE_HELP}."),
    click.option("--cpu-attention-gbps", "cpu_attention_gbps", metavar="RATE", default=None,
                 help="K,V bytes per second the host CPU's decode attention reads (GB/s)."),
    click.option("--cpu-tflops", "cpu_tflops", metavar="N", default=None, help="Host CPU GEMM rate in TFLOP/s."),
    click.option("--cpu-cores", "cpu_cores", metavar="N", default=None, help="Host CPU cores."),
    click.option("--host-mem", "host_mem", metavar="SIZE", default=None,
                 help="Host memory installed, e.g. 512GB (--cpu-mem caps what a plan uses)."),
    click.option("--disk-read-gbps", "disk_read_gbps", metavar="RATE", default=None, help="Drive read rate (GB/s)."),
    click.option("--disk-write-gbps", "disk_write_gbps", metavar="RATE", default=None,
                 help="Drive write rate (GB/s)."),
)
NAMES = tuple(f.name for f in fields(HardwareArgs))


def hardware_options(func: Any) -> Any:
    """Adds the options to a click command; the command receives them as `hardware: HardwareArgs`."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        hardware = HardwareArgs(**{name: kwargs.pop(name, None) for name in NAMES})
        return func(*args, hardware=hardware, **kwargs)

    for option in reversed(_OPTIONS):
        wrapper = option(wrapper)
    return wrapper
