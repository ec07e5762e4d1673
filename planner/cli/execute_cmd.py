"""`kvplan execute PLAN`: run a plan on this machine and print, component by component, what the
plan predicted and what happened (docs/runtime.md)."""

from __future__ import annotations

from pathlib import Path

import click

from planner.cli.output import OutputPath, check_outputs, echo_json, escape_name, print_table
from planner.cli.plan_text import batch_text
from planner.jsonio import write_json_atomic
from planner.plan import load_plan
from planner.schemas import MACHINE_CHECK_WARNING


def _fmt(v, unit: str) -> str:
    if v is None:
        return "n/a"
    if unit == "s":
        return f"{v * 1e3:.3f} ms" if v < 10 else f"{v:.2f} s"
    if unit == "x":
        return f"{v:.2f}x"
    return f"{v:,.2f} {unit}"


@click.command("execute")
@click.argument("plan_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--steps", type=int, default=None, help="Decode steps to run (default: min(gen, 16)), centred on the "
              "plan's average context.")
@click.option("--layers", type=int, default=None, help="Store only K decoder layers' weights and caches; every "
              "decode step still runs all L layers, cycling through the K stored ones (real I/O and compute per "
              "layer, logits not meaningful). A prefill runs the K layers and is scaled by L/K.")
@click.option("--disk-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the disk tier's files (default: the system temp folder).")
@click.option("--weights", "weights_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              default=None, help="Local Hugging Face checkpoint folder (*.safetensors); default: random weights.")
@click.option("--profile", "profile_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Re-predict the plan with this profile (default: the plan's own prediction, or this "
              "machine's 'kvplan profile' when the plan was made for other hardware).")
@click.option("--fill", type=click.Choice(["auto", "prefill", "random"]), default="auto", show_default=True,
              help="Fill the caches by a real prefill, or with random values (timing only; fast at long contexts).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=int, default=None, help="torch threads for the compute (default: the count the "
              "--profile / local profile was measured with on a CPU, else torch's default; the run prints which).")
@click.option("--no-check", "no_check", is_flag=True, help="Skip the machine check. By default, before the decode "
              "steps, execute times the plan's largest projection GEMM, one decode attention and (when the plan "
              "reads the disk) one disk read through the profile's probes, about 1-2 s in all, and prints each "
              "time over the profile's cost model for the same shape (x1.00 = as profiled), warning when the "
              "machine has drifted from its profile.")
@click.option("--quiet", is_flag=True, help="No progress lines on stderr.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights and tokens.")
@click.option("--out", "out_path", type=OutputPath(dir_okay=False, path_type=Path), default=None,
              help="Write the full run record (JSON) here.")
@click.option("--json", "as_json", is_flag=True, help="Print the run record as JSON instead of tables.")
def command(plan_file: Path, steps, layers, disk_dir, weights_dir, profile_path, fill, device, threads, no_check,
            quiet, seed, out_path, as_json) -> None:
    """Run a plan for real and report measured vs predicted time per resource."""
    from runtime.run import RunOptions, execute_plan  # torch is imported only when a run is asked for

    check_outputs([out_path], [plan_file, profile_path, weights_dir], "--out")
    plan = load_plan(plan_file)
    record = execute_plan(plan, RunOptions(steps=steps, layers=layers, disk_dir=disk_dir, weights_dir=weights_dir,
                                           profile_path=profile_path, fill=fill, device=device, seed=seed,
                                           threads=threads, check=not no_check,
                                           progress=None if quiet else lambda line: click.echo(line, err=True)))
    record["plan_file"] = str(plan_file)
    if out_path is not None:
        write_json_atomic(out_path, record)
    if as_json:
        echo_json(record)
        return
    run = record["run"]
    d = record["plan"]["decisions"]
    batch = batch_text(d["batch"], d["gpu_batch"], d["num_gpu_batches"], cpu_only=run["device"] == "cpu")
    click.echo(f"{escape_name(record['plan']['model'])}: {batch}, "
               f"context {run['start_context']}..{run['start_context'] + run['steps']}, split l={d['split_tokens']}, "
               f"{d['strategy']}, {d['dtype']} on {run['device']}; {run['steps']} steps, "
               f"{run['layers_run']}/{run['layers_total']} layers, fill={run['fill']}, "
               f"direct I/O={'yes' if run['direct_io'] else 'no'}, {run['torch_threads']} torch threads, "
               f"load average {run['load_average_1min'][0]:.2f} on {run['cpu_count']} CPUs")
    drift = [w for w in run.get("warnings", []) if w.startswith(MACHINE_CHECK_WARNING)]
    warnings = [f"timings not trustworthy: {w}" for w in run.get("warnings", []) if w not in drift]
    rows = []
    for r in record["comparison"]:
        gap = "" if r["gap_pct"] is None else f"{r['gap_pct']:+.1f}%"
        rows.append([r["quantity"], _fmt(r["predicted"], r["unit"]), _fmt(r["measured"], r["unit"]), gap])
    if warnings:
        rows.append([f"WARNING: contended run, {len(warnings)} warning(s) below", "", "", ""])
    print_table("predicted vs measured", ["quantity", "predicted", "measured", "gap"], rows)
    for w in warnings:
        click.echo(f"warning: {w}")
    _print_check(record.get("machine_check"), drift)
    m = record["measured"]
    click.echo(f"LM head + embedding per step (not in the plan's decode step): {m['head_s'] * 1e3:.2f} ms")
    if run["torch_threads"] == 1 and m["per_layer_busy_s"]["compute"] > 0:
        share = m["per_layer_compute_thread_cpu_s"] / m["per_layer_busy_s"]["compute"]
        click.echo(f"compute thread ran {100 * share:.0f}% of its busy time (the rest it waited for a CPU)")
    for note in record["notes"]:
        click.echo(f"note: {note}")
    if out_path is not None:
        click.echo(f"run record written to {out_path}")


def _print_check(check: dict | None, drift: list[str]) -> None:
    """The machine check's line (each op's time over the profile's), its warnings, and the decode step
    the profile's models predict once scaled by those ratios."""
    if not check:
        return
    from runtime.check import check_line

    click.echo(check_line(check))
    for w in drift:
        click.echo(f"warning: {w}")
    again = check.get("predicted_with_ratios") or {}
    if again.get("decode_step_s"):
        click.echo(f"decode step predicted with the check's ratios applied ({', '.join(check['ratios_applied_to'])}): "
                   f"{_fmt(again['decode_step_s'], 's')}")
