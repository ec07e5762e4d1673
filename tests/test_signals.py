"""One signal policy, checked through real processes and real signals: SIGINT and SIGTERM print the one
line "interrupted", exit 130 / 143, and leave no temporary files (planner/cli/signals.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from planner.models import CATALOG

ROOT = Path(__file__).resolve().parents[1]
DISK = {"device": 0.0, "host": 0.0, "disk": 1.0}
RAM = {"device": 1.0, "host": 0.0, "disk": 0.0}


def _start(args: list[str], tmp_path: Path) -> subprocess.Popen:
    """`python -m planner.cli ARGS` with this checkout's code, a private TMPDIR and cwd (no local profile)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(tmp))
    return subprocess.Popen([sys.executable, "-m", "planner.cli", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the command ended before the signal: {proc.returncode} {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the command to get there")
        time.sleep(0.005)


def _long_plan() -> dict:
    """A tiny model whose K,V live on disk, generating 4,000 tokens: minutes of decode steps, a run folder
    in the temp directory from the start."""
    model = dataclasses.replace(
        CATALOG["opt-125m"], name="tiny-opt", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4,
        head_dim=16, intermediate_size=128, vocab_size=101, max_position_embeddings=8192)
    return {
        "schema_version": 1, "model": model.to_dict(),
        "inputs": {"model": "tiny-opt", "seq": 4096, "prompt": 96, "gen": 4000},
        "decisions": {"strategy": "transfer", "dtype": "float32", "batch": 2, "gpu_batch": 2, "num_gpu_batches": 1,
                      "split_tokens": 0, "kv_placement": DISK, "x_placement": DISK, "weight_placement": RAM,
                      "attention_where": "device"},
    }


def test_sigterm_during_execute_removes_the_run_folder(tmp_path):
    """SIGTERM takes the path Ctrl-C takes (an in-process test checks Ctrl-C's cleanup): exit 143, one line,
    the 4,000-step run's folder gone from the temp directory."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(_long_plan()))
    out = tmp_path / "run.json"
    proc = _start(["execute", str(plan), "--steps", "4000", "--fill", "random", "--out", str(out)], tmp_path)
    tmp = tmp_path / "tmp"
    _wait_for(lambda: any(p.name.startswith("kvplan-run-") for p in tmp.iterdir()), proc)
    time.sleep(0.5)  # into the decode steps
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # a second one, during the cleanup, must not cut it short
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    # progress lines may come first; the signal adds exactly the one line, and no traceback
    assert stderr.endswith("\ninterrupted\n") or stderr == "interrupted\n", stderr
    assert stderr.count("interrupted") == 1 and "Traceback" not in stderr
    assert list(tmp.iterdir()) == [], "the run left files in the temp directory"
    assert not out.exists()


def _importing_subcommands(pid: int) -> bool:
    """numpy's extension is mapped: the process is inside the subcommands' imports (planner.cli._register)."""
    try:
        return "numpy" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see the imports start")
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_startup_is_one_line(tmp_path, sig, code):
    proc = _start(["models", "opt-125m"], tmp_path)
    _wait_for(lambda: _importing_subcommands(proc.pid), proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert (proc.returncode, stderr) == (code, "interrupted\n")
    assert stdout == ""



def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] not in "ZX"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc to find the workers")
def test_sigterm_during_report_sweep_stops_workers_and_writes_no_folder(tmp_path):
    out = tmp_path / "report"
    proc = _start(["report", "--models", "opt-125m,opt-1.3b,opt-6.7b,llama-2-7b", "--gpus", "t4,l4,a100-40g-pcie",
                   "--seqs", "1k,2k,4k,8k", "--jobs", "2", "--no-progress", "-o", str(out)], tmp_path)
    _wait_for(lambda: len(_children(proc.pid)) >= 2, proc)  # the worker pool is up (spawned processes)
    workers = _children(proc.pid)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert (proc.returncode, stderr) == (143, "interrupted\n")
    assert not out.exists() and list((tmp_path / "tmp").iterdir()) == []
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "report workers outlived their parent"
