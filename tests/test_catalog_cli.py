"""`kvplan models` and `kvplan gpus` as a user runs them."""

import json
import re

import pytest

from planner.profile import datasheet_names, load_profile

REQUIRED_GPUS = {"t4", "l4", "a10g", "rtx-4090", "rtx-a6000", "a100-40g-pcie", "a100-80g-sxm", "h100-pcie",
                 "h100-sxm", "h200"}
REQUIRED_MODELS = {"opt-6.7b", "opt-13b", "opt-30b", "opt-66b", "opt-175b", "llama-2-7b", "llama-2-13b",
                   "llama-2-70b", "llama-3-8b", "llama-3-70b", "mistral-7b", "qwen2.5-7b", "qwen2.5-14b",
                   "qwen2.5-32b", "qwen2.5-72b"}


def test_models_table_and_json(run_cli):
    table = run_cli("models")
    assert table.exit_code == 0
    for name in REQUIRED_MODELS:
        assert name in table.stdout
    data = json.loads(run_cli("models", "--json").stdout)
    names = {m["name"] for m in data["models"]}
    assert REQUIRED_MODELS <= names
    assert data["aliases"]["llama-13b"] == "llama-2-13b"
    assert all(m["source"] for m in data["models"])


def test_models_show_one(run_cli):
    result = run_cli("models", "llama-13b", "--json")
    data = json.loads(result.stdout)
    assert data["per_layer"]["kv_bytes_per_token"] == 20480
    assert data["per_layer"]["recompute_saves_bytes"] is True
    text = run_cli("models", "llama-13b").stdout
    assert "KV per token per layer" in text and "20,480 B" in text


def test_gpus_catalog_complete_and_valid(run_cli):
    assert REQUIRED_GPUS <= set(datasheet_names())
    data = json.loads(run_cli("gpus", "--json").stdout)
    for prof in data["gpus"]:
        assert prof["kind"] == "datasheet"
        assert prof["sources"]["device"]
    a100 = load_profile(gpu="a100-40g-pcie")
    assert a100.device_memory_gb_per_s == 1555 and a100.device_peak_tflops["float16"] == 312
    assert a100.links["h2d"].gb_per_s == pytest.approx(25.0)
    assert "A100" in run_cli("gpus").stdout


@pytest.mark.parametrize("args, message", [
    (("gpus", "a100"), "unknown GPU 'a100'; did you mean"),
    (("models", "gpt-5"), "unknown model 'gpt-5'"),
    (("models", "opt-13b", "--batch", "-3"), "--batch must be between"),
])
def test_bad_names_exit_2(run_cli, args, message):
    result = run_cli(*args)
    assert result.exit_code == 2
    assert message in result.stderr


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ('{"schema_version": 1, "name": "x", "kind": "measured", "dev', "not valid JSON (truncated?)"),
    ('{"schema_version": 7}', "schema_version 7 is not supported"),
    ('{"schema_version": 1, "name": "x", "kind": "measured"}', "profile field device: Field required"),
])
def test_bad_profile_files(tmp_path, text, message):
    from planner.errors import KvplanError

    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(KvplanError, match=re.escape(message)):
        load_profile(path)


@pytest.mark.parametrize("typed,expected", [("a100", "a100-40g-pcie, a100-80g-sxm"), ("h100", "h100-pcie, h100-sxm"),
                                            ("rtx4090", "rtx-4090")])
def test_a_gpu_family_name_suggests_every_profile_of_it(run_cli, typed, expected):
    result = run_cli("solve", "--model", "opt-125m", "--seq", "1024", "--gpu", typed)
    assert result.exit_code == 2
    assert f"did you mean {expected}?" in result.output
