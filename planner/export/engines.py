"""An engine plan rendered as that engine's own options: FlexGen's flex_opt flags, vLLM's engine
arguments, Accelerate's max_memory / device_map. Each option's meaning is the engine's, from its
published source (named in docs/export.md and in tests/test_export.py)."""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass
from typing import Any

from planner.export.policy import EnginePlan, percent_split
from planner.layer_costs import layer_weight_bytes
from planner.models import DTYPE_BYTES, ModelConfig
from planner.placement import layer_counts
from planner.plan import Plan
from planner.profile import Profile
from planner.units import escape_name

GIB = 2**30
FLEXGEN_DEFAULT_OFFLOAD_DIR = "./flexgen_offload_dir"  # flex_opt.py's own default


@dataclass(frozen=True)
class Rendered:
    engine: str
    options: dict[str, Any]  # option name -> value, in the engine's spelling
    text: str  # a shell command (FlexGen, vLLM) or a Python snippet (Accelerate)
    notes: tuple[str, ...]


def hf_id(model: ModelConfig) -> str:
    """The Hugging Face repository a catalog model was read from; else the model's own name."""
    match = re.search(r"huggingface\.co/([^/]+/[^/]+)/", model.source or "")
    return match.group(1) if match else model.name


def _layers(plan: Plan, ep: EnginePlan) -> dict[str, int]:
    return layer_counts(ep.decisions.weight_placement, plan.model.num_layers)


def flexgen(plan: Plan, ep: EnginePlan, offload_dir: str | None) -> Rendered:
    d = ep.decisions
    w, c = percent_split(d.weight_placement), percent_split(d.kv_placement)
    act_gpu = 100 if d.activation_placement == "device" else 0  # FlexGen's last pair: activations GPU/CPU %
    options: dict[str, Any] = {
        "--model": hf_id(plan.model), "--prompt-len": plan.prompt, "--gen-len": plan.gen,
        "--gpu-batch-size": d.gpu_batch, "--num-gpu-batches": d.num_gpu_batches,
        "--percent": [w["device"], w["host"], c["device"], c["host"], act_gpu, 100 - act_gpu],
        "--offload-dir": offload_dir or FLEXGEN_DEFAULT_OFFLOAD_DIR,
    }
    if d.attention_where == "cpu":
        options["--cpu-cache-compute"] = True
    args = ["python", "-m", "flexgen.flex_opt"]
    for flag, value in options.items():
        if value is True:
            args.append(flag)
        elif isinstance(value, list):
            args += [flag, *(str(v) for v in value)]
        else:
            args += [flag, str(value)]
    notes = []
    if plan.model.family != "opt":
        notes.append(f"FlexGen's flex_opt runs OPT models only; {plan.model.name} ({plan.model.family}) needs a "
                     "FlexGen port of that family")
    if w["disk"] or c["disk"]:
        notes.append(f"the rest of each --percent pair is on disk: weights {w['disk']}%, K,V {c['disk']}%, under "
                     "--offload-dir")
    return Rendered("flexgen", options, shlex.join(args), tuple(notes))


def _ceil_to(value: float, step: float) -> float:
    return round(math.ceil(value / step - 1e-9) * step, 6)


def vllm(plan: Plan, ep: EnginePlan, profile: Profile) -> Rendered:
    d = ep.decisions
    layers = _layers(plan, ep)
    host_weight_bytes = layers["host"] * layer_weight_bytes(plan.model, d.dtype)
    device_bytes = ep.prediction["memory_bytes"]["device"]
    options: dict[str, Any] = {
        "--dtype": d.dtype, "--max-model-len": plan.seq, "--max-num-seqs": d.batch,
        "--gpu-memory-utilization": min(1.0, _ceil_to(device_bytes / profile.device_memory_bytes, 0.01)),
        "--cpu-offload-gb": _ceil_to(host_weight_bytes / GIB, 0.01),
        "--swap-space": 0,
    }
    args = ["vllm", "serve", hf_id(plan.model)]
    for flag, value in options.items():
        args += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    notes = ("--swap-space 0: vLLM's swap space only parks preempted sequences, and the planned batch fits in GPU "
             "memory; --gpu-memory-utilization is kvplan's predicted device memory over the GPU's",)
    return Rendered("vllm", options, shlex.join(args), notes)


def device_map(plan: Plan, ep: EnginePlan) -> dict[str, int | str]:
    """Transformers module names -> device (0, 'cpu' or 'disk'): embeddings, norm and head on GPU 0,
    the decoder layers in order as the plan places them."""
    layers = _layers(plan, ep)
    where = [0] * layers["device"] + ["cpu"] * layers["host"] + ["disk"] * layers["disk"]
    m = plan.model
    if m.family == "opt":
        head: dict[str, int | str] = {"model.decoder.embed_tokens": 0, "model.decoder.embed_positions": 0}
        tail: dict[str, int | str] = {"model.decoder.final_layer_norm": 0, "lm_head": 0}
        prefix = "model.decoder.layers"
    else:
        head = {"model.embed_tokens": 0}
        tail = {"model.norm": 0, "model.rotary_emb": 0, "lm_head": 0}
        prefix = "model.layers"
    return {**head, **{f"{prefix}.{i}": dev for i, dev in enumerate(where)}, **tail}


def max_memory(plan: Plan, ep: EnginePlan) -> dict[int | str, int]:
    """Bytes per device with which Accelerate's infer_auto_device_map places the plan's decoder layers
    where the plan does. It fills the devices in module order (the embeddings, then the layers) and
    keeps room on GPU 0 and on the CPU for the largest single module it may have to load there (a
    decoder layer, or the embedding / LM head matrix when that is larger). So: GPU 0 = the embeddings
    + the plan's device layers + that reserve + half a layer of slack; CPU = the host layers + the
    reserve + half a layer. (The explicit device_map also keeps the final norm and LM head on GPU 0.)"""
    m, dtype = plan.model, ep.decisions.dtype
    w = layer_weight_bytes(m, dtype)
    layers = _layers(plan, ep)
    matrix = m.vocab_size * m.hidden_size * DTYPE_BYTES[dtype]
    positions = (m.max_position_embeddings + 2) * m.hidden_size * DTYPE_BYTES[dtype] \
        if m.position_encoding == "learned" else 0  # OPT's learned positions, offset by 2
    reserve = max(w, matrix)
    return {0: matrix + positions + layers["device"] * w + reserve + w // 2,
            "cpu": layers["host"] * w + reserve + w // 2}


def accelerate(plan: Plan, ep: EnginePlan, offload_dir: str | None) -> Rendered:
    dmap, mem = device_map(plan, ep), max_memory(plan, ep)
    folder = offload_dir or "offload"
    options: dict[str, Any] = {"max_memory": mem, "device_map": dmap, "offload_folder": folder,
                               "torch_dtype": ep.decisions.dtype, "batch": ep.decisions.batch}
    lines = [
        f"# kvplan export: {escape_name(plan.model.name)} for Accelerate (Transformers device_map); batch "
        f"{ep.decisions.batch}, context {plan.seq}",
        "import torch",
        "from transformers import AutoModelForCausalLM",
        "",
        f"max_memory = {mem!r}  # bytes; kvplan's placement, for infer_auto_device_map",
        "device_map = {",
        *[f"    {k!r}: {v!r}," for k, v in dmap.items()],
        "}",
        "model = AutoModelForCausalLM.from_pretrained(",
        f"    {hf_id(plan.model)!r}, torch_dtype=torch.{ep.decisions.dtype}, device_map=device_map,",
        f"    offload_folder={folder!r},",
        ")",
        f"# generate with batches of {ep.decisions.batch} sequences of up to {plan.seq} tokens",
    ]
    notes = ("the JSON form writes max_memory's GPU key as \"0\": Accelerate wants the integer 0",)
    return Rendered("accelerate", options, "\n".join(lines) + "\n", notes)
