"""`kvplan demo`: the whole pipeline on a built-in model and this machine, in one run folder."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click

from planner.cli import execute_cmd, profile_cmd, solve_cmd
from planner.cli.hardware import HardwareArgs, hardware_options
from planner.cli.output import OutputPath, check_outputs
from planner.errors import KvplanError
from planner.jsonio import write_json_atomic
from planner.profile import find_local_profile, load_profile


@click.command("demo")
@click.option("--model", default="opt-125m", show_default=True, help="Built-in model (or config.json) to run.")
@click.option("--seq", type=int, default=2048, show_default=True, help="Context length at the end of generation.")
@click.option("--gen", type=int, default=32, show_default=True, help="Tokens to generate.")
@click.option("--batch", default="16", show_default=True, help="Batch size, or 'auto'.")
@click.option("--device-mem", default="1GB", show_default=True,
              help="Device memory the plan may use: a small cap pushes the KV cache out to disk.")
@click.option("--steps", type=int, default=4, show_default=True, help="Decode steps to execute.")
@click.option("--layers", type=int, default=4, show_default=True, help="Decoder layers to execute (times scaled).")
@click.option("--profile", "profile_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Profile to plan with (default: this machine's; measured with --quick if there is none).")
@click.option("--disk-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the KV cache on disk (default: the system temp folder).")
@click.option("-o", "--out-dir", type=OutputPath(file_okay=False, path_type=Path), default=None,
              help="Run folder (default: runs/demo-<model>-s<seq>).")
@hardware_options
@click.pass_context
def command(ctx: click.Context, model: str, seq: int, gen: int, batch: str, device_mem: str, steps: int,
            layers: int, profile_path: Path | None, disk_dir: Path | None, out_dir: Path | None,
            hardware: HardwareArgs) -> None:
    """Profile this machine (if needed), plan MODEL with a capped device memory, and execute the plan.

    The run folder gets config.json (this command's inputs), plan.json and run.json (measured vs
    predicted). On a CPU-only machine the device is the CPU and the slow tier is the disk.
    """
    hardware.stated()  # a bad number is refused before anything runs
    if out_dir is None:
        out_dir = Path("runs") / re.sub(r"[^A-Za-z0-9._-]", "_", f"demo-{model}-s{seq}")
    if profile_path is None:
        profile_path = find_local_profile()
        if profile_path is None:
            click.echo("== no profile of this machine yet: measuring one (kvplan profile --quick)")
            ctx.invoke(profile_cmd.command, quick=True, disk_dir=disk_dir)
            profile_path = find_local_profile()
            if profile_path is None:
                raise KvplanError("kvplan profile did not leave a profile under profiles/")
    check_outputs([out_dir / name for name in ("config.json", "plan.json", "run.json")],
                  [profile_path, model, hardware.host, hardware.storage])
    click.echo(f"== profile: {profile_path}")
    hardware.compose(load_profile(profile_path))  # parts that do not fit this profile: refused before writing
    config = {
        "command": "kvplan demo", "model": model, "seq": seq, "gen": gen, "batch": batch,
        "device_mem": device_mem, "steps": steps, "layers": layers, "profile": str(profile_path),
        "disk_dir": str(disk_dir) if disk_dir else None, "hardware_options": hardware.as_options(),
    }
    write_json_atomic(out_dir / "config.json", config)
    plan_path = out_dir / "plan.json"
    click.echo(f"== kvplan solve --model {model} --seq {seq} --gen {gen} --batch {batch} --gpu-mem {device_mem}"
               + "".join(f" {a}" for a in hardware.as_options()))
    ctx.invoke(solve_cmd.command, model_name=model, seq=seq, gen=gen, batch_text=batch,
               profile_path=str(profile_path), gpu_mem=device_mem, output=str(plan_path),
               **dataclasses.asdict(hardware))
    click.echo(f"== kvplan execute {plan_path} --steps {steps} --layers {layers} --fill random")
    # random cache contents: the timing is the same as after a real prefill, and the demo stays short
    ctx.invoke(execute_cmd.command, plan_file=plan_path, steps=steps, layers=layers, disk_dir=disk_dir,
               fill="random", out_path=out_dir / "run.json")
    click.echo(f"== run folder: {out_dir} (config.json, plan.json, run.json)")
