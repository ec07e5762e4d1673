"""`kvplan export PLAN --to flexgen|vllm|accelerate`: the closest configuration that engine can run,
kvplan's prediction for it beside the plan's, and what the engine cannot do."""

from __future__ import annotations

import os
from pathlib import Path

import click

from planner.cli.output import echo_json
from planner.cli.plan_text import batch_text, tier_text
from planner.errors import KvplanError
from planner.export import ENGINES, export_plan, profile_for_plan, profile_note
from planner.jsonio import dumps_canonical, write_text_atomic
from planner.plan import load_plan
from planner.units import escape_name, format_seconds


def _refuse_input(out: Path, inputs: list[str | None]) -> None:
    if not str(out):
        raise KvplanError("-o is empty: give a file name")
    for path in inputs:
        if path and out.exists() and Path(path).exists() and os.path.samefile(out, path):
            raise KvplanError(f"-o {out} is an input of this command; choose another file")


def summary_lines(ex, plan) -> list[str]:
    ep, d = ex.engine_plan, ex.engine_plan.decisions
    cpu_only = plan.data["hardware"].get("device_type") == "cpu"
    p, o = ep.prediction, ep.original
    lines = [
        f"{plan.model.name} on {plan.data['hardware']['profile_name']}, context {plan.seq} -> {ex.rendered.engine}"
        + (" (solved again with its limits)" if ep.solved_again else ""),
        f"  {ex.rendered.engine} runs: {d.strategy}, {batch_text(d.batch, d.gpu_batch, d.num_gpu_batches, cpu_only)}, "
        f"K,V {tier_text(d.kv_placement)}, weights {tier_text(d.weight_placement).split(' ')[0]}, attention on "
        f"{d.attention_where}",
        f"  predicted: {p['throughput_tokens_per_s']:.3g} tok/s, decode step {format_seconds(p['decode_step_s'])} "
        f"(the plan with kvplan's runtime: {o['throughput_tokens_per_s']:.3g} tok/s, "
        f"{format_seconds(o['decode_step_s'])})",
        f"  lost: {ep.lost}",
    ]
    lines += [f"  warning: {w}" for w in ep.warnings]
    lines += [f"  note: {n}" for n in ex.rendered.notes]
    return lines


@click.command("export")
@click.argument("plan_file", type=click.Path(dir_okay=False))
@click.option("--to", "engine", required=True, type=click.Choice(ENGINES), help="The engine to configure.")
@click.option("--profile", "profile_path", type=click.Path(dir_okay=False), default=None,
              help="The profile the plan was solved with (default: the datasheet or local profile it names).")
@click.option("--gpu", default=None, help="Datasheet profile by name, when the plan names another.")
@click.option("--offload-dir", default=None, help="Folder for weights or K,V the engine puts on disk.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Also write the command (FlexGen, vLLM) or Python snippet (Accelerate) to this file; with --json, "
                   "the JSON.")
@click.option("--json", "as_json", is_flag=True, help="Print the export as JSON (options, prediction, what is lost).")
def command(plan_file: str, engine: str, profile_path: str | None, gpu: str | None, offload_dir: str | None,
            output: str | None, as_json: bool) -> None:
    """Export PLAN_FILE as the closest configuration ENGINE can run."""
    if output is not None:
        _refuse_input(Path(output), [plan_file, profile_path])
    plan = load_plan(plan_file)
    profile = profile_for_plan(plan, profile_path, gpu)
    note = profile_note(plan, profile)
    if note:
        click.echo(f"Warning: {note}", err=True)
    ex = export_plan(plan, profile, engine, offload_dir)
    text = dumps_canonical(ex.to_dict()) if as_json else ex.rendered.text
    if output is not None:
        write_text_atomic(output, text if text.endswith("\n") else text + "\n")
    if as_json:
        echo_json(ex.to_dict())
        return
    for line in summary_lines(ex, plan):
        click.echo(escape_name(line))  # names from the plan file: control characters shown escaped
    click.echo("")
    click.echo(ex.rendered.text.rstrip("\n"))
    if output is not None:
        click.echo(f"wrote {output}", err=True)
