"""`kvplan export`: the exported options are the engines' own and add up to the plan's placement.

FlexGen and vLLM do not install here, so their options are checked against the argument definitions in
their published source, restated below as facts (names, types, units), not copied code:
- FlexGen: flexgen/flex_opt.py, `add_parser_arguments`, Relaxed-System-Lab/FlexGen at commit
  1646a652d45e900f9e3134ad665a918fb90b7c55 (FlexGen's original repository, FMInference/FlexGen, since
  renamed FlexLLMGen). `--percent` is six ints: weights GPU, weights CPU, cache GPU, cache CPU,
  activations GPU, activations CPU; the rest of each pair is on disk (Policy.w_disk_percent etc.).
- vLLM: vllm/engine/arg_utils.py, `EngineArgs.add_cli_args`, vllm-project/vllm at commit
  001999d2f360c2c5da23a916510c273b1a73d06c. `--swap-space` and `--cpu-offload-gb` are GiB (floats),
  `--gpu-memory-utilization` a fraction in (0, 1], `--max-num-seqs` and `--max-model-len` ints.
Accelerate is installed: its own `check_device_map` and `infer_auto_device_map` judge the Accelerate export.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import pytest

from planner.export import export_plan, profile_for_plan
from planner.layer_costs import layer_weight_bytes
from planner.placement import layer_counts
from planner.plan import load_plan

GIB = 2**30


def flexgen_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(exit_on_error=False)
    for flag in ("--model", "--path", "--offload-dir", "--log-file", "--debug-mode"):
        p.add_argument(flag, type=str)
    for flag in ("--prompt-len", "--gen-len", "--cut-gen-len", "--gpu-batch-size", "--num-gpu-batches", "--verbose"):
        p.add_argument(flag, type=int)
    p.add_argument("--percent", nargs="+", type=int)
    p.add_argument("--attn-sparsity", type=float)
    for flag in ("--cpu-cache-compute", "--compress-weight", "--compress-cache", "--no-log"):
        p.add_argument(flag, action="store_true")
    for flag in ("--sep-layer", "--pin-weight", "--overlap"):
        p.add_argument(flag, nargs="?")
    return p


def vllm_serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(exit_on_error=False)
    p.add_argument("model")
    p.add_argument("--dtype", choices=["auto", "half", "float16", "bfloat16", "float", "float32"])
    for flag in ("--max-model-len", "--max-num-seqs", "--max-num-batched-tokens"):
        p.add_argument(flag, type=int)
    for flag in ("--gpu-memory-utilization", "--cpu-offload-gb", "--swap-space"):
        p.add_argument(flag, type=float)
    return p


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    """Plans solved here, each pinned so that what it does is known: OPT-6.7B on an A100 pinned to
    recompute (part of the context recomputed from X), and OPT-6.7B at 8k on a T4 pinned to
    cpu-attention (K,V on the host, attention on the CPU, no recompute)."""
    from click.testing import CliRunner

    from planner.cli import main

    folder = tmp_path_factory.mktemp("plans")
    out = {}
    for name, args in {
        "recompute": ["--model", "opt-6.7b", "--seq", "1152", "--batch", "64", "--gpu", "a100-40g-pcie",
                      "--strategy", "recompute"],
        "t4": ["--model", "opt-6.7b", "--seq", "8192", "--gpu", "t4", "--strategy", "cpu-attention"],
    }.items():
        path = folder / f"{name}.json"
        result = CliRunner().invoke(main, ["solve", *args, "-o", str(path)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        out[name] = load_plan(path)
    return out


def _export(plan, engine, **kw):
    return export_plan(plan, profile_for_plan(plan), engine, **kw)


def test_flexgen_flags_parse_with_flex_opt_definitions_and_add_up_to_the_plan(plans):
    plan = plans["t4"]  # no recompute: FlexGen runs it as it is
    ex = _export(plan, "flexgen", offload_dir="/data/offload")
    args = shlex.split(ex.rendered.text)
    assert args[:3] == ["python", "-m", "flexgen.flex_opt"]
    ns = flexgen_parser().parse_args(args[3:])
    d = plan.decisions
    assert ns.gpu_batch_size * ns.num_gpu_batches == d.batch
    assert (ns.gpu_batch_size, ns.num_gpu_batches) == (d.gpu_batch, d.num_gpu_batches)
    assert len(ns.percent) == 6 and ns.percent[4:] == [100, 0]
    for (gpu, cpu), placement in ((ns.percent[0:2], d.weight_placement), (ns.percent[2:4], d.kv_placement)):
        assert 0 <= gpu + cpu <= 100
        assert abs(gpu - 100 * placement["device"]) <= 1 and abs(cpu - 100 * placement["host"]) <= 1
        assert abs((100 - gpu - cpu) - 100 * placement["disk"]) <= 1
    assert ns.cpu_cache_compute == (d.attention_where == "cpu") and ns.offload_dir == "/data/offload"
    assert (ns.prompt_len, ns.gen_len) == (plan.prompt, plan.gen) and ns.model == "facebook/opt-6.7b"
    assert not ex.engine_plan.solved_again and ex.engine_plan.lost.startswith("nothing")


def test_flexgen_cannot_recompute_and_says_what_that_costs(plans):
    plan = plans["recompute"]
    assert plan.decisions.split_tokens > 0
    ex = _export(plan, "flexgen")
    ep = ex.engine_plan
    assert ep.solved_again and ep.decisions.split_tokens == 0 and ep.decisions.strategy != "recompute"
    orig, new = ep.original["throughput_tokens_per_s"], ep.prediction["throughput_tokens_per_s"]
    assert ep.lost.startswith("FlexGen cannot recompute K,V from X")
    assert f"predicted {new:.3g} tok/s vs {orig:.3g} with kvplan's runtime" in ep.lost
    # the prediction is of the exported policy: the chosen baseline's numbers, as the plan recorded them
    base = plan.data["baselines"][ep.decisions.strategy]
    assert new == pytest.approx(base["throughput_tokens_per_s"], rel=0.02)


def test_vllm_flags_parse_with_engine_arg_definitions_and_memory_adds_up(plans):
    plan = plans["t4"]  # CPU attention, K,V on the host: vLLM can do neither
    ex = _export(plan, "vllm")
    args = shlex.split(ex.rendered.text)
    assert args[:2] == ["vllm", "serve"]
    ns = vllm_serve_parser().parse_args(args[2:])
    ep, profile = ex.engine_plan, profile_for_plan(plan)
    d = ep.decisions
    assert d.kv_placement["device"] == 1.0 and d.attention_where == "device" and d.weight_placement["disk"] == 0
    assert d.num_gpu_batches == 1 and d.gpu_batch == d.batch
    assert (ns.max_model_len, ns.max_num_seqs, ns.swap_space) == (plan.seq, d.batch, 0)
    host_layers = layer_counts(d.weight_placement, plan.model.num_layers)["host"]
    host_bytes = host_layers * layer_weight_bytes(plan.model, d.dtype)
    assert host_bytes <= ns.cpu_offload_gb * GIB < host_bytes + 0.01 * GIB
    device = ep.prediction["memory_bytes"]["device"]
    assert 0 < ns.gpu_memory_utilization <= 1
    total = profile.device_memory_bytes
    assert device <= ns.gpu_memory_utilization * total < device + 0.01 * total
    assert "vLLM has no CPU attention" in ep.lost and "GPU memory" in ep.lost


def _tiny_llama(folder: Path) -> Path:
    folder.mkdir(parents=True)
    config = {"model_type": "llama", "hidden_size": 1024, "num_hidden_layers": 8, "num_attention_heads": 8,
              "num_key_value_heads": 8, "intermediate_size": 2816, "vocab_size": 32000, "torch_dtype": "float16",
              "max_position_embeddings": 2048}
    (folder / "config.json").write_text(json.dumps(config))
    return folder / "config.json"


def test_accelerate_device_map_and_max_memory_through_accelerates_own_api(run_cli, tmp_path):
    torch = pytest.importorskip("torch")
    accelerate = pytest.importorskip("accelerate")
    from accelerate.utils import check_device_map
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = _tiny_llama(tmp_path / "tiny-llama")
    # Caps that put the tiny model's layers on all three tiers.
    solved = run_cli("solve", "--model", config, "--seq", "256", "--gen", "32", "--batch", "1", "--gpu",
                     "a100-40g-pcie", "--gpu-mem", "0.3GB", "--cpu-mem", "0.08GB", "--strategy", "resident",
                     "-o", tmp_path / "plan.json")
    assert solved.exit_code == 0, solved.output
    plan = load_plan(tmp_path / "plan.json")
    ex = _export(plan, "accelerate", offload_dir=str(tmp_path / "off"))
    dmap, mem = ex.rendered.options["device_map"], ex.rendered.options["max_memory"]
    layers = layer_counts(ex.engine_plan.decisions.weight_placement, plan.model.num_layers)
    assert all(layers[t] > 0 for t in ("device", "host", "disk"))
    with accelerate.init_empty_weights():
        model = AutoModelForCausalLM.from_config(LlamaConfig(**json.loads(config.read_text())),
                                                 dtype=torch.float16)
    check_device_map(model, dmap)  # Accelerate's own check: every parameter has a device
    placed = accelerate.infer_auto_device_map(model, max_memory=mem, no_split_module_classes=["LlamaDecoderLayer"],
                                              dtype=torch.float16)

    def per_device(mapping):
        return {dev: sum(1 for k, v in mapping.items() if k.startswith("model.layers.") and v == dev)
                for dev in (0, "cpu", "disk")}

    expected = {0: layers["device"], "cpu": layers["host"], "disk": layers["disk"]}
    assert per_device(placed) == per_device(dmap) == expected
    snippet = ex.rendered.text
    compile(snippet, "<export>", "exec")
    assert f"offload_folder={str(tmp_path / 'off')!r}" in snippet and "device_map=device_map" in snippet


def test_export_cli_writes_atomically_and_refuses_to_overwrite_its_input(run_cli, plans, tmp_path):
    plan_path = tmp_path / "p.json"
    plan_path.write_text(json.dumps(plans["t4"].data))
    out = tmp_path / "flexgen.sh"
    result = run_cli("export", plan_path, "--to", "flexgen", "-o", out)
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("python -m flexgen.flex_opt ") and "lost: nothing" in result.stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    as_json = run_cli("export", plan_path, "--to", "vllm", "--json")
    data = json.loads(as_json.stdout)
    assert data["engine"] == "vllm" and data["options"]["--max-model-len"] == plans["t4"].seq
    assert data["predicted"]["throughput_tokens_per_s"] < data["plan_predicted"]["throughput_tokens_per_s"]
    before = plan_path.read_bytes()
    refused = run_cli("export", plan_path, "--to", "vllm", "-o", plan_path)
    assert refused.exit_code == 2 and "is an input of this command" in refused.stderr
    assert plan_path.read_bytes() == before


def test_export_refuses_another_profile_and_warns_of_a_revised_one(run_cli, plans, tmp_path):
    plan_path = tmp_path / "p.json"
    plan_path.write_text(json.dumps(plans["t4"].data))
    result = run_cli("export", plan_path, "--to", "flexgen", "--gpu", "l4")
    assert result.exit_code == 2 and "is not the one the plan was solved with" in result.stderr
    revised = dict(plans["t4"].data, hardware=dict(plans["t4"].data["hardware"], profile_hash="0123456789abcdef"))
    plan_path.write_text(json.dumps(revised))
    result = run_cli("export", plan_path, "--to", "flexgen")
    assert result.exit_code == 0 and "has changed since the plan was solved (hash 0123456789abcdef" in result.stderr


def test_a_cpu_only_plan_is_refused_in_one_line(run_cli, tmp_path, local_profile_path):
    plan_path = tmp_path / "cpu.json"
    solved = run_cli("solve", "--model", "opt-125m", "--seq", "512", "--batch", "2", "--profile", local_profile_path,
                     "-o", plan_path)
    assert solved.exit_code == 0, solved.output
    result = run_cli("export", plan_path, "--to", "accelerate", "--profile", local_profile_path)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "the plan is for a CPU-only profile" in result.stderr
