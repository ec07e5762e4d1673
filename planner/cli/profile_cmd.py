"""`kvplan profile`: measure this machine and write a profile the planner trusts."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import click

from planner.cli.output import OutputPath, echo_json, human_bytes, print_table
from planner.costmodel import fitted
from planner.jsonio import write_json_atomic


@click.command("profile")
@click.option("--quick", is_flag=True, help="A fast profile (under 2 minutes on 2 cores).")
@click.option("--smoke", is_flag=True, hidden=True, help="A seconds-long profile for tests and CI.")
@click.option("--disk-dir", type=click.Path(path_type=Path), default=None,
              help="Folder where the KV cache will live on disk (default: <temp dir>/kvplan-kvcache).")
@click.option("-o", "--output", type=OutputPath(dir_okay=False, path_type=Path), default=None,
              help="Where to write the profile (default: profiles/local-<host>-<device>.json).")
@click.option("--cpu", "force_cpu", is_flag=True, help="Profile the CPU even when a GPU is present.")
@click.option("--parts", "parts_text", default="device,host,storage", show_default=True, metavar="PARTS",
              help="What to measure: every part, or 'host,storage' for the CPU, DRAM and drive only "
                   "(no GPU is touched; combine with a GPU datasheet when planning).")
@click.option("--threads", type=int, default=None,
              help="torch threads for the CPU probes (default: all cores); run 'kvplan execute' with the same.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of tables.")
def command(quick: bool, smoke: bool, disk_dir: Path | None, output: Path | None, force_cpu: bool,
            parts_text: str, threads: int | None, as_json: bool) -> None:
    """Measure this machine: probes, fitted cost models with their errors, one profile file."""
    from planner.profiling import HOST_PARTS, default_output_path, measure_profile, parse_parts
    from planner.profiling.system import cpu_cores, detect_device, load_average

    parts = parse_parts(parts_text)

    load = load_average()
    if not smoke and load is not None and load > 0.5 * cpu_cores():
        hint = "profile when idle" if threads == 1 else "try --threads 1, or profile when idle"
        click.echo(f"warning: the machine is busy (load average {load} on {cpu_cores()} cores); timings will be "
                   f"noisy and slower than on an idle machine ({hint})", err=True)
    mode = "smoke" if smoke else "quick" if quick else "full"
    if smoke and threads is None:
        threads = 1  # tests and CI share their cores: one thread, timed by its CPU clock (timing.py)
    if output is None:
        output = default_output_path(detect_device(force_cpu=force_cpu or parts == HOST_PARTS))
    with _progress() as factory:
        data = measure_profile(mode, disk_dir=disk_dir, force_cpu=force_cpu, progress=factory, threads=threads,
                               kernels=runtime_kernels(), parts=parts)
    write_json_atomic(output, data)  # only a complete profile is ever written
    summary = _summary(data, output)
    if as_json:
        echo_json(summary)
        return
    _print_summary(summary)


def runtime_kernels():
    """The runtime's kernels as the probes call them (runtime/probe_kernels.py; the CLI may import the
    runtime, planner/profiling may not)."""
    from runtime.probe_kernels import runtime_kernels as kernels

    return kernels()


class _progress:
    """A rich progress bar per probe family on a terminal; one line per family otherwise (stderr)."""

    def __enter__(self) -> Callable[[str, int], Callable[[int], None]]:
        self._bar = None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=Console(stderr=True), transient=False)
            self._bar.__enter__()
        return self._factory

    def _factory(self, label: str, total: int) -> Callable[[int], None]:
        if self._bar is None:
            click.echo(f"probing: {label} ({total})", err=True)
            return lambda n: None
        task = self._bar.add_task(label, total=total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def _summary(data: dict, output: Path) -> dict:
    models = {
        key: {"kind": fitted.label(m), "cv_mape": m["cv_mape"], "samples": m["n_samples"],
              "skipped": data["samples"].get(key, {}).get("skipped", 0)}
        for key, m in sorted(data["cost_models"].items())
    }
    return {
        "path": str(output),
        "name": data["name"],
        "not_fitted": _not_fitted(data),
        "mode": data["measurement"]["mode"],
        "parts": data["measurement"]["parts"],
        "device": {k: data["device"][k] for k in ("type", "name", "memory_bytes", "memory_gb_per_s", "peak_tflops")},
        "host": {k: data["host"][k] for k in ("cores", "memory_bytes", "memory_gb_per_s", "peak_tflops",
                                               "attention_gb_per_s")},
        "links": data["links"],
        "disk": data["disk"],
        "cost_models": models,
    }


def _print_summary(s: dict) -> None:
    dev = s["device"]
    peaks = ", ".join(f"{d} {v * 1e3:,.1f} GFLOP/s" for d, v in sorted(dev["peak_tflops"].items()))
    click.echo(f"device: {dev['type']} {dev['name']}, {human_bytes(dev['memory_bytes'])}, best GEMM rate {peaks}")
    host = s["host"]
    att = ", ".join(f"{d} {v:,.2f} GB/s" for d, v in sorted(host["attention_gb_per_s"].items()))
    click.echo(f"host: {host['cores']} cores, DRAM {host['memory_gb_per_s']:,.2f} GB/s, "
               f"CPU decode attention (K,V read) {att}")
    click.echo(f"disk: {s['disk']['path']} ({s['disk']['method']}), {human_bytes(s['disk']['free_bytes'])} free")
    print_table("links", ["link", "GB/s", "latency us"],
                [(n, f"{v['gb_per_s']:.2f}", f"{v['latency_s'] * 1e6:.1f}") for n, v in sorted(s["links"].items())])
    print_table("cost models (error = cross-validated MAPE)", ["op", "model", "samples", "skipped", "error"],
                [(k, v["kind"], v["samples"], v["skipped"], f"{v['cv_mape'] * 100:.1f}%")
                 for k, v in s["cost_models"].items()])
    for key, why in s["not_fitted"].items():
        click.echo(f"{key}: {why}")
    click.echo(f"wrote {s['path']} ({s['mode']} mode)")


def _not_fitted(data: dict) -> dict[str, str]:
    """Disk classes probed too thinly to fit (planner/disk_classes.py), and what prices them instead."""
    from planner.disk_classes import DISK_CLASSES

    out = {}
    for cls in DISK_CLASSES.values():
        if cls.model_key in data["samples"] and cls.model_key not in data["cost_models"]:
            n = len(data["samples"][cls.model_key]["rows"])
            instead = cls.fallback_key if cls.fallback_key in data["cost_models"] else f"links.{cls.link}"
            out[cls.model_key] = f"not fitted ({n} size(s) timed, 3 needed): {cls.carries} priced by {instead}"
    return out
