"""Model catalog and derived per-layer numbers, checked against values worked out by hand; the
Hugging Face config reader and the model record schema, checked with good and hostile inputs."""

import json
import math

import pytest

from planner import layer_costs as lc
from planner.errors import KvplanError
from planner.hf_config import config_name, from_hf_config
from planner.models import CATALOG, ModelRecord, load_model, model_from_record, record_fields


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


LLAMA = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "intermediate_size": 128, "vocab_size": 100}


def _with(**changes) -> dict:
    cfg = dict(LLAMA)
    for key, value in changes.items():
        if value is _DROP:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    return cfg


_DROP = object()


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"model_type": "mixtral", "num_local_experts": 8}, "mixture-of-experts models are not supported yet"),
        ({"model_type": "mixtral"}, "mixture-of-experts models are not supported yet (model_type 'mixtral')"),
        # MoE is said before any other problem of the file
        ({"model_type": "qwen3_moe", "num_experts": 128, "hidden_size": "bad"}, "not supported yet (num_experts"),
        (_with(num_local_experts=4, head_dim="128"), "mixture-of-experts"),
        ({"model_type": "gemma2"}, "model_type 'gemma2' is not supported: the runtime does not implement logit"),
        ({"model_type": "bert"}, "model_type 'bert' is not supported (supported: opt, llama"),
        ({"model_type": "lla\nma"}, "model_type 'lla\\nma' is not supported"),
        (_with(attn_logit_softcapping=50.0), "attn_logit_softcapping (logit soft-capping) is not implemented"),
        (_with(final_logit_softcapping=30.0), "final_logit_softcapping"),
        (_with(alibi=True), "alibi"),
        (_with(position_embedding_type="alibi"), "'alibi' position encoding is not implemented"),
        (_with(head_dim="128"), "model config field head_dim: Input should be a valid integer (got '128')"),
        (_with(hidden_size=64.0), "field hidden_size: Input should be a valid integer"),
        (_with(num_hidden_layers=12.5), "field num_hidden_layers"),
        (_with(hidden_size=-64), "field hidden_size: Input should be greater than 0"),
        (_with(vocab_size=10**9), "field vocab_size: Input should be less than or equal to 10000000"),
        (_with(num_attention_heads=_DROP), "field num_attention_heads: Field required"),
        (_with(intermediate_size=_DROP), "missing the field 'intermediate_size'"),
        (_with(num_key_value_heads=3), "num_heads 4 is not a multiple of num_kv_heads 3"),
        (_with(tie_word_embeddings="yes"), "field tie_word_embeddings: Input should be a valid boolean"),
        (_with(rms_norm_eps=0), "field rms_norm_eps: Input should be greater than 0"),
        (_with(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_scaling type 'yarn' is not implemented"),
        (_with(rope_scaling={"type": "dynamic", "factor": 2.0}), "rope_scaling type 'dynamic' is not implemented"),
        (_with(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}),
         "rope_scaling type 'llama3' needs original_max_position_embeddings"),
        (_with(rope_scaling={"rope_type": "linear", "factor": 0.5}), "field rope_scaling.factor"),
        (_with(hidden_act="xielu"), "activation 'xielu' is not implemented by the runtime"),
        (_with(model_type="phi3", partial_rotary_factor=0.5), "partial_rotary_factor 0.5"),
        (_with(model_type="qwen2", use_mrope=True), "use_mrope"),
        (_with(torch_dtype="int8"), "unsupported torch_dtype 'int8'"),
        ({"model_type": "opt", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 128,
          "vocab_size": 100, "do_layer_norm_before": False}, "do_layer_norm_before=false"),
        ({"model_type": "opt", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 128,
          "vocab_size": 100, "word_embed_proj_dim": 32}, "word_embed_proj_dim"),
        ({"model_type": "opt", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 5, "ffn_dim": 128,
          "vocab_size": 100}, "hidden_size 64 is not 5 heads x head_dim 12"),
        ({"model_type": "opt", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 128,
          "vocab_size": 100, "activation_function": "gelu_fast"}, "activation 'gelu_fast'"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_bad_hf_configs_are_one_line_errors(run_cli, write_json, cfg, message):
    path = write_json("config.json", cfg)
    result = run_cli("models", path)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1


def test_nan_in_a_config_names_the_field(run_cli, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(LLAMA)[:-1] + ', "rope_theta": NaN}')
    result = run_cli("models", path)
    assert result.exit_code == 2 and "field rope_theta: Input should be a finite number" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("kv", [None, _DROP])
def test_absent_or_null_kv_heads_mean_multi_head_attention(kv):
    m = from_hf_config(_with(num_key_value_heads=kv))
    assert m.num_kv_heads == m.num_heads == 4


def test_math_fields_from_both_transformers_spellings():
    v4 = from_hf_config(_with(rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}))
    v5 = from_hf_config(_with(rms_norm_eps=1e-5, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}))
    assert v4 == v5 and v4.norm_eps == 1e-5 and v4.rope_theta == 500000.0
    assert v4.rope_scaling.rope_type == "llama3" and v4.rope_scaling.factor == 8.0
    plain = from_hf_config(_with(rope_parameters={"rope_type": "default", "rope_theta": 20000.0}))
    assert plain.rope_scaling is None and plain.rope_theta == 20000.0
    # absent fields take the transformers config class's defaults
    assert from_hf_config(LLAMA).norm_eps == 1e-6 and from_hf_config(_with(model_type="phi3")).norm_eps == 1e-5
    assert from_hf_config(_with(model_type="qwen3")).head_dim == 128
    assert from_hf_config(_with(model_type="qwen3")).qk_norm


def test_sliding_windows_as_transformers_reads_them():
    assert from_hf_config(_with(model_type="mistral")).sliding_window == 4096  # MistralConfig's default
    assert from_hf_config(_with(model_type="mistral", sliding_window=None)).sliding_window is None
    assert from_hf_config(_with(model_type="qwen2", sliding_window=32768)).sliding_window is None  # flag off
    assert from_hf_config(_with(model_type="qwen2", sliding_window=512, use_sliding_window=True)).sliding_window == 512
    assert from_hf_config(_with(sliding_window=512)).sliding_window is None  # Llama has none


def test_config_path_names(tmp_path):
    hub = tmp_path / "hub" / "models--Qwen--Qwen3-8B" / "snapshots" / ("ab12" * 10)
    hub.mkdir(parents=True)
    (hub / "config.json").write_text(json.dumps(_with(model_type="qwen3")))
    assert load_model(str(hub)).name == "Qwen/Qwen3-8B"  # never the commit hash
    assert load_model(str(hub / "config.json")).name == "Qwen/Qwen3-8B"
    loose = tmp_path / "configs"
    loose.mkdir()
    (loose / "llama-tiny.json").write_text(json.dumps(LLAMA))
    assert load_model(str(loose / "llama-tiny.json")).name == "llama-tiny"  # not the parent folder "configs"
    named = loose / "ignored.json"
    named.write_text(json.dumps(_with(_name_or_path="meta-llama/Llama-2-7b-hf")))
    assert load_model(str(named)).name == "meta-llama/Llama-2-7b-hf"
    assert config_name(tmp_path / "x" / "config.json", "/home/u/models/my-llama/") == "my-llama"
    assert config_name(tmp_path / "my-model" / "config.json", None) == "my-model"
    assert config_name(tmp_path / ("cd34" * 10) / "config.json", None) == "custom"
    assert config_name(None, "evil\nname") == "evil\\nname"


# --- the model record in plans -----------------------------------------------------------------
def test_record_schema_names_every_field_and_round_trips_the_catalog():
    assert set(ModelRecord.model_fields) == record_fields()
    for m in CATALOG.values():
        assert model_from_record(json.loads(json.dumps(m.to_dict())), "catalog") == m
    old = CATALOG["llama-2-13b"].to_dict()
    del old["norm_eps"]  # a record written before norm_eps existed: the RMSNorm default
    assert model_from_record(old, "old plan").norm_eps == 1e-6
    assert "norm_eps" not in CATALOG["opt-13b"].to_dict()  # defaults are not written: old plans unchanged


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("hidden_size", "768", "model field hidden_size: Input should be a valid integer (got '768')"),
        ("hidden_size", 768.0, "model field hidden_size: Input should be a valid integer"),
        ("num_layers", 12.5, "model field num_layers"),
        ("name", 5, "model field name: Input should be a valid string"),
        ("family", "gemma", "model field family: Input should be 'opt', 'llama'"),
        ("position_encoding", "alibi", "model field position_encoding: Input should be 'learned' or 'rotary'"),
        ("activation", "gelu_fast", "model field activation"),
        ("rope_theta", math.nan, "model field rope_theta: Input should be a finite number"),
        ("sliding_window", 0, "model field sliding_window: Input should be greater than 0"),
        ("alibi_slopes", True, "model field alibi_slopes: Extra inputs are not permitted"),
        ("num_kv_heads", 5, "num_heads 12 is not a multiple of num_kv_heads 5"),
        ("rope_scaling", {"rope_type": "linear", "factor": 2.0}, "rope_scaling and qk_norm need rotary positions"),
    ],
)
def test_bad_model_records_are_one_line_errors(field, value, message):
    record = dict(CATALOG["opt-125m"].to_dict(), **{field: value})
    with pytest.raises(KvplanError) as err:
        model_from_record(record, "plan p.json")
    assert message in str(err.value) and "\n" not in str(err.value)


def _plan(record: dict, seq: int = 16) -> dict:
    return {"schema_version": 1, "model": record,
            "inputs": {"model": record["name"], "seq": seq, "prompt": seq // 2, "gen": seq // 2},
            "decisions": {"strategy": "resident", "dtype": "float32", "batch": 1, "gpu_batch": 1,
                          "num_gpu_batches": 1, "split_tokens": 0, "attention_where": "device",
                          **{k: {"device": 1.0, "host": 0.0, "disk": 0.0}
                             for k in ("kv_placement", "x_placement", "weight_placement")}}}


TINY_ROTARY = dict(CATALOG["mistral-7b"].to_dict(), name="tiny\x1bmistral", hidden_size=64, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=96, vocab_size=50)


@pytest.mark.parametrize(
    "record, message",
    [
        (dict(TINY_ROTARY, family="gemma"), "model field family"),
        (dict(TINY_ROTARY, position_encoding="alibi"), "model field position_encoding"),
        (dict(TINY_ROTARY, sliding_window=8), "sliding-window attention (window 8) is not implemented"),
    ],
)
def test_execute_refuses_what_the_runtime_cannot_run_before_allocating(run_cli, write_json, tmp_path, record,
                                                                       message, monkeypatch):
    def sized(*_):
        raise AssertionError("the run got as far as sizing its memory")

    monkeypatch.setattr("runtime.run.check_fits", sized)
    disk = tmp_path / "disk"
    disk.mkdir()
    result = run_cli("execute", write_json("plan.json", _plan(record)), "--disk-dir", disk, "--steps", "2")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "tiny\\x1bmistral" in result.stderr or "tiny" not in result.stderr  # the name, escaped
    assert not list(disk.iterdir())  # nothing was allocated there


def test_execute_runs_a_rotary_record_within_its_window(run_cli, write_json, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    result = run_cli("execute", write_json("plan.json", _plan(dict(TINY_ROTARY, sliding_window=16))),
                     "--disk-dir", disk, "--steps", "2")
    assert result.exit_code == 0, result.stderr


def test_models_command_prints_the_math_settings(run_cli):
    out = run_cli("models", "mistral-7b").stdout
    assert "rmsnorm eps 1e-05" in out and "sliding window 4096" in out and "RoPE theta 10000" in out
    opt = run_cli("models", "opt-13b").stdout
    assert "layernorm eps 1e-05, relu MLP, learned positions (2048), tied embeddings" in opt
