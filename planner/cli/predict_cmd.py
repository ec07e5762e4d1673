"""`kvplan predict`: the what-if query — predicted time of each op of one layer, and of moving the
layer's KV and X over each link, on a measured or a datasheet profile."""

from __future__ import annotations

import click

from planner.cli.hardware import HardwareArgs, hardware_options
from planner.cli.output import echo_json, human_bytes, human_count, print_table
from planner.costmodel import CostModel
from planner.costmodel.layer_time import layer_op_times_s, recompute_kv_s
from planner.errors import KvplanError
from planner.hardware import hardware_record, provenance_line
from planner.layer_costs import kv_bytes_per_token, op_flops, recompute_kv_flops, x_bytes_per_token
from planner.models import DTYPE_BYTES, load_model
from planner.profile import find_local_profile, load_profile

OPS = ("qkv_proj", "o_proj", "mlp_up", "mlp_act", "mlp_down", "other_ops", "attention", "recompute_kv")
FAMILY = {"mlp_act": "elementwise", "other_ops": "elementwise", "attention": "attention", "recompute_kv": "gemm"}
MAX_ROWS = 1 << 26  # batch x tokens beyond this is not a layer anyone runs


def _positive_int(value: int | None, flag: str, lo: int) -> None:
    if value is not None and value < lo:
        raise KvplanError(f"{flag} must be at least {lo}, got {value}")


def predict(profile_path: str | None, gpu: str | None, model_name: str, tokens: int, context: int, batch: int,
            dtype: str | None, hardware: HardwareArgs | None = None) -> dict:
    """Per-layer predictions as plain data (what --json prints)."""
    _positive_int(tokens, "--tokens", 1)
    _positive_int(context, "--context", 0)
    _positive_int(batch, "--batch", 1)
    if batch * tokens > MAX_ROWS or batch * (context + tokens) > 1 << 34:
        raise KvplanError(f"--batch {batch} x --tokens {tokens} (+ --context {context}) is absurdly large")
    if profile_path is None and gpu is None:
        local = find_local_profile()
        if local is None:
            raise KvplanError("no local profile: run 'kvplan profile' first, or pass --profile FILE or --gpu NAME")
        profile_path = str(local)
    profile = load_profile(profile_path, gpu)
    if hardware is not None:
        profile = hardware.compose(profile)
    model = load_model(model_name)
    if dtype is None:
        dtype = "float32" if profile.device_type == "cpu" else model.dtype
    if dtype not in DTYPE_BYTES:
        raise KvplanError(f"unknown dtype '{dtype}' (known: {', '.join(DTYPE_BYTES)})")
    cost = CostModel(profile)
    times = layer_op_times_s(cost, model, batch, tokens, context, dtype)
    times["recompute_kv"] = recompute_kv_s(cost, model, batch, tokens, dtype)
    flops = op_flops(model, batch, tokens, context)
    flops["recompute_kv"] = recompute_kv_flops(model, batch, tokens)
    ops = {}
    for name in OPS:
        family = FAMILY.get(name, "gemm")
        fam_dtype = None if family == "elementwise" else dtype
        source = cost.source(family, "device", fam_dtype)
        reg = cost.fitted_model(family, "device", fam_dtype)
        ops[name] = {"time_s": times[name], "flops": flops.get(name, 0), "model": source,
                     "cv_mape": reg["cv_mape"] if reg else None}
    if not profile.host_is_device:  # the host CPU beside a GPU, as CPU attention uses it
        reg = cost.fitted_model("attention", "cpu", dtype)
        ops["cpu_attention"] = {"time_s": cost.attention_s(model, batch, tokens, context, dtype, where="cpu"),
                                "flops": flops["attention"], "model": cost.cpu_attention_source(dtype),
                                "cv_mape": reg["cv_mape"] if reg else None}
    stored_tokens = batch * (context + tokens)  # the layer's whole cache after this step
    kv_bytes = stored_tokens * kv_bytes_per_token(model, dtype)
    x_bytes = stored_tokens * x_bytes_per_token(model, dtype)
    links = {}
    for name in sorted(profile.links):
        reg = cost.fitted.get(f"link.{name}")
        links[name] = {"kv_s": cost.transfer_s(name, kv_bytes), "x_s": cost.transfer_s(name, x_bytes),
                       "gb_per_s": profile.links[name].gb_per_s, "model": cost.source("link", name),
                       "cv_mape": reg["cv_mape"] if reg else None}
    return {
        "profile": {"name": profile.name, "kind": profile.kind, "hash": profile.profile_hash,
                    "device_type": profile.device_type, "device_name": profile.device_name},
        "model": model.name, "dtype": dtype, "tokens": tokens, "context": context, "batch": batch,
        "hardware": hardware_record(profile, dtype),
        "ops": ops,
        "layer_compute_s": sum(v["time_s"] for k, v in ops.items() if k not in ("recompute_kv", "cpu_attention")),
        "kv_bytes": kv_bytes, "x_bytes": x_bytes, "links": links,
    }


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.4f}"


def _err(mape: float | None) -> str:
    return "-" if mape is None else f"{mape * 100:.1f}%"


@click.command("predict")
@click.option("--profile", "profile_path", type=click.Path(dir_okay=False), default=None,
              help="A profile file (default: this machine's profile from 'kvplan profile').")
@click.option("--gpu", default=None, help="A datasheet GPU profile by name (see 'kvplan gpus').")
@click.option("--model", "model_name", required=True, help="Catalog model name or a config.json path.")
@click.option("--tokens", type=int, required=True, help="New tokens per sequence (1 = a decode step).")
@click.option("--context", type=int, default=0, show_default=True, help="Cached tokens per sequence.")
@click.option("--batch", type=int, default=1, show_default=True, help="Sequences.")
@click.option("--dtype", default=None, help="float16 | bfloat16 | float32 (default: the model's on a GPU, "
              "float32 on a CPU profile).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@hardware_options
def command(profile_path, gpu, model_name, tokens, context, batch, dtype, as_json, hardware) -> None:
    """Predicted time of each op of one layer, and of moving its KV and X over each link."""
    out = predict(profile_path, gpu, model_name, tokens, context, batch, dtype, hardware)
    if as_json:
        echo_json(out)
        return
    p = out["profile"]
    click.echo(f"{out['model']} on {p['name']} ({p['kind']}, {p['device_name']}), {out['dtype']}: "
               f"batch {batch}, {tokens} new token(s) per sequence after {context} cached; one layer")
    rows = [(name, f"{human_count(v['flops'])}FLOP", _ms(v["time_s"]), v["model"], _err(v["cv_mape"]))
            for name, v in out["ops"].items()]
    rows.append(("layer (excl. recompute, CPU attention)", "", _ms(out["layer_compute_s"]), "", ""))
    print_table("ops", ["op", "work", "ms", "model", "model error"], rows)
    rows = [(name, f"{v['gb_per_s']:.2f}", _ms(v["kv_s"]), _ms(v["x_s"]), v["model"], _err(v["cv_mape"]))
            for name, v in out["links"].items()]
    print_table(f"links: the layer's KV ({human_bytes(out['kv_bytes'])}) and X ({human_bytes(out['x_bytes'])}) "
                f"of {batch * (context + tokens):,} tokens",
                ["link", "GB/s", "KV ms", "X ms", "model", "model error"], rows)
    assumed = provenance_line(out["hardware"])
    if assumed:
        click.echo(assumed)
