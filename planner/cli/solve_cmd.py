"""`kvplan solve`: one MILP per (model, hardware, context) that writes the JSON execution plan."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import click

from planner.cli.hardware import HardwareArgs, hardware_options
from planner.cli.output import OutputPath, check_outputs, echo_json
from planner.cli.plan_text import batch_text, gain_lines, tier_text
from planner.errors import KvplanError
from planner.hardware import check_request_fits, provenance_line
from planner.jsonio import dumps_canonical, read_json
from planner.models import load_model
from planner.plan import save_plan
from planner.profile import find_local_profile, load_profile
from planner.search import SolveRequest, solve
from planner.search.request import ACTIVATION_CHOICES, DEFAULT_MAX_BATCH, MAX_BATCH, REQUEST_STRATEGIES
from planner.units import SIZE_HELP, escape_name, format_seconds, parse_bytes


def parse_batch(text: str) -> int | None:
    if text.strip().lower() == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise KvplanError(f"--batch must be 'auto' or an integer, got {text!r}") from None
    if not 1 <= value <= MAX_BATCH:
        raise KvplanError(f"--batch must be 'auto' or an integer in [1, {MAX_BATCH}], got {value}")
    return value


def resolve_profile(profile_path: str | None, gpu: str | None):
    if profile_path is None and gpu is None:
        local = find_local_profile()
        if local is None:
            raise KvplanError("no hardware profile: run 'kvplan profile' to measure this machine, or pass --gpu NAME "
                              "(see 'kvplan gpus') or --profile FILE")
        return load_profile(local)
    return load_profile(profile_path, gpu)


def default_plan_path(plan: dict) -> Path:
    inp = plan["inputs"]
    parts = [inp["model"], plan["hardware"]["profile_name"], f"s{inp['seq']}", f"g{inp['gen']}", f"b{inp['batch']}"]
    if inp["strategy"] != "auto":
        parts.append(inp["strategy"])
    if inp["objective"] != "throughput":
        parts.append(inp["objective"])
    name = "-".join(str(p) for p in parts)
    return Path("plans") / (re.sub(r"[^A-Za-z0-9._-]+", "_", name) + ".json")


def request_key(plan: dict) -> str:
    """What a plan answers: the request (inputs), the model's architecture and the profile's hash."""
    hardware = plan.get("hardware") if isinstance(plan.get("hardware"), dict) else {}
    request = {"inputs": plan.get("inputs"), "model": plan.get("model"), "profile_hash": hardware.get("profile_hash")}
    return hashlib.sha256(dumps_canonical(request).encode()).hexdigest()[:10]


def _request_in(path: Path) -> str | None:
    """The request key of the plan already at `path`; None when there is no file; "?" when it is no plan."""
    if not path.exists():
        return None
    try:
        data = read_json(path, "plan")
    except KvplanError:
        return "?"
    return request_key(data) if isinstance(data, dict) else "?"


def choose_plan_path(plan: dict) -> Path:
    """The default plan path, unless a file there holds a plan for a different request (the name leaves
    out e.g. the memory caps and dtype): then the name gets the request's key, and a note says so."""
    path = default_plan_path(plan)
    key = request_key(plan)
    if _request_in(path) in (None, key):
        return path
    alt = path.with_name(f"{path.stem}-{key}.json")
    if _request_in(alt) not in (None, key):
        raise KvplanError(f"{alt} exists and holds another plan; pass -o FILE")
    click.echo(f"note: {escape_name(path)} holds a plan for a different request; writing {escape_name(alt)}",
               err=True)
    return alt


def summary_lines(plan: dict) -> list[str]:
    d, p = plan["decisions"], plan["prediction"]
    seq = plan["inputs"]["seq"]
    cpu_only = plan["hardware"].get("device_type") == "cpu"
    lines = [
        f"{escape_name(plan['inputs']['model'])} on {escape_name(plan['hardware']['profile_name'])}: seq {seq} (prompt "
        f"{plan['inputs']['prompt']} + gen {plan['inputs']['gen']}), {d['dtype']}, objective "
        f"{plan['inputs']['objective']}",
        f"  strategy {d['strategy']}: {batch_text(d['batch'], d['gpu_batch'], d['num_gpu_batches'], cpu_only)}, "
        f"split {d['split_tokens']} tokens ({100 * d['split_tokens'] / seq:.1f}%), attention on "
        f"{d['attention_where']}, activations on {d.get('activation_placement', 'device')}",
        "  K,V " + tier_text(d["kv_placement"]) + "; X " + tier_text(d["x_placement"]).split(" ")[0]
        + "; weights " + tier_text(d["weight_placement"]).split(" ")[0],
        f"  decode step {format_seconds(p['decode_step_s'])} (bound by {p['timeline']['bound_by']}), prefill "
        f"{format_seconds(p['prefill_s'])}, throughput {p['throughput_tokens_per_s']:.1f} tok/s",
    ]
    hedge = (plan.get("solver") or {}).get("split_hedge")
    if hedge:
        fast, _, slow = hedge["disk_time_scales"]
        lines.append(f"  split hedged against the disk's measured drift (x{fast:g} .. x{slow:g} of its time): "
                     f"worst-case regret {hedge['worst_regret_pct']:.1f}%; the best split at the profiled rate, "
                     f"{hedge['nominal_split_tokens']}, risks {hedge['nominal_worst_regret_pct']:.1f}%")
    lines += gain_lines(p, "  ")
    lb = plan["lower_bound"]
    if lb.get("distance") is not None:
        lines.append(f"  lower bound {format_seconds(lb['step_s'])} (bound by {lb['bound_by'].replace('_', ' ')}); "
                     f"plan at {lb['distance']:.2f}x")
    return lines


@click.command("solve")
@click.option("--model", "model_name", required=True, help="Model name, alias, or a Hugging Face config.json.")
@click.option("--seq", type=int, required=True, help="Context length at the end of generation (prompt + gen).")
@click.option("--gen", type=int, default=None,
              help="Tokens to generate per sequence (default: 128, or seq/2 when seq <= 256).")
@click.option("--prompt", type=int, default=None, help="Prompt tokens (default: seq - gen).")
@click.option("--batch", "batch_text", default="auto", show_default=True, help="Batch size, or 'auto'.")
@click.option("--max-batch", "max_batch", type=int, default=DEFAULT_MAX_BATCH, show_default=True,
              help="The largest batch --batch auto tries (powers of two up to it).")
@click.option("--profile", "profile_path", type=click.Path(dir_okay=False), default=None,
              help="Hardware profile JSON (from 'kvplan profile').")
@click.option("--gpu", default=None, help="Datasheet profile by GPU name (see 'kvplan gpus').")
@click.option("--objective", default="throughput", show_default=True, help="throughput | latency")
@click.option("--strategy", default="auto", show_default=True,
              help=f"{' | '.join(REQUEST_STRATEGIES)}: pin one strategy as a baseline; auto searches them all.")
@click.option("--activations", default="device", show_default=True,
              help=f"{' | '.join(ACTIVATION_CHOICES)}: where the hidden states between layers of the GPU batches "
              "not being computed live (FlexGen's activation placement); auto lets the solver choose. Plans with "
              "them on the host are for export (FlexGen); 'kvplan execute' runs only device.")
@click.option("--dtype", default=None,
              help="float16 | bfloat16 | float32 (default: the model's dtype on a GPU, float32 on a CPU-only profile).")
@click.option("--gpu-mem", "gpu_mem", default=None, help=f"Cap on device memory, e.g. 24GB; {SIZE_HELP}.")
@click.option("--cpu-mem", "cpu_mem", default=None, help="Cap on host memory, e.g. 64GB (units as --gpu-mem).")
@click.option("--disk", "disk", default=None, help="Cap on disk space, e.g. 500GB (units as --gpu-mem).")
@click.option("-o", "--output", type=OutputPath(dir_okay=False), default=None,
              help="Plan file (default: plans/<model>-<hardware>-s<seq>-g<gen>-b<batch>.json; if that file holds "
              "a plan for another request, the name gets the request's key).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan JSON on stdout (the file is written too).")
@hardware_options
def command(model_name: str, seq: int, gen: int | None, prompt: int | None, batch_text: str, max_batch: int,
            profile_path: str | None,
            gpu: str | None, objective: str, strategy: str, activations: str, dtype: str | None, gpu_mem: str | None,
            cpu_mem: str | None, disk: str | None, output: str | None, as_json: bool,
            hardware: HardwareArgs) -> None:
    """Solve for the best execution plan of MODEL at context SEQ and write it as JSON."""
    check_outputs([output], [profile_path, model_name, hardware.host, hardware.storage])
    if seq <= 0:
        raise KvplanError(f"--seq must be a positive number of tokens, got {seq}")
    if gen is None:
        gen = 128 if seq > 256 else max(1, seq // 2)
    if seq < 2:
        raise KvplanError(f"--seq must be at least 2 (one prompt token and one generated), got {seq}")
    if gen <= 0 or gen >= seq:
        raise KvplanError(f"--gen must be in [1, seq - 1] = [1, {seq - 1}], got {gen}")
    request = SolveRequest(
        model=load_model(model_name), seq=seq, gen=gen, prompt=prompt, batch=parse_batch(batch_text),
        objective=objective, strategy=strategy, dtype=dtype, gpu_mem_bytes=parse_bytes(gpu_mem, "--gpu-mem"),
        cpu_mem_bytes=parse_bytes(cpu_mem, "--cpu-mem"), disk_bytes=parse_bytes(disk, "--disk"), max_batch=max_batch,
        activations=activations,
    )
    profile = hardware.compose(resolve_profile(profile_path, gpu))
    check_request_fits(profile, request.cpu_mem_bytes)
    start = time.perf_counter()
    plan = solve(request, profile)
    solve_s = time.perf_counter() - start
    for warning in plan["warnings"]:
        click.echo(f"Warning: {escape_name(warning)}", err=True)
    path = Path(output) if output is not None else choose_plan_path(plan)
    check_outputs([path], [profile_path, model_name, hardware.host, hardware.storage])
    save_plan(path, plan)
    assumed = provenance_line(plan["hardware"])
    if as_json:
        echo_json(plan)
        if assumed:
            click.echo(assumed, err=True)
        click.echo(f"wrote {escape_name(path)} (solved in {solve_s * 1e3:.0f} ms)", err=True)
        return
    for line in summary_lines(plan) + ([f"  {assumed}"] if assumed else []):
        click.echo(line)
    click.echo(f"wrote {escape_name(path)} (solver {plan['solver']['name']} {plan['solver']['status']}, "
               f"{solve_s * 1e3:.0f} ms with the 4 pinned baselines)")
