"""The runtime's decode path gives the logits of a plain forward pass, whatever the plan decides:
partial recompute at any split, K,V on disk / in RAM / mixed, several GPU batches, OPT and Llama (GQA)."""

from __future__ import annotations

import dataclasses
import json
import struct

import pytest
import torch
from _helpers import reference_logits, teacher_forced, tiny_decisions

from planner.models import CATALOG
from planner.plan import Decisions
from runtime import model as M
from runtime.executor import Executor, Setup

TINY_OPT = dataclasses.replace(
    CATALOG["opt-125m"], name="tiny-opt", hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=4, head_dim=16,
    intermediate_size=128, vocab_size=101, max_position_embeddings=64)
TINY_LLAMA = dataclasses.replace(  # GQA: 8 query heads share 2 K,V heads; RoPE; SwiGLU
    CATALOG["llama-3-8b"], name="tiny-llama", hidden_size=64, num_layers=2, num_heads=8, num_kv_heads=2, head_dim=8,
    intermediate_size=96, vocab_size=97, max_position_embeddings=64, rope_theta=10000.0)
TINY_QWEN = dataclasses.replace(TINY_LLAMA, name="tiny-qwen", family="qwen2", qkv_bias=True)

RAM = {"device": 1.0, "host": 0.0, "disk": 0.0}
DISK = {"device": 0.0, "host": 0.0, "disk": 1.0}
MIXED = {"device": 0.3, "host": 0.3, "disk": 0.4}
PROMPT, STEPS = 7, 5
SEQ = PROMPT + STEPS
ATOL = 2e-4  # fp32; the logits are of order 10


def tokens_for(m) -> torch.Tensor:
    return torch.randint(0, m.vocab_size, (4, SEQ), generator=torch.Generator().manual_seed(3))


def run_decode(m, dec: Decisions, tok: torch.Tensor, disk_dir, weights_dir=None) -> torch.Tensor:
    """Prefill the prompt, then decode STEPS tokens teacher-forced; logits [batch, STEPS + 1, vocab]."""
    got = teacher_forced(Executor(Setup(m, dec, SEQ, m.num_layers, disk_dir=disk_dir, weights_dir=weights_dir)),
                         tok, PROMPT)
    assert not list(disk_dir.glob("kvplan-*")), "the run left its disk files behind"
    return got


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    """Per model: tokens, the no-cache reference logits, and the resident and full-transfer runs."""
    out = {}
    disk = tmp_path_factory.mktemp("disk")
    for m in (TINY_OPT, TINY_LLAMA, TINY_QWEN):
        tok = tokens_for(m)
        resident = run_decode(m, tiny_decisions(0, RAM, RAM, RAM), tok, disk)  # all K,V in memory
        transfer = run_decode(m, tiny_decisions(0, DISK, DISK, RAM), tok, disk)  # all K,V streamed from disk
        out[m.name] = (tok, reference_logits(m, tok)[:, PROMPT - 1:], resident, transfer)
    return out


@pytest.mark.parametrize("m", [TINY_OPT, TINY_LLAMA, TINY_QWEN], ids=lambda m: m.name)
def test_resident_and_transfer_match_plain_forward(m, refs):
    _, ref, resident, transfer = refs[m.name]
    assert torch.allclose(resident, ref, atol=ATOL, rtol=0), (resident - ref).abs().max()
    assert torch.allclose(transfer, ref, atol=ATOL, rtol=0), (transfer - ref).abs().max()


@pytest.mark.parametrize("m", [TINY_OPT, TINY_LLAMA, TINY_QWEN], ids=lambda m: m.name)
@pytest.mark.parametrize("split", [0, 3, PROMPT, PROMPT + 2, SEQ])
def test_partial_recompute_matches_transfer_resident_and_reference(m, split, refs, tmp_path):
    tok, ref, resident, transfer = refs[m.name]
    for place in (RAM, DISK, MIXED):
        got = run_decode(m, tiny_decisions(split, place, place, RAM), tok, tmp_path)
        assert torch.allclose(got, resident, atol=ATOL, rtol=0), (split, place, (got - resident).abs().max())
        assert torch.allclose(got, transfer, atol=ATOL, rtol=0)
        assert torch.allclose(got, ref, atol=ATOL, rtol=0)


def test_weights_streamed_from_disk_and_one_gpu_batch(refs, tmp_path):
    tok, ref = refs[TINY_LLAMA.name][:2]
    got = run_decode(TINY_LLAMA, tiny_decisions(4, MIXED, DISK, DISK, ngb=1), tok, tmp_path)
    assert torch.allclose(got, ref, atol=ATOL, rtol=0)
    got = run_decode(TINY_OPT, tiny_decisions(5, DISK, MIXED, MIXED, ngb=4), tokens_for(TINY_OPT), tmp_path)
    assert torch.allclose(got, refs[TINY_OPT.name][1], atol=ATOL, rtol=0)


def test_greedy_decode_is_deterministic_and_single_layer_pipeline(tmp_path):
    """One layer: the next step's prefetch must wait for this step's write-back (no stale reads)."""
    m = dataclasses.replace(TINY_OPT, num_layers=1)
    tok = tokens_for(m)
    ref = reference_logits(m, tok)[:, PROMPT - 1:]
    for split in (0, 4, SEQ):
        got = run_decode(m, tiny_decisions(split, DISK, DISK, RAM), tok, tmp_path)
        assert torch.allclose(got, ref, atol=ATOL, rtol=0)


def test_rope_depends_only_on_relative_position():
    a = M.Arch.of(TINY_LLAMA)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 1, a.head_dim, generator=gen)
    k = torch.randn(1, 1, 1, a.head_dim, generator=gen)

    def score(pq: int, pk: int) -> float:
        return float((M.rope(a, q, torch.tensor([pq])) * M.rope(a, k, torch.tensor([pk]))).sum())

    assert score(5, 2) == pytest.approx(score(13, 10), rel=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 3), rel=1e-3)
    assert float(M.rope(a, q, torch.tensor([7])).norm()) == pytest.approx(float(q.norm()), rel=1e-6)


def _save_safetensors(path, tensors: dict[str, torch.Tensor]) -> None:
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        raw = t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


@pytest.mark.parametrize("m", [TINY_OPT, TINY_LLAMA], ids=lambda m: m.name)
def test_hugging_face_checkpoint_is_loaded(m, tmp_path):
    """A checkpoint in Hugging Face names (model.decoder.* / model.layers.*) gives the same logits as the
    same tensors built in memory."""
    outer = M.random_outer_weights(m, 5, torch.float32)
    layers = [M.random_layer_weights(m, i, 5, torch.float32) for i in range(m.num_layers)]
    hf = {}
    for i, w in enumerate(layers):
        w = dict(w)
        q, kvd = m.q_dim, m.kv_dim
        # Hugging Face keeps q_proj, k_proj and v_proj apart
        w["wq"], w["wk"], w["wv"] = w["wqkv"][:q], w["wqkv"][q:q + kvd], w["wqkv"][q + kvd:]
        if "bqkv" in w:
            w["bq"], w["bk"], w["bv"] = w["bqkv"][:q], w["bqkv"][q:q + kvd], w["bqkv"][q + kvd:]
        for ours, theirs in M._hf_layer_names(m, i).items():
            if ours in w:
                hf["model." + theirs] = w[ours]
    for ours, theirs in M._hf_outer_names(m).items():
        if ours in outer:
            hf["model." + theirs] = outer[ours]
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    _save_safetensors(ckpt / "model.safetensors", hf)
    tok = tokens_for(m)
    ref = M.reference_logits(m, outer, layers, tok)[:, PROMPT - 1:]
    got = run_decode(m, tiny_decisions(3, DISK, DISK, RAM), tok, tmp_path, weights_dir=ckpt)
    assert torch.allclose(got, ref, atol=ATOL, rtol=0)
