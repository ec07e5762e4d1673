"""Model catalog and derived per-layer numbers, checked against values worked out by hand."""

import json

import pytest

from planner import layer_costs as lc
from planner.errors import KvplanError
from planner.models import CATALOG, load_model


def test_opt_13b_per_layer_numbers_by_hand():
    m = load_model("opt-13b")
    h, i = 5120, 20480
    # W_q,W_k,W_v,W_o: 4h^2; fc1, fc2: 2hi; biases: 3h (qkv) + h (o) + i (fc1) + h (fc2); 2 LayerNorms: 4h
    params = 4 * h * h + 2 * h * i + 3 * h + h + i + h + 4 * h
    assert params == 314_639_360
    assert lc.layer_weight_params(m) == params
    assert lc.layer_weight_bytes(m) == 2 * params
    assert lc.kv_bytes_per_token(m) == 2 * 5120 * 2 == 20_480
    assert lc.x_bytes_per_token(m) == 10_240
    assert lc.recompute_saves_bytes(m)
    b, s = 8, 1000
    f = lc.decode_flops(m, b, s)
    assert f["qkv_proj"] == 2 * b * h * 3 * h + b * 3 * h
    assert f["o_proj"] == 2 * b * h * h + b * h
    assert f["mlp_up"] == 2 * b * h * i + b * i
    assert f["mlp_down"] == 2 * b * i * h + b * h
    assert f["mlp_act"] == b * i
    # the new token attends to s cached tokens and itself: 4 * b * (s + 1) * h
    assert f["attention"] == 4 * b * (s + 1) * h
    assert lc.recompute_kv_flops(m, b, 300) == 4 * b * 300 * h * h + b * 300 * 2 * h


def test_llama_3_8b_gqa_numbers_by_hand():
    m = load_model("llama-3-8b")
    h, kv, i = 4096, 1024, 14336
    params = h * (h + 2 * kv) + h * h + 3 * h * i + 2 * h
    assert params == 218_112_000
    assert lc.layer_weight_params(m) == params
    assert lc.layer_weight_bytes(m) == 436_224_000
    assert lc.kv_bytes_per_token(m) == 4096
    assert lc.x_bytes_per_token(m) == 8192
    assert not lc.recompute_saves_bytes(m)  # X is twice the size of K,V for a group of 4
    f = lc.decode_flops(m, 1, 0)
    assert f["qkv_proj"] == 2 * h * (h + 2 * kv)
    assert f["mlp_up"] == 2 * h * 2 * i
    assert f["mlp_act"] == 2 * i
    assert f["attention"] == 4 * h
    assert lc.recompute_kv_flops(m, 2, 10) == 4 * 2 * 10 * h * kv
    # whole model: the published 8.03B parameters
    assert lc.total_params(m) == 8_030_261_248


def test_prefill_attention_is_causal():
    m = load_model("opt-125m")
    n = 7
    assert lc.prefill_flops(m, 1, n)["attention"] == 4 * 768 * n * (n + 1) // 2


def test_alias_and_published_sizes():
    assert load_model("llama-13b") == CATALOG["llama-2-13b"]
    assert lc.total_params(load_model("llama-2-7b")) == 6_738_415_616
    assert lc.total_params(load_model("opt-6.7b")) == pytest.approx(6.66e9, rel=0.01)


def test_unknown_model_suggests_close_names():
    with pytest.raises(KvplanError, match="did you mean.*llama-2-13b"):
        load_model("llama-2-13")


def test_hf_config_round_trip(tmp_path):
    cfg = {"model_type": "mistral", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 32000,
           "max_position_embeddings": 32768, "torch_dtype": "bfloat16", "rope_theta": 10000.0}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    m = load_model(str(path))
    ref = CATALOG["mistral-7b"]
    assert lc.layer_weight_params(m) == lc.layer_weight_params(ref)
    assert m.kv_dim == 1024 and m.position_encoding == "rotary"


def test_hf_opt_config(tmp_path):
    cfg = {"model_type": "opt", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
           "ffn_dim": 3072, "vocab_size": 50272, "max_position_embeddings": 2048, "torch_dtype": "float16",
           "word_embed_proj_dim": 768}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    assert lc.total_params(load_model(str(tmp_path))) == lc.total_params(CATALOG["opt-125m"])


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"model_type": "mixtral"}, "model_type 'mixtral' is not supported"),
        ({"model_type": "llama", "hidden_size": 64}, "missing the field 'num_attention_heads'"),
        ({"model_type": "llama", "hidden_size": -64, "num_hidden_layers": 2, "num_attention_heads": 2,
          "intermediate_size": 128, "vocab_size": 100}, "must be positive"),
        ({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 3, "intermediate_size": 128, "vocab_size": 100}, "not a multiple"),
        ({"model_type": "llama", "hidden_size": "64", "num_hidden_layers": 2, "num_attention_heads": 2,
          "intermediate_size": 128, "vocab_size": 100}, "must be an integer"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_bad_hf_configs_are_one_line_errors(run_cli, write_json, cfg, message):
    path = write_json("config.json", cfg)
    result = run_cli("models", path)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1
