"""Numbers nobody misreads: one time format, gains with the JSON's sign, the tier legend, the batch split in
one order ('batch' on a CPU-only profile), the report's figures and tables on one footing, an 80-column
console table, progress lines on a pipe, and --models/--gpus all."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from planner.cli.plan_text import batch_text, gain_lines, tier_text
from planner.models import CATALOG
from planner.profile import datasheet_names
from planner.report.options import resolve_gpus, resolve_models

# A report frame read back from results.csv has one block per column: inserting a column into it
# (planner/report/frame.py once did) makes pandas warn, and the warning is an error here.
pytestmark = pytest.mark.filterwarnings("error::pandas.errors.PerformanceWarning")


def test_batch_split_reads_count_then_size_and_says_batch_on_a_cpu():
    assert batch_text(64, 16, 4, cpu_only=False) == "batch 64 = 4 GPU batches of 16"
    assert batch_text(2, 1, 2, cpu_only=True) == "batch 2 = 2 batches of 1"
    assert batch_text(8, 8, 1, cpu_only=True) == "batch 8 (one batch)"


def test_tier_split_carries_its_legend():
    assert tier_text({"device": 1.0, "host": 0.0, "disk": 0.0}) == "100/0/0% (device/host/disk)"


def test_gains_print_with_the_sign_of_the_plan_json():
    prediction = {"gain_over_best_pinned": {"strategy": "transfer", "throughput_pct": 12.04, "decode_step_pct": -7.96}}
    (line,) = gain_lines(prediction, "")
    assert line == "gain vs best pinned (transfer): throughput +12.0%, decode step -8.0% (positive = better)"


def test_solve_and_explain_print_long_steps_in_seconds_and_json_signs(run_cli, tmp_path):
    plan_path = tmp_path / "p.json"
    # OPT-6.7B at 8k on a T4, 32 sequences with attention on the CPU: the decode step takes seconds.
    solved = run_cli("solve", "--model", "opt-6.7b", "--seq", "8192", "--gpu", "t4", "--batch", "32",
                     "--strategy", "cpu-attention", "-o", plan_path)
    assert solved.exit_code == 0, solved.output
    plan = json.loads(plan_path.read_text())
    step_s = plan["prediction"]["decode_step_s"]
    assert step_s > 1.0
    explained = run_cli("explain", plan_path)
    for out in (solved.stdout, explained.stdout):
        assert "e+" not in out
        assert f"{step_s:.3g} s" in out
        gain = plan["prediction"]["gain_over_transfer"]
        assert f"throughput {gain['throughput_pct']:+.1f}%, decode step {gain['decode_step_pct']:+.1f}%" in out
    d = plan["decisions"]
    split = f"= {d['num_gpu_batches']} GPU batches of {d['gpu_batch']}" if d["num_gpu_batches"] > 1 \
        else "(one GPU batch)"
    assert f"batch {d['batch']} {split}" in solved.stdout
    kv = "/".join(f"{100 * d['kv_placement'][t]:.0f}" for t in ("device", "host", "disk"))
    assert f"K,V {kv}% (device/host/disk)" in solved.stdout


def test_explain_says_batch_not_gpu_batch_on_a_cpu_only_profile(run_cli, tmp_path, local_profile_path):
    plan_path = tmp_path / "p.json"
    solved = run_cli("solve", "--model", "opt-125m", "--seq", "1024", "--batch", "4", "--profile", local_profile_path,
                     "-o", plan_path)
    assert solved.exit_code == 0, solved.output
    explained = run_cli("explain", plan_path)
    assert "GPU batch" not in solved.stdout + explained.stdout
    assert re.search(r"batch 4 (= \d+ batches of \d+|\(one batch\))", explained.stdout)


def test_a_log_axis_accepts_numpy_integers():
    from planner.report.figures import _log_y

    ax = Figure().subplots()
    ax.plot(np.array([1024, 2048]), np.array([64, 16], dtype=np.int64))
    _log_y(ax)
    assert ax.get_yscale() == "log" and not ax.texts


def _report(run_cli, out, *args):
    result = run_cli("report", *args, "--jobs", "1", "-o", out)
    assert result.exit_code == 0, result.output
    return result


def test_strategy_points_are_labelled_with_their_batch(run_cli, tmp_path):
    from planner.report.figures import strategy_figure

    _report(run_cli, tmp_path / "r", "--models", "opt-1.3b", "--gpus", "t4", "--seqs", "2k", "--gen", "32")
    frame = pd.read_csv(tmp_path / "r" / "results.csv")
    fig = strategy_figure(frame, "opt-1.3b", ["t4"])
    labels = sorted(t.get_text() for t in fig.axes[0].texts)
    expected = sorted(f"b{int(b)}" for b in frame["decisions.batch"].dropna())
    assert labels == expected and len(set(labels)) > 1  # the strategies chose different batches


def test_what_fits_reads_resident_from_every_solve_and_one_context_for_batches(run_cli, tmp_path):
    from planner.report.tables import fit_table

    # Only the automatic plan is swept, yet every solve tried resident: OPT-1.3B's K,V for 8 sequences (3.2 GB
    # at 2k, 26 GB at 16k) fit a 16 GB T4 at 2k only, and a 40 GB A100 at both.
    _report(run_cli, tmp_path / "r", "--models", "opt-1.3b", "--gpus", "t4,a100-40g-pcie", "--seqs", "2k,16k",
            "--batches", "8", "--strategies", "auto", "--gen", "32")
    frame = pd.read_csv(tmp_path / "r" / "results.csv")
    rows = {r[1]: r for r in fit_table(frame).rows}
    assert rows["t4"][3] == "2k" and rows["a100-40g-pcie"][3] == "16k"
    assert rows["t4"][4] == "8 at 2k" and rows["a100-40g-pcie"][4] == "8 at 2k"


def test_console_table_fits_80_columns_without_cutting_names(run_cli, tmp_path):
    result = _report(run_cli, tmp_path / "r", "--models", "opt-1.3b,llama-3-8b", "--gpus", "t4,a100-40g-pcie",
                     "--seqs", "2k", "--strategies", "auto", "--price", "t4=0.35,a100-40g-pcie=1.8", "--gen", "32")
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines[:lines.index(next(x for x in lines if x.startswith("(left out")))]) <= 80
    assert "llama-3-8b" in result.stdout and "a100-40g-pcie" in result.stdout
    assert "(left out to fit 80 columns:" in result.stdout


def test_progress_on_a_pipe_is_plain_lines_through_the_write_phase(run_cli, tmp_path):
    result = _report(run_cli, tmp_path / "r", "--models", "opt-125m", "--gpus", "t4", "--seqs", "1k,2k",
                     "--strategies", "auto", "--progress")
    err = result.stderr.splitlines()
    assert err[0] == "solving: 0% (0/2)" and "solving: 100% (2/2)" in err
    assert any(line.startswith("writing the report: ") and "figures" in line for line in err)
    assert any(line.startswith("writing the report: moving it into") for line in err)
    quiet = _report(run_cli, tmp_path / "q", "--models", "opt-125m", "--gpus", "t4", "--seqs", "1k",
                    "--strategies", "auto")
    assert "solving" not in quiet.stderr  # no progress on a pipe unless asked


def test_all_models_and_all_gpus():
    assert [m.name for m in resolve_models(["all"])] == sorted(CATALOG)
    assert len(resolve_gpus(["all"])) == len(datasheet_names())
