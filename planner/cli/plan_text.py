"""How a plan's numbers read in the console, written once for `solve`, `explain` and `export`: the
batch split, the tier split with its legend, and the gains with their sign convention.

Times and sizes go through planner.units (format_seconds, format_bytes), so a step over a second
reads '3.36 s', never '3.36e+03 ms'."""

from __future__ import annotations

from typing import Any

TIERS = ("device", "host", "disk")


def batch_word(cpu_only: bool) -> str:
    """FlexGen's 'GPU batch' is just a batch when the device is the CPU."""
    return "batch" if cpu_only else "GPU batch"


def batch_text(batch: int, gpu_batch: int, num_gpu_batches: int, cpu_only: bool) -> str:
    """'batch 64 = 4 GPU batches of 16' (one order everywhere: how many, then how big)."""
    word = batch_word(cpu_only)
    if num_gpu_batches == 1:
        return f"batch {batch} (one {word})"
    return f"batch {batch} = {num_gpu_batches} {word}es of {gpu_batch}"


def tier_text(fractions: dict[str, float]) -> str:
    """'100/0/0% (device/host/disk)': the legend travels with the numbers."""
    return "/".join(f"{100 * fractions[t]:.0f}" for t in TIERS) + "% (device/host/disk)"


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{round(value, 1) + 0.0:+.1f}%"  # + 0.0: no "-0.0%"


def gain_lines(prediction: dict[str, Any], indent: str) -> list[str]:
    """The predicted gains over the best pinned strategy and over transfer-only, one line each, with
    the plan JSON's own sign convention (gain_over_*: positive = better, for throughput and for the
    decode step alike)."""
    lines = []
    for key, label in (("gain_over_best_pinned", None), ("gain_over_transfer", "transfer (FlexGen-style)")):
        g = prediction.get(key)
        if g:
            lines.append(f"{indent}gain vs {label or 'best pinned (' + g['strategy'] + ')'}: throughput "
                         f"{pct(g['throughput_pct'])}, decode step {pct(g['decode_step_pct'])} (positive = better)")
    return lines
