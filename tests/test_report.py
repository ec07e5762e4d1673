"""`kvplan report`: grid parsing, the report folder, infeasible cells, bad grids, determinism across
the in-process and process-pool paths. Every sweep here runs the real planner (planner.search)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from planner.errors import KvplanError
from planner.report.options import parse_batches, parse_seqs

# A report frame read back from results.csv has one block per column: inserting a column into it
# (planner/report/frame.py once did) makes pandas warn, and the warning is an error here.
pytestmark = pytest.mark.filterwarnings("error::pandas.errors.PerformanceWarning")

# A small grid that still exercises feasible and infeasible cells: OPT-1.3B (MHA, so recompute can
# pay) on a T4 and an A100; the KV of batch 64 at 16k tokens does not fit a T4 resident.
SMALL = ("--models", "opt-1.3b", "--gpus", "t4,a100-40g-pcie", "--seqs", "2k,16k", "--batches", "64",
         "--strategies", "auto,resident,recompute", "--gen", "32")


def _report(run_cli, out: Path, *extra: str):
    return run_cli("report", *SMALL, *extra, "--jobs", "1", "-o", out)


@pytest.fixture(scope="module")
def small_report(tmp_path_factory):
    from click.testing import CliRunner

    from planner.cli import main

    out = tmp_path_factory.mktemp("report") / "out"
    result = CliRunner().invoke(
        main, ["report", *SMALL, "--price", "t4=0.35", "--jobs", "1", "-o", str(out)], catch_exceptions=False
    )
    return result, out


def test_parse_seqs_lists_ranges_and_suffixes():
    assert parse_seqs(["1024:32768:x2"]) == [1024, 2048, 4096, 8192, 16384, 32768]
    assert parse_seqs(["1k,4k,16k"]) == [1024, 4096, 16384]
    assert parse_seqs(["1k:4k:+1k", "4096"]) == [1024, 2048, 3072, 4096]
    assert parse_seqs(["3000:9000:x2"]) == [3000, 6000]
    assert parse_batches(["auto,8", "8,32"]) == [None, 8, 32]


@pytest.mark.parametrize("spec, message", [
    ("4k:1k:x2", "is empty"),
    ("1k:2k", "START:STOP:STEP"),
    ("1k:8k:x1", "x2, x4"),
    ("abc", "whole number"),
    ("1e23", r"whole number of tokens in \[1, 10,000,000\]"),
    ("1k:8k:+0", "step must be positive"),
])
def test_parse_seqs_rejects_bad_ranges(spec, message):
    with pytest.raises(KvplanError, match=message):
        parse_seqs([spec])


def test_report_folder_has_every_output(small_report):
    result, out = small_report
    assert result.exit_code == 0, result.output
    for name in ("results.csv", "report.html", "report.md", "config.json"):
        assert (out / name).is_file(), name
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert "strategies-opt-1-3b.png" in pngs and "fit.png" in pngs and "cost.png" in pngs
    assert "recompute-fraction.png" in pngs
    assert "best GPU" not in result.stderr
    assert "report:" in result.stdout and "Best GPU for each model and context" in result.stdout


def test_results_table_one_row_per_configuration_in_grid_order(small_report):
    _, out = small_report
    frame = pd.read_csv(out / "results.csv")
    assert len(frame) == 1 * 2 * 2 * 1 * 3
    order = list(zip(frame["gpu"], frame["seq"], frame["strategy_request"], strict=True))
    assert order[:3] == [("t4", 2048, "auto"), ("t4", 2048, "resident"), ("t4", 2048, "recompute")]
    assert order[-1] == ("a100-40g-pcie", 16384, "recompute")
    for col in ("decisions.split_tokens", "decisions.kv_placement.host", "decisions.attention_where",
                "prediction.decode_step_s", "prediction.throughput_tokens_per_s", "prediction.memory_bytes.device",
                "lower_bound.distance", "status", "reason", "cost_usd_per_mtok"):
        assert col in frame.columns, col
    assert not any(c.startswith("solver.") and c.endswith("_s") for c in frame.columns)
    if (out / "results.parquet").exists():
        assert len(pd.read_parquet(out / "results.parquet")) == len(frame)


def test_cost_per_million_tokens_uses_the_given_price(small_report):
    _, out = small_report
    frame = pd.read_csv(out / "results.csv")
    ok = frame[frame["status"] == "feasible"]
    t4 = ok[ok["gpu"] == "t4"].iloc[0]
    expected = 0.35 / 3600 / t4["prediction.throughput_tokens_per_s"] * 1e6
    assert math.isclose(t4["cost_usd_per_mtok"], expected, rel_tol=1e-9)
    assert ok[ok["gpu"] == "a100-40g-pcie"]["cost_usd_per_mtok"].isna().all()  # no price given for it


def test_infeasible_cells_are_kept_with_their_reason(small_report):
    _, out = small_report
    frame = pd.read_csv(out / "results.csv")
    bad = frame[(frame["gpu"] == "t4") & (frame["seq"] == 16384) & (frame["strategy_request"] == "resident")]
    assert list(bad["status"]) == ["infeasible"]
    reason = bad["reason"].iloc[0]
    assert "GB" in reason and "device memory" in reason
    page = (out / "report.html").read_text()
    assert "Infeasible configurations" in page and reason.split(" (")[0][:40] in page
    assert "Infeasible configurations" in (out / "report.md").read_text()


def test_html_is_self_contained_and_markdown_links_the_figures(small_report):
    _, out = small_report
    page = (out / "report.html").read_text()
    n_png = len(list((out / "figures").glob("*.png")))
    assert page.count('src="data:image/png;base64,') == n_png
    assert "<script" not in page and "http://" not in page and "https://" not in page
    md = (out / "report.md").read_text()
    for png in (out / "figures").glob("*.png"):
        assert f"(figures/{png.name})" in md
    assert "Best GPU for each model and context" in md


def test_config_records_command_and_grid(small_report):
    _, out = small_report
    config = json.loads((out / "config.json").read_text())
    assert config["grid"]["models"] == ["opt-1.3b"]
    assert [g["name"] for g in config["grid"]["gpus"]] == ["t4", "a100-40g-pcie"]
    assert config["grid"]["seqs"] == [2048, 16384] and config["grid"]["configurations"] == 12
    assert config["grid"]["prices_usd_per_hour"] == {"t4": 0.35}
    assert config["command"].startswith("kvplan report --models opt-1.3b --gpus t4,a100-40g-pcie")


def test_same_grid_same_bytes_in_process_and_on_the_process_pool(run_cli, tmp_path, small_report):
    _, first = small_report
    result = run_cli("report", *SMALL, "--price", "t4=0.35", "--jobs", "2", "-o", tmp_path / "pool")
    assert result.exit_code == 0, result.output
    assert "2 local processes" in result.stderr
    for name in ("results.csv", "report.md", "report.html", "figures/fit.png", "figures/strategies-opt-1-3b.png"):
        assert (tmp_path / "pool" / name).read_bytes() == (first / name).read_bytes(), name


def test_json_summary(run_cli, tmp_path):
    result = run_cli("report", "--models", "opt-125m", "--gpus", "t4", "--seqs", "1k", "--strategies", "auto",
                     "--json", "-o", tmp_path / "r")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["status_counts"] == {"feasible": 1}
    assert data["best_gpu"][0]["fastest GPU"] == "t4"
    assert "results.csv" in data["files"] and "report.html" in data["files"]


@pytest.mark.parametrize("args, message", [
    (["--models", "llama-99b", "--gpus", "t4", "--seqs", "1k"], "unknown model 'llama-99b'"),
    (["--models", "opt-125m", "--gpus", "t5", "--seqs", "1k"], "unknown GPU 't5'"),
    (["--models", "opt-125m", "--gpus", "t4", "--seqs", "8k:1k:x2"], "is empty"),
    (["--models", "opt-125m", "--gpus", "t4", "--seqs", "1k:8k"], "START:STOP:STEP"),
    (["--models", "opt-125m", "--gpus", "t4", "--seqs", "12q"], "is not a token count"),
    (["--models", "opt-125m", "--gpus", "t4", "--seqs", "1e23"], "--seqs: '1e23' must be a whole number"),
    (["--models", "opt-125m", "--gpus", "t4"], "--seqs is required"),
    (["--models", "", "--gpus", "t4", "--seqs", "1k"], "--models is empty"),
    (["--models", "opt-125m", "--seqs", "1k"], "--gpus is empty"),
    (["--models", "opt-125m", "--gpus", "t4", "--seqs", "100", "--gen", "128"], "not longer than --gen"),
    (["--models", "opt-125m", "--gpus", "t4", "--seqs", "1k", "--strategies", "magic"], "unknown strategy"),
    (["--models", "opt-125m", "--gpus", "t4", "--seqs", "1k", "--batches", "0"], "not a positive batch"),
    (["--models", "opt-125m", "--gpus", "t4", "--seqs", "1k", "--price", "l4=1"], "not one of the GPUs"),
    (["--models", "opt-125m", "--gpus", "t4", "--seqs", "1k", "--price", "t4=cheap"], "not a number"),
    (["--models", "opt-125m", "--gpus", "t4", "--seqs", "1k", "--price", "t4"], "GPU=USD_PER_HOUR"),
])
def test_bad_grids_are_one_line_errors(run_cli, tmp_path, args, message):
    result = run_cli("report", *args, "-o", tmp_path / "r")
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists()  # nothing solved, nothing written


def test_bad_run_record_is_a_one_line_error(run_cli, tmp_path, write_json):
    bad = write_json("run.json", {"plan": {}, "predicted": {"decode_step_s": 1.0}})
    result = run_cli("report", "--models", "opt-125m", "--gpus", "t4", "--seqs", "1k", "--runs", bad,
                     "-o", tmp_path / "r")
    assert result.exit_code == 2 and "no 'measured' numbers" in result.stderr


def test_no_feasible_configuration_is_an_error_but_the_reasons_are_written(run_cli, tmp_path):
    # Llama-2-70B's KV for 256 sequences of 32k tokens (~2.8 TB) fits no T4, even on disk.
    result = run_cli("report", "--models", "llama-2-70b", "--gpus", "t4", "--seqs", "32k", "--batches", "256",
                     "--strategies", "resident,transfer", "-o", tmp_path / "r")
    assert result.exit_code == 2, result.output
    last = result.stderr.splitlines()[-1]
    assert last.startswith("Error: no feasible configuration in the grid (2 tried)")
    assert result.stderr.count("Error:") == 1
    frame = pd.read_csv(tmp_path / "r" / "results.csv")
    assert (frame["status"] == "infeasible").all() and frame["reason"].str.len().min() > 10
    assert "none feasible" in (tmp_path / "r" / "report.html").read_text()


def test_latency_objective_picks_the_shortest_step(run_cli, tmp_path):
    result = run_cli("report", "--models", "opt-125m", "--gpus", "t4,h100-sxm", "--seqs", "4k", "--batches", "8",
                     "--strategies", "auto", "--objective", "latency", "--json", "-o", tmp_path / "r")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(tmp_path / "r" / "results.csv")
    assert set(frame["inputs.objective"]) == {"latency"}
    quickest = frame.loc[frame["prediction.decode_step_s"].idxmin(), "gpu"]
    assert json.loads(result.stdout)["best_gpu"][0]["fastest GPU"] == quickest
    assert "shortest predicted decode step" in (tmp_path / "r" / "report.md").read_text()


def test_a_planner_crash_is_an_error_row_not_a_lost_sweep(tmp_path):
    from planner.models import load_model
    from planner.report.execute import solve_chunk
    from planner.report.grid import Cell, Grid, SweepContext
    from planner.report.options import resolve_gpus
    from planner.report.write import write_report

    model, gpu = load_model("opt-125m"), resolve_gpus(["t4"])[0]
    # A model record the planner cannot even build stands in for a planner bug.
    context = SweepContext(models={model.name: model.to_dict(), "broken": {"name": "broken"}},
                           profiles={gpu.name: gpu.data})
    cells = [Cell(0, model.name, "t4", 1024, 32, 8, "throughput"), Cell(1, "broken", "t4", 1024, 32, 8, "throughput")]
    results = solve_chunk(context, cells)
    assert [r.status for r in results] == ["feasible", "error"]
    assert results[1].reason.startswith("internal error: TypeError")
    grid = Grid(models=(model,), gpus=(gpu,), seqs=(1024,), batches=(8,), gen=32, strategies=("auto",),
                objective="throughput")
    report = write_report(tmp_path / "r", grid, results, [])
    assert report.counts == {"error": 1, "feasible": 1}
    page = (tmp_path / "r" / "report.html").read_text()
    assert "internal planner error" in page and "internal error: TypeError" in page


def _llama_config(folder: Path, layers: int) -> Path:
    folder.mkdir(parents=True)
    path = folder / "config.json"
    path.write_text(json.dumps({
        "model_type": "llama", "hidden_size": 1024, "num_hidden_layers": layers, "num_attention_heads": 8,
        "num_key_value_heads": 8, "intermediate_size": 2816, "vocab_size": 32000, "torch_dtype": "float16",
    }))
    return path


def test_config_json_models_are_swept_and_name_clashes_refused(run_cli, tmp_path):
    mine = _llama_config(tmp_path / "a" / "my-llama", 4)
    other = _llama_config(tmp_path / "b" / "my-llama", 8)
    result = run_cli("report", "--models", mine, "--gpus", "t4", "--seqs", "1k", "--strategies", "auto",
                     "-o", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert list(pd.read_csv(tmp_path / "r" / "results.csv")["model"]) == ["my-llama"]
    clash = run_cli("report", "--models", f"{mine},{other}", "--gpus", "t4", "--seqs", "1k", "-o", tmp_path / "s")
    assert clash.exit_code == 2 and "two different models are both named 'my-llama'" in clash.stderr
