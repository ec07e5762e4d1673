"""`kvplan predict`: the per-layer what-if query on datasheet and measured profiles."""

import json

import pytest

from planner.models import load_model

OPS = ["qkv_proj", "o_proj", "mlp_up", "mlp_act", "mlp_down", "other_ops", "attention", "recompute_kv"]


def test_predict_datasheet_json(run_cli):
    result = run_cli("predict", "--gpu", "a100-40g-pcie", "--model", "llama-2-13b", "--tokens", "1",
                     "--context", "4096", "--batch", "8", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert sorted(out["ops"]) == sorted([*OPS, "cpu_attention"])  # a GPU profile has a host CPU beside it
    assert out["dtype"] == "float16"  # the model's dtype on a GPU profile
    assert all(v["time_s"] > 0 and v["model"] == "roofline" for k, v in out["ops"].items() if k != "cpu_attention")
    assert out["ops"]["cpu_attention"]["model"] == "host rate (assumed)"
    model = load_model("llama-2-13b")
    tokens = 8 * (4096 + 1)
    assert out["kv_bytes"] == tokens * 2 * model.kv_dim * 2
    assert out["x_bytes"] == tokens * model.hidden_size * 2
    # MHA: X is half of K,V, so moving X is faster on every link
    assert all(v["x_s"] < v["kv_s"] for v in out["links"].values())
    # a decode step is bound by reading the cache: attention dominates the projections at this context
    assert out["ops"]["attention"]["time_s"] > out["ops"]["o_proj"]["time_s"]


def test_predict_table_names_every_op_and_link(run_cli):
    result = run_cli("predict", "--gpu", "t4", "--model", "opt-6.7b", "--tokens", "64")
    assert result.exit_code == 0
    for name in OPS + ["h2d", "d2h", "disk_read", "disk_write"]:
        assert name in result.stdout


def test_predict_measured_profile_uses_fitted_models(run_cli, local_profile_path):
    result = run_cli("predict", "--profile", local_profile_path, "--model", "opt-125m", "--tokens", "16",
                     "--context", "512", "--batch", "2", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["dtype"] == "float32" and out["profile"]["kind"] == "measured"
    for op in ("qkv_proj", "mlp_up", "attention", "recompute_kv", "mlp_act"):
        assert out["ops"][op]["model"].startswith("fitted:")
        assert out["ops"][op]["cv_mape"] is not None
    assert out["links"]["disk_read"]["model"].startswith("fitted:")


def test_predict_grows_with_tokens_beyond_the_probed_range(run_cli, local_profile_path):
    def layer(tokens):
        r = run_cli("predict", "--profile", local_profile_path, "--model", "llama-2-70b", "--tokens", tokens,
                    "--json")
        return json.loads(r.stdout)["ops"]

    small, big, bigger = layer(64), layer(2048), layer(8192)
    for op in ("qkv_proj", "mlp_up", "mlp_down", "recompute_kv"):
        assert small[op]["time_s"] < big[op]["time_s"] < bigger[op]["time_s"]


@pytest.mark.parametrize("args, message", [
    (["--gpu", "a100-40g-pcie", "--model", "nope-7b", "--tokens", "1"], "unknown model"),
    (["--gpu", "a99", "--model", "opt-6.7b", "--tokens", "1"], "unknown GPU"),
    (["--gpu", "t4", "--model", "opt-6.7b", "--tokens", "0"], "--tokens"),
    (["--gpu", "t4", "--model", "opt-6.7b", "--tokens", "1", "--batch", "0"], "--batch"),
    (["--gpu", "t4", "--model", "opt-6.7b", "--tokens", "1", "--context", "-5"], "--context"),
    (["--gpu", "t4", "--model", "opt-6.7b", "--tokens", "100000000", "--batch", "100000"], "absurdly"),
    (["--gpu", "t4", "--model", "opt-6.7b", "--tokens", "1", "--dtype", "int3"], "dtype"),
])
def test_predict_bad_input_is_one_line_error(run_cli, args, message):
    result = run_cli("predict", *args)
    assert result.exit_code == 2
    assert message in result.stderr and result.stderr.count("\n") == 1


def test_predict_bad_profile_files(run_cli, write_json, tmp_path):
    truncated = tmp_path / "t.json"
    truncated.write_text('{"schema_version": 1, "kind": "meas')
    result = run_cli("predict", "--profile", truncated, "--model", "opt-125m", "--tokens", "1")
    assert result.exit_code == 2 and "truncated" in result.stderr


def test_predict_without_profile_says_how_to_make_one(run_cli, monkeypatch):
    from planner.cli import predict_cmd

    monkeypatch.setattr(predict_cmd, "find_local_profile", lambda: None)
    result = run_cli("predict", "--model", "opt-125m", "--tokens", "1")
    assert result.exit_code == 2 and "kvplan profile" in result.stderr and "--gpu" in result.stderr


def test_predict_malformed_cost_model_is_one_line_error(run_cli, local_profile_path, write_json):
    data = json.loads(local_profile_path.read_text())
    data["cost_models"]["gemm.device.float32"]["kind"] = "forest"
    path = write_json("bad.json", data)
    result = run_cli("predict", "--profile", path, "--model", "opt-125m", "--tokens", "1")
    assert result.exit_code == 2 and "forest" in result.stderr and result.stderr.count("\n") == 1
