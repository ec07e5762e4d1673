"""An outside oracle for the runtime's logits: Hugging Face transformers' own implementation.

For each supported family a tiny model is built in transformers from a config (random weights,
seeded, fp32), saved with `save_pretrained` (safetensors) and read back through kvplan's real
loading path: the config reader (planner.models.load_model -> planner/hf_config.py) and the
checkpoint reader (runtime.model.Checkpoint, used by the executor). The runtime's logits after the
prefill and after each teacher-forced decode step must match transformers' full forward pass within
1e-4 for every kind of placement: resident, transfer, recompute at several splits, K,V/X/weights on
the disk tier and on the host tier, one and several GPU batches.

The configs set the fields that change the math to values where a mistake shows: a large norm
epsilon (1e-2), a non-default rope_theta, llama3 RoPE scaling whose three frequency bands all occur
at head_dim 16 (wavelengths 6.3, 20, 63, ... against bands at 8 and 32), explicit head_dims that
are not hidden/heads, q/k norms, tied embeddings.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from _helpers import teacher_forced, tiny_decisions  # noqa: E402

from planner import layer_costs as lc  # noqa: E402
from planner.errors import KvplanError  # noqa: E402
from planner.models import load_model  # noqa: E402
from planner.plan import Decisions  # noqa: E402
from runtime.executor import Executor, Setup  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT, STEPS = 7, 5
SEQ = PROMPT + STEPS
BATCH = 4
TOL = 1e-4  # max |logit difference|, fp32
RAM = {"device": 1.0, "host": 0.0, "disk": 0.0}
HOST = {"device": 0.0, "host": 1.0, "disk": 0.0}
DISK = {"device": 0.0, "host": 0.0, "disk": 1.0}
MIXED = {"device": 0.3, "host": 0.3, "disk": 0.4}

COMMON = dict(hidden_size=64, num_hidden_layers=2, vocab_size=101, max_position_embeddings=64)
ROTARY = dict(COMMON, intermediate_size=96, rms_norm_eps=1e-2)

# family -> (transformers config class, its arguments)
FAMILIES = {
    "opt": ("OPTConfig", dict(COMMON, ffn_dim=128, num_attention_heads=4, word_embed_proj_dim=64,
                              do_layer_norm_before=True, enable_bias=True)),
    "llama-2": ("LlamaConfig", dict(ROTARY, num_attention_heads=4, num_key_value_heads=4, rope_theta=10000.0)),
    "llama-3": ("LlamaConfig", dict(ROTARY, num_attention_heads=8, num_key_value_heads=2, head_dim=16,
                                    rope_theta=10000.0,
                                    rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0,
                                                  "original_max_position_embeddings": 32})),
    "tinyllama": ("LlamaConfig", dict(ROTARY, num_attention_heads=8, num_key_value_heads=1, rope_theta=500.0)),
    "mistral": ("MistralConfig", dict(ROTARY, num_attention_heads=8, num_key_value_heads=2, rope_theta=1000.0,
                                      sliding_window=32)),
    "qwen2": ("Qwen2Config", dict(ROTARY, num_attention_heads=4, num_key_value_heads=2, rope_theta=100000.0)),
    "qwen3": ("Qwen3Config", dict(ROTARY, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                  rope_theta=100000.0, tie_word_embeddings=True)),
    "phi3": ("Phi3Config", dict(ROTARY, num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
                                pad_token_id=0)),
}

# (label, split_tokens, kv placement, x placement, weight placement, GPU batches)
PLACEMENTS = [
    ("resident", 0, RAM, RAM, RAM, 2),
    ("transfer", 0, DISK, DISK, RAM, 2),
    ("recompute-3", 3, MIXED, DISK, RAM, 2),
    ("recompute-prompt", PROMPT, MIXED, MIXED, RAM, 4),
    ("recompute-all", SEQ, RAM, DISK, RAM, 2),
    ("disk-weights", 4, DISK, MIXED, DISK, 1),
    ("host-tier", 2, HOST, HOST, HOST, 2),
]


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights far from transformers' small init, so attention is far from uniform and every
    term of the math moves the logits: matrices with unit-variance outputs, norm gains near 1,
    biases of 0.1, embeddings of 0.5."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif p.dim() == 1:
                p.copy_(0.1 * noise)
            elif "embed" in name:
                p.copy_(0.5 * noise)
            else:
                p.copy_(noise / math.sqrt(p.shape[-1]))


def build(family: str, folder, seed: int = 0):
    """A tiny transformers model of `family` saved to `folder`; returns the model (eval, fp32)."""
    cls_name, kwargs = FAMILIES[family]
    config = getattr(transformers, cls_name)(**kwargs, attn_implementation="eager")
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    _randomize(model, seed)
    model.save_pretrained(folder, safe_serialization=True)
    return model


def run(m, folder, dec: Decisions, tokens: torch.Tensor, disk_dir) -> torch.Tensor:
    """kvplan's runtime on the saved checkpoint: logits after the prefill and each decode step."""
    return teacher_forced(Executor(Setup(m, dec, SEQ, m.num_layers, disk_dir=disk_dir, weights_dir=folder)),
                          tokens, PROMPT)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_runtime_matches_transformers(family, tmp_path):
    folder = tmp_path / family
    hf = build(family, folder)
    m = load_model(str(folder))  # the real config reader
    # the planner's parameter count (weights bytes, memory) against the model's own
    assert lc.total_params(m) == sum(p.numel() for p in hf.parameters())
    tokens = torch.randint(0, m.vocab_size, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(input_ids=tokens).logits[:, PROMPT - 1:]
    assert ref.std() > 0.5  # logits that carry signal, not a near-uniform output
    disk = tmp_path / "disk"
    disk.mkdir()
    for label, split, kv, x, w, ngb in PLACEMENTS:
        got = run(m, folder, tiny_decisions(split, kv, x, w, ngb=ngb, batch=BATCH), tokens, disk)
        delta = float((got - ref).abs().max())
        assert delta <= TOL, f"{family} {label}: max |logit difference| {delta:.3g}"
    assert not list(disk.iterdir()), "the runs left disk files behind"


def test_config_reader_reads_what_transformers_wrote(tmp_path):
    """The fields that change the math, as the saved config.json (transformers 5 spelling) gives them."""
    build("llama-3", tmp_path / "l3")
    m = load_model(str(tmp_path / "l3"))
    assert (m.norm_eps, m.rope_theta, m.num_kv_heads, m.dtype) == (1e-2, 10000.0, 2, "float32")
    assert m.rope_scaling is not None and m.rope_scaling.rope_type == "llama3"
    assert (m.rope_scaling.factor, m.rope_scaling.original_max_position_embeddings) == (4.0, 32)
    build("qwen3", tmp_path / "q3")
    q3 = load_model(str(tmp_path / "q3"))
    assert (q3.head_dim, q3.q_dim, q3.qk_norm, q3.tie_word_embeddings) == (32, 128, True, True)
    build("mistral", tmp_path / "mi")
    assert load_model(str(tmp_path / "mi")).sliding_window == 32


def test_sliding_window_shorter_than_the_context_is_refused_before_allocating(tmp_path):
    FAMILIES["mistral-short"] = ("MistralConfig", dict(FAMILIES["mistral"][1], sliding_window=SEQ - 1))
    try:
        build("mistral-short", tmp_path / "ms")
    finally:
        del FAMILIES["mistral-short"]
    m = load_model(str(tmp_path / "ms"))
    disk = tmp_path / "disk"
    disk.mkdir()
    with pytest.raises(KvplanError, match="sliding-window attention .window 11. is not implemented"):
        Executor(Setup(m, tiny_decisions(0, DISK, DISK, DISK, batch=BATCH), SEQ, m.num_layers, disk_dir=disk,
                       weights_dir=tmp_path / "ms"))
    assert not list(disk.iterdir())


def test_sharded_checkpoint_through_its_index(tmp_path):
    """A checkpoint cut into shards (model.safetensors.index.json) gives the same logits."""
    folder = tmp_path / "sharded"
    cls_name, kwargs = FAMILIES["qwen2"]
    config = getattr(transformers, cls_name)(**kwargs, attn_implementation="eager")
    hf = transformers.AutoModelForCausalLM.from_config(config).eval()
    _randomize(hf, 3)
    hf.save_pretrained(folder, safe_serialization=True, max_shard_size="20KB")
    assert (folder / "model.safetensors.index.json").exists() and len(list(folder.glob("*.safetensors"))) > 2
    m = load_model(str(folder))
    tokens = torch.randint(0, m.vocab_size, (BATCH, SEQ), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(input_ids=tokens).logits[:, PROMPT - 1:]
    disk = tmp_path / "disk"
    disk.mkdir()
    got = run(m, folder, tiny_decisions(3, MIXED, MIXED, MIXED, batch=BATCH), tokens, disk)
    assert float((got - ref).abs().max()) <= TOL


def test_checkpoint_reads_one_tensor_at_a_time(tmp_path, monkeypatch):
    """Opening a checkpoint reads no tensor data; a layer reads exactly that layer's tensors."""
    from runtime import model as M

    build("llama-2", tmp_path / "l2")
    m = load_model(str(tmp_path / "l2"))
    read: list[str] = []
    real = M.safe_open

    class Counting:
        def __init__(self, *args, **kwargs):
            self.f = real(*args, **kwargs)

        def __enter__(self):
            self.f.__enter__()
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def keys(self):
            return self.f.keys()

        def get_slice(self, name):
            return self.f.get_slice(name)

        def get_tensor(self, name):
            read.append(name)
            return self.f.get_tensor(name)

    monkeypatch.setattr(M, "safe_open", Counting)
    ckpt = M.Checkpoint(tmp_path / "l2", m)
    assert read == []
    ckpt.layer(1, torch.float32)
    assert read and all(name.startswith("model.layers.1.") for name in read)
    assert len(read) == len(set(read)) == 9  # 2 norms, q, k, v, o, gate, up, down


def test_broken_checkpoints_are_one_line_errors(tmp_path):
    from runtime import model as M

    build("qwen2", tmp_path / "q")
    m = load_model(str(tmp_path / "q"))
    wider = dataclasses.replace(m, intermediate_size=m.intermediate_size + 2)
    with pytest.raises(KvplanError, match=r"'model.layers.0.mlp.gate_proj.weight' has shape \(96, 64\), the model "
                                          r"needs \(98, 64\)"):
        M.Checkpoint(tmp_path / "q", wider).layer(0, torch.float32)
    (tmp_path / "q" / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(KvplanError, match="is not a readable safetensors file") as err:
        M.Checkpoint(tmp_path / "q", m)
    assert "\n" not in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KvplanError, match="no \\*.safetensors files"):
        M.Checkpoint(empty, m)
