"""Where things live: the tier and resource names, the strategies, and the placement rules that the
planner, the evaluator and the runtime all follow (planner/plan.py states them for plan readers).

- K,V and X by position: X holds positions [0, split_tokens) (KVPR's X-cache, recomputed every
  step), K,V holds [split_tokens, seq); each range is cut into consecutive device, host, disk pieces
  in the proportions of `x_placement` / `kv_placement` (`position_spans`).
- Weights by layer: the first layers on the device, then host, then disk, by the same cut over the
  layer indices (`layer_counts`).
- Rounding: the MILP's continuous token fractions become whole tokens per piece (`whole_tokens`), and
  fractions written so that the position cut gives those counts back exactly (`token_fractions`).
"""

from __future__ import annotations

from dataclasses import dataclass

TIERS = ("device", "host", "disk")
# Busy resources of a decode step, per layer: the device's compute, the host CPU (attention when it is
# delegated), the two directions of the host link, and the drive's reads and writes (design.md §2).
RESOURCES = ("compute", "cpu", "h2d", "disk_read", "d2h", "disk_write")
# What a user may pin (`--strategy`), what a request may ask for, and the labels a plan's decisions carry.
PINNED_STRATEGIES = ("resident", "transfer", "recompute", "cpu-attention")
REQUEST_STRATEGIES = ("auto",) + PINNED_STRATEGIES
STRATEGIES = PINNED_STRATEGIES + ("mixed",)
ATTENTION_PLACES = ("device", "cpu")
# Where the hidden states between layers of the GPU batches not being computed live (FlexGen's
# activation placement; docs/planner.md, "Activations"); a request may also ask for "auto".
ACTIVATION_PLACES = ("device", "host")
ACTIVATION_CHOICES = ("auto",) + ACTIVATION_PLACES
# The MILP's variable suffix for each tier (planner/search/formulation.py: xd, xh, xk, kd, kh, kk).
TIER_INITIAL = {"device": "d", "host": "h", "disk": "k"}
PIECES = tuple(kind + TIER_INITIAL[t] for kind in ("x", "k") for t in TIERS)  # xd xh xk kd kh kk


def position_spans(lo: int, hi: int, fractions: dict[str, float]) -> dict[str, tuple[int, int]]:
    """Positions [lo, hi) cut into consecutive device, host, disk pieces in the given proportions:
    the piece of tier i ends at lo + round(cumulative fraction * n); the last tier takes the rest.
    Empty pieces are (stop, stop)."""
    n = hi - lo
    out, acc, start = {}, 0.0, lo
    for tier in TIERS:
        acc += fractions.get(tier, 0.0)
        stop = hi if tier == TIERS[-1] else lo + min(n, round(acc * n))
        stop = max(start, stop)
        out[tier] = (start, stop)
        start = stop
    return out


def layer_counts(weight_placement: dict[str, float], num_layers: int) -> dict[str, int]:
    """Whole layers per tier: the position cut over layer indices [0, num_layers)."""
    return {t: b - a for t, (a, b) in position_spans(0, num_layers, weight_placement).items()}


def layer_tiers(weight_placement: dict[str, float], num_layers: int) -> list[str]:
    """The tier of each layer index in order (device layers first, then host, then disk)."""
    return [t for t, n in layer_counts(weight_placement, num_layers).items() for _ in range(n)]


def whole_tokens(parts: dict[str, float], total: int) -> dict[str, int]:
    """Whole tokens per tier summing to `total`: device and host rounded down (never more memory than
    the MILP gave them, up to its rounding margin), the remainder to the last tier the MILP used."""
    counts = {t: 0 for t in TIERS}
    if total <= 0:
        return counts
    used = [t for t in TIERS if parts[t] > 1e-9] or ["device"]
    for t in TIERS[:-1]:
        if t != used[-1]:
            counts[t] = min(int(parts[t] + 1e-6), total - sum(counts.values()))
    counts[used[-1]] = total - sum(counts.values())
    return counts


def token_fractions(counts: dict[str, int], empty: str = "device") -> dict[str, float]:
    """Fractions from whole-token counts, rounded to 9 decimals so that `position_spans` gives back
    exactly these counts. An empty range gets all of its (zero) tokens on `empty`."""
    n = sum(counts.values())
    if n == 0:
        return {t: 1.0 if t == empty else 0.0 for t in TIERS}
    out = {t: round(counts[t] / n, 9) for t in TIERS}
    last = max((t for t in TIERS if counts[t] > 0), key=TIERS.index)
    out[last] = round(1.0 - sum(v for t, v in out.items() if t != last), 9)
    return out


def tier_fractions(parts: dict[str, float]) -> dict[str, float]:
    """Three tier fractions rounded to 6 decimals that sum to exactly 1 (device first if empty)."""
    total = sum(parts.values())
    if total <= 1e-12:
        return {"device": 1.0, "host": 0.0, "disk": 0.0}
    out = {t: round(max(0.0, v) / total, 6) for t, v in parts.items()}
    largest = max(out, key=lambda t: (out[t], t))
    out[largest] = round(1.0 - sum(v for t, v in out.items() if t != largest), 6)
    return out


def weight_fractions(layers: dict[str, int]) -> dict[str, float]:
    """`weight_placement` for whole layers per tier (which `layer_counts` gives back)."""
    n = sum(layers.values())
    return tier_fractions({t: round(layers[t] / n, 9) for t in TIERS})


def strategy_label(split: int, kv: dict[str, float], x: dict[str, float], where: str) -> str:
    """The strategy a set of decisions amounts to (docs/planner.md, the strategy table)."""
    if where == "cpu":
        return "cpu-attention"
    if split == 0 and kv["device"] == 1.0:
        return "resident"
    if split == 0 and kv["device"] == 0.0:
        return "transfer"
    if split > 0 and kv["device"] == 0.0 and x["device"] == 0.0:
        return "recompute"
    return "mixed"


def _overlap(span: tuple[int, int], lo: float, hi: float) -> float:
    return max(0.0, min(span[1], hi) - max(span[0], lo))


@dataclass(frozen=True)
class Layout:
    """Tokens per sequence of each piece (PIECES: "x"/"k" + tier initial), by position."""

    stored: dict[str, int]  # at seq (memory at peak)
    present: dict[str, float]  # at the average context (decode step)
    new_per_step: dict[str, float]  # where the decode steps' new tokens go, averaged over the steps
    prefill: dict[str, int]  # where the prompt's tokens go


def piece_spans(split_tokens: int, x_placement: dict[str, float], kv_placement: dict[str, float],
                seq: int) -> dict[str, tuple[int, int]]:
    """The positions each piece holds: X cut over [0, l), K,V over [l, seq)."""
    spans = {}
    for tier, span in position_spans(0, split_tokens, x_placement).items():
        spans["x" + TIER_INITIAL[tier]] = span
    for tier, span in position_spans(split_tokens, seq, kv_placement).items():
        spans["k" + TIER_INITIAL[tier]] = span
    return spans


def token_layout(split_tokens: int, x_placement: dict[str, float], kv_placement: dict[str, float], seq: int,
                 prompt: int, gen: int, context: int) -> Layout:
    """The runtime's layout: a decode step at `context` sees positions [0, context); step t writes
    position prompt + t; the prompt fills [0, prompt)."""
    spans = piece_spans(split_tokens, x_placement, kv_placement, seq)
    return Layout(
        stored={k: v[1] - v[0] for k, v in spans.items()},
        present={k: _overlap(v, 0, context) for k, v in spans.items()},
        new_per_step={k: _overlap(v, prompt, prompt + gen) / gen for k, v in spans.items()},
        prefill={k: int(_overlap(v, 0, prompt)) for k, v in spans.items()},
    )
