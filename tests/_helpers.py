"""Helpers tests share (imported as `_helpers`: pytest puts tests/ on the path): a plan object with
some fields changed, the decisions record of a tiny hand-made plan, the runtime's no-cache reference
logits and a teacher-forced run (torch is imported only by the last two)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from planner.plan import Decisions

if TYPE_CHECKING:
    import torch


def with_changes(obj: dict, changes: dict[str, Any], sep: str = ".") -> dict:
    """`obj` (changed in place and returned) with each `sep`-separated path set to its value, or
    deleted where the value is KeyError."""
    for dotted, value in changes.items():
        keys = dotted.split(sep)
        inner = obj
        for k in keys[:-1]:
            inner = inner[k]
        if value is KeyError:
            del inner[keys[-1]]
        else:
            inner[keys[-1]] = value
    return obj


def tiny_decisions(split: int, kv: dict, x: dict, weights: dict, *, ngb: int = 2, batch: int = 4,
                   attention: str = "device") -> Decisions:
    """float32 decisions for `batch` sequences in `ngb` GPU batches with the given placements."""
    return Decisions(strategy="mixed", dtype="float32", batch=batch, gpu_batch=batch // ngb, num_gpu_batches=ngb,
                     split_tokens=split, kv_placement=kv, x_placement=x, weight_placement=weights,
                     attention_where=attention)


def reference_logits(m, tok: torch.Tensor) -> torch.Tensor:
    """The runtime's no-cache reference over all of `tok`, with the random weights of seed 0 (fp32)."""
    import torch

    from runtime import model as M

    outer = M.random_outer_weights(m, 0, torch.float32)
    layers = [M.random_layer_weights(m, i, 0, torch.float32) for i in range(m.num_layers)]
    return M.reference_logits(m, outer, layers, tok)


def teacher_forced(ex, tok: torch.Tensor, prompt: int) -> torch.Tensor:
    """Prefill tok[:, :prompt] on the executor `ex`, then decode the rest of `tok` teacher-forced; closes
    `ex`. The logits after the prefill and each decode step: [batch, len - prompt + 1, vocab]."""
    import torch

    try:
        first = ex.prefill(tok[:, :prompt])
        outs = ex.decode(prompt, tok[:, prompt], tok.shape[1] - prompt, forced=tok[:, prompt + 1:], keep_logits=True)
    finally:
        ex.close()
    return torch.stack([first] + outs, dim=1)
