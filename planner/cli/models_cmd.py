"""`kvplan models`: the model catalog, and the derived per-layer numbers of one model."""

from __future__ import annotations

import click

from planner import layer_costs as lc
from planner.cli.output import echo_json, human_bytes, human_count, print_table
from planner.errors import KvplanError
from planner.models import ALIASES, CATALOG, ModelConfig, load_model
from planner.units import escape_name


@click.command("models")
@click.argument("model", required=False)
@click.option("--batch", type=int, default=1, show_default=True, help="Batch size for the FLOP counts.")
@click.option("--context", type=int, default=1024, show_default=True, help="Cached tokens for decode FLOPs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def command(model: str | None, batch: int, context: int, as_json: bool) -> None:
    """List built-in models, or show MODEL's derived per-layer numbers (name, alias or config.json)."""
    if batch < 1 or batch > 1_000_000:
        raise KvplanError(f"--batch must be between 1 and 1000000, got {batch}")
    if context < 0 or context > 100_000_000:
        raise KvplanError(f"--context must be between 0 and 100000000, got {context}")
    if model is None:
        _list(as_json)
    else:
        _show(model, batch, context, as_json)


def _list(as_json: bool) -> None:
    if as_json:
        echo_json({
            "models": [dict(m.to_dict(), total_params=lc.total_params(m)) for m in CATALOG.values()],
            "aliases": ALIASES,
        })
        return
    rows = [
        (m.name, m.family, m.num_layers, m.hidden_size, m.num_heads, m.num_kv_heads, m.head_dim,
         m.intermediate_size, "yes" if m.gated_mlp else "no", m.vocab_size, m.position_encoding, m.dtype,
         human_count(lc.total_params(m)))
        for m in CATALOG.values()
    ]
    print_table("Built-in models", ["model", "family", "layers", "hidden", "heads", "kv heads", "head dim",
                                    "mlp", "gated", "vocab", "positions", "dtype", "params"], rows)
    click.echo("Aliases: " + ", ".join(f"{a} -> {t}" for a, t in sorted(ALIASES.items())))


def _show(name: str, batch: int, context: int, as_json: bool) -> None:
    m = load_model(name)
    summary = lc.layer_summary(m, batch=batch, context=context)
    prefill = lc.prefill_flops(m, batch, context) if context > 0 else {}
    data = {
        "model": m.to_dict(),
        "batch": batch,
        "context": context,
        "per_layer": summary,
        "per_layer_prefill_flops": prefill,
        "total_params": lc.total_params(m),
        "total_weight_bytes": lc.total_params(m) * m.dtype_bytes,
        "kv_cache_bytes": m.num_layers * lc.kv_bytes_per_token(m) * batch * context,
    }
    if as_json:
        echo_json(data)
        return
    kind = "MHA" if m.num_kv_heads == m.num_heads else f"GQA (group {m.gqa_group})"
    click.echo(f"{escape_name(m.name)}: {m.family}, {m.num_layers} layers, {kind}, {m.dtype}; "
               f"source: {escape_name(m.source)}")
    click.echo(_math_line(m))
    rows = [
        ("weights per layer", f"{summary['weight_params']:,} params", human_bytes(summary["weight_bytes"])),
        ("KV per token per layer", f"{summary['kv_bytes_per_token']:,} B", "2 * h_kv * p"),
        ("X per token per layer", f"{summary['x_bytes_per_token']:,} B", "h * p"),
        ("recompute saves link bytes", "yes" if summary["recompute_saves_bytes"] else "no", "h < 2 * h_kv"),
        ("recompute K,V per token", f"{summary['recompute_kv_flops_per_token']:,} FLOP", "4 * h * h_kv"),
    ]
    print_table("Per layer", ["quantity", "value", "note"], rows)
    op_rows = [(op, f"{f:,}", f"{prefill.get(op, 0):,}" if prefill else "-")
               for op, f in summary["decode_flops"].items()]
    print_table(f"FLOPs per layer, batch {batch}: decode step at context {context}; prefill of {context} tokens",
                ["op", "decode FLOP", "prefill FLOP"], op_rows)
    click.echo(f"Whole model: {human_count(data['total_params'])} params, "
               f"{human_bytes(data['total_weight_bytes'])} of weights; KV cache at batch {batch}, "
               f"context {context}: {human_bytes(data['kv_cache_bytes'])}")


def _math_line(m: ModelConfig) -> str:
    """The settings that change the layer's math besides its sizes."""
    parts = [f"{m.norm} eps {m.norm_eps:g}", f"{m.activation} {'gated ' if m.gated_mlp else ''}MLP"]
    if m.position_encoding == "rotary":
        rope = f"RoPE theta {m.rope_theta:g}"
        if m.rope_scaling is not None:
            rope += f" ({m.rope_scaling.rope_type} scaling x{m.rope_scaling.factor:g})"
        parts.append(rope)
    else:
        parts.append(f"learned positions ({m.max_position_embeddings})")
    if m.q_dim != m.hidden_size:
        parts.append(f"head_dim {m.head_dim} (q width {m.q_dim} != hidden {m.hidden_size})")
    if m.qk_norm:
        parts.append("q/k norm per head")
    if m.sliding_window is not None:
        parts.append(f"sliding window {m.sliding_window} (the runtime refuses longer contexts)")
    parts.append("tied embeddings" if m.tie_word_embeddings else "separate LM head")
    return "math: " + ", ".join(parts)
