"""`kvplan gpus`: the datasheet hardware catalog."""

from __future__ import annotations

import click

from planner.cli.output import echo_json, human_bytes, print_table
from planner.hardware import hardware_record, parts_line
from planner.profile import datasheet_names, load_profile


@click.command("gpus")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def command(name: str | None, as_json: bool) -> None:
    """List datasheet GPU profiles, or print one profile (usable as --gpu NAME anywhere)."""
    if name is not None:
        profile = load_profile(gpu=name)
        if as_json:
            echo_json(profile.data)
            return
        _table([profile])
        click.echo(f"parts: {parts_line(hardware_record(profile))}")
        for key, text in sorted(profile.data.get("sources", {}).items()):
            click.echo(f"source of {key}: {text}")
        for text in profile.data.get("assumptions", []):
            click.echo(f"assumed: {text}")
        return
    profiles = [load_profile(gpu=n) for n in datasheet_names()]
    if as_json:
        echo_json({"gpus": [p.data for p in profiles]})
        return
    _table(profiles)


def _table(profiles) -> None:
    rows = []
    for p in profiles:
        pcie = p.data.get("pcie", {})
        rows.append((
            p.name, p.device_name, human_bytes(p.device_memory_bytes), f"{p.device_memory_gb_per_s:,.0f}",
            f"{p.device_peak_tflops.get('float16', 0):,.1f}", f"{p.device_peak_tflops.get('float32', 0):,.1f}",
            f"{pcie.get('generation', '?')}.0 x{pcie.get('width', '?')}", f"{p.links['h2d'].gb_per_s:.1f}",
        ))
    print_table("GPU profiles (datasheet)", ["name", "device", "memory", "mem GB/s", "fp16 TFLOP/s",
                                             "fp32 TFLOP/s", "PCIe", "pinned H2D GB/s"], rows)
